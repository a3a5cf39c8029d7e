"""The kernels KIP uses: fully connected and the KIP ConvNet, NNGP and NTK."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

from kip._src.kernels import engine
from kip._src.kernels import layers as L
from kip._src.kernels import learned_features as lf
from kip._src.kernels import random_features as rf

__all__ = ["fc", "convnet", "fc_rf", "convnet_rf", "get_kernel", "KERNELS"]

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
            devices: Optional[Sequence[Any]] = None,
            fused: Optional[bool] = None,
            banded: Optional[bool] = None,
            native: Optional[bool] = None) -> engine.KernelFn:
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
    fused: compute the first ``Conv, ReLU, AvgPool`` block in one tiled pass (same kernel to
      float rounding, see :class:`KernelFn`); ``None``: fused on CPU. With ``prepend_conv`` the
      network does not start with that block and the flag has no effect.
    banded: with ``readout='flatten'``, compute the network on the band of pixel pairs that
      reaches the readout (:mod:`kip._src.kernels.banded`; same kernel to float rounding,
      a fraction of the work; see :class:`KernelFn`); with ``fused`` the first block is fused
      and the rest banded. ``None``: follow ``fused``.
    native: run the fused block as the compiled CPU kernel (see :class:`KernelFn`); ``None``:
      on CPU when it builds.
  """
  if depth < 1:
    raise ValueError(f"depth={depth} must be >= 1.")
  if readout not in ("flatten", "gap"):
    raise ValueError(f"readout={readout!r}; expected 'flatten' or 'gap'.")
  conv = lambda: L.Conv(width, (filter_size, filter_size), W_std, b_std)  # noqa: E731
  layers = [conv(), _activation(activation)] if prepend_conv else []
  for _ in range(depth):
    layers += [conv(), _activation(activation), L.AvgPool(2, stride=2)]
  layers += [L.Flatten() if readout == "flatten" else L.GlobalAvgPool(), L.Dense(1, W_std, b_std)]
  spec = {"architecture": "convnet", "depth": depth, "W_std": W_std, "b_std": b_std,
          "activation": activation, "prepend_conv": prepend_conv, "filter_size": filter_size,
          "readout": readout}
  return engine.kernel_function(L.serial(*layers), spec=spec, memory_budget=memory_budget,
                                devices=devices, fused=fused, banded=banded, native=native)


def convnet_rf(depth: int = 3, W_std: float = math.sqrt(2.0), b_std: Optional[float] = 0.1,
               activation: str = "relu", *, prepend_conv: bool = False, filter_size: int = 3,
               readout: str = "flatten", width: int = 256, num_models: int = 8,
               fixed_seed: Optional[int] = None,
               batch_size: Optional[int] = None) -> rf.RandomFeatureKernel:
  r"""Random-feature NNGP of the KIP ConvNet (RFAD): the layer of :func:`convnet`, sampled.

  The network is ``convnet(...).layer`` built at ``width`` channels, so this estimates exactly
  the NNGP that :func:`convnet` with the same arguments computes:
  :math:`\hat K = \frac{1}{M}\sum_m (\frac{W_{std}^2}{D} h_m h_m'^\top + b_{std}^2)` over
  ``M = num_models`` networks (see :func:`~kip._src.kernels.random_features.random_features`).

  Defaults are RFAD's released setup, read from its code (github.com/yolky/RFAD, commit
  ``c9ef03ec``): ``run_distillation.py`` builds ``models.ConvNet_wide(net_norm='none',
  k=2, chopped_head=True)`` with the default ``net_width=128, net_depth=3``, i.e.
  3 x [conv 3x3 padding 1, 256 channels, ReLU, 2x2 average pool stride 2], no normalisation,
  head removed; ``models.py`` draws conv weights from :math:`N(0, 2/\text{fan\_in})` and biases
  from :math:`N(0, 0.1^2)` (our ``W_std = sqrt(2)``, ``b_std = 0.1`` in NTK parameterisation);
  ``--n_models 8`` networks, redrawn every step (``scheduler = [(0, n_models, 1)]``);
  ``distillation.py`` concatenates the models' features divided by
  :math:`\sqrt{M D}` and uses ``K = 2 Phi Phi^T + 0.01``, which is this estimate (``2`` and
  ``0.01`` are the removed read-out's :math:`W_{std}^2` and :math:`b_{std}^2`). The same file
  and ``run_distillation.py`` give the rest of RFAD's recipe (not part of the kernel): ridge
  ``5e-3 * tr(K)/n`` (``--jit``), 4 x 1,280 targets per step, AdaBelief lr ``1e-3``, a Platt
  temperature with lr ``1e-2``, labels one-hot minus ``1/n_classes``.

  Args:
    depth: conv-ReLU-pool blocks.
    W_std: weight standard deviation (also the read-out's).
    b_std: bias standard deviation or ``None``.
    activation: ``'relu'``, ``'erf'`` or ``'abs'``.
    prepend_conv: the extra leading ``Conv + ReLU`` of the released KIP code (RFAD: none).
    filter_size: odd convolution size.
    readout: ``'flatten'`` or ``'gap'``.
    width: channels of the sampled networks (RFAD: 256).
    num_models: networks per step (RFAD: 8).
    fixed_seed: ``None``: fresh networks from each step's key (RFAD); an int holds them fixed.
    batch_size: images per forward pass (``None``: all at once).
  """
  exact = convnet(depth=depth, W_std=W_std, b_std=b_std, activation=activation,
                  prepend_conv=prepend_conv, filter_size=filter_size, readout=readout,
                  width=rf._check_count("width", width))
  spec = {"architecture": "convnet_rf", "depth": depth, "W_std": W_std, "b_std": b_std,
          "activation": activation, "prepend_conv": prepend_conv, "filter_size": filter_size,
          "readout": readout, "width": width, "num_models": num_models,
          "fixed_seed": fixed_seed, "batch_size": batch_size}
  return rf.random_features(exact, num_models=num_models, fixed_seed=fixed_seed,
                            batch_size=batch_size, spec=spec)


def fc_rf(depth: int = 1, W_std: float = math.sqrt(2.0), b_std: Optional[float] = 0.1,
          activation: str = "relu", *, width: int = 1024, num_models: int = 8,
          fixed_seed: Optional[int] = None,
          batch_size: Optional[int] = None) -> rf.RandomFeatureKernel:
  """Random-feature NNGP of the fully connected network of :func:`fc` (its layer, sampled).

  Args:
    depth: hidden layers (>= 1: with none there is no random network to sample).
    W_std: weight standard deviation (also the read-out's).
    b_std: bias standard deviation or ``None``.
    activation: ``'relu'``, ``'erf'`` or ``'abs'``.
    width: hidden units of the sampled networks.
    num_models: networks per step.
    fixed_seed: ``None``: fresh networks from each step's key; an int holds them fixed.
    batch_size: images per forward pass (``None``: all at once).
  """
  if depth < 1:
    raise ValueError(f"depth={depth} must be >= 1 for random features (depth 0 is the exact "
                     "linear kernel: use fc(0)).")
  exact = fc(depth=depth, W_std=W_std, b_std=b_std, activation=activation,
             width=rf._check_count("width", width))
  spec = {"architecture": "fc_rf", "depth": depth, "W_std": W_std, "b_std": b_std,
          "activation": activation, "width": width, "num_models": num_models,
          "fixed_seed": fixed_seed, "batch_size": batch_size}
  return rf.random_features(exact, num_models=num_models, fixed_seed=fixed_seed,
                            batch_size=batch_size, spec=spec)


KERNELS = {"fc": fc, "convnet": convnet, "convnet_rf": convnet_rf, "fc_rf": fc_rf,
           "learned_features": lf.learned_features}


def get_kernel(spec) -> Callable:
  """Builds a kernel from a name (``'fc'``, ``'convnet'``), a spec dict, or passes a callable.

  A learned-feature kernel (FRePo, not a ``kernel_fn``: it has a pool of networks as state)
  passes through too. A spec dict is what :attr:`KernelFn.spec` holds (``{'architecture':
  'convnet', 'depth': 3, ...}``), so a saved distilled set can rebuild its kernel.
  """
  if callable(spec) or isinstance(spec, lf.LearnedFeatureKernel):
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
