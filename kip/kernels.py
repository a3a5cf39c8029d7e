"""Infinite-width NNGP and NTK kernels in native JAX (a neural-tangents-compatible engine).

Layers compose like ``neural_tangents.stax``::

  layer = kip.kernels.serial(kip.kernels.Conv(128), kip.kernels.Relu(),
                             kip.kernels.AvgPool(2, stride=2), kip.kernels.Flatten(),
                             kip.kernels.Dense(1))
  kernel_fn = kip.kernels.kernel_function(layer)
  ntk = kernel_fn(x1, x2, 'ntk')

Presets: :func:`fc` and :func:`convnet`; their random-feature NNGP estimates (RFAD)
:func:`fc_rf` and :func:`convnet_rf`, or :func:`random_features` of any layer; FRePo's
learned-feature kernel (a pool of networks trained on the support while KIP runs)
:func:`learned_features`. Any
neural-tangents ``kernel_fn`` is accepted wherever these are.
"""

from kip._src.kernels.engine import DEFAULT_MEMORY_BUDGET, KernelFn, block_shape, kernel_function
from kip._src.kernels.layers import (ABRelu, Abs, AvgPool, Conv, Dense, Erf, Flatten,
                                     GlobalAvgPool, Kernel, Layer, LeakyRelu, Relu, input_kernel,
                                     serial)
from kip._src.kernels.learned_features import (FeaturePool, LearnedFeatureKernel, PoolKernel,
                                               learned_features)
from kip._src.kernels.presets import KERNELS, convnet, convnet_rf, fc, fc_rf, get_kernel
from kip._src.kernels.random_features import RandomFeatureKernel, random_features

__all__ = [
    "ABRelu", "Abs", "AvgPool", "Conv", "DEFAULT_MEMORY_BUDGET", "Dense", "Erf", "FeaturePool",
    "Flatten", "LearnedFeatureKernel", "PoolKernel", "learned_features",
    "GlobalAvgPool", "KERNELS", "Kernel", "KernelFn", "Layer", "LeakyRelu", "RandomFeatureKernel",
    "Relu", "block_shape", "convnet", "convnet_rf", "fc", "fc_rf", "get_kernel", "input_kernel",
    "kernel_function", "random_features", "serial",
]
