"""Differentiable Siamese Augmentation (DSA) in JAX, for NHWC image batches.

Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021.

Contract. An augmentation *strategy* is an underscore-joined list of groups drawn from
``color``, ``crop``, ``cutout``, ``flip``, ``scale``, ``rotate`` (``'none'`` is the identity).
Randomness is split from its use so that two batches can be transformed identically
("siamese"):

* :func:`sample_params` ``(key, strategy, batch_shape) -> AugParams`` draws every random
  quantity once;
* :func:`apply` ``(x, params) -> x'`` is a deterministic function of the images, differentiable
  with respect to ``x`` (translations, scalings and rotations are affine grids read with bilinear
  sampling written in ``jnp``; cutout is a multiplicative mask; flips are reversals);
* :func:`augment_fn` ``(strategy) -> f(key, x)`` is the training-time convenience.

Semantics follow the reference ``DiffAugment`` / ``ParamDiffAug`` (``aug_mode='S'``):

* *one* group is drawn uniformly from the strategy's list per call and only that group is
  applied (``color`` is brightness, then saturation, then contrast). ``mode='multiple'``
  (reference ``aug_mode='M'``) applies every group in order instead.
* ``batch_shape=()`` is the reference's *batch mode* (``seed != -1``): one parameter set is shared
  by every image of the batch, whatever its size, which is how DSA transforms a real batch of 256
  and a synthetic batch of ``ipc`` images with the same transformation inside the matching loss.
* ``batch_shape=(n,)`` draws one parameter set per image (reference ``seed=-1``), as used when
  training a network on the synthetic set; the group is still one per call.

Per-group formulas, with ``u ~ U[0, 1)`` and the :class:`AugmentConfig` ratios:

* brightness ``x + (u - 1/2) * brightness``; saturation ``(x - m_c) * (u * saturation) + m_c``
  with ``m_c`` the mean over channels; contrast ``(x - m) * (u + contrast) + m`` with ``m`` the
  per-image mean over ``H, W, C``.
* crop: integer translation by ``t in {-s, ..., s}``, ``s = int(H * ratio_crop_pad + 0.5)``
  (likewise for ``W``), zero fill.
* cutout: a ``int(H * ratio_cutout + 0.5)`` square (clipped at the border) set to zero.
* flip: left-right with probability ``prob_flip``.
* scale: affine ``diag(s_x, s_y)``, ``s ~ U[1/ratio_scale, ratio_scale)``; rotate: angle
  ``~ U[-ratio_rotate, ratio_rotate)`` degrees. Both use PyTorch's ``affine_grid`` /
  ``grid_sample`` conventions (normalised coordinates, ``align_corners=False``, zero padding).

Cost: the bilinear reads are contractions over ``H`` and ``W``, ``O(n H W (H + W) C)`` per
call instead of a gather; negligible next to the networks at DC/DSA/DM image sizes (<= 32).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import struct

__all__ = [
    "AugmentConfig",
    "AugParams",
    "DEFAULT_STRATEGY",
    "GROUPS",
    "apply",
    "augment_fn",
    "parse_strategy",
    "sample_params",
]

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
GROUPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
_MODES = ("single", "multiple")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Strengths of the DSA transformations (the reference ``ParamDiffAug`` defaults).

  Attributes:
    mode: ``'single'`` (one group per call, reference ``aug_mode='S'``, the DSA default) or
      ``'multiple'`` (every group in order, reference ``aug_mode='M'``).
    prob_flip: probability of a left-right flip.
    ratio_scale: scale factors are drawn from ``U[1/ratio_scale, ratio_scale)`` per axis.
    ratio_rotate: rotation angles are drawn from ``U[-ratio_rotate, ratio_rotate)`` degrees.
    ratio_crop_pad: maximal translation as a fraction of the side (rounded to pixels).
    ratio_cutout: side of the cut-out square as a fraction of the image side.
    brightness: brightness shift range (``(u - 1/2) * brightness``).
    saturation: saturation factor range (``u * saturation``).
    contrast: contrast factor offset (``u + contrast``).
  """
  mode: str = "single"
  prob_flip: float = 0.5
  ratio_scale: float = 1.2
  ratio_rotate: float = 15.0
  ratio_crop_pad: float = 0.125
  ratio_cutout: float = 0.5
  brightness: float = 1.0
  saturation: float = 2.0
  contrast: float = 0.5

  def __post_init__(self):
    if self.mode not in _MODES:
      raise ValueError(f"AugmentConfig.mode={self.mode!r}; use one of {_MODES}.")
    if self.ratio_scale < 1.0:
      raise ValueError(f"AugmentConfig.ratio_scale={self.ratio_scale} must be >= 1 "
                       "(factors are drawn from [1/ratio, ratio)).")
    for name in ("prob_flip", "ratio_crop_pad", "ratio_cutout"):
      v = getattr(self, name)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f"AugmentConfig.{name}={v} must lie in [0, 1].")


@struct.dataclass
class AugParams:
  """Random parameters of one augmentation call; a pytree (arrays are leaves).

  ``B`` below is ``batch_shape``: ``()`` (shared by the whole batch, siamese "batch mode") or
  ``(n,)`` (one set per image).

  Attributes:
    op: ``()`` int32 index into ``strategy`` of the group applied (``mode='single'``).
    brightness: ``B`` additive shift.
    saturation: ``B`` saturation factor.
    contrast: ``B`` contrast factor.
    crop: ``B + (2,)`` uniforms in ``[0, 1)`` mapped to integer row/column translations by
      :func:`apply` (the pixel range depends on the image size).
    cutout: ``B + (2,)`` uniforms in ``[0, 1)`` mapped to the row/column centre of the cut-out.
    flip: ``B`` bool, flip left-right.
    scale: ``B + (2,)`` scale factors ``(s_x, s_y)`` (width, height) of the affine grid.
    angle: ``B`` rotation angle in radians.
    strategy: static tuple of group names.
    config: static :class:`AugmentConfig`.
  """
  op: jax.Array
  brightness: jax.Array
  saturation: jax.Array
  contrast: jax.Array
  crop: jax.Array
  cutout: jax.Array
  flip: jax.Array
  scale: jax.Array
  angle: jax.Array
  strategy: tuple[str, ...] = struct.field(pytree_node=False, default=())
  config: AugmentConfig = struct.field(pytree_node=False, default=AugmentConfig())

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return tuple(self.brightness.shape)


def parse_strategy(strategy: str | Sequence[str] | None) -> tuple[str, ...]:
  """``'color_crop'`` -> ``('color', 'crop')``; ``'none'``, ``'None'``, ``''`` or None -> ``()``.

  Repeated groups are kept (they weight the draw, as in the reference).
  """
  if strategy is None:
    return ()
  if isinstance(strategy, str):
    if strategy in ("", "none", "None"):
      return ()
    groups = tuple(strategy.split("_"))
  else:
    groups = tuple(strategy)
  bad = [g for g in groups if g not in GROUPS]
  if bad:
    raise ValueError(f"unknown DSA augmentation group(s) {bad} in strategy {strategy!r}; "
                     f"use '_'-joined names from {GROUPS} (default {DEFAULT_STRATEGY!r}) or 'none'.")
  return groups


def sample_params(key: jax.Array, strategy: str | Sequence[str] = DEFAULT_STRATEGY,
                  batch_shape: Sequence[int] = (), config: AugmentConfig = AugmentConfig()
                  ) -> AugParams:
  """Draws the random parameters of one DSA call.

  Args:
    key: PRNG key.
    strategy: augmentation strategy, e.g. ``'color_crop_cutout_flip_scale_rotate'``.
    batch_shape: ``()`` for one parameter set shared by every image of any batch (siamese batch
      mode, used inside the DSA / DM matching losses) or ``(n,)`` for one set per image.
    config: transformation strengths.

  Returns:
    :class:`AugParams`; pass the same object to :func:`apply` on two batches to transform them
    identically.
  """
  groups = parse_strategy(strategy)
  batch_shape = tuple(int(b) for b in batch_shape)
  if len(batch_shape) > 1:
    raise ValueError(f"batch_shape={batch_shape}; use () (shared) or (n,) (per image).")
  # One uniform draw for everything: fewer RNG ops to compile inside jitted steps.
  size = math.prod(batch_shape)
  u_all = jax.random.uniform(key, (1 + 11 * size,), jnp.float32)
  u = u_all[1:].reshape(batch_shape + (11,))
  r = config.ratio_scale
  max_angle = config.ratio_rotate / 180.0 * math.pi
  op = jnp.minimum(jnp.floor(u_all[0] * max(len(groups), 1)), max(len(groups), 1) - 1)
  return AugParams(
      op=op.astype(jnp.int32),
      brightness=(u[..., 0] - 0.5) * config.brightness,
      saturation=u[..., 1] * config.saturation,
      contrast=u[..., 2] + config.contrast,
      crop=u[..., 3:5],
      cutout=u[..., 5:7],
      flip=u[..., 7] < config.prob_flip,
      scale=u[..., 8:10] * (r - 1.0 / r) + 1.0 / r,
      angle=(u[..., 10] - 0.5) * 2.0 * max_angle,
      strategy=groups,
      config=config,
  )


def apply(x: jax.Array, params: AugParams) -> jax.Array:
  """Applies the augmentation described by ``params`` to ``x``.

  Differentiable with respect to ``x`` (not with respect to the parameters).

  Args:
    x: ``(n, H, W, C)`` images.
    params: from :func:`sample_params`; its ``batch_shape`` must be ``()`` or ``(n,)``.

  Returns:
    ``(n, H, W, C)`` augmented images.
  """
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"x must be (n, H, W, C); got shape {x.shape}.")
  if params.batch_shape not in ((), (x.shape[0],)):
    raise ValueError(f"params were drawn for batch_shape={params.batch_shape} but x has "
                     f"{x.shape[0]} images; draw them with batch_shape=() (shared) or "
                     f"({x.shape[0]},).")
  if not params.strategy:
    return x
  p = _with_batch_axis(params)
  branches = [functools.partial(_GROUP_FNS[g], p=p) for g in params.strategy]
  if params.config.mode == "multiple":
    for f in branches:
      x = f(x)
    return x
  if len(branches) == 1:
    return branches[0](x)
  return jax.lax.switch(params.op, branches, x)


def augment_fn(strategy: str | Sequence[str] = DEFAULT_STRATEGY,
               config: AugmentConfig = AugmentConfig()) -> Callable[[jax.Array, jax.Array],
                                                                     jax.Array]:
  """Training-time augmentation ``f(key, x) -> x'`` with one parameter set per image.

  One group is drawn per call (``mode='single'``), as the reference ``DiffAugment(x, strategy,
  seed=-1)`` does when a network is trained on a synthetic set.
  """
  groups = parse_strategy(strategy)

  def f(key: jax.Array, x: jax.Array) -> jax.Array:
    return apply(x, sample_params(key, groups, (x.shape[0],), config))

  return f


# --------------------------------------------------------------------------- groups

def _with_batch_axis(params: AugParams) -> AugParams:
  """Gives shared (batch-mode) parameters a leading axis of size 1 that broadcasts over the
  batch, so one set of sampling weights serves every image; ``op`` stays a scalar."""
  if params.batch_shape:
    return params
  op = params.op
  params = jax.tree_util.tree_map(lambda a: a[None], params)
  return params.replace(op=op)


def _color(x, p):
  x = x + p.brightness[:, None, None, None].astype(x.dtype)
  m = jnp.mean(x, axis=3, keepdims=True)
  x = (x - m) * p.saturation[:, None, None, None].astype(x.dtype) + m
  m = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - m) * p.contrast[:, None, None, None].astype(x.dtype) + m


def _crop(x, p):
  _, h, w, _ = x.shape
  m = p.crop.shape[0]  # 1 (shared) or n
  sh = int(h * p.config.ratio_crop_pad + 0.5)
  sw = int(w * p.config.ratio_crop_pad + 0.5)
  th = jnp.floor(p.crop[:, 0] * (2 * sh + 1)) - sh
  tw = jnp.floor(p.crop[:, 1] * (2 * sw + 1)) - sw
  rows = jnp.arange(h, dtype=jnp.float32)[None, :, None] + th[:, None, None]
  cols = jnp.arange(w, dtype=jnp.float32)[None, None, :] + tw[:, None, None]
  rows = jnp.broadcast_to(rows, (m, h, w))
  cols = jnp.broadcast_to(cols, (m, h, w))
  return _bilinear(x, rows, cols)  # integer coordinates: an exact shift with zero fill


def _cutout(x, p):
  _, h, w, _ = x.shape
  ch = int(h * p.config.ratio_cutout + 0.5)
  cw = int(w * p.config.ratio_cutout + 0.5)
  oh = jnp.floor(p.cutout[:, 0] * (h + (1 - ch % 2))).astype(jnp.int32) - ch // 2
  ow = jnp.floor(p.cutout[:, 1] * (w + (1 - cw % 2))).astype(jnp.int32) - cw // 2
  r = jnp.arange(h)[None, :]
  c = jnp.arange(w)[None, :]
  in_r = (r >= oh[:, None]) & (r < oh[:, None] + ch)
  in_c = (c >= ow[:, None]) & (c < ow[:, None] + cw)
  keep = ~(in_r[:, :, None] & in_c[:, None, :])
  return x * keep[..., None].astype(x.dtype)


def _flip(x, p):
  return jnp.where(p.flip[:, None, None, None], x[:, :, ::-1, :], x)


def _scale(x, p):
  sx, sy = p.scale[:, 0], p.scale[:, 1]
  z = jnp.zeros_like(sx)
  theta = jnp.stack([jnp.stack([sx, z, z], -1), jnp.stack([z, sy, z], -1)], -2)
  return _affine(x, theta)


def _rotate(x, p):
  c, s = jnp.cos(p.angle), jnp.sin(p.angle)
  z = jnp.zeros_like(c)
  theta = jnp.stack([jnp.stack([c, -s, z], -1), jnp.stack([s, c, z], -1)], -2)
  return _affine(x, theta)


_GROUP_FNS = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip,
              "scale": _scale, "rotate": _rotate}


# --------------------------------------------------------------------------- sampling

def _affine(x: jax.Array, theta: jax.Array) -> jax.Array:
  """``grid_sample(x, affine_grid(theta))`` with ``align_corners=False`` and zero padding.

  Output pixel ``(i, j)`` has normalised coordinates ``x_n = (2j + 1) / W - 1``,
  ``y_n = (2i + 1) / H - 1``; it reads the input at ``theta @ (x_n, y_n, 1)``.

  Args:
    x: ``(n, H, W, C)``.
    theta: ``(m, 2, 3)``, ``m`` in ``{1, n}``; row 0 gives the source ``x`` (width)
      coordinate, row 1 ``y``.
  """
  _, h, w, _ = x.shape
  xn = (2.0 * jnp.arange(w, dtype=jnp.float32) + 1.0) / w - 1.0
  yn = (2.0 * jnp.arange(h, dtype=jnp.float32) + 1.0) / h - 1.0
  gx = xn[None, None, :]
  gy = yn[None, :, None]
  t = theta.astype(jnp.float32)[:, :, :, None, None]
  src_x = t[:, 0, 0] * gx + t[:, 0, 1] * gy + t[:, 0, 2]
  src_y = t[:, 1, 0] * gx + t[:, 1, 1] * gy + t[:, 1, 2]
  cols = ((src_x + 1.0) * w - 1.0) / 2.0
  rows = ((src_y + 1.0) * h - 1.0) / 2.0
  return _bilinear(x, rows, cols)


def _bilinear(x: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """Bilinear read of ``x`` at fractional pixel positions, zero outside the image.

  Written with separable "tent" weights instead of gathers,
  :math:`y_p = \\sum_{r,c} \\max(0, 1 - |\\rho_p - r|)\\,\\max(0, 1 - |\\gamma_p - c|)\\, x_{rc}`,
  which equals ``grid_sample(mode='bilinear', padding_mode='zeros')``, is exact for integer
  positions, and lowers to two contractions (fast to compile and to differentiate).

  Args:
    x: ``(n, H, W, C)``.
    rows, cols: ``(m, H', W')`` source positions in pixels, ``m = n`` (one grid per image) or
      ``m = 1`` (one grid shared by the batch).

  Returns:
    ``(n, H', W', C)``.
  """
  n, h, w, ch = x.shape
  m = rows.shape[0]
  out_shape = rows.shape[1:]
  rho = rows.reshape(m, -1, 1)
  gam = cols.reshape(m, -1, 1)
  wr = jnp.maximum(0.0, 1.0 - jnp.abs(rho - jnp.arange(h, dtype=rho.dtype))).astype(x.dtype)
  wc = jnp.maximum(0.0, 1.0 - jnp.abs(gam - jnp.arange(w, dtype=gam.dtype))).astype(x.dtype)
  hi = jax.lax.Precision.HIGHEST  # no TF32 rounding of the images on GPUs
  if m == 1:
    t = jnp.einsum("pc,nrcd->nprd", wc[0], x, precision=hi)
    y = jnp.einsum("pr,nprd->npd", wr[0], t, precision=hi)
  else:
    t = jnp.einsum("npc,nrcd->nprd", wc, x, precision=hi)
    y = jnp.einsum("npr,nprd->npd", wr, t, precision=hi)
  return y.reshape((n,) + out_shape + (ch,))
