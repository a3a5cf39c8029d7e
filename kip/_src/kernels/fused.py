"""A fused first block ``Conv -> ABReLU -> AvgPool`` that never forms the full covariance.

The exact ConvNet kernel spends most of its time in the first block: a ``(H W)^2``-entry
covariance per image pair (614,656 entries for 28x28 images) is formed by the first convolution,
mapped by the ReLU arc-cosine kernel and then averaged down ``window^4``-fold by the pooling.
Here the three layers are computed together, one tile at a time, where a tile is one pooled row
of one ``x1`` image against all pixels of all ``x2`` images. Within a tile:

1. the cosines come from one small GEMM of unit patch vectors. With
   :math:`\\tilde P_i(x) = [\\sigma P_i(x), b_{std}] / \\sqrt{v_i(x)}`,
   :math:`\\sigma^2 = W_{std}^2 / (|F| C)` and :math:`v_i = \\sigma^2 |P_i|^2 + b_{std}^2`, the
   first convolution gives :math:`K_{ik} = \\sqrt{v_i v'_k}\\, c_{ik}` with
   :math:`c_{ik} = \\langle \\tilde P_i(x), \\tilde P_k(x') \\rangle`;
2. the ABReLU maps (Cho & Saul 2009) are written with one square root each. XLA (CPU, jax
   0.10) fuses them with the pooling into one loop per output, but materialises the clipped
   cosines and the ``arccos`` square roots of the tile first (a few tile-sized arrays: a tile
   is at most ``window^4 Wo (n2 Ho Wo)`` entries, not a pair's full covariance). Rewriting the
   sums as reductions, stacking the two outputs, or splitting the ``x2`` columns into
   cache-sized chunks was measured slower (4 x 32 block, forward: 83 ms as written vs
   180-430 ms, and 105 ms chunked).
   With :math:`\\theta = \\arccos c`, :math:`s_2 = a^2 + b^2`, :math:`m = (a - b)^2`,
   :math:`D(c) = s_2 \\pi - m \\theta` and :math:`t(c) = c D(c)`, ABReLU's ``J`` is
   :math:`J = m \\sin\\theta + t`, so

   .. math::
      K'_{ik} = \\frac{\\sqrt{v_i v'_k}}{2\\pi} (m \\sin\\theta_{ik} + t(c_{ik})), \\qquad
      \\Theta'_{ik} = K_{ik} \\dot K_{ik} = \\frac{\\sqrt{v_i v'_k}}{2\\pi} t(c_{ik})

   (the NTK after the first convolution equals its NNGP; ReLU multiplies it by ``Kdot``);
3. the ``window x window`` average pooling of both images is a sum of the ``window^4`` slices
   of the tile, done in the same loop.

Reverse mode uses a hand-written VJP per tile (:func:`_tile`): it recomputes the tile's cosines
and needs no stored covariance, and it uses the closed form
:math:`\\partial \\Theta' / \\partial c \\propto D + c D'` with :math:`D'` set to 0 at
:math:`|c| = 1` (coinciding inputs), as the reference ABReLU does, so gradients stay finite there.
The VJP is registered with symbolic zeros: an argument that is not differentiated (``x2`` when
KIP differentiates a support-target block w.r.t. the support only) gets no cotangent, and its two
GEMMs per tile are skipped.

With ``native=True`` (the engine's default on CPU when it builds) the same sums and VJP are
computed by a compiled kernel, :mod:`kip._src.kernels.native`, which keeps each pooled row's
cosines, maps and cotangents in registers instead of XLA's tile-sized arrays; this XLA path
stays the reference for it and the path on other backends.

The result equals ``serial(Conv, ABRelu, AvgPool(window, stride=window))`` applied to the lazy
input state (the reference path of :mod:`kip._src.kernels.layers`) to float rounding. With a
``Flatten`` readout and ``banded=True`` (the CPU default), the later layers then run on the band
of this block's output that reaches the readout (:mod:`kip._src.kernels.banded`). Restricting
the tiles themselves to that band (a tile meeting only the ``x2`` rows near its own) was
measured slower on XLA's CPU backend: a GEMM operand or output that changes with the loop
iteration made the tile's fused map loop 2.8x slower than this loop-invariant layout.

References:
  Cho & Saul, "Kernel Methods for Deep Learning", NeurIPS 2009.
  Novak et al., "Bayesian Deep Convolutional Networks with Many Channels are Gaussian
  Processes", ICLR 2019.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from kip._src.kernels import layers as L

__all__ = ["conv_abrelu_pool_on_inputs"]


def _unit_patches(x: jax.Array, fh: int, fw: int, W_std: float, b_std: Optional[float],
                  window: int):
  """Unit patch vectors and norms, cropped to whole pooling windows.

  Returns:
    ``q (n, Ho, window, Wo, window, P)`` with ``P = fh fw C (+1 with a bias)``, the vectors
    :math:`\\tilde P_i` (zero where :math:`v_i = 0`), and ``r (n, Ho, window, Wo, window)``, the
    norms :math:`\\sqrt{v_i}`.
  """
  n, h, w, c = x.shape
  ho, wo = h // window, w // window
  p = L._patches(x, fh, fw)[:, :ho * window, :wo * window]
  sigma = W_std / math.sqrt(fh * fw * c)
  b2 = 0.0 if b_std is None else float(b_std) ** 2
  p = sigma * p
  if b2 > 0:
    p = jnp.concatenate([p, jnp.full(p.shape[:-1] + (1,), math.sqrt(b2), p.dtype)], axis=-1)
  v = jnp.sum(p * p, axis=-1)
  pos = v > 0
  safe = jnp.where(pos, v, 1.0)
  q = p * jnp.where(pos, lax.rsqrt(safe), 0.0)[..., None]
  r = jnp.where(pos, jnp.sqrt(safe), 0.0)
  q = q.reshape(n, ho, window, wo, window, q.shape[-1])
  return q, r.reshape(n, ho, window, wo, window)


def _rows(q: jax.Array, r: jax.Array):
  """x1 side: ``(n Ho, window^2, Wo, P)`` and ``(n Ho, window^2, Wo)``, one tile per row."""
  n, ho, w, wo, _, p = q.shape
  q = q.transpose(0, 1, 2, 4, 3, 5).reshape(n * ho, w * w, wo, p)
  return q, r.transpose(0, 1, 2, 4, 3).reshape(n * ho, w * w, wo)


def _columns(q: jax.Array, r: jax.Array):
  """x2 side: ``(P, window^2, n Ho Wo)`` and ``(window^2, n Ho Wo)``."""
  n, ho, w, wo, _, p = q.shape
  return (q.transpose(5, 2, 4, 0, 1, 3).reshape(p, w * w, n * ho * wo),
          r.transpose(2, 4, 0, 1, 3).reshape(w * w, n * ho * wo))


def _maps(c, s2: float, m: float):
  """``(sin theta, t(c) = c D(c), D(c))`` of a clipped cosine, each with one square root."""
  sin = jnp.sqrt(jnp.maximum(1.0 - c * c, 0.0))
  d = s2 * jnp.pi - m * L._arccos(c)
  return sin, c * d, d


def _cosines(q1, q2):
  """All ``window^4`` cosine slices ``(U, R, V, N)`` of a tile from one GEMM, unclipped."""
  u, rr, p = q1.shape
  _, v, n = q2.shape
  c = jnp.dot(q1.reshape(u * rr, p), q2.reshape(p, v * n), precision=lax.Precision.HIGHEST)
  return c.reshape(u, rr, v, n)


def _snap(raw):
  """Clips to ``[-1, 1]`` and rounds cosines within a few ulps of ``+-1`` to ``+-1``.

  Unit vectors carry a few ulps of normalisation error, so identical patches (``x1 == x2``)
  give ``c = 1 - O(ulp)``; ``arccos`` turns that into ``theta ~ sqrt(ulp)`` (4e-4 in float32),
  whereas the reference's ``K / sqrt(v v')`` is then exactly 1. Cosines that close to ``+-1``
  are not resolved in this precision anyway.
  """
  eps = 8 * jnp.finfo(raw.dtype).eps
  c = jnp.clip(raw, -1.0, 1.0)
  return jnp.where(c >= 1 - eps, 1.0, jnp.where(c <= eps - 1, -1.0, c)).astype(raw.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _tile(q1, r1, q2, r2, s2: float, m: float):
  """Pooled NNGP and NTK of one tile, without the ``1 / (2 pi window^4)`` factor.

  Args:
    q1: ``(U, R, P)`` unit patches of the tile's ``x1`` pixels, ``U = window^2`` offsets
      inside a pooling window, ``R`` pooled columns.
    r1: ``(U, R)`` their norms.
    q2: ``(P, V, N)`` unit patches of all ``x2`` pixels, ``V = window^2``, ``N`` pooled cells.
    r2: ``(V, N)`` their norms.
    s2: ``a^2 + b^2``.
    m: ``(a - b)^2``.

  Returns:
    ``(nngp, ntk)``, each ``(R, N)``: :math:`\\sum_{u, v} r_1 r_2 (m \\sin\\theta + t)` and
    :math:`\\sum_{u, v} r_1 r_2 t`.
  """
  c = _snap(_cosines(q1, q2))
  nngp = ntk = 0.0
  # Slices summed in one expression: one fused loop per output over (R, N).
  for u in range(c.shape[0]):
    for v in range(c.shape[2]):
      sin, t, _ = _maps(c[u, :, v, :], s2, m)
      w = r1[u][:, None] * r2[v][None, :]
      ntk = ntk + w * t
      nngp = nngp + w * sin
  return m * nngp + ntk, ntk


def _primals_and_wanted(q1, r1, q2, r2):
  """Values of a tile VJP's primals and which sides want a cotangent.

  With ``symbolic_zeros=True`` the array arguments arrive as ``CustomVJPPrimal``s whose
  ``perturbed`` says whether a cotangent is wanted; the flags travel to the backward pass as the
  (static) structure of the residuals: ``()`` for wanted, ``None`` for not. Shared with
  :mod:`kip._src.kernels.native`.
  """
  values = tuple(arg.value for arg in (q1, r1, q2, r2))
  wanted = (() if q1.perturbed or r1.perturbed else None,
            () if q2.perturbed or r2.perturbed else None)
  return values, wanted


def _dense_cotangents(cts):
  """Output cotangents with symbolic zeros materialised as zeros."""
  return tuple(jnp.zeros(ct.shape, ct.dtype) if isinstance(ct, SymbolicZero) else ct
               for ct in cts)


def _tile_fwd(q1, r1, q2, r2, s2, m):
  values, wanted = _primals_and_wanted(q1, r1, q2, r2)
  return _tile(*values, s2, m), (values, wanted)


def _tile_bwd(s2, m, res, cts):
  r"""Recomputes the tile's cosines; no covariance is stored between the passes.

  With cotangents :math:`g_K, g_\Theta` of the outputs, per entry
  :math:`\partial L / \partial c = r_1 r_2 [(g_K + g_\Theta) D + g_\Theta c D']`,
  :math:`D' = m / \sqrt{1 - c^2}` (0 where :math:`|c| = 1`), and
  :math:`\partial L / \partial r_1 = \sum r_2 (g_K J + g_\Theta t)`.
  """
  (q1, r1, q2, r2), (want1, want2) = res
  g_k, g_t = _dense_cotangents(cts)
  raw = _cosines(q1, q2)
  # Like jnp.clip, no gradient outside [-1, 1] (beyond rounding).
  inside = jnp.abs(raw) <= 1.0 + 8 * jnp.finfo(raw.dtype).eps
  c = _snap(raw)
  sin, t, d = _maps(c, s2, m)
  one_minus = 1.0 - c * c
  ok = one_minus > 0
  dp = jnp.where(ok, m * lax.rsqrt(jnp.where(ok, one_minus, 1.0)), 0.0)
  g_k, g_t = g_k[None, :, None, :], g_t[None, :, None, :]
  w1, w2 = r1[:, :, None, None], r2[None, None, :, :]
  a = g_k * (m * sin + t) + g_t * t                      # d L / d (r1 r2), (U, R, V, N)
  gc = jnp.where(inside, w1 * w2 * ((g_k + g_t) * d + g_t * c * dp), 0.0)
  u, rr, v, n = gc.shape
  p = q1.shape[-1]
  gc2 = gc.reshape(u * rr, v * n)
  hi = lax.Precision.HIGHEST
  a2 = a.reshape(u * rr, v * n)
  dq1 = dr1 = dq2 = dr2 = None  # None: a zero cotangent (x2 is usually a constant, targets)
  if want1 is not None:
    dq1 = jnp.dot(gc2, q2.reshape(p, v * n).T, precision=hi).reshape(u, rr, p)
    dr1 = jnp.dot(a2, r2.reshape(v * n), precision=hi).reshape(u, rr)
  if want2 is not None:
    dq2 = jnp.dot(q1.reshape(u * rr, p).T, gc2, precision=hi).reshape(p, v, n)
    dr2 = jnp.dot(r1.reshape(u * rr), a2, precision=hi).reshape(v, n)
  return dq1, dr1, dq2, dr2


_tile.defvjp(_tile_fwd, _tile_bwd, symbolic_zeros=True)


def _same_varying_axes(*xs):
  """Casts arrays to the union of their ``shard_map`` varying axes (no-op outside one).

  Inside ``shard_map`` the columns ``x2`` vary over the device axis while ``x1`` is
  replicated; a custom VJP must return each cotangent with its input's type, so the tile's
  inputs are first made alike and JAX's own transpose of the cast sums ``x1``'s cotangent.
  """
  typeof, pcast = getattr(jax, "typeof", None), getattr(lax, "pcast", None)
  if typeof is None or pcast is None:  # JAX without varying-axis types (e.g. 0.5)
    return xs

  def varying(x):
    aval = typeof(x)
    mat = getattr(aval, "manual_axis_type", None)  # newer JAX
    return set(mat.varying) if mat is not None else set(getattr(aval, "vma", ()))

  axes = set().union(*(varying(x) for x in xs))
  out = []
  for x in xs:
    missing = tuple(sorted(axes - varying(x)))
    out.append(pcast(x, missing, to="varying") if missing else x)
  return tuple(out)


def conv_abrelu_pool_on_inputs(x1: jax.Array, x2: jax.Array, compute_ntk: bool, *,
                               filter_shape: tuple[int, int], W_std: float,
                               b_std: Optional[float], a: float, b: float,
                               window: int, native: bool = False) -> L.Kernel:
  r"""``serial(Conv(filter_shape, W_std, b_std), ABRelu(a, b), AvgPool(window, window))``.

  Equal to the reference layers applied to :func:`~kip._src.kernels.layers.lazy_input`, with
  memory per tile instead of per pair: ``window^4 Wo (n2 Ho Wo)`` covariance entries at a time.

  Args:
    x1: ``(b1, H, W, C)`` images.
    x2: ``(b2, H, W, C)`` images.
    compute_ntk: whether to carry the NTK.
    filter_shape: odd ``(fh, fw)`` of the SAME, stride-1 convolution.
    W_std: its weight standard deviation.
    b_std: its bias standard deviation or ``None``.
    a: ABReLU slope for negative inputs.
    b: ABReLU slope for positive inputs.
    window: pooling window, equal to its stride, VALID padding.
    native: compute the tiles with the compiled CPU kernel
      (:func:`kip._src.kernels.native.abrelu_tile`, the same sums and VJP) instead of XLA.

  Returns:
    A :class:`~kip._src.kernels.layers.Kernel` with ``S = (Ho, Wo, Ho, Wo)``,
    ``Ho = H // window``, ``Wo = W // window``.
  """
  fh, fw = filter_shape
  h, w = x1.shape[1], x1.shape[2]
  L.check_pool_size(min(h, w), window)
  s2, m = a * a + b * b, (a - b) ** 2
  norm = 1.0 / (2 * jnp.pi * window ** 4)
  ho, wo = h // window, w // window
  q1, r1 = _unit_patches(x1, fh, fw, W_std, b_std, window)
  q2, r2 = _unit_patches(x2, fh, fw, W_std, b_std, window)
  if native:
    return _native_block(q1, r1, q2, r2, compute_ntk, s2, m, norm)

  # Cross covariances: one tile per (x1 image, pooled row) against every x2 pixel.
  cq2, cr2 = _columns(q2, r2)
  tq1, tr1 = _rows(q1, r1)
  tq1, tr1, cq2, cr2 = _same_varying_axes(tq1, tr1, cq2, cr2)
  nngp, ntk = lax.map(lambda t: _tile(t[0], t[1], cq2, cr2, s2, m), (tq1, tr1))

  def cross(t):  # (b1 Ho, Wo, b2 Ho Wo) -> (b1, b2, Ho, Wo, Ho, Wo)
    t = t.reshape(x1.shape[0], ho, wo, x2.shape[0], ho, wo)
    return norm * t.transpose(0, 3, 1, 2, 4, 5)

  # Self covariances: each image against itself, row by row.
  def self_cov(q, r):
    def image(args):
      qi, ri = args
      cq, cr = _columns(qi[None], ri[None])
      tq, tr = _rows(qi[None], ri[None])
      return lax.map(lambda t: _tile(t[0], t[1], cq, cr, s2, m)[0], (tq, tr))
    out = lax.map(image, (q, r))  # (n, Ho, Wo, Ho Wo)
    return norm * out.reshape(q.shape[0], ho, wo, ho, wo)

  return L.Kernel(nngp=cross(nngp), ntk=cross(ntk) if compute_ntk else None,
                  cov1=self_cov(q1, r1), cov2=self_cov(q2, r2))


def _cells(q: jax.Array, r: jax.Array, per_image: bool):
  """Native layouts: ``q (B, M, U, P), r (B, M, U)`` and ``q (B, U, P, M), r (B, U, M)``.

  ``M`` pooled cells of all images (``B = 1``) or of each image (``per_image``, ``B = n``).
  """
  n, ho, w, wo, _, p = q.shape
  b = n if per_image else 1
  lq = q.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, w * w, p)
  lr = r.transpose(0, 1, 3, 2, 4).reshape(b, -1, w * w)
  return (lq, lr), (lq.transpose(0, 2, 3, 1), lr.transpose(0, 2, 1))


def _native_block(q1, r1, q2, r2, compute_ntk: bool, s2: float, m: float, norm: float):
  """:func:`conv_abrelu_pool_on_inputs` through :func:`kip._src.kernels.native.abrelu_tile`."""
  from kip._src.kernels import native  # noqa: PLC0415  (native imports this module)

  b1, ho, _, wo = q1.shape[:4]
  b2 = q2.shape[0]
  (lq1, lr1), _ = _cells(q1, r1, per_image=False)
  _, (rq2, rr2) = _cells(q2, r2, per_image=False)
  lq1, lr1, rq2, rr2 = _same_varying_axes(lq1, lr1, rq2, rr2)
  nngp, ntk = native.abrelu_tile(lq1, lr1, rq2, rr2, s2, m)

  def cross(t):  # (1, b1 Ho Wo, b2 Ho Wo) -> (b1, b2, Ho, Wo, Ho, Wo)
    return norm * t.reshape(b1, ho, wo, b2, ho, wo).transpose(0, 3, 1, 2, 4, 5)

  def self_cov(q, r):  # each image against itself: B = n blocks of one image
    (lq, lr), (rq, rr) = _cells(q, r, per_image=True)
    return norm * native.abrelu_tile(lq, lr, rq, rr, s2, m)[0].reshape(q.shape[0], ho, wo, ho,
                                                                      wo)

  return L.Kernel(nngp=cross(nngp), ntk=cross(ntk) if compute_ntk else None,
                  cov1=self_cov(q1, r1), cov2=self_cov(q2, r2))
