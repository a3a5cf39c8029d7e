"""Shared machinery of the coreset baselines: feature maps, class-balanced indexing, results.

Contract of every coreset baseline (``random_real``, ``herding``, ``kcenter``, ``kmeans``,
``class_mean``)::

  method(dataset, images_per_class, key, **options) -> DistilledSet

* ``dataset`` is a ``kip.data.Dataset`` (only ``name``, ``x_train`` ``(n, H, W, C)``,
  ``y_train`` ``(n,)`` int, ``num_classes``, ``preprocessing`` and, optionally,
  ``class_names`` are read).
* Selection is class balanced: exactly ``images_per_class`` images per class, returned class by
  class (class 0 first), with float32 one-hot labels ``(images_per_class * K, K)``.
* Images are taken from ``dataset.x_train`` (already preprocessed), except in the centroid /
  mean modes, which return averages of training images in the same space.
* ``key`` is a ``jax.Array`` PRNG key or an ``int`` seed; each class uses
  ``jax.random.fold_in(key, class)`` so classes are independent and results are reproducible.
  Numpy-side sampling draws from a ``numpy.random.Generator`` seeded with bits of that key.
* Distances are Euclidean in a feature space chosen by ``features``:

  - ``'pixels'``: the flattened preprocessed image, :math:`\\phi(x) = \\mathrm{vec}(x)`;
  - ``'random_convnet'``: the penultimate activations (the input of the final ``Dense``) of a
    randomly initialised ConvNet-3 (``kip.transfer`` model ``'convnet'``, width 128,
    instance norm, average pooling) whose parameters are drawn from ``key``;
  - a callable ``features(x) -> (n, d)`` taking an ``(n, H, W, C)`` batch, e.g. the embedding
    of a network trained on the full data set (as used for herding / k-center in the DC paper,
    Zhao, Mopuri & Bilen, ICLR 2021).

Selected training indices are stored in ``metadata['indices']`` (selection modes only).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kip._src.distilled import DistilledSet, library_versions
from kip._src.transfer.models import get_model

__all__ = [
    "FeatureFn",
    "Features",
    "KeyLike",
    "as_key",
    "class_indices",
    "compute_features",
    "make_feature_fn",
    "make_distilled",
    "numpy_rng",
    "per_class_keys",
    "random_convnet_features",
    "select_per_class",
    "sq_distances",
]

logger = logging.getLogger(__name__)


class FeatureFn(Protocol):
  """A feature map ``(n, H, W, C) -> (n, d)``."""

  def __call__(self, x: np.ndarray) -> Any:
    ...


Features = Union[str, FeatureFn]
KeyLike = Union[jax.Array, int]


def as_key(key: KeyLike) -> tuple[jax.Array, Any]:
  """Returns ``(key, seed_for_metadata)`` from a PRNG key or an ``int`` seed.

  The metadata value is the ``int`` seed when one was given, else the key's raw ``uint32``
  data as a list (enough to rebuild the key with ``jnp.asarray(data, jnp.uint32)``).
  """
  if isinstance(key, (bool, np.bool_)):
    raise ValueError(f"key must be a jax PRNG key or an int seed; got {key!r}.")
  if isinstance(key, (int, np.integer)):
    return jax.random.PRNGKey(int(key)), int(key)
  try:
    arr = jnp.asarray(key) if not hasattr(key, "dtype") else key
  except TypeError as e:
    raise ValueError(f"key must be a jax PRNG key or an int seed; got {type(key).__name__}.") from e
  if jax.dtypes.issubdtype(arr.dtype, jax.dtypes.prng_key):
    return arr, np.asarray(jax.random.key_data(arr)).ravel().tolist()
  if arr.dtype != jnp.uint32 or arr.shape != (2,):
    raise ValueError(f"key must be a jax PRNG key (jax.random.key / PRNGKey) or an int seed; got "
                     f"an array of dtype {arr.dtype} and shape {arr.shape}.")
  return arr, np.asarray(arr).ravel().tolist()


def numpy_rng(key: jax.Array) -> np.random.Generator:
  """A ``numpy.random.Generator`` seeded deterministically from 128 bits of ``key``."""
  return np.random.default_rng(np.asarray(jax.random.bits(key, (4,), jnp.uint32)))


def _class_name(dataset, c: int) -> str:
  names = getattr(dataset, "class_names", None)
  if names is not None and len(names) > c:
    return f"{c} ({names[c]!r})"
  return str(c)


def class_indices(dataset, images_per_class: int) -> list[np.ndarray]:
  """Training-set indices of each class, validating ``images_per_class``.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: requested images per class; must satisfy
      ``1 <= images_per_class <= min_c |{i : y_i = c}|``.

  Returns:
    A list of ``num_classes`` sorted ``int64`` index arrays into ``dataset.x_train``.

  Raises:
    ValueError: for a non-integer or non-positive count, a count above the smallest class
      (naming that class and its size), malformed images or labels.
  """
  if isinstance(images_per_class, (bool, np.bool_)) or not isinstance(
      images_per_class, (int, np.integer)):
    raise ValueError(f"images_per_class must be a positive int; got {images_per_class!r}.")
  if images_per_class < 1:
    raise ValueError(f"images_per_class must be >= 1; got {images_per_class}.")
  x = np.asarray(dataset.x_train)
  y = np.asarray(dataset.y_train)
  k = int(dataset.num_classes)
  if x.ndim != 4:
    raise ValueError(f"dataset.x_train must be (n, H, W, C); got shape {x.shape}.")
  if y.shape != (x.shape[0],):
    raise ValueError(f"dataset.y_train must be ({x.shape[0]},) integer labels; got shape {y.shape}.")
  if y.size and (y.min() < 0 or y.max() >= k):
    raise ValueError(f"dataset.y_train must lie in [0, {k}); got range [{y.min()}, {y.max()}].")
  out = [np.flatnonzero(y == c) for c in range(k)]
  counts = [len(i) for i in out]
  smallest = int(np.argmin(counts))
  if images_per_class > counts[smallest]:
    raise ValueError(
        f"images_per_class={images_per_class} exceeds the {counts[smallest]} training images of "
        f"class {_class_name(dataset, smallest)} in {dataset.name!r}; use images_per_class <= "
        f"{counts[smallest]}.")
  return out


def random_convnet_features(key: jax.Array, image_shape: Sequence[int], num_classes: int,
                            model: str = "convnet", **overrides) -> FeatureFn:
  """Embedding by a randomly initialised transfer network: the input of its last ``Dense``.

  .. math:: \\phi(x) = h_{L-1}(x; \\theta_0), \\qquad \\theta_0 \\sim p(\\theta_0 \\mid key),

  where :math:`h_{L-1}` is the (flattened) activation fed to the final linear read-out. The
  read-out's input is captured with ``flax.linen.intercept_methods``, so any model from
  ``kip.transfer.models.get_model`` whose last layer is ``nn.Dense`` works.

  Args:
    key: PRNG key for the network's parameters.
    image_shape: ``(H, W, C)``.
    num_classes: number of outputs of the (unused) read-out.
    model: a ``get_model`` name; default ``'convnet'`` (ConvNet-3, width 128, instance norm).
    **overrides: passed to ``get_model``.

  Returns:
    A jitted ``(n, H, W, C) -> (n, d)`` feature map.
  """
  net = get_model(model, num_classes, **overrides)
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  variables = net.init(key, dummy, train=False)

  def embed(x):
    captured = []

    def interceptor(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
        captured.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      net.apply(variables, x, train=False)
    if not captured:
      raise ValueError(f"model {model!r} has no nn.Dense read-out whose input could be "
                       "captured; pass a callable `features` instead.")
    h = captured[-1]
    return h.reshape(h.shape[0], -1)

  return jax.jit(embed)


def make_feature_fn(features: Features, dataset, key: jax.Array) -> tuple[FeatureFn, str]:
  """Resolves ``features`` to ``(fn, description)``; see the module docstring."""
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
  """Applies ``fn`` in batches of ``batch_size``; returns ``(n, d)`` float64."""
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


def make_distilled(dataset, images: np.ndarray, classes: np.ndarray, method: str, seed: Any,
                   config: dict, **metadata) -> DistilledSet:
  """Wraps selected or averaged images into a ``DistilledSet`` with one-hot labels."""
  k = int(dataset.num_classes)
  labels = np.eye(k, dtype=np.float32)[np.asarray(classes, np.int64)]
  meta = {"seed": seed, "config": dict(config), "versions": library_versions(), **metadata}
  return DistilledSet(images=np.asarray(images, np.float32), labels=labels, dataset=dataset.name,
                      method=method, preprocessing=getattr(dataset, "preprocessing", None),
                      metadata=meta)


def per_class_keys(key: jax.Array, num_classes: int) -> list[jax.Array]:
  """``fold_in(key, c)`` for each class, so each class's randomness is independent."""
  return [jax.random.fold_in(key, c) for c in range(num_classes)]


def sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """``(n, m)`` squared Euclidean distances, clipped at 0 (float64)."""
  d = (np.sum(a * a, axis=1)[:, None] - 2.0 * a @ b.T + np.sum(b * b, axis=1)[None, :])
  return np.maximum(d, 0.0)


def select_per_class(dataset, images_per_class: int, key: KeyLike, select: Callable[..., np.ndarray],
                     *, features: Features = "pixels", batch_size: int = 1000
                     ) -> tuple[np.ndarray, np.ndarray, Any, str]:
  """Runs a per-class selection rule in feature space.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: images to select per class.
    key: PRNG key or ``int`` seed; split into a feature key (``random_convnet``) and per-class
      selection keys.
    select: ``select(phi, m, key_c) -> (m,)`` distinct local indices into ``phi`` ``(n_c, d)``.
    features: ``'pixels'``, ``'random_convnet'`` or a callable.
    batch_size: batch size for computing features.

  Returns:
    ``(indices, classes, seed, feature_description)``: ``(m * K,)`` training indices, their
    classes, the metadata seed and the feature name.
  """
  key, seed = as_key(key)
  idx = class_indices(dataset, images_per_class)
  feat_key, sel_key = jax.random.split(key)
  fn, desc = make_feature_fn(features, dataset, feat_key)
  x = np.asarray(dataset.x_train)
  chosen, classes = [], []
  for c, (ic, kc) in enumerate(zip(idx, per_class_keys(sel_key, len(idx)))):
    phi = compute_features(fn, x[ic], batch_size)
    local = np.asarray(select(phi, images_per_class, kc), np.int64)
    if local.shape != (images_per_class,) or len(np.unique(local)) != images_per_class:
      raise RuntimeError(f"selection rule returned invalid indices {local} for class {c}.")
    chosen.append(ic[local])
    classes.append(np.full(images_per_class, c, np.int64))
  return np.concatenate(chosen), np.concatenate(classes), seed, desc
