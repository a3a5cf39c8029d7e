"""Blocked, memory-bounded and device-sharded evaluation of layer kernels.

A ConvNet kernel keeps a pixel-by-pixel covariance per image pair (``(H W)^2`` numbers, 614,656
for 28x28 images), so the ``n1 x n2`` kernel matrix is evaluated in ``b1 x b2`` blocks whose
size comes from a memory budget. Each block is wrapped in :func:`jax.checkpoint`, so reverse
mode stores only the block's inputs and recomputes its covariances during the backward pass:
the gradient with respect to ``x1`` never holds more than one block's covariances at a time.
With several devices the columns (``x2``) are sharded over them with ``shard_map``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kip._src.kernels import layers as L

__all__ = ["KernelFn", "kernel_function", "block_shape", "DEFAULT_MEMORY_BUDGET"]

DEFAULT_MEMORY_BUDGET = 2 * 1024 ** 3
# Live float arrays per pair per covariance entry during a block's forward + backward pass.
# Measured with ``memory_analysis()`` on the CPU backend for ConvNet-3 NTK on 28x28 inputs
# (see tests/test_kernels.py::test_block_memory_within_budget).
_ARRAYS_PER_ENTRY = 10

Get = Union[str, Sequence[str]]
_VALID_GET = ("nngp", "ntk")


@functools.lru_cache(maxsize=None)
def _namedtuple(fields: tuple[str, ...]):
  return collections.namedtuple("Kernels", fields)


def block_shape(n1: int, n2: int, bytes_per_pair: int, memory_budget: int) -> tuple[int, int]:
  """Chooses ``(b1, b2)`` with ``(b1 b2 + b1 + b2) * bytes_per_pair <= memory_budget``.

  A block computes ``b1 b2`` cross covariances and ``b1 + b2`` self covariances; for a fixed
  number of pairs the overhead ``1/b1 + 1/b2`` is least for square blocks, so ``b1 ~ b2``
  unless one side is short.

  Raises:
    ValueError: not even one pair fits the budget.
  """
  pairs = memory_budget // max(bytes_per_pair, 1)
  if pairs < 3:
    raise ValueError(f"memory_budget={memory_budget} bytes fits no block: one pair needs about "
                     f"{3 * bytes_per_pair} bytes. Raise memory_budget.")
  side = max(1, int(math.isqrt(pairs)) - 1)
  b1 = min(n1, side)
  b2 = min(n2, max(1, (pairs - b1) // (b1 + 1)))
  if b2 == n2:  # columns fit entirely: give the rest to rows
    b1 = min(n1, max(1, (pairs - b2) // (b2 + 1)))
  return int(b1), int(b2)


def _shard_map():
  if hasattr(jax, "shard_map"):
    return jax.shard_map
  from jax.experimental.shard_map import shard_map  # jax < 0.6
  return shard_map


def _pad_rows(x: jax.Array, multiple: int) -> jax.Array:
  extra = (-x.shape[0]) % multiple
  if extra == 0:
    return x
  # Repeating a real row (not zeros) keeps padded pairs well conditioned under autodiff.
  return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)], axis=0)


@dataclasses.dataclass(frozen=True, eq=False)
class KernelFn:
  """An infinite-width kernel with the neural-tangents signature ``kernel_fn(x1, x2, get)``.

  Attributes:
    layer: the :class:`~kip.kernels.Layer` (``serial`` of layers) it evaluates.
    spec: JSON-serialisable description (architecture and hyperparameters), for provenance.
    flatten_inputs: feed ``(n, H*W*C)`` vectors (fully connected networks) instead of images.
    memory_budget: bytes one block may use (forward and backward); sets the block size.
    devices: devices to shard columns over; ``None`` uses all devices of the default backend.
    fused: compute a leading ``Conv -> ABRelu -> AvgPool(window, stride=window)`` block in
      one tiled pass that never forms its full-resolution covariance
      (:mod:`kip._src.kernels.fused`; same kernel to float rounding). ``True``: wherever the
      network starts so; ``False``: always the layer-by-layer reference path; ``None``
      (default): fused on CPU devices, where it was measured to be faster, reference elsewhere.
    banded: compute a network whose spatial part (``Conv``, ``ABRelu``, ``AvgPool``, ``Dense``)
      ends in ``Flatten`` on the band of pixel pairs that reaches the readout
      (:mod:`kip._src.kernels.banded`; same kernel to float rounding, a fraction of the
      covariance entries). With ``fused`` too, the first block is fused and the layers after
      it run on the band. ``None`` (default): follow ``fused`` (so ``fused=False`` is the plain
      reference path).
    native: compute the fused first block with the compiled CPU kernel
      (:mod:`kip._src.kernels.native`, built on first use with the system C++ compiler; same
      sums and VJP as the XLA fused path to float rounding). ``True``: wherever the block is
      fused (an error if the kernel cannot be built); ``False``: the XLA fused path; ``None``
      (default): on CPU devices when the kernel builds, float32 / float64 inputs. The compiled
      kernel has first-order reverse mode only (``jax.grad``, ``jax.vjp``); for forward mode
      or second derivatives of the fused block use ``native=False``.
  """
  layer: L.Layer
  spec: Mapping[str, Any]
  flatten_inputs: bool = False
  memory_budget: int = DEFAULT_MEMORY_BUDGET
  devices: Optional[tuple[Any, ...]] = None
  fused: Optional[bool] = None
  banded: Optional[bool] = None
  native: Optional[bool] = None

  def replace(self, **changes) -> "KernelFn":
    return dataclasses.replace(self, **changes)

  # ------------------------------------------------------------------ sizing
  def bytes_per_pair(self, input_shape: Sequence[int], itemsize: int = 4) -> int:
    """Approximate peak bytes one image pair costs inside a block (forward + backward)."""
    if self.flatten_inputs or len(input_shape) == 1:
      return itemsize * _ARRAYS_PER_ENTRY
    h, w = input_shape[0], input_shape[1]
    band = self._band()
    if band is not None:  # (H W) positions x (2 B_h + 1)(2 B_w + 1) partners
      return itemsize * _ARRAYS_PER_ENTRY * h * w * min(2 * band[0] + 1, 2 * h) * min(
          2 * band[1] + 1, 2 * w)
    return itemsize * _ARRAYS_PER_ENTRY * (h * w) ** 2

  def _band(self) -> Optional[tuple[int, int]]:
    """The input band of the banded path, when it is used (else ``None``)."""
    layers = getattr(self.layer.kernel_fn, "layers", None)
    if not self.uses_banded() or layers is None:
      return None
    from kip._src.kernels import banded  # noqa: PLC0415
    return banded.first_band(layers)

  def block_shape(self, n1: int, n2: int, input_shape: Sequence[int],
                  itemsize: int = 4) -> tuple[int, int]:
    """The ``(b1, b2)`` block used for ``n1 x n2`` inputs of ``input_shape`` (no batch axis)."""
    return block_shape(n1, n2, self.bytes_per_pair(input_shape, itemsize), self.memory_budget)

  # ------------------------------------------------------------------ evaluation
  def __call__(self, x1: jax.Array, x2: Optional[jax.Array] = None, get: Get = ("nngp", "ntk")):
    """Evaluates the kernel between ``x1`` and ``x2``.

    Args:
      x1: ``(n1, H, W, C)`` images (or ``(n1, D)`` for fully connected kernels).
      x2: ``(n2, ...)`` of the same trailing shape; ``None`` means ``x1``.
      get: ``'nngp'``, ``'ntk'`` or a tuple of them.

    Returns:
      An ``(n1, n2)`` array for a string ``get``; a namedtuple with those fields for a tuple.
    """
    names = (get,) if isinstance(get, str) else tuple(get)
    bad = [g for g in names if g not in _VALID_GET]
    if bad or not names:
      raise ValueError(f"get={get!r}: expected 'nngp', 'ntk' or a tuple of them.")
    x1 = jnp.asarray(x1)
    x2 = x1 if x2 is None else jnp.asarray(x2)
    if x1.shape[1:] != x2.shape[1:]:
      raise ValueError(f"x1 and x2 must share their trailing shape; got {x1.shape} and "
                       f"{x2.shape}.")
    if not jnp.issubdtype(x1.dtype, jnp.floating):
      x1, x2 = x1.astype(jnp.float32), x2.astype(jnp.float32)
    if self.flatten_inputs:
      x1, x2 = x1.reshape(x1.shape[0], -1), x2.reshape(x2.shape[0], -1)
    elif x1.ndim != 4:
      raise ValueError(f"this kernel takes (n, H, W, C) images; got shape {x1.shape}.")
    compute_ntk = "ntk" in names
    nngp, ntk = self._evaluate(x1, x2, compute_ntk)
    out = {"nngp": nngp, "ntk": ntk}
    if isinstance(get, str):
      return out[get]
    return _namedtuple(names)(*(out[g] for g in names))

  def _devices(self):
    if self.devices is not None:
      return tuple(self.devices)
    return tuple(jax.devices())

  def uses_fused(self) -> bool:
    """Whether evaluation takes the fused first-block path (see ``fused``)."""
    if self.fused is not None:
      return bool(self.fused)
    return self._devices()[0].platform == "cpu"

  def uses_banded(self) -> bool:
    """Whether a ``Flatten``-terminated network takes the banded path (see ``banded``)."""
    if self.banded is not None:
      return bool(self.banded)
    return self.uses_fused()

  def uses_native(self, dtype=np.float32) -> bool:
    """Whether the fused block runs as the compiled CPU kernel (see ``native``)."""
    from kip._src.kernels import native  # noqa: PLC0415

    if not self.uses_fused() or self.native is False:
      return False
    if self._devices()[0].platform != "cpu" or np.dtype(dtype) not in native.DTYPES:
      if self.native:
        raise ValueError(f"native=True needs CPU devices and float32 / float64 inputs; got "
                         f"{self._devices()[0].platform} and {np.dtype(dtype)}. Use "
                         "native=None (automatic) or False.")
      return False
    if self.native and not native.available():
      raise RuntimeError(f"native=True, but kip's native CPU kernel cannot be built: "
                         f"{native.build_error()} Use native=None (falls back to XLA) or False.")
    return native.available()

  def _evaluate(self, x1, x2, compute_ntk):
    devices = self._devices()
    n1, n2 = x1.shape[0], x2.shape[0]
    fuse = (self.uses_fused(), self.uses_banded(), self.uses_native(x1.dtype))
    if len(devices) == 1 or n2 < len(devices):
      return _blocked(self.layer.kernel_fn, x1, x2, compute_ntk,
                      self.block_shape(n1, n2, x1.shape[1:], x1.dtype.itemsize), fuse)
    ndev = len(devices)
    per = -(-n2 // ndev)
    b = self.block_shape(n1, per, x1.shape[1:], x1.dtype.itemsize)
    x2p = _pad_rows(x2, ndev)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
    P = jax.sharding.PartitionSpec

    def local(a, c):
      nngp, ntk = _blocked(self.layer.kernel_fn, a, c, compute_ntk, b, fuse)
      return (nngp, ntk) if compute_ntk else (nngp,)

    out_spec = (P(None, "d"),) * (2 if compute_ntk else 1)
    out = _shard_map()(local, mesh=mesh, in_specs=(P(), P("d")), out_specs=out_spec)(x1, x2p)
    return out[0][:, :n2], out[1][:, :n2] if compute_ntk else None


def _blocked(kernel_fn, x1, x2, compute_ntk, block, fuse=(False, False, False)):
  """Evaluates ``kernel_fn`` over ``(b1, b2)`` blocks with rematerialisation.

  ``fuse = (fused, banded, native)``: the accelerated paths
  :func:`~kip._src.kernels.layers.lazy_input` may take.
  """
  n1, n2 = x1.shape[0], x2.shape[0]
  b1, b2 = block

  @jax.checkpoint
  def one(xa, xb):
    k = L.materialize(kernel_fn(L.lazy_input(xa, xb, compute_ntk, *fuse)))
    if k.nngp.ndim != 2:
      raise ValueError("the network's output is still spatial: end it with Flatten() or "
                       "GlobalAvgPool() (and a Dense readout).")
    return k.nngp, k.ntk

  if b1 >= n1 and b2 >= n2:
    return one(x1, x2)
  x1p, x2p = _pad_rows(x1, b1), _pad_rows(x2, b2)
  xa = x1p.reshape((-1, b1) + x1.shape[1:])
  xb = x2p.reshape((-1, b2) + x2.shape[1:])

  def row(a):
    return lax.map(lambda b: one(a, b), xb)

  nngp, ntk = lax.map(row, xa)  # (nb1, nb2, b1, b2)

  def unblock(t):
    return t.transpose(0, 2, 1, 3).reshape(xa.shape[0] * b1, xb.shape[0] * b2)[:n1, :n2]

  return unblock(nngp), None if ntk is None else unblock(ntk)


def kernel_function(layer: L.Layer, *, spec: Optional[Mapping[str, Any]] = None,
                    flatten_inputs: bool = False,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET,
                    devices: Optional[Sequence[Any]] = None,
                    fused: Optional[bool] = None,
                    banded: Optional[bool] = None,
                    native: Optional[bool] = None) -> KernelFn:
  """Wraps a layer (e.g. ``serial(Conv(...), Relu(), ...)``) as a blocked ``kernel_fn``.

  ``fused`` selects the fused first block, ``banded`` the banded path and ``native`` the
  compiled CPU kernel for the fused block (see :class:`KernelFn`); ``None``: on CPU.
  """
  return KernelFn(layer=layer, spec=dict(spec or {"architecture": "custom"}),
                  flatten_inputs=flatten_inputs, memory_budget=int(memory_budget),
                  devices=None if devices is None else tuple(devices),
                  fused=None if fused is None else bool(fused),
                  banded=None if banded is None else bool(banded),
                  native=None if native is None else bool(native))
