"""The kernels KIP uses: fully connected and the KIP ConvNet, NNGP and NTK."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

from kip._src.kernels import engine
from kip._src.kernels import layers as L

__all__ = ["fc", "convnet", "get_kernel", "KERNELS"]

_ACTIVATIONS: dict[str, Callable[[], L.Layer]] = {
    "relu": L.Relu, "erf": L.Erf, "abs": L.Abs,
}


def _activation(name: str) -> L.Layer:
  if name not in _ACTIVATIONS:
    raise ValueError(f"activation={name!r}; expected one of {sorted(_ACTIVATIONS)}.")
  return _ACTIVATIONS[name]()


def fc(depth: int = 1, W_std: float = math.sqrt(2.0), b_std: Optional[float] = 0.1,
       activation: str = "relu", *, width: int = 1024,
       memory_budget: int = engine.DEFAULT_MEMORY_BUDGET,
       devices: Optional[Sequence[Any]] = None) -> engine.KernelFn:
  """Fully connected network kernel: ``depth x [Dense, activation], Dense``.

  Images are flattened to vectors first. Used by KIP-FC (Nguyen, Chen, Lee, ICLR 2021).

  Args:
    depth: number of hidden layers (>= 0; 0 is the linear kernel plus bias).
    W_std: weight standard deviation (NTK parameterization).
    b_std: bias standard deviation or ``None``.
    activation: ``'relu'``, ``'erf'`` or ``'abs'``.
    width: width of the corresponding finite network (``layer.init_fn``); not used by the kernel.
    memory_budget: bytes per block; see :class:`KernelFn`.
    devices: devices to shard over (default all).
  """
  if depth < 0:
    raise ValueError(f"depth={depth} must be >= 0.")
  layers = []
  for _ in range(depth):
    layers += [L.Dense(width, W_std, b_std), _activation(activation)]
  layers.append(L.Dense(1, W_std, b_std))
  spec = {"architecture": "fc", "depth": depth, "W_std": W_std, "b_std": b_std,
          "activation": activation}
  return engine.kernel_function(L.serial(*layers), spec=spec, flatten_inputs=True,
                                memory_budget=memory_budget, devices=devices)


def convnet(depth: int = 3, W_std: float = math.sqrt(2.0), b_std: Optional[float] = 0.1,
            activation: str = "relu", *, prepend_conv: bool = False, filter_size: int = 3,
            readout: str = "flatten", width: int = 128,
            memory_budget: int = engine.DEFAULT_MEMORY_BUDGET,
            devices: Optional[Sequence[Any]] = None) -> engine.KernelFn:
  """The KIP ConvNet kernel: ``depth x [Conv 3x3 SAME, ReLU, AvgPool 2x2]``, Flatten, Dense.

  ``prepend_conv=True`` gives the variant of the released KIP code, with one more
  ``Conv + ReLU`` in front. Defaults follow Nguyen, Novak, Xiao, Lee, "Dataset Distillation with
  Infinitely Wide Convolutional Networks" (NeurIPS 2021): ``W_std = sqrt(2)``, ``b_std = 0.1``.

  Args:
    depth: number of conv-ReLU-pool blocks; images must be at least ``2**depth`` pixels wide.
    W_std: weight standard deviation.
    b_std: bias standard deviation or ``None``.
    activation: ``'relu'``, ``'erf'`` or ``'abs'``.
    prepend_conv: add the extra leading ``Conv + ReLU``.
    filter_size: odd convolution size.
    readout: ``'flatten'`` (KIP) or ``'gap'`` (global average pooling).
    width: channels of the corresponding finite network; not used by the kernel.
    memory_budget: bytes per block; see :class:`KernelFn`.
    devices: devices to shard over (default all).
  """
  if depth < 1:
    raise ValueError(f"depth={depth} must be >= 1.")
  if readout not in ("flatten", "gap"):
    raise ValueError(f"readout={readout!r}; expected 'flatten' or 'gap'.")
  conv = lambda: L.Conv(width, (filter_size, filter_size), W_std, b_std)  # noqa: E731
  layers = [conv(), _activation(activation)] if prepend_conv else []
  for _ in range(depth):
    layers += [conv(), _activation(activation), L.AvgPool(2)]
  layers += [L.Flatten() if readout == "flatten" else L.GlobalAvgPool(), L.Dense(1, W_std, b_std)]
  spec = {"architecture": "convnet", "depth": depth, "W_std": W_std, "b_std": b_std,
          "activation": activation, "prepend_conv": prepend_conv, "filter_size": filter_size,
          "readout": readout}
  return engine.kernel_function(L.serial(*layers), spec=spec, memory_budget=memory_budget,
                                devices=devices)


KERNELS = {"fc": fc, "convnet": convnet}


def get_kernel(spec) -> Callable:
  """Builds a kernel from a name (``'fc'``, ``'convnet'``), a spec dict, or passes a callable.

  A spec dict is what :attr:`KernelFn.spec` holds (``{'architecture': 'convnet', 'depth': 3,
  ...}``), so a saved distilled set can rebuild its kernel.
  """
  if callable(spec):
    return spec
  if isinstance(spec, str):
    if spec not in KERNELS:
      raise ValueError(f"kernel={spec!r}; expected one of {sorted(KERNELS)} or a "
                       "kernel_fn(x1, x2, get) callable.")
    return KERNELS[spec]()
  if isinstance(spec, dict):
    spec = dict(spec)
    arch = spec.pop("architecture", None)
    if arch not in KERNELS:
      raise ValueError(f"kernel spec architecture={arch!r}; expected one of {sorted(KERNELS)}.")
    return KERNELS[arch](**spec)
  raise ValueError(f"kernel={spec!r}: expected a name, a spec dict or a callable.")
