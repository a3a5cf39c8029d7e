"""Banded ConvNet kernels: only the covariance entries that reach a ``Flatten`` readout.

A ``Flatten`` readout sees only same-pixel covariances, :math:`K'(x, x') = \\frac{1}{HW}
\\sum_i K_{x x'}(i, i)`, and the spatial layers before it move information between pixel
*pairs* in a local way:

* a convolution (stride 1, SAME) shifts both pixels of a pair by the same filter offset, so the
  pair's offset :math:`d = i' - i` is unchanged:
  :math:`K'(i, i + d) = \\frac{W_{std}^2}{|F|} \\sum_{p \\in F} K(i + p, i + p + d) + b_{std}^2`;
* a pixel-wise nonlinearity or ``Dense`` (a 1x1 convolution) keeps every pair where it is;
* an average pool with window ``w`` and stride ``s`` reads, for an output offset ``D``, input
  offsets :math:`s D + u' - u` with :math:`u, u' \\in [0, w)`, i.e. :math:`|d| \\le s |D| + w - 1`.

Walking back from ``Flatten`` (:math:`|d| = 0`) gives, per layer and per axis, the largest offset
``B`` that can influence the output: for ConvNet-3 on 28x28 images :math:`B = 7` before the first
pool, :math:`3` before the second and :math:`1` before the third. Every other entry of the
``(HW)^2`` covariance is computed by the dense path and then never used. Here the covariances
are stored *banded*: an array ``(..., H, W, 2B_h + 1, 2B_w + 1)`` whose entry ``[i, j, e, f]`` is
:math:`K((i, j), (i + e - B_h, j + f - B_w))`, zero where the partner pixel lies outside the
image. On 28x28 inputs with ``B = 7`` that is 176,400 of the 614,656 entries of a pair (29 %) in
the first block, and 9,604 of 38,416 after the first pool; the arc-cosine maps, which dominate
the cost, run only there.

The layers act on the band as follows (``v`` the per-pixel variances, :math:`v^{\\to}` the
variance of the partner pixel, laid out like the band):

* input: :math:`K(i, i + d) = \\langle x_i, x'_{i+d} \\rangle / C`;
* ``Conv``: a ``fh x fw`` box sum over the *position* axes at fixed offset (zero padding), then
  :math:`W_{std}^2 / |F|` and :math:`b_{std}^2`; the NTK gets :math:`W_{std}^2 A(\\Theta) + K'`;
* ``ABRelu``: the arc-cosine maps of :func:`kip._src.kernels.layers.ABRelu` with
  :math:`\\sqrt{v_i v^{\\to}_{i+d}}`;
* ``AvgPool(w, s)``: :math:`K'(I, I + D) = w^{-4} \\sum_{u, u'} K(s I + u, s I + s D + u')`, a sum
  of strided slices of the position and offset axes (VALID, trailing pixels cropped);
* ``Flatten``: the mean over positions of the zero-offset entries.

The result equals the layer-by-layer path of :mod:`kip._src.kernels.layers` (and
neural-tangents) to float rounding; only the order of summation differs.

With a fused first block (:mod:`kip._src.kernels.fused`, ``fused=True``) the band is taken from
that block's pooled output and only the later layers run here.

References:
  Novak et al., "Bayesian Deep Convolutional Networks with Many Channels are Gaussian
  Processes", ICLR 2019 (the covariance recursion that is restricted here).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kip._src.kernels import layers as L

__all__ = ["Plan", "plan", "through_flatten"]

_SPATIAL_KINDS = ("conv", "abrelu", "avgpool", "dense")


@dataclasses.dataclass(frozen=True)
class Plan:
  """Where the banded path ends and the band each layer's *input* needs.

  Attributes:
    stop: index of the ``Flatten`` layer in the serial chain (the banded part is ``[0, stop]``).
    bands: ``bands[l] = (B_h, B_w)``, the largest pixel offset of layer ``l``'s input that
      reaches the readout; ``bands[stop]`` is ``(0, 0)``.
  """
  stop: int
  bands: tuple[tuple[int, int], ...]


def _hparams(layer) -> dict:
  return getattr(layer.kernel_fn, "hparams", {})


def plan(layers: Sequence[L.Layer]) -> Optional[Plan]:
  """The banded plan of a serial chain, or ``None`` if it does not qualify.

  A chain qualifies when it starts with spatial layers of the kinds ``Conv``, ``ABRelu`` (and
  the activations built on it), ``AvgPool`` and ``Dense``, followed by ``Flatten``; the layers
  after ``Flatten`` are left to their own kernel functions.
  """
  kinds = [_hparams(layer).get("kind") for layer in layers]
  if "flatten" not in kinds:
    return None
  stop = kinds.index("flatten")
  if stop == 0 or any(kind not in _SPATIAL_KINDS for kind in kinds[:stop]):
    return None
  bands = [(0, 0)] * (stop + 1)
  bh = bw = 0
  for i in range(stop - 1, -1, -1):
    hp = _hparams(layers[i])
    if hp["kind"] == "avgpool":
      w, s = hp["window"], hp["stride"]
      bh, bw = s * bh + w - 1, s * bw + w - 1
    bands[i] = (bh, bw)
  return Plan(stop=stop, bands=tuple(bands))


def first_band(layers: Sequence[L.Layer]) -> Optional[tuple[int, int]]:
  """The band of the input covariance (for memory sizing), or ``None`` without a plan."""
  p = plan(layers)
  return None if p is None else p.bands[0]


# ----------------------------------------------------------------------------- band helpers
def _valid(h: int, w: int, bh: int, bw: int, dtype) -> jax.Array:
  """``(H, W, Dh, Dw)`` 1 where the partner pixel ``(i + e - B_h, j + f - B_w)`` exists."""
  i = np.arange(h)[:, None] + np.arange(-bh, bh + 1)[None, :]
  j = np.arange(w)[:, None] + np.arange(-bw, bw + 1)[None, :]
  vi = (i >= 0) & (i < h)
  vj = (j >= 0) & (j < w)
  return jnp.asarray(vi[:, None, :, None] & vj[None, :, None, :], dtype)


def _partners(v: jax.Array, bh: int, bw: int) -> jax.Array:
  """``v (n, H, W, *C)`` -> ``(n, H, W, Dh, Dw, *C)``: ``v`` at the partner pixel, 0 outside."""
  n, h, w = v.shape[:3]
  rest = v.shape[3:]
  pad = [(0, 0), (bh, bh), (bw, bw)] + [(0, 0)] * len(rest)
  vp = jnp.pad(v, pad)
  rows = jnp.stack([vp[:, e:e + h] for e in range(2 * bh + 1)], axis=2)  # (n, H, Dh, W+2bw, *C)
  cols = jnp.stack([rows[:, :, :, f:f + w] for f in range(2 * bw + 1)], axis=4)
  # (n, H, Dh, W, Dw, *C) -> (n, H, W, Dh, Dw, *C)
  perm = (0, 1, 3, 2, 4) + tuple(range(5, 5 + len(rest)))
  return cols.transpose(perm)


def _box(a: jax.Array, fh: int, fw: int) -> jax.Array:
  """Sum over a ``fh x fw`` window of the position axes (``-4, -3``), zero padding, at fixed
  offset: the diagonal convolution of a banded covariance (without the ``1/|F|``).

  One ``reduce_window`` sum rather than a sum of shifted slices: on XLA's CPU backend the
  ConvNet-3 layers after the fused block took 20 ms instead of 47 ms forward and 61 ms instead
  of 97 ms with their gradient (4 x 32 block). The pool's strided slices stay: written as
  ``reduce_window`` s they were slower (34 vs 22 ms forward).
  """
  lead = a.ndim - 4
  window = (1,) * lead + (fh, fw, 1, 1)
  pad = [(0, 0)] * lead + [(fh // 2, fh // 2), (fw // 2, fw // 2), (0, 0), (0, 0)]
  return lax.reduce_window(a, 0.0, lax.add, window, (1,) * a.ndim, pad)


def _pool_axis(a: jax.Array, pos_axis: int, off_axis: int, window: int, stride: int,
               b_in: int, b_out: int) -> jax.Array:
  """The pool's sum along one spatial dimension: position ``s I + u``, offset ``s D + u' - u``."""
  size = a.shape[pos_axis]
  out = (size - window) // stride + 1
  d_out = 2 * b_out + 1
  acc = 0.0
  for u in range(window):
    pos = lax.slice_in_dim(a, u, u + stride * (out - 1) + 1, stride, axis=pos_axis)
    for u2 in range(window):
      start = b_in - stride * b_out + u2 - u
      acc = acc + lax.slice_in_dim(pos, start, start + stride * (d_out - 1) + 1, stride,
                                   axis=off_axis)
  return acc


def _pool(a: jax.Array, window: int, stride: int, band_in, band_out) -> jax.Array:
  lead = a.ndim - 4
  a = _pool_axis(a, lead, lead + 2, window, stride, band_in[0], band_out[0])
  a = _pool_axis(a, lead + 1, lead + 3, window, stride, band_in[1], band_out[1])
  return a / window ** 4


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Band:
  """Banded covariances: ``nngp``/``ntk`` ``(b1, b2, H, W, Dh, Dw)``, ``cov1`` ``(b1, H, W, Dh,
  Dw)``, ``cov2`` ``(b2, H, W, Dh, Dw)``; ``band = (B_h, B_w)`` static."""
  nngp: jax.Array
  ntk: Optional[jax.Array]
  cov1: jax.Array
  cov2: jax.Array
  band: tuple[int, int] = dataclasses.field(metadata=dict(static=True))

  def map(self, fn, band=None) -> "_Band":
    return _Band(fn(self.nngp), None if self.ntk is None else fn(self.ntk), fn(self.cov1),
                 fn(self.cov2), self.band if band is None else band)

  def masked(self) -> "_Band":
    h, w = self.cov1.shape[1:3]
    m = _valid(h, w, *self.band, self.cov1.dtype)
    return self.map(lambda t: t * m)


def _input(x1: jax.Array, x2: jax.Array, compute_ntk: bool, band) -> _Band:
  """The banded input kernel :math:`\\langle x_i, x'_{i+d} \\rangle / C` (NTK zero)."""
  c = x1.shape[-1]
  p1, p2 = _partners(x1, *band), _partners(x2, *band)   # (n, H, W, Dh, Dw, C)

  def dot(u, v):  # sum over the (few) channels as products, not a batched GEMM
    return sum(u[..., k] * v[..., k] for k in range(c)) / c

  cross = dot(x1[:, None, :, :, None, None, :], p2[None])
  return _Band(cross, jnp.zeros_like(cross) if compute_ntk else None,
               dot(x1[:, :, :, None, None, :], p1), dot(x2[:, :, :, None, None, :], p2), band)


def _affine(k: _Band, linear, W_std: float, b_std: Optional[float]) -> _Band:
  """The affine layer of :mod:`~kip._src.kernels.layers` on the band (bias masked outside)."""
  return _Band(*L.affine_fields(k.nngp, k.ntk, k.cov1, k.cov2, linear, W_std, b_std),
               k.band).masked()


def _abrelu(k: _Band, a: float, b: float) -> _Band:
  bh, bw = k.band
  v1 = k.cov1[..., bh, bw]        # (b1, H, W)
  v2 = k.cov2[..., bh, bw]
  s1, s2 = _partners(v1, bh, bw), _partners(v2, bh, bw)   # zero where the partner is outside
  e = (None, None)
  nngp, dot = L.abrelu_fn(k.nngp, v1[:, None, :, :, None, None] * s2[None], k.ntk is not None,
                          a, b)
  cov1, _ = L.abrelu_fn(k.cov1, v1[(...,) + e] * s1, False, a, b)
  cov2, _ = L.abrelu_fn(k.cov2, v2[(...,) + e] * s2, False, a, b)
  return _Band(nngp, None if k.ntk is None else k.ntk * dot, cov1, cov2, k.band)


def _skew(t: jax.Array, b: int) -> jax.Array:
  """``t (..., n, n)`` -> ``(..., n, 2 b + 1)`` with ``[..., i, e] = t[..., i, i + e - b]``, 0
  outside; by padding and reshaping only, so its transpose (the gradient) is as cheap."""
  n = t.shape[-1]
  lead = t.shape[:-2]
  tp = jnp.pad(t, [(0, 0)] * len(lead) + [(0, 0), (b, b)])        # (..., n, n + 2b)
  flat = jnp.pad(tp.reshape(lead + (n * (n + 2 * b),)), [(0, 0)] * len(lead) + [(0, n)])
  return flat.reshape(lead + (n, n + 2 * b + 1))[..., :2 * b + 1]


def _from_dense(k: L.Kernel, band) -> _Band:
  """The band of a dense spatial state (``S = (H, W, H, W)``), e.g. after the fused block."""
  bh, bw = band

  def take(t):
    lead = t.ndim - 4
    a, b, c, d = (lead + i for i in range(4))  # H, W, H', W'
    t = jnp.moveaxis(t, (a, c), (-2, -1))      # (..., W, W', H, H')
    t = _skew(t, bh)                            # (..., W, W', H, Dh)
    t = jnp.moveaxis(t, (-2, -1), (lead, lead + 1))  # (..., H, Dh, W, W')
    t = _skew(t, bw)                            # (..., H, Dh, W, Dw)
    return jnp.swapaxes(t, -3, -2)              # (..., H, W, Dh, Dw)

  return _Band(take(k.nngp), None if k.ntk is None else take(k.ntk), take(k.cov1),
               take(k.cov2), (bh, bw))


def through_flatten(layers: Sequence[L.Layer], the_plan: Plan, k: L.Kernel,
                    start: int = 0) -> L.Kernel:
  """Runs ``layers[start:stop + 1]`` (ending in ``Flatten``) on the band.

  Args:
    layers: the serial chain; ``the_plan = plan(layers)``.
    k: the state entering ``layers[start]``: the lazy input state
      (:func:`~kip._src.kernels.layers.lazy_input`, ``start = 0``; its band is formed from the
      images) or a dense spatial state (``S = (H, W, H, W)``, e.g. the output of the fused first
      block of :mod:`kip._src.kernels.fused`, ``start = 3``), whose band is taken from it.
    start: index of the first layer to run.

  Returns:
    The non-spatial :class:`~kip._src.kernels.layers.Kernel` after ``Flatten``: ``nngp``/``ntk``
    ``(b1, b2)``, ``cov1`` ``(b1,)``, ``cov2`` ``(b2,)``.
  """
  if k.is_input:
    k = _input(k.x1, k.x2, k.ntk is not None, the_plan.bands[start])
  else:
    k = _from_dense(k, the_plan.bands[start])
  for i in range(start, the_plan.stop):
    hp = _hparams(layers[i])
    kind = hp["kind"]
    if kind == "conv":
      fh, fw = hp["filter_shape"]
      k = _affine(k, lambda t, fh=fh, fw=fw: _box(t, fh, fw) / (fh * fw), hp["W_std"],
                  hp["b_std"])
    elif kind == "dense":
      k = _affine(k, lambda t: t, hp["W_std"], hp["b_std"])
    elif kind == "abrelu":
      k = _abrelu(k, hp["a"], hp["b"])
    else:  # avgpool
      window, stride = hp["window"], hp["stride"]
      L.check_pool_size(min(k.cov1.shape[1:3]), window)
      band_out = the_plan.bands[i + 1]
      k = k.map(lambda t, bo=band_out: _pool(t, window, stride, k.band, bo), band_out).masked()
  bh, bw = k.band

  def flat(t):
    return jnp.mean(t[..., bh, bw], axis=(-2, -1))

  return L.Kernel(nngp=flat(k.nngp), ntk=None if k.ntk is None else flat(k.ntk),
                  cov1=flat(k.cov1), cov2=flat(k.cov2))
