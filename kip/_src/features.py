"""Feature maps of images: pixels, the read-out input of a (random) network, or a callable.

The coreset baselines measure distances in a feature space and DM matches mean embeddings;
both read a network's *embedding* the same way, as the input of its final linear read-out:

.. math:: \\phi(x) = h_{L-1}(x; \\theta), \\qquad f(x; \\theta) = W h_{L-1}(x; \\theta) + b,

captured with ``flax.linen.intercept_methods``, so any Flax model whose last layer is
``nn.Dense`` works (for ConvNet-3 this is the reference ``ConvNet.embed``).

A feature map is ``fn(x) -> (n, d)`` for an ``(n, H, W, C)`` batch. :func:`make_feature_fn`
resolves the names ``'pixels'`` (:math:`\\phi(x) = \\mathrm{vec}(x)`) and ``'random_convnet'``
(the embedding of a randomly initialised ConvNet-3 drawn from a key) or passes a callable
through.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kip._src.transfer.models import get_model

__all__ = ["FEATURES", "FeatureFn", "Features", "compute_features", "make_feature_fn",
           "random_convnet_features", "readout_input"]

FEATURES = ("pixels", "random_convnet")


class FeatureFn(Protocol):
  """A feature map ``(n, H, W, C) -> (n, d)``."""

  def __call__(self, x: np.ndarray) -> Any:
    ...


Features = Union[str, FeatureFn]


def readout_input(model: nn.Module, variables, x: jax.Array, *, train: bool,
                  mutable: Any = False) -> jax.Array:
  """The flattened input of ``model``'s last ``nn.Dense`` call: its embedding :math:`\\phi(x)`.

  Args:
    model: a Flax module ending in a linear read-out.
    variables: its variables (``{'params': ...}``, plus ``'batch_stats'`` for batch norm).
    x: ``(n, H, W, C)`` images.
    train: passed to ``model.apply`` (DM embeds in train mode, as the reference does).
    mutable: passed to ``model.apply`` (``['batch_stats']`` for batch norm in train mode; the
      updated statistics are discarded).

  Returns:
    ``(n, d)`` features.

  Raises:
    ValueError: the model calls no ``nn.Dense``.
  """
  captured = []

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
      captured.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    model.apply(variables, x, train=train, mutable=mutable)
  if not captured:
    raise ValueError(f"{type(model).__name__} has no nn.Dense read-out whose input could be "
                     "used as the embedding; use a network ending in a linear layer (or pass "
                     "a callable feature map).")
  h = captured[-1]
  return h.reshape(h.shape[0], -1)


def random_convnet_features(key: jax.Array, image_shape: Sequence[int], num_classes: int,
                            model: str = "convnet", **overrides) -> FeatureFn:
  """Embedding by a randomly initialised network: :math:`\\phi(x) = h_{L-1}(x; \\theta_0)`.

  Args:
    key: PRNG key of the parameters :math:`\\theta_0`.
    image_shape: ``(H, W, C)``.
    num_classes: outputs of the (unused) read-out.
    model: a ``kip.transfer.get_model`` name; default ``'convnet'`` (ConvNet-3, width 128,
      instance norm, average pooling).
    **overrides: passed to ``get_model``.

  Returns:
    A jitted ``(n, H, W, C) -> (n, d)`` feature map (eval mode).
  """
  net = get_model(model, num_classes, **overrides)
  variables = net.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return jax.jit(lambda x: readout_input(net, variables, x, train=False))


def make_feature_fn(features: Features, dataset, key: jax.Array) -> tuple[FeatureFn, str]:
  """Resolves ``features`` to ``(fn, description)``.

  Args:
    features: ``'pixels'``, ``'random_convnet'`` or a callable ``(n, H, W, C) -> (n, d)``.
    dataset: a ``kip.data.Dataset`` (image shape and number of classes).
    key: PRNG key of the random network (``'random_convnet'`` only).

  Raises:
    ValueError: an unknown name.
  """
  if callable(features):
    return features, getattr(features, "__name__", type(features).__name__)
  if features == "pixels":
    return (lambda x: np.asarray(x).reshape(len(x), -1)), "pixels"
  if features == "random_convnet":
    shape = tuple(np.asarray(dataset.x_train).shape[1:])
    return random_convnet_features(key, shape, int(dataset.num_classes)), "random_convnet"
  raise ValueError(f"features must be 'pixels', 'random_convnet' or a callable "
                   f"(n, H, W, C) -> (n, d); got {features!r}.")


def compute_features(fn: FeatureFn, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """Applies ``fn`` to ``x`` in batches of ``batch_size``; returns ``(n, d)`` float64.

  Raises:
    ValueError: ``batch_size < 1``, or ``fn`` returns a wrong shape or non-finite values.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
  parts = []
  for s in range(0, len(x), batch_size):
    f = np.asarray(fn(x[s:s + batch_size]), np.float64)
    n = min(batch_size, len(x) - s)
    if f.ndim < 2 or f.shape[0] != n:
      raise ValueError(f"features(x) must return shape (n, d) with n = {n}; got {f.shape}.")
    parts.append(f.reshape(n, -1))
  out = np.concatenate(parts, axis=0)
  if not np.isfinite(out).all():
    raise ValueError("features(x) returned NaN or inf.")
  return out
