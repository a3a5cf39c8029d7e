"""Finite networks that distilled sets are transferred to.

Contract (shared by every model here): a Flax linen module called as
``model.apply(variables, x, train=False)`` with ``x`` of shape ``(n, H, W, C)`` float32 (NHWC)
returns logits of shape ``(n, num_classes)``. ``variables = model.init(key, x[:1])``.

Only ``norm='batch'`` carries state: its running statistics live in the ``'batch_stats'``
collection, so a training step calls
``model.apply(variables, x, train=True, mutable=['batch_stats'])`` and keeps the returned
statistics; evaluation (``train=False``) uses the running averages. Every other model is
stateless and ``train`` has no effect on it.

Initialisation (``param_init``), with :math:`f_\\mathrm{in}` / :math:`f_\\mathrm{out}` the
fan-in / fan-out (kernel area times input / output channels for a convolution):

* ``'torch'`` (the default): PyTorch's default ``Conv2d`` / ``Linear`` initialisation,
  :math:`W, b \\sim U(-1/\\sqrt{f_\\mathrm{in}}, 1/\\sqrt{f_\\mathrm{in}})`. The DC / DSA / DM
  reference code (VICO-UoE/DatasetCondensation ``networks.py``) builds its networks with
  PyTorch's defaults and never re-initialises them.
* ``'xavier'``: :math:`W \\sim \\mathcal{N}(0, 2 / (f_\\mathrm{in} + f_\\mathrm{out}))`,
  :math:`b = 0`: the Dataset Distillation reference (SsnL/dataset-distillation
  ``networks/utils.py``, ``--init xavier --init_param 1``: ``xavier_normal_(gain=1)``, zero
  bias).
* ``'gaussian'``: :math:`W \\sim \\mathcal{N}(0, \\sigma_w^2/f_\\mathrm{in})`,
  :math:`b \\sim \\mathcal{N}(0, \\sigma_b^2)`: neural-tangents' ``parameterization='standard'``
  initialisation, used by the KIP transfer notebook (google-research ``kip/nn_training.ipynb``)
  with ``W_std = sqrt(2)``, ``b_std = 0.1``.

Presets (:func:`get_model`):

* ``'convnet'``: ConvNet-3 of DC / DSA / DM (Zhao et al., 2021): width 128, depth 3,
  instance norm, average pooling, and the reference geometry (``padding='dc'``): on 1-channel
  input the first convolution pads by 3, so 28x28 images give 32/16/8/4 maps and 2,048
  features at width 128.
* ``'kip_convnet'``: the "ConvNet" of the KIP transfer notebook: a conv 3x3 + ReLU, then
  3 x [conv 3x3, ReLU, 2x2 average pool], flatten, dense; width 1024, no normalisation, SAME
  padding throughout, ``param_init='gaussian'`` with ``w_std = sqrt(2)``, ``b_std = 0.1``.
* ``'kip_convnet3'``: the notebook's "ConvNet3": ``'kip_convnet'`` without the leading
  conv + ReLU (``prepend_conv=False``).
* ``'fc'``, ``'lenet'`` (reference geometry on 28x28 and 32x32 images), ``'alexnet'`` (the
  small AlexNet of Wang et al., 2018), ``'resnet'``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kip._src.transfer import conv as conv_lib

__all__ = ["ConvNet", "FC", "LeNet", "AlexNetSmall", "ResNet", "get_model", "MODEL_NAMES"]

_NORMS = ("instance", "batch", "none")
_POOLINGS = ("avg", "max")
_INITS = ("torch", "gaussian", "xavier")
_CONVNET_PADDINGS = ("dc", "same")
_LENET_PADDINGS = ("reference", "same")
# Convolution rule for every model (``conv.conv_general_dilated``'s ``impl``): 'auto' takes the
# patch-product filter derivative where it is measured faster (kernels <= 3x3, on CPU).
_CONV_IMPL = "auto"
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "leaky_relu": lambda x: nn.leaky_relu(x, 0.01),  # PyTorch's default slope, as in DC
    "sigmoid": nn.sigmoid,
}


def _check_choice(what: str, value: Any, allowed: Sequence[Any]) -> None:
  if value not in allowed:
    raise ValueError(f"{what}={value!r} is not supported; use one of {list(allowed)}.")


def _uniform(limit: float) -> Callable:
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)
  return init


def _initializers(init: str, fan_in: int, fan_out: int, w_std: float, b_std: float):
  """(kernel_init, bias_init) for a layer with ``fan_in`` inputs and ``fan_out`` outputs."""
  if init == "torch":
    limit = 1.0 / math.sqrt(fan_in)
    return _uniform(limit), _uniform(limit)
  if init == "xavier":  # torch.nn.init.xavier_normal_(gain=1), zero bias
    return nn.initializers.normal(math.sqrt(2.0 / (fan_in + fan_out))), nn.initializers.zeros
  return (nn.initializers.normal(w_std / math.sqrt(fan_in)), nn.initializers.normal(b_std))


def _conv(x, features: int, kernel: int, *, init: str = "torch", w_std: float = 1.0,
          b_std: float = 0.0, strides: int = 1, padding: str | int = "SAME",
          use_bias: bool = True, name: str | None = None):
  """``kernel`` x ``kernel`` convolution; ``padding`` is ``'SAME'``, ``'VALID'`` or an int
  (zeros on every side, PyTorch's ``Conv2d(padding=p)``)."""
  fan_in = kernel * kernel * x.shape[-1]
  k_init, b_init = _initializers(init, fan_in, kernel * kernel * features, w_std, b_std)
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  conv = functools.partial(conv_lib.conv_general_dilated, impl=_CONV_IMPL)
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=padding,
                 use_bias=use_bias, kernel_init=k_init, bias_init=b_init, name=name,
                 conv_general_dilated=conv)(x)


def _dense(x, features: int, *, init: str = "torch", w_std: float = 1.0, b_std: float = 0.0,
           name: str | None = None):
  k_init, b_init = _initializers(init, x.shape[-1], features, w_std, b_std)
  return nn.Dense(features, kernel_init=k_init, bias_init=b_init, name=name)(x)


class InstanceNorm(nn.Module):
  r"""DC's ``'instancenorm'``, PyTorch's ``nn.GroupNorm(C, C, affine=True)``.

  Per-example, per-channel statistics over the spatial axes, then a learned per-channel scale
  and shift:

  .. math::

     y_{bhwc} = \gamma_c \frac{x_{bhwc} - \mu_{bc}}{\sqrt{\sigma^2_{bc} + \epsilon}} + \beta_c,
     \quad \mu_{bc} = \overline{x_{b\cdot\cdot c}}, \quad
     \sigma^2_{bc} = \max(\overline{x^2_{b\cdot\cdot c}} - \mu_{bc}^2, 0).

  The same values, parameters (``scale`` = 1, ``bias`` = 0 at init) and variance formula as
  ``flax.linen.GroupNorm(num_groups=C)`` (its default ``use_fast_variance=True``), written
  directly over the spatial axes: without GroupNorm's reshape into groups, forward + gradient
  of DC ConvNet-3's first norm + ReLU + pool (batch 256, 32x32 maps, width 128) took 162 ms
  against 259 ms on this project's 2-core CPU.
  """
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    axes = tuple(range(1, x.ndim - 1))
    mean = jnp.mean(x, axes, keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(x), axes, keepdims=True) - jnp.square(mean), 0.0)
    factor = jax.lax.rsqrt(var + self.epsilon) * scale.astype(x.dtype)
    return x * factor + (bias.astype(x.dtype) - mean * factor)


def _norm(x, kind: str, train: bool, name: str | None = None):
  if kind == "instance":
    return InstanceNorm(epsilon=1e-5, name=name)(x)
  if kind == "batch":
    # PyTorch momentum 0.1 on the new batch == Flax momentum 0.9 on the running average.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        name=name)(x)
  return x


def _pool2x2(x, kind: str, layer: int):
  """2x2 pooling, stride 2, VALID (odd sizes round down: 7 -> 3), as PyTorch's pools."""
  h, w = x.shape[1:3]
  if h < 2 or w < 2:
    raise ValueError(f"pooling layer {layer + 1} gets a {h}x{w} feature map, too small to "
                     f"halve: the network is too deep for these images. Each block halves the "
                     f"size (after the first convolution's padding), so use fewer blocks "
                     f"(depth) or larger images.")
  pool = nn.avg_pool if kind == "avg" else nn.max_pool
  return pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _flatten(x):
  return x.reshape((x.shape[0], -1))


class ConvNet(nn.Module):
  r"""ConvNet-D of DC / DSA / DM, and (``param_init='gaussian'``, no norm) the KIP ConvNet.

  [conv 3x3 (``width``) -> activation, if ``prepend_conv``] -> ``depth`` x [conv 3x3
  (``width`` channels) -> norm -> activation -> 2x2 pool, stride 2] -> flatten ->
  dense(``num_classes``).

  Geometry (``padding``). ``'dc'`` (the default) is the DC reference's
  ``Conv2d(..., padding=3 if channel == 1 and d == 0 else 1)``: the network's first
  convolution pads 1-channel input by 3 on every side, every other convolution by 1. A 28x28
  grey image then becomes 32x32 after the first convolution, the blocks give 32/16/8/4 maps
  and the classifier sees :math:`4 \cdot 4 \cdot 128 = 2048` features at width 128.
  ``'same'`` pads every convolution by 1 (28/14/7/3 maps, 1,152 features; the geometry this
  library used before, and the only one for 3-channel input, where both agree).

  Attributes:
    num_classes: number of output logits.
    width: channels of every conv layer.
    depth: number of pooled conv blocks; each halves the spatial size (VALID pooling, odd
      sizes round down).
    norm: ``'instance'`` (DC's instancenorm: ``GroupNorm`` with one group per channel,
      affine), ``'batch'`` (stateful: train with ``mutable=['batch_stats']``) or ``'none'``.
    pooling: ``'avg'`` or ``'max'``.
    activation: ``'relu'``, ``'leaky_relu'`` or ``'sigmoid'``.
    param_init: ``'torch'``, ``'xavier'`` or ``'gaussian'`` (see the module docstring).
    w_std, b_std: standard deviations of the ``'gaussian'`` initialisation.
    prepend_conv: a conv 3x3 + activation (no norm, no pooling) before the blocks, as the KIP
      notebook's ``ConvNet(prepend_conv_layer=True)``.
    padding: ``'dc'`` or ``'same'`` (see above).

  Reference: Zhao, Mopuri, Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021
  (``networks.py``: ``ConvNet``); Nguyen, Novak, Xiao, Lee, "Dataset Distillation with
  Infinitely Wide Convolutional Networks", NeurIPS 2021 (``kip/nn_training.ipynb``).
  """
  num_classes: int
  width: int = 128
  depth: int = 3
  norm: str = "instance"
  pooling: str = "avg"
  activation: str = "relu"
  param_init: str = "torch"
  w_std: float = math.sqrt(2.0)
  b_std: float = 0.1
  prepend_conv: bool = False
  padding: str = "dc"

  def __post_init__(self):
    _check_choice("norm", self.norm, _NORMS)
    _check_choice("pooling", self.pooling, _POOLINGS)
    _check_choice("activation", self.activation, tuple(_ACTIVATIONS))
    _check_choice("param_init", self.param_init, _INITS)
    _check_choice("padding", self.padding, _CONVNET_PADDINGS)
    if self.depth < 1 or self.width < 1 or self.num_classes < 1:
      raise ValueError(f"ConvNet needs depth, width, num_classes >= 1; got depth={self.depth}, "
                       f"width={self.width}, num_classes={self.num_classes}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = _ACTIVATIONS[self.activation]
    init = dict(init=self.param_init, w_std=self.w_std, b_std=self.b_std)
    # The reference pads its first convolution by 3 on grey images (28x28 -> 32x32).
    first_pad = 3 if (self.padding == "dc" and x.shape[-1] == 1) else 1
    if self.prepend_conv:
      x = act(_conv(x, self.width, 3, padding=first_pad, name="conv_in", **init))
      first_pad = 1
    for d in range(self.depth):
      x = _conv(x, self.width, 3, padding=first_pad if d == 0 else 1, name=f"conv{d}", **init)
      x = _norm(x, self.norm, train, name=f"norm{d}")
      x = act(x)
      x = _pool2x2(x, self.pooling, d)
    return _dense(_flatten(x), self.num_classes, name="readout", **init)


class FC(nn.Module):
  """Fully connected network: flatten -> ``depth`` x [dense(``width``), ReLU] -> dense.

  Attributes:
    num_classes: number of output logits.
    width: hidden units per layer.
    depth: number of hidden layers.
    param_init, w_std, b_std: as in :class:`ConvNet`.
  """
  num_classes: int
  width: int = 1024
  depth: int = 2
  param_init: str = "torch"
  w_std: float = math.sqrt(2.0)
  b_std: float = 0.1

  def __post_init__(self):
    _check_choice("param_init", self.param_init, _INITS)
    if self.depth < 0 or self.width < 1 or self.num_classes < 1:
      raise ValueError(f"FC needs depth >= 0, width >= 1, num_classes >= 1; got "
                       f"depth={self.depth}, width={self.width}, "
                       f"num_classes={self.num_classes}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    init = dict(init=self.param_init, w_std=self.w_std, b_std=self.b_std)
    x = _flatten(x)
    for d in range(self.depth):
      x = nn.relu(_dense(x, self.width, name=f"dense{d}", **init))
    return _dense(x, self.num_classes, name="readout", **init)


class LeNet(nn.Module):
  """LeNet-5 as used by DC and DD.

  conv 5x5 (6) -> ReLU -> 2x2 max pool -> conv 5x5 (16) -> ReLU -> 2x2 max pool ->
  dense 120 -> ReLU -> dense 84 -> ReLU -> dense(``num_classes``).

  Geometry (``padding``). ``'reference'`` (the default) on the image sizes the reference
  networks accept: 28x28 input pads the first convolution by 2, 32x32 input not at all, the
  second convolution is VALID, so both give 5x5x16 = 400 features (SsnL/dataset-distillation
  ``LeNet``: ``padding=2 if input_size == 28 else 0``, ``supported_dims = {28, 32}``; the DC
  reference keys the same padding on ``channel == 1``, which agrees on MNIST-like 28x28x1 and
  CIFAR-like 32x32x3 data). The reference networks reject every other size; there
  ``'reference'`` falls back to ``'same'``. ``'same'``: SAME convolutions everywhere (28x28
  gives 7x7x16 = 784 features), which works from 4x4 up and is the geometry this library
  used before.

  Attributes:
    num_classes: number of output logits.
    padding: ``'reference'`` or ``'same'``.
    param_init: ``'torch'`` (DC), ``'xavier'`` (DD) or ``'gaussian'`` (see the module
      docstring).

  Reference: LeCun et al., 1998; Wang et al., "Dataset Distillation", 2018.
  """
  num_classes: int
  padding: str = "reference"
  param_init: str = "torch"

  def __post_init__(self):
    _check_choice("padding", self.padding, _LENET_PADDINGS)
    _check_choice("param_init", self.param_init, _INITS)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    init = dict(init=self.param_init, w_std=math.sqrt(2.0), b_std=0.1)
    size = tuple(x.shape[1:3])
    if self.padding == "reference" and size in ((28, 28), (32, 32)):
      pads = (2 if size == (28, 28) else "VALID", "VALID")
    else:
      pads = ("SAME", "SAME")
    x = _pool2x2(nn.relu(_conv(x, 6, 5, padding=pads[0], name="conv0", **init)), "max", 0)
    x = _pool2x2(nn.relu(_conv(x, 16, 5, padding=pads[1], name="conv1", **init)), "max", 1)
    x = nn.relu(_dense(_flatten(x), 120, name="dense0", **init))
    x = nn.relu(_dense(x, 84, name="dense1", **init))
    return _dense(x, self.num_classes, name="readout", **init)


def _local_response_norm(x, size: int = 4, alpha: float = 1e-3 / 9.0, beta: float = 0.75,
                         k: float = 1.0):
  """PyTorch's ``LocalResponseNorm`` over the channel axis of NHWC ``x``.

  :math:`b_c = a_c / (k + \\alpha \\cdot \\mathrm{mean}_{c' \\in W(c)} a_{c'}^2)^\\beta`, the
  window :math:`W(c)` of ``size`` channels zero-padded by ``(size // 2, (size - 1) // 2)``.
  """
  sq = jax.lax.reduce_window(x * x, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1),
                             [(0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2)])
  return x / (k + alpha * sq / size) ** beta


def _max_pool3x3s2(x):
  # PyTorch MaxPool2d(3, stride=2, padding=1): -inf padding, floor((n - 1) / 2) + 1 outputs.
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class AlexNetSmall(nn.Module):
  """The small AlexNet ("AlexCifarNet") of Dataset Distillation (Wang et al., 2018).

  conv 5x5 (64) -> ReLU -> 3x3/2 max pool -> LRN -> conv 5x5 (``width2``) -> ReLU -> LRN ->
  3x3/2 max pool -> dense 384 -> ReLU -> dense 192 -> ReLU -> dense(``num_classes``).
  LRN is PyTorch's ``LocalResponseNorm(4, alpha=0.001 / 9, beta=0.75, k=1)`` as in the
  reference code.

  Attributes:
    num_classes: number of output logits.
    width2: channels of the second conv layer (64 in DD; some re-implementations use 128).
    param_init: ``'torch'``, ``'xavier'`` (DD's default) or ``'gaussian'`` (see the module
      docstring).
  """
  num_classes: int
  width2: int = 64
  param_init: str = "torch"

  def __post_init__(self):
    _check_choice("param_init", self.param_init, _INITS)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    init = dict(init=self.param_init, w_std=math.sqrt(2.0), b_std=0.1)
    x = _local_response_norm(_max_pool3x3s2(nn.relu(_conv(x, 64, 5, name="conv0", **init))))
    x = _max_pool3x3s2(_local_response_norm(nn.relu(
        _conv(x, self.width2, 5, name="conv1", **init))))
    x = nn.relu(_dense(_flatten(x), 384, name="dense0", **init))
    x = nn.relu(_dense(x, 192, name="dense1", **init))
    return _dense(x, self.num_classes, name="readout", **init)


class _BasicBlock(nn.Module):
  features: int
  strides: int
  norm: str

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv(x, self.features, 3, strides=self.strides, use_bias=False, name="conv0")
    y = nn.relu(_norm(y, self.norm, train, name="norm0"))
    y = _conv(y, self.features, 3, use_bias=False, name="conv1")
    y = _norm(y, self.norm, train, name="norm1")
    if self.strides != 1 or x.shape[-1] != self.features:
      x = _conv(x, self.features, 1, strides=self.strides, use_bias=False, name="shortcut")
      x = _norm(x, self.norm, train, name="shortcut_norm")
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A small ResNet: conv 3x3 stem, stages of basic residual blocks, global average pool.

  Stage ``i`` has ``blocks[i]`` basic blocks of ``width * 2**i`` channels; every stage after
  the first starts with a stride-2 block (SAME padding, so odd sizes round up: 7 -> 4).

  Attributes:
    num_classes: number of output logits.
    width: channels of the stem and the first stage.
    blocks: blocks per stage (``(2, 2, 2, 2)`` with ``width=64`` is ResNet-18).
    norm: ``'instance'`` (as DC's ResNet variants), ``'batch'`` or ``'none'``.

  Reference: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
  """
  num_classes: int
  width: int = 32
  blocks: tuple[int, ...] = (1, 1, 1)
  norm: str = "instance"

  def __post_init__(self):
    _check_choice("norm", self.norm, _NORMS)
    if not self.blocks or min(self.blocks) < 1:
      raise ValueError(f"ResNet blocks must be a non-empty tuple of positive counts; got "
                       f"{self.blocks!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = _conv(x, self.width, 3, use_bias=False, name="stem")
    x = nn.relu(_norm(x, self.norm, train, name="stem_norm"))
    for i, n in enumerate(self.blocks):
      for j in range(n):
        strides = 2 if (i > 0 and j == 0) else 1
        x = _BasicBlock(self.width * 2 ** i, strides, self.norm, name=f"stage{i}_block{j}")(
            x, train)
    x = jnp.mean(x, axis=(1, 2))
    return _dense(x, self.num_classes, name="readout")


_PRESETS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "convnet": (ConvNet, dict(width=128, depth=3, norm="instance", pooling="avg")),
    "kip_convnet": (ConvNet, dict(width=1024, depth=3, norm="none", pooling="avg",
                                  param_init="gaussian", w_std=math.sqrt(2.0), b_std=0.1,
                                  prepend_conv=True, padding="same")),
    "kip_convnet3": (ConvNet, dict(width=1024, depth=3, norm="none", pooling="avg",
                                   param_init="gaussian", w_std=math.sqrt(2.0), b_std=0.1,
                                   prepend_conv=False, padding="same")),
    "fc": (FC, dict(width=1024, depth=2)),
    "lenet": (LeNet, {}),
    "alexnet": (AlexNetSmall, {}),
    "resnet": (ResNet, dict(width=32, blocks=(1, 1, 1), norm="instance")),
}
MODEL_NAMES: tuple[str, ...] = tuple(_PRESETS)


def get_model(name: str, num_classes: int, **overrides) -> nn.Module:
  """Builds a preset network.

  Args:
    name: one of :data:`MODEL_NAMES` (``'convnet'``, ``'kip_convnet'``, ``'kip_convnet3'``,
      ``'fc'``, ``'lenet'``, ``'alexnet'``, ``'resnet'``).
    num_classes: number of output logits.
    **overrides: attributes replacing the preset's (e.g. ``width=16``).

  Returns:
    An unbound Flax module.

  Raises:
    ValueError: for an unknown name or an attribute the model does not have.
  """
  if name not in _PRESETS:
    raise ValueError(f"unknown model {name!r}; known models: {list(MODEL_NAMES)}.")
  cls, preset = _PRESETS[name]
  fields = {f for f in cls.__dataclass_fields__ if f not in ("parent", "name")}
  unknown = set(overrides) - fields
  if unknown:
    raise ValueError(f"model {name!r} ({cls.__name__}) has no attributes {sorted(unknown)}; "
                     f"it takes {sorted(fields - {'num_classes'})}.")
  return cls(num_classes=num_classes, **{**preset, **overrides})
