"""DC's evaluation augmentation (Zhao et al., 2021), the reference ``augment`` transcribed.

The DatasetCondensation reference (``utils.py``: ``augment``, ``get_daparam``; ``main.py``)
trains the evaluation networks of a DC set on augmented batches for some settings only:

* ``get_daparam``: ``crop=4``, ``scale=0.2``, ``rotate=45``, ``noise=0.001``; strategy
  ``'crop_scale_rotate'`` when the data set is MNIST, ``'crop_noise'`` when the evaluated
  network is ``ConvNetBN`` (batch norm), ``'none'`` otherwise (Fashion-MNIST, CIFAR, SVHN
  with the instance-norm ConvNet);
* ``main.py``: a strategy other than ``'none'`` trains for 1,000 epochs instead of 300.

Per training batch, the reference computes each channel's mean :math:`\\mu_c` over the batch,
then draws *one* group per image uniformly from the strategy and applies it:

* ``crop``: the image on a canvas of side :math:`H + 2\\,\\mathrm{crop}` filled with
  :math:`\\mu_c`, cut at offsets :math:`r, c \\sim U\\{0, \\dots, 2\\,\\mathrm{crop} - 1\\}`
  (a shift by :math:`\\mathrm{crop} - r` rows, :math:`\\mathrm{crop} - c` columns);
* ``scale``: nearest-neighbour resize (``F.interpolate``'s default) to
  :math:`h = \\lfloor u_1 H \\rfloor`, :math:`w = \\lfloor u_2 H \\rfloor`,
  :math:`u_i \\sim U[1 - \\mathrm{scale}, 1 + \\mathrm{scale})` (the reference uses the
  height for both), centred on a zero canvas of side :math:`\\max(h, w, H, W)`, centre crop;
* ``rotate``: ``scipy.ndimage.rotate`` by an integer angle in
  :math:`[-\\mathrm{rotate}, \\mathrm{rotate})` degrees (cubic spline, ``reshape=True``,
  ``cval`` the mean of the :math:`\\mu_c`), centre crop;
* ``noise``: :math:`x + \\mathrm{noise} \\cdot \\varepsilon`, :math:`\\varepsilon \\sim N(0, 1)`.

This module is that function on NHWC batches. The random quantities are drawn with JAX from
the step's key (the reference draws them from NumPy's global state: same distributions, not
the same numbers); the transformation itself runs in NumPy / SciPy through
``jax.pure_callback``, so the cubic-spline rotation and PyTorch's nearest-neighbour indexing
are reproduced exactly. It is an evaluation augmentation (no gradient flows through it).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DCAugParams", "GROUPS", "augment_fn", "apply_numpy", "reference_strategy",
           "REFERENCE_AUGMENT_EPOCHS"]

GROUPS = ("crop", "scale", "rotate", "noise")
REFERENCE_AUGMENT_EPOCHS = 1000  # main.py: epoch_eval_train = 1000 with augmentation


@dataclasses.dataclass(frozen=True)
class DCAugParams:
  """Strengths and groups of DC's augmentation (the reference ``get_daparam`` values).

  Attributes:
    strategy: underscore-joined groups from :data:`GROUPS`; one is drawn per image.
    crop: maximal shift in pixels (canvas padding).
    scale: scale factors are drawn from ``U[1 - scale, 1 + scale)``.
    rotate: angles are integers drawn from ``[-rotate, rotate)`` degrees.
    noise: standard deviation of the additive Gaussian noise.
  """
  strategy: str = "crop_scale_rotate"
  crop: int = 4
  scale: float = 0.2
  rotate: int = 45
  noise: float = 0.001

  def __post_init__(self):
    groups = self.groups
    bad = [g for g in groups if g not in GROUPS]
    if not groups or bad:
      raise ValueError(f"DC augmentation strategy {self.strategy!r} has unknown group(s) "
                       f"{bad}; use an underscore-joined subset of {list(GROUPS)}, e.g. "
                       "'crop_scale_rotate'.")
    if int(self.crop) != self.crop or self.crop < 1:
      raise ValueError(f"crop={self.crop!r} must be a positive integer (pixels).")
    if not 0 <= self.scale < 1:
      raise ValueError(f"scale={self.scale!r} must lie in [0, 1).")
    if int(self.rotate) != self.rotate or self.rotate < 1:
      raise ValueError(f"rotate={self.rotate!r} must be a positive integer (degrees).")
    if not self.noise >= 0:
      raise ValueError(f"noise={self.noise!r} must be >= 0.")

  @property
  def groups(self) -> tuple[str, ...]:
    return tuple(g for g in self.strategy.split("_") if g)


def reference_strategy(dataset_name: str, model: Any = None) -> str:
  """The reference ``get_daparam`` strategy for a data set and evaluation network.

  ``'crop_noise'`` for a batch-norm ConvNet (the reference's ``ConvNetBN``), else
  ``'crop_scale_rotate'`` for MNIST, else ``'none'``.

  Args:
    dataset_name: this library's data set name (``'mnist'``, ``'fashion_mnist'``, ...).
    model: the evaluation network (a Flax module) or ``None``.
  """
  from kip._src.transfer.models import ConvNet  # local: transfer imports this module
  if isinstance(model, ConvNet) and model.norm == "batch":
    return "crop_noise"
  if str(dataset_name).lower() == "mnist":
    return "crop_scale_rotate"
  return "none"


# --------------------------------------------------------------------------- numpy transform

def _nearest_index(out_size: int, in_size: int) -> np.ndarray:
  """PyTorch's ``nearest`` source index (``F.interpolate`` without a scale factor)."""
  i = np.arange(out_size)
  if out_size == in_size:
    return i
  if out_size == 2 * in_size:
    return i >> 1
  scale = np.float32(in_size) / np.float32(out_size)
  return np.minimum(np.floor(i.astype(np.float32) * scale).astype(np.int64), in_size - 1)


def _crop(img, mean, r, c, crop):
  h, w, ch = img.shape
  canvas = np.empty((h + 2 * crop, w + 2 * crop, ch), img.dtype)
  canvas[...] = mean
  canvas[crop:crop + h, crop:crop + w] = img
  return canvas[r:r + h, c:c + w]


def _scale(img, u_h, u_w):
  h0, w0, ch = img.shape
  h, w = int(u_h * h0), int(u_w * h0)  # the reference scales both sides by shape[2]
  tmp = img[_nearest_index(h, h0)][:, _nearest_index(w, w0)]
  mhw = max(h, w, h0, w0)
  canvas = np.zeros((mhw, mhw, ch), img.dtype)
  r, c = int((mhw - h) / 2), int((mhw - w) / 2)
  canvas[r:r + h, c:c + w] = tmp
  r, c = int((mhw - h0) / 2), int((mhw - w0) / 2)
  return canvas[r:r + h0, c:c + w0]


def _rotate(img, angle, cval):
  from scipy.ndimage import rotate
  h, w, _ = img.shape
  out = rotate(img, angle=float(angle), axes=(0, 1), cval=cval)
  r, c = int((out.shape[0] - h) / 2), int((out.shape[1] - w) / 2)
  return out[r:r + h, c:c + w]


def apply_numpy(x: np.ndarray, choice: np.ndarray, offsets: np.ndarray, factors: np.ndarray,
                angles: np.ndarray, eps: np.ndarray, params: DCAugParams) -> np.ndarray:
  """The reference ``augment`` on an NHWC batch, with its random draws given.

  Args:
    x: ``(n, H, W, C)`` images.
    choice: ``(n,)`` index into ``params.groups`` of the group applied to each image.
    offsets: ``(n, 2)`` crop offsets ``r, c`` in ``[0, 2 * crop)``.
    factors: ``(n, 2)`` scale draws ``u_1, u_2`` in ``[1 - scale, 1 + scale)``.
    angles: ``(n,)`` integer rotation angles in degrees.
    eps: ``(n, H, W, C)`` standard normal noise.
    params: the strengths and groups.

  Returns:
    The augmented ``(n, H, W, C)`` batch (a new array).
  """
  x = np.array(x, copy=True)
  mean = x.mean(axis=(0, 1, 2))  # per channel, over the batch, before any change
  cval = float(np.mean(mean))
  groups = params.groups
  for i in range(x.shape[0]):
    g = groups[int(choice[i])]
    if g == "crop":
      x[i] = _crop(x[i], mean, int(offsets[i, 0]), int(offsets[i, 1]), int(params.crop))
    elif g == "scale":
      x[i] = _scale(x[i], float(factors[i, 0]), float(factors[i, 1]))
    elif g == "rotate":
      x[i] = _rotate(x[i], int(angles[i]), cval)
    else:
      x[i] = x[i] + params.noise * eps[i]
  return x


# --------------------------------------------------------------------------- training-time fn

def _draw(key: jax.Array, x: jax.Array, params: DCAugParams):
  n = x.shape[0]
  k_choice, k_off, k_fac, k_ang, k_eps = jax.random.split(key, 5)
  choice = jax.random.randint(k_choice, (n,), 0, len(params.groups))
  offsets = jax.random.randint(k_off, (n, 2), 0, 2 * int(params.crop))
  factors = jax.random.uniform(k_fac, (n, 2), jnp.float32, 1 - params.scale, 1 + params.scale)
  angles = jax.random.randint(k_ang, (n,), -int(params.rotate), int(params.rotate))
  eps = jax.random.normal(k_eps, x.shape, x.dtype)
  return choice, offsets, factors, angles, eps


@functools.lru_cache(maxsize=None)
def augment_fn(strategy: str = "crop_scale_rotate", crop: int = 4, scale: float = 0.2,
               rotate: int = 45, noise: float = 0.001) -> Callable[[jax.Array, jax.Array],
                                                                   jax.Array]:
  """Training-time DC augmentation ``f(key, x) -> x'`` for ``(n, H, W, C)`` batches.

  jit- and vmap-compatible (the transform is a host callback, run batch by batch under
  ``vmap``); one function per setting, so cached trainers are reused.

  Raises:
    ValueError: an unknown group or an invalid strength.
  """
  params = DCAugParams(strategy, crop, scale, rotate, noise)

  def host(x, choice, offsets, factors, angles, eps):
    return apply_numpy(np.asarray(x), np.asarray(choice), np.asarray(offsets),
                       np.asarray(factors), np.asarray(angles), np.asarray(eps),
                       params).astype(x.dtype)

  def f(key: jax.Array, x: jax.Array) -> jax.Array:
    draws = _draw(key, x, params)
    return jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, x.dtype), x, *draws,
                             vmap_method="sequential")

  f.params = params
  return f
