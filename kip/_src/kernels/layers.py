"""Infinite-width NNGP / NTK layers, composable like ``neural_tangents.stax``.

Contract (stated once, as in ``jax.example_libraries.stax``): a layer constructor captures its
hyperparameters and returns a :class:`Layer`, a triple of pure functions

* ``init_fn(key, input_shape) -> (output_shape, params)``: a finite network of that architecture,
* ``apply_fn(params, x) -> y``: its forward pass (NHWC), used by Monte-Carlo checks,
* ``kernel_fn(k: Kernel) -> Kernel``: the infinite-width limit acting on a block of kernels.

A :class:`Kernel` holds, for a block of ``b1`` inputs ``x1`` and ``b2`` inputs ``x2``, the cross
covariances ``nngp`` and ``ntk`` of shape ``(b1, b2, *S)`` and the per-image self covariances
``cov1`` ``(b1, *S)`` and ``cov2`` ``(b2, *S)``. ``S`` is ``(H1, W1, H2, W2)`` while the
network is spatial (the full pixel-by-pixel covariance, needed because average pooling mixes
neighbouring pixels) and ``()`` after :func:`Flatten` / :func:`GlobalAvgPool`.

All layers use the NTK parameterization of neural-tangents: a weight ``w ~ N(0, 1)`` enters as
``W_std / sqrt(fan_in) * w`` and a bias as ``b_std * b``.

References:
  Lee et al., "Deep Neural Networks as Gaussian Processes", ICLR 2018.
  Jacot et al., "Neural Tangent Kernel", NeurIPS 2018.
  Novak et al., "Bayesian Deep Convolutional Networks with Many Channels are Gaussian
  Processes", ICLR 2019; "Neural Tangents", ICLR 2020.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "Kernel", "Layer", "serial", "Dense", "Conv", "Relu", "ABRelu", "LeakyRelu", "Abs", "Erf",
    "AvgPool", "Flatten", "GlobalAvgPool", "input_kernel", "lazy_input", "materialize",
]


# ----------------------------------------------------------------------------- state
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Kernel:
  """A block of infinite-width kernels (a pytree: arrays are leaves).

  Attributes:
    nngp: ``(b1, b2, *S)`` NNGP covariance between ``x1`` and ``x2``.
    ntk: ``(b1, b2, *S)`` NTK, or ``None`` when only the NNGP is wanted.
    cov1: ``(b1, *S)`` NNGP covariance of each ``x1`` image with itself.
    cov2: ``(b2, *S)`` likewise for ``x2``.

  ``S = (H1, W1, H2, W2)`` for spatial activations (``H1 == H2``, ``W1 == W2``), ``()`` after
  flattening. The lazy input state (:func:`lazy_input`) holds ``x1`` ``(b1, H, W, C)`` and
  ``x2`` ``(b2, H, W, C)`` instead, and ``fuse`` (static) lets :func:`serial` compute a leading
  ``Conv -> ABRelu -> AvgPool`` block with :mod:`kip._src.kernels.fused`; ``banded`` (static)
  lets it compute a chain ending in ``Flatten`` on the band of pixel pairs that reaches the
  readout (:mod:`kip._src.kernels.banded`).
  """
  nngp: Optional[jax.Array]
  ntk: Optional[jax.Array]
  cov1: Optional[jax.Array]
  cov2: Optional[jax.Array]
  x1: Optional[jax.Array] = None
  x2: Optional[jax.Array] = None
  fuse: bool = dataclasses.field(default=False, metadata=dict(static=True))
  banded: bool = dataclasses.field(default=False, metadata=dict(static=True))
  native: bool = dataclasses.field(default=False, metadata=dict(static=True))

  @property
  def is_input(self) -> bool:
    """True for the lazy input state: raw ``x1``, ``x2`` whose covariances are not yet formed."""
    return self.x1 is not None

  @property
  def is_spatial(self) -> bool:
    if self.is_input:
      return self.x1.ndim == 4
    return self.cov1.ndim == 5

  def replace(self, **changes) -> "Kernel":
    return dataclasses.replace(self, **changes)


class Layer(NamedTuple):
  """``(init_fn, apply_fn, kernel_fn)`` as in ``neural_tangents.stax``.

  Layers whose kernel :func:`serial` may fuse carry their hyperparameters on the function, as
  ``kernel_fn.hparams`` (a dict with a ``"kind"``); the triple itself stays that of stax.
  """
  init_fn: Callable[[jax.Array, Sequence[int]], tuple[tuple[int, ...], Any]]
  apply_fn: Callable[[Any, jax.Array], jax.Array]
  kernel_fn: Callable[[Kernel], Kernel]


def _map_all(k: Kernel, fn: Callable[[jax.Array], jax.Array]) -> Kernel:
  """Applies a linear map of the trailing covariance axes to every field."""
  k = materialize(k)
  return k.replace(nngp=fn(k.nngp), ntk=None if k.ntk is None else fn(k.ntk),
                   cov1=fn(k.cov1), cov2=fn(k.cov2))


def lazy_input(x1: jax.Array, x2: jax.Array, compute_ntk: bool, fuse: bool = False,
               banded: bool = False, native: bool = False) -> Kernel:
  """The input state without its covariances, so the first layer can form them cheaply.

  A first :func:`Conv` then computes its output covariance directly from patch inner products
  instead of convolving the ``(H W)^2`` input covariance. With ``fuse=True``, :func:`serial`
  computes a leading ``Conv -> ABRelu -> AvgPool(window, stride=window)`` in one tiled pass
  (:func:`kip._src.kernels.fused.conv_abrelu_pool_on_inputs`) that never holds the full-resolution
  covariance; the result is the same to float rounding. With ``banded=True``, a chain of
  ``Conv``, ``ABRelu``, ``AvgPool`` and ``Dense`` ending in ``Flatten`` is computed on the band of
  pixel pairs that reaches the readout (:mod:`kip._src.kernels.banded`; same kernel to float
  rounding): after the fused first block when ``fuse`` applies too, from the inputs otherwise.
  With ``native=True`` the fused block runs as the compiled CPU kernel
  (:mod:`kip._src.kernels.native`; same sums).
  """
  if x1.ndim not in (2, 4):
    raise ValueError(f"inputs must be (n, D) or (n, H, W, C); got shape {x1.shape}.")
  return Kernel(nngp=None, ntk=jnp.zeros((), x1.dtype) if compute_ntk else None, cov1=None,
                cov2=None, x1=x1, x2=x2, fuse=bool(fuse), banded=bool(banded),
                native=bool(native))


def _tag(kernel_fn: Callable, kind: str, **hparams) -> Callable:
  """Records a layer's hyperparameters on its kernel function, for :func:`serial`'s fusion."""
  kernel_fn.hparams = dict(kind=kind, **hparams)
  return kernel_fn


def _fusable_prefix(layers: Sequence["Layer"]) -> Optional[dict]:
  """Arguments of the fused first block if ``layers`` start ``Conv, ABRelu, AvgPool(w, w)``."""
  if len(layers) < 3:
    return None
  tags = [getattr(layer.kernel_fn, "hparams", {}) for layer in layers[:3]]
  conv, act, pool = tags
  if (conv.get("kind"), act.get("kind"), pool.get("kind")) != ("conv", "abrelu", "avgpool"):
    return None
  if pool["window"] != pool["stride"]:
    return None
  return dict(filter_shape=conv["filter_shape"], W_std=conv["W_std"], b_std=conv["b_std"],
              a=act["a"], b=act["b"], window=pool["window"])


def materialize(k: Kernel) -> Kernel:
  """Forms the covariances of a lazy input state; other states pass through."""
  if not k.is_input:
    return k
  return input_kernel(k.x1, k.x2, k.ntk is not None)


def input_kernel(x1: jax.Array, x2: jax.Array, compute_ntk: bool) -> Kernel:
  """The kernel of the inputs themselves: ``K(x, x')_{ij} = <x_i, x'_j> / C``.

  Args:
    x1: ``(b1, H, W, C)`` images or ``(b1, D)`` vectors.
    x2: ``(b2, H, W, C)`` or ``(b2, D)``.
    compute_ntk: whether to carry an NTK (zero for the inputs).

  Returns:
    A :class:`Kernel` with ``S = (H, W, H, W)`` for images and ``()`` for vectors.
  """
  c = x1.shape[-1]
  if x1.ndim == 2:
    nngp = x1 @ x2.T / c
    cov1 = jnp.sum(x1 * x1, -1) / c
    cov2 = jnp.sum(x2 * x2, -1) / c
  elif x1.ndim == 4:
    nngp = jnp.einsum("aijc,bklc->abijkl", x1, x2) / c
    cov1 = jnp.einsum("aijc,aklc->aijkl", x1, x1) / c
    cov2 = jnp.einsum("aijc,aklc->aijkl", x2, x2) / c
  else:
    raise ValueError(f"inputs must be (n, D) or (n, H, W, C); got shape {x1.shape}.")
  return Kernel(nngp=nngp, ntk=jnp.zeros_like(nngp) if compute_ntk else None,
                cov1=cov1, cov2=cov2)


# ----------------------------------------------------------------------------- combinators
def serial(*layers: Layer) -> Layer:
  """Composes layers left to right, like ``stax.serial``."""
  if not layers:
    raise ValueError("serial() needs at least one layer.")
  init_fns, apply_fns, kernel_fns = zip(*layers)

  def init_fn(key, input_shape):
    params = []
    for f in init_fns:
      key, sub = jax.random.split(key)
      input_shape, p = f(sub, input_shape)
      params.append(p)
    return input_shape, tuple(params)

  def apply_fn(params, x):
    for f, p in zip(apply_fns, params):
      x = f(p, x)
    return x

  def kernel_fn(k: Kernel) -> Kernel:
    start = 0
    the_plan = None
    if k.is_input and k.banded and k.is_spatial:
      from kip._src.kernels import banded  # noqa: PLC0415  (banded imports this module)
      the_plan = banded.plan(layers)
    if k.is_input and k.fuse and k.is_spatial:
      block = _fusable_prefix(layers)
      if block is not None:
        from kip._src.kernels import fused  # noqa: PLC0415  (fused imports this module)
        k = fused.conv_abrelu_pool_on_inputs(k.x1, k.x2, k.ntk is not None, **block,
                                             native=k.native)
        start = 3
    if the_plan is not None:  # the rest of the spatial part on its band
      k = banded.through_flatten(layers, the_plan, k, start)
      start = the_plan.stop + 1
    for f in kernel_fns[start:]:
      k = f(k)
    return k

  kernel_fn.layers = tuple(layers)  # read by the engine to size banded blocks
  return Layer(init_fn, apply_fn, kernel_fn)


# ----------------------------------------------------------------------------- affine layers
def _affine(k: Kernel, linear: Callable[[jax.Array], jax.Array], W_std: float,
            b_std: Optional[float]) -> Kernel:
  r"""NTK-parameterized affine layer given its action ``linear`` on covariances.

  .. math::
     K' = W_{std}^2 \, A(K) + b_{std}^2, \qquad \Theta' = W_{std}^2 \, A(\Theta) + K'.
  """
  k = materialize(k)
  return Kernel(*affine_fields(k.nngp, k.ntk, k.cov1, k.cov2, linear, W_std, b_std))


def affine_fields(nngp, ntk, cov1, cov2, linear, W_std: float, b_std: Optional[float]):
  """:func:`_affine` on the four fields, whatever their layout (dense or the banded layout of
  :mod:`kip._src.kernels.banded`); returns ``(nngp, ntk, cov1, cov2)``."""
  b2 = 0.0 if b_std is None else b_std ** 2
  w2 = W_std ** 2
  nngp_out = w2 * linear(nngp) + b2
  ntk_out = None if ntk is None else w2 * linear(ntk) + nngp_out
  return nngp_out, ntk_out, w2 * linear(cov1) + b2, w2 * linear(cov2) + b2


def Dense(out_dim: int, W_std: float = 1.0, b_std: Optional[float] = 0.0) -> Layer:
  """Fully connected layer ``y = W_std / sqrt(D) * x w + b_std * b`` (on the channel axis).

  On spatial inputs it acts pixel-wise (a 1x1 convolution), as in neural-tangents.

  Args:
    out_dim: width of the finite network (irrelevant to the kernel).
    W_std: weight standard deviation.
    b_std: bias standard deviation, or ``None`` for no bias.
  """

  def init_fn(key, input_shape):
    kw, kb = jax.random.split(key)
    w = jax.random.normal(kw, (input_shape[-1], out_dim))
    b = jax.random.normal(kb, (out_dim,))
    return tuple(input_shape[:-1]) + (out_dim,), (w, b)

  def apply_fn(params, x):
    w, b = params
    y = W_std / math.sqrt(x.shape[-1]) * (x @ w)
    return y if b_std is None else y + b_std * b

  def kernel_fn(k):
    return _affine(k, lambda a: a, W_std, b_std)

  _tag(kernel_fn, "dense", W_std=float(W_std), b_std=None if b_std is None else float(b_std))
  return Layer(init_fn, apply_fn, kernel_fn)


def _diag_conv(a: jax.Array, fh: int, fw: int) -> jax.Array:
  """``A(K)_{(i,j),(i',j')} = 1/(fh fw) sum_{p,q} K_{(i+p, j+q),(i'+p, j'+q)}``, SAME zero padding.

  The diagonal convolution of a full spatial covariance (trailing axes ``H1, W1, H2, W2``):
  both images are shifted by the same filter offset because the filter is shared. It is
  separable, so the height and width sums are done one after the other (``fh + fw`` shifted
  adds rather than ``fh * fw``).
  """
  lead = a.ndim - 4
  h, w = a.shape[-4], a.shape[-3]
  ph, pw = fh // 2, fw // 2
  pad = [(0, 0)] * lead + [(ph, ph), (0, 0), (ph, ph), (0, 0)]
  ap = jnp.pad(a, pad)
  s = lead
  acc = sum(lax.slice_in_dim(lax.slice_in_dim(ap, p, p + h, axis=s), p, p + h, axis=s + 2)
            for p in range(fh))
  pad = [(0, 0)] * lead + [(0, 0), (pw, pw), (0, 0), (pw, pw)]
  ap = jnp.pad(acc, pad)
  acc = sum(lax.slice_in_dim(lax.slice_in_dim(ap, q, q + w, axis=s + 1), q, q + w, axis=s + 3)
            for q in range(fw))
  return acc / (fh * fw)


def _patches(x: jax.Array, fh: int, fw: int) -> jax.Array:
  """``(b, H, W, C)`` -> ``(b, H, W, fh*fw*C)`` SAME-padded patches."""
  h, w = x.shape[1], x.shape[2]
  xp = jnp.pad(x, ((0, 0), (fh // 2, fh // 2), (fw // 2, fw // 2), (0, 0)))
  return jnp.concatenate([xp[:, p:p + h, q:q + w, :] for p in range(fh) for q in range(fw)],
                         axis=-1)


def _conv_on_inputs(k: Kernel, fh: int, fw: int, W_std, b_std) -> Kernel:
  r"""First convolution straight from the inputs, equal to ``Conv`` of :func:`input_kernel`.

  .. math::
     K'_{x x'}(i, i') = \frac{W_{std}^2}{|F| C} \langle P_i(x), P_{i'}(x') \rangle + b_{std}^2,

  where ``P_i(x)`` is the zero-padded ``fh x fw x C`` patch at pixel ``i``; the NTK of the
  inputs is zero, so :math:`\Theta' = K'`.
  """
  scale = W_std ** 2 / (fh * fw * k.x1.shape[-1])
  b2 = 0.0 if b_std is None else b_std ** 2
  p1, p2 = _patches(k.x1, fh, fw), _patches(k.x2, fh, fw)
  nngp = scale * jnp.einsum("aijp,bklp->abijkl", p1, p2) + b2
  cov1 = scale * jnp.einsum("aijp,aklp->aijkl", p1, p1) + b2
  cov2 = scale * jnp.einsum("aijp,aklp->aijkl", p2, p2) + b2
  return Kernel(nngp=nngp, ntk=None if k.ntk is None else nngp, cov1=cov1, cov2=cov2)


def Conv(out_chan: int, filter_shape: Sequence[int] = (3, 3), W_std: float = 1.0,
         b_std: Optional[float] = 0.0) -> Layer:
  r"""2-D convolution, stride 1, SAME padding, NTK parameterization.

  .. math::
     K'_{x x'}(i, i') = \frac{W_{std}^2}{|F|} \sum_{p \in F} K_{x x'}(i + p, i' + p)
       + b_{std}^2,

  with zero padding outside the image and ``|F| = fh * fw`` (as ``neural_tangents.stax.Conv``
  with ``padding='SAME'``).

  Args:
    out_chan: channels of the finite network.
    filter_shape: odd ``(fh, fw)``.
    W_std: weight standard deviation.
    b_std: bias standard deviation or ``None``.
  """
  fh, fw = (int(s) for s in filter_shape)
  if fh % 2 == 0 or fw % 2 == 0 or fh < 1 or fw < 1:
    raise ValueError(f"filter_shape must be odd positive sizes for SAME padding; got "
                     f"{tuple(filter_shape)}.")

  def init_fn(key, input_shape):
    kw, kb = jax.random.split(key)
    w = jax.random.normal(kw, (fh, fw, input_shape[-1], out_chan))
    b = jax.random.normal(kb, (out_chan,))
    return tuple(input_shape[:-1]) + (out_chan,), (w, b)

  def apply_fn(params, x):
    w, b = params
    fan_in = fh * fw * x.shape[-1]
    y = lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = W_std / math.sqrt(fan_in) * y
    return y if b_std is None else y + b_std * b

  def kernel_fn(k):
    if not k.is_spatial:
      raise ValueError("Conv needs spatial (N, H, W, C) inputs; it comes after Flatten here.")
    if k.is_input:
      return _conv_on_inputs(k, fh, fw, W_std, b_std)
    return _affine(k, functools.partial(_diag_conv, fh=fh, fw=fw), W_std, b_std)

  _tag(kernel_fn, "conv", filter_shape=(fh, fw), W_std=float(W_std),
       b_std=None if b_std is None else float(b_std))
  return Layer(init_fn, apply_fn, kernel_fn)


# ----------------------------------------------------------------------------- pooling
def _pool4(a: jax.Array, window: int, stride: int) -> jax.Array:
  lead = a.ndim - 4
  if stride == window:  # crop + reshape + sum: cheaper than reduce_window, above all its VJP
    h, w = a.shape[-4], a.shape[-3]
    ho, wo = h // window, w // window
    a = a[(slice(None),) * lead + (slice(0, ho * window), slice(0, wo * window)) * 2]
    a = a.reshape(a.shape[:lead] + (ho, window, wo, window) * 2)
    return jnp.sum(a, axis=tuple(lead + i for i in (1, 3, 5, 7))) / window ** 4
  dims = (1,) * lead + (window,) * 4
  strides = (1,) * lead + (stride,) * 4
  return lax.reduce_window(a, 0.0, lax.add, dims, strides, "VALID") / window ** 4


def check_pool_size(size: int, window: int) -> None:
  """Raises the error of an ``AvgPool(window)`` on a spatial size below its window."""
  if size < window:
    raise ValueError(f"AvgPool({window}) on a spatial size {size} < {window}: the network is "
                     "too deep for this image size (use fewer pooling layers).")


def AvgPool(window: int = 2, stride: int = 1) -> Layer:
  r"""Average pooling, square ``window``, VALID padding.

  .. math::
     K'_{x x'}(I, I') = \frac{1}{|w|^2} \sum_{i \in I, i' \in I'} K_{x x'}(i, i').

  Args:
    window: side of the square pooling window.
    stride: step between windows. The default 1 is neural-tangents'
      (``stax.AvgPool(window_shape, strides=None)`` pools with unit strides), so a ported
      ``stax.AvgPool((2, 2))`` is ``AvgPool(2)``; the ConvNet presets pool with
      ``stride=window`` (``stax.AvgPool((2, 2), strides=(2, 2))`` in the KIP notebooks).
  """
  if isinstance(window, bool) or int(window) != window or window < 1:
    raise ValueError(f"AvgPool window={window!r}: use a positive int.")
  if isinstance(stride, bool) or stride is None or int(stride) != stride or stride < 1:
    raise ValueError(f"AvgPool stride={stride!r}: use a positive int (window={window} pools "
                     f"without overlap).")

  def out_size(s):
    check_pool_size(s, window)
    return (s - window) // stride + 1

  def init_fn(key, input_shape):
    n, h, w, c = input_shape
    return (n, out_size(h), out_size(w), c), ()

  def apply_fn(params, x):
    del params
    y = lax.reduce_window(x, 0.0, lax.add, (1, window, window, 1), (1, stride, stride, 1),
                          "VALID")
    return y / window ** 2

  def kernel_fn(k):
    if not k.is_spatial:
      raise ValueError("AvgPool needs spatial inputs; it comes after Flatten here.")
    out_size(k.cov1.shape[-1])
    return _map_all(k, functools.partial(_pool4, window=window, stride=stride))

  _tag(kernel_fn, "avgpool", window=int(window), stride=int(stride))
  return Layer(init_fn, apply_fn, kernel_fn)


def _spatial_diag_mean(a: jax.Array) -> jax.Array:
  """Mean of ``a[..., i, j, i, j]`` over pixels: what a Dense layer after Flatten sees."""
  h, w = a.shape[-4], a.shape[-3]
  d = jnp.diagonal(jnp.diagonal(a, axis1=-4, axis2=-2), axis1=-3, axis2=-2)
  return jnp.sum(d, axis=(-2, -1)) / (h * w)


def Flatten() -> Layer:
  r"""Flattens ``(N, H, W, C)`` to ``(N, H*W*C)``.

  The following layer's fan-in is ``H W C``, so the kernel is the mean over pixels of the
  same-pixel covariance: :math:`K' = \frac{1}{HW} \sum_i K(i, i)`.
  """

  def init_fn(key, input_shape):
    return (input_shape[0], int(math.prod(input_shape[1:]))), ()

  def apply_fn(params, x):
    return x.reshape(x.shape[0], -1)

  def kernel_fn(k):
    if k.is_input and k.is_spatial:  # mean over pixels of <x_i, x'_i>/C = <x, x'>/(HWC)
      b = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
      return input_kernel(b(k.x1), b(k.x2), k.ntk is not None)
    return _map_all(k, _spatial_diag_mean) if k.is_spatial else materialize(k)

  _tag(kernel_fn, "flatten")
  return Layer(init_fn, apply_fn, kernel_fn)


def GlobalAvgPool() -> Layer:
  r"""Mean over pixels: :math:`K' = \frac{1}{(HW)^2} \sum_{i, i'} K(i, i')`."""

  def init_fn(key, input_shape):
    return (input_shape[0], input_shape[-1]), ()

  def apply_fn(params, x):
    return jnp.mean(x, axis=(1, 2))

  def kernel_fn(k):
    if not k.is_spatial:
      raise ValueError("GlobalAvgPool needs spatial inputs.")
    return _map_all(k, lambda a: jnp.mean(a, axis=(-4, -3, -2, -1)))

  return Layer(init_fn, apply_fn, kernel_fn)


# ----------------------------------------------------------------------------- nonlinearities
def _variances(k: Kernel):
  """Per-pixel variances ``var1 (b1, *P)``, ``var2 (b2, *P)`` (``P = (H, W)`` or ``()``)."""
  if k.cov1.ndim == 5:
    d1 = jnp.diagonal(jnp.diagonal(k.cov1, axis1=-4, axis2=-2), axis1=-3, axis2=-2)
    d2 = jnp.diagonal(jnp.diagonal(k.cov2, axis1=-4, axis2=-2), axis1=-3, axis2=-2)
    return d1, d2
  return k.cov1, k.cov2


def _outer(v1: jax.Array, v2: jax.Array, cross: bool) -> jax.Array:
  """Products ``v1(i) v2(i')`` laid out like a covariance.

  ``cross=True``: ``v1 (b1, *P)``, ``v2 (b2, *P)`` -> ``(b1, b2, *P, *P)``.
  ``cross=False``: ``v1 = v2 (b, *P)`` -> ``(b, *P, *P)``.
  """
  p = v1.ndim - 1
  if cross:
    a = v1.reshape(v1.shape[:1] + (1,) + v1.shape[1:] + (1,) * p)
    b = v2.reshape((1,) + v2.shape[:1] + (1,) * p + v2.shape[1:])
  else:
    a = v1.reshape(v1.shape + (1,) * p)
    b = v2.reshape(v2.shape[:1] + (1,) * p + v2.shape[1:])
  return a * b


# Abramowitz & Stegun 4.4.46: arccos(x) = sqrt(1 - x) * sum_k a_k x^k on [0, 1], |error| <= 2e-8.
_ACOS_COEFFS = (1.5707963050, -0.2145988016, 0.0889789874, -0.0501743046, 0.0308918810,
                -0.0170881256, 0.0066700901, -0.0012624911)


def _arccos(c: jax.Array) -> jax.Array:
  """``arccos`` on ``[-1, 1]``; a polynomial below float64 (6x faster than XLA's on CPU).

  Below float64 its error (<= 2e-8 absolute, 4e-7 once evaluated in float32) is no larger than
  that of ``jnp.arccos`` in float32; float64 inputs use ``jnp.arccos``.
  """
  if c.dtype == jnp.float64:
    return jnp.arccos(c)
  x = jnp.abs(c)
  p = jnp.asarray(_ACOS_COEFFS[-1], c.dtype)
  for coeff in reversed(_ACOS_COEFFS[:-1]):
    p = p * x + coeff
  r = jnp.sqrt(jnp.maximum(1.0 - x, 0.0)) * p
  return jnp.where(c < 0, jnp.pi - r, r)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _abrelu_maps(c, a, b):
  r"""The ABReLU maps of the cosine ``c`` in ``[-1, 1]``, sharing one ``arccos``.

  Returns ``(J, D)`` with :math:`\theta = \arccos c`,

  .. math::
     J(c) = (a^2+b^2)(\sin\theta + (\pi-\theta)c) - 2ab(\sin\theta - \theta c),\qquad
     D(c) = (a^2+b^2)(\pi - \theta) + 2ab\,\theta,

  so that :math:`K' = \sqrt{K_{11}K_{22}} J / 2\pi` and :math:`\dot K = D / 2\pi`. Note
  :math:`J'(c) = D(c)`: the infinite derivatives of ``sin`` and ``arccos`` at ``c = +-1`` cancel
  in ``J``, and the custom JVP uses that closed form. ``D'`` is infinite at ``c = +-1``, where
  ``c`` is extremal in the inputs (zero tangent); it is set to 0 there, the subgradient of the
  underlying ``|angle|``, rather than NaN.
  """
  theta = _arccos(c)
  sin = jnp.sqrt(jnp.maximum(1.0 - c * c, 0.0))
  s2, ab2 = a * a + b * b, 2 * a * b
  j = s2 * (sin + (jnp.pi - theta) * c) - ab2 * (sin - theta * c)
  d = s2 * (jnp.pi - theta) + ab2 * theta
  return j, d


@_abrelu_maps.defjvp
def _abrelu_maps_jvp(a, b, primals, tangents):
  c, = primals
  t, = tangents
  j, d = _abrelu_maps(c, a, b)
  s = 1.0 - c * c
  ok = s > 0
  dtheta = jnp.where(ok, -1.0 / jnp.sqrt(jnp.where(ok, s, 1.0)), 0.0)
  return (j, d), (d * t, (2 * a * b - (a * a + b * b)) * dtheta * t)


def _elementwise(k: Kernel, fn) -> Kernel:
  """Applies a nonlinearity given ``fn(cov12, var1*var2) -> (K', Kdot or None)``."""
  k = materialize(k)
  v1, v2 = _variances(k)
  nngp, dot = fn(k.nngp, _outer(v1, v2, cross=True), k.ntk is not None)
  cov1, _ = fn(k.cov1, _outer(v1, v1, cross=False), False)
  cov2, _ = fn(k.cov2, _outer(v2, v2, cross=False), False)
  return Kernel(nngp=nngp, ntk=None if k.ntk is None else k.ntk * dot, cov1=cov1, cov2=cov2)


def abrelu_fn(cov: jax.Array, prod: jax.Array, want_dot: bool, a: float, b: float):
  """ABReLU's ``(K', Kdot or None)`` from covariances ``cov`` and variance products ``prod``.

  Entries with ``prod == 0`` (a zero-variance pixel, or a partner outside the image in the
  banded layout of :mod:`kip._src.kernels.banded`) map to ``K' = 0``.
  """
  pos = prod > 0
  norm = jnp.sqrt(jnp.where(pos, prod, 1.0))
  c = jnp.clip(cov / norm, -1.0, 1.0)
  j, d = _abrelu_maps(c, a, b)
  nngp = jnp.where(pos, norm * j, 0.0) / (2 * jnp.pi)
  return nngp, (d / (2 * jnp.pi) if want_dot else None)


def ABRelu(a: float, b: float) -> Layer:
  r"""``phi(x) = a min(x, 0) + b max(x, 0)`` (ReLU: ``a=0, b=1``; abs: ``a=-1, b=1``).

  With :math:`c = K_{12}/\sqrt{K_{11}K_{22}}` and :math:`\theta = \arccos c` (Cho & Saul 2009):

  .. math::
     K' = \frac{\sqrt{K_{11}K_{22}}}{2\pi}\big[(a^2+b^2)(\sin\theta + (\pi-\theta)\cos
     \theta) - 2ab(\sin\theta - \theta\cos\theta)\big],\quad
     \dot K = \frac{(a^2+b^2)(\pi-\theta) + 2ab\,\theta}{2\pi},\quad
     \Theta' = \Theta \odot \dot K.
  """
  a, b = float(a), float(b)

  def fn(cov, prod, want_dot):
    return abrelu_fn(cov, prod, want_dot, a, b)

  def init_fn(key, input_shape):
    return tuple(input_shape), ()

  def apply_fn(params, x):
    return a * jnp.minimum(x, 0) + b * jnp.maximum(x, 0)

  def kernel_fn(k):
    return _elementwise(k, fn)

  _tag(kernel_fn, "abrelu", a=a, b=b)
  return Layer(init_fn, apply_fn, kernel_fn)


def Relu() -> Layer:
  """Rectified linear unit, :func:`ABRelu` with ``a=0, b=1``."""
  return ABRelu(0.0, 1.0)


def LeakyRelu(alpha: float) -> Layer:
  """``max(x, alpha x)``, :func:`ABRelu` with ``a=alpha, b=1``."""
  return ABRelu(alpha, 1.0)


def Abs() -> Layer:
  """``|x|``, :func:`ABRelu` with ``a=-1, b=1``."""
  return ABRelu(-1.0, 1.0)


def Erf(a: float = 1.0, b: float = 1.0, c: float = 0.0) -> Layer:
  r"""``phi(x) = a erf(b x) + c`` (Williams 1997).

  .. math::
     K' = \frac{2a^2}{\pi}\arcsin\frac{2b^2K_{12}}{\sqrt{(1+2b^2K_{11})(1+2b^2K_{22})}} + c^2,
     \quad \dot K = \frac{4a^2b^2}{\pi}\big[(1+2b^2K_{11})(1+2b^2K_{22}) - 4b^4K_{12}^2
     \big]^{-1/2}.
  """
  a, b, c = float(a), float(b), float(c)

  def kernel_fn(k):
    k = materialize(k)
    v1, v2 = _variances(k)
    u1, u2 = 1 + 2 * b * b * v1, 1 + 2 * b * b * v2

    def nngp(cov, pu):
      x = jnp.clip(2 * b * b * cov / jnp.sqrt(pu), -1.0, 1.0)
      return 2 * a * a / jnp.pi * jnp.arcsin(x) + c * c

    def dot(cov, pu):
      return 4 * a * a * b * b / jnp.pi / jnp.sqrt(jnp.maximum(pu - 4 * b ** 4 * cov ** 2,
                                                               1e-30))

    pu12 = _outer(u1, u2, cross=True)
    out_nngp = nngp(k.nngp, pu12)
    ntk = None if k.ntk is None else k.ntk * dot(k.nngp, pu12)
    return Kernel(nngp=out_nngp, ntk=ntk, cov1=nngp(k.cov1, _outer(u1, u1, cross=False)),
                  cov2=nngp(k.cov2, _outer(u2, u2, cross=False)))

  def init_fn(key, input_shape):
    return tuple(input_shape), ()

  def apply_fn(params, x):
    return a * jax.scipy.special.erf(b * x) + c

  return Layer(init_fn, apply_fn, kernel_fn)
