"""A 2-D convolution whose filter derivative is a patch-matrix product (fast on XLA:CPU).

XLA:CPU computes a convolution's forward pass and its input gradient at close to matrix-product
speed, but its filter gradient (the "backprop filter" convolution) can be far slower. Measured
on this project's 2-core CPU (jax 0.10.2), batch 256: for the first convolution of DC's
ConvNet-3 on grey images (1 -> 128 channels, 3x3, 28x28 input padded by 3) the filter
gradient took 1,020 ms against 50 ms for the forward pass, about half of a whole training step.

:func:`conv_general_dilated` is a drop-in for ``lax.conv_general_dilated`` (as Flax's
``nn.Conv(conv_general_dilated=...)`` calls it) with the same forward pass. Its derivative
(a custom JVP) is

.. math::

   \\dot y = \\mathrm{conv}(\\dot x, W) + P(x)\\, \\mathrm{vec}(\\dot W),

with :math:`P(x)` the :math:`(B H_o W_o) \\times (k_h k_w C)` patch matrix of the padded input
(row :math:`(b, h, w)` holds :math:`\\tilde x_{b,\\, s h + i,\\, s w + j,\\, c}` for every
kernel offset :math:`(i, j)` and channel :math:`c`). Reverse mode transposes the second term
into the filter gradient :math:`\\partial L / \\partial W = P(x)^\\top G` (one matrix product
with the output cotangent :math:`G`) while the first stays XLA's input gradient. Where
:math:`P(x)` would exceed ``_PATCH_BYTES`` the product is taken one kernel offset at a time.
The rule is a JVP in differentiable JAX operations, so forward mode (the empirical NTK's
``jax.jvp``), reverse mode and their compositions (DC / DSA differentiate through a network's
parameter gradient) all work.

Which convolutions take it (``impl='auto'``): on CPU backends, plain NHWC/HWIO convolutions
(no dilation, no feature groups) with kernels of at most 3x3 whose patch matrix fits in
``_PATCH_BYTES``; everything else calls ``lax.conv_general_dilated`` unchanged. Measured on
the 2-core CPU, one SGD step (forward + gradient + update) with XLA's rule / with 'auto':
DC ConvNet-3 (width 128, batch 256, 28x28 grey; with ``models.InstanceNorm`` on the 'auto'
side and Flax's ``GroupNorm`` on the other) 2,072-2,224 / 853-865 ms, and 924-1,055 ms with
only the first convolution on this rule; width 32: 198 / 168 ms;
3-channel 32x32: 1,008 / 887 ms; ResNet: 956 / 920 ms. With 5x5 kernels the rule was slower
(LeNet 44 / 51 ms, AlexNet 688 / 730 ms), so 'auto' leaves them to XLA. ``impl='patches'``
forces this rule, ``impl='xla'`` never uses it.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

__all__ = ["conv_general_dilated", "patch_product", "IMPLS"]

IMPLS = ("auto", "patches", "xla")
_NHWC = ("NHWC", "HWIO", "NHWC")
# Largest patch matrix built at once (bytes); above it the product is taken one kernel offset
# at a time.
_PATCH_BYTES = 512 * 2**20
_AUTO_MAX_KERNEL = 3  # 'auto' keeps XLA's rule for larger kernels (measured slower with it)


def _explicit_padding(padding, in_hw: Sequence[int], kernel_hw: Sequence[int],
                      strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
  if isinstance(padding, str):
    return tuple(tuple(int(v) for v in p) for p in
                 lax.padtype_to_pads(tuple(in_hw), tuple(kernel_hw), tuple(strides), padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _xla(x, w, strides, pads):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)


def _shifted(xp: jax.Array, i: int, j: int, out_hw: tuple[int, int],
             strides: tuple[int, int]) -> jax.Array:
  """The input values that kernel offset ``(i, j)`` meets: ``xp[:, s*h + i, s*w + j, :]``."""
  (ho, wo), (sh, sw) = out_hw, strides
  return lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + sh * (ho - 1) + 1,
                                      j + sw * (wo - 1) + 1, xp.shape[3]), (1, sh, sw, 1))


def _out_hw(in_hw, kernel_hw, strides, pads) -> tuple[int, int]:
  return tuple((n + lo + hi - k) // st + 1
               for n, k, st, (lo, hi) in zip(in_hw, kernel_hw, strides, pads))


def _patch_bytes(x_shape, w_shape, itemsize: int, strides, pads) -> int:
  """Bytes of the patch matrix :math:`P(x)`: :math:`B H_o W_o \\times k_h k_w C` entries."""
  ho, wo = _out_hw(x_shape[1:3], w_shape[:2], strides, pads)
  return x_shape[0] * ho * wo * w_shape[0] * w_shape[1] * w_shape[2] * itemsize


def patch_product(x: jax.Array, w: jax.Array, strides: tuple[int, int],
                  pads: tuple[tuple[int, int], ...]) -> jax.Array:
  """The convolution of ``x`` with ``w`` as patch matrix times kernel, :math:`P(x) W`.

  Equal to ``lax.conv_general_dilated(x, w, strides, pads)`` (NHWC/HWIO); written as matrix
  products so that its transpose in ``w`` is :math:`P(x)^\\top G`. Above ``_PATCH_BYTES``
  the products are taken one kernel offset at a time.

  Args:
    x: ``(B, H, W, C)``.
    w: ``(kh, kw, C, D)``.
    strides: ``(sh, sw)``.
    pads: explicit ``((top, bottom), (left, right))`` padding.

  Returns:
    ``(B, Ho, Wo, D)``.
  """
  kh, kw, c, d = w.shape
  b = x.shape[0]
  ho, wo = _out_hw(x.shape[1:3], (kh, kw), strides, pads)
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  offsets = [(i, j) for i in range(kh) for j in range(kw)]
  rows = b * ho * wo
  if _patch_bytes(x.shape, w.shape, x.dtype.itemsize, strides, pads) <= _PATCH_BYTES:
    patches = jnp.concatenate([_shifted(xp, i, j, (ho, wo), strides) for i, j in offsets],
                              axis=-1)
    out = jnp.dot(patches.reshape(rows, kh * kw * c), w.reshape(kh * kw * c, d))
  else:
    out = sum(jnp.dot(_shifted(xp, i, j, (ho, wo), strides).reshape(rows, c), w[i, j])
              for i, j in offsets)
  return out.reshape(b, ho, wo, d)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, pads):
  return _xla(x, w, strides, pads)


def _conv_jvp(strides, pads, primals, tangents):
  x, w = primals
  dx, dw = tangents
  y = _xla(x, w, strides, pads)
  dy = None
  if not isinstance(dx, SymbolicZero):
    dy = _xla(dx, w, strides, pads)
  if not isinstance(dw, SymbolicZero):
    dyw = patch_product(x, dw, strides, pads)
    dy = dyw if dy is None else dy + dyw
  if dy is None:  # neither input carries a tangent
    dy = jnp.zeros_like(y)
  return y, dy


_conv.defjvp(_conv_jvp, symbolic_zeros=True)


def _patch_rule_geometry(impl: str, lhs, rhs, padding, window_strides, dimension_numbers,
                         lhs_dilation, rhs_dilation, feature_group_count, batch_group_count):
  """``(strides, pads)`` where the convolution takes the patch rule under ``impl``, else None."""
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} is not a convolution implementation; use one of "
                     f"{list(IMPLS)}.")
  if impl == "xla":
    return None
  plain = (lhs.ndim == 4 and rhs.ndim == 4 and dimension_numbers is not None
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
           and all(int(v) == 1 for v in (lhs_dilation or (1, 1)))
           and all(int(v) == 1 for v in (rhs_dilation or (1, 1)))
           and feature_group_count == 1 and batch_group_count == 1)
  if impl == "patches" and not plain:
    raise ValueError("impl='patches' supports NHWC/HWIO convolutions without dilation or "
                     "feature groups only; use impl='auto' or 'xla'.")
  if not plain:
    return None
  strides = tuple(int(s) for s in window_strides)
  pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], strides)
  if impl == "patches":
    return strides, pads
  auto = (jax.default_backend() == "cpu" and max(rhs.shape[:2]) <= _AUTO_MAX_KERNEL
          and _patch_bytes(lhs.shape, rhs.shape, jnp.dtype(lhs.dtype).itemsize, strides,
                           pads) <= _PATCH_BYTES)
  return (strides, pads) if auto else None


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None, *,
                         impl: str = "auto"):
  """``lax.conv_general_dilated`` with the filter derivative as a patch-matrix product.

  Same arguments and forward values as ``lax.conv_general_dilated``. ``impl``: ``'auto'``
  (this rule on CPU backends for plain NHWC/HWIO convolutions with kernels of at most 3x3
  whose patch matrix fits in ``_PATCH_BYTES``, XLA's otherwise), ``'patches'`` (always; an
  error for dilated or grouped convolutions) or ``'xla'`` (``lax.conv_general_dilated``
  unchanged). A ``precision`` or ``preferred_element_type`` always takes XLA's rule.
  """
  geometry = None
  if precision is None and preferred_element_type is None:
    geometry = _patch_rule_geometry(impl, lhs, rhs, padding, window_strides, dimension_numbers,
                                    lhs_dilation, rhs_dilation, feature_group_count,
                                    batch_group_count)
  if geometry is None:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  return _conv(lhs, rhs, *geometry)
