"""Real-image coresets as one-step algorithms: random, herding, k-center, k-means, class mean.

Every coreset follows the algorithm contract (:mod:`kip._src.algorithm`) with one step that
runs the whole selection on the host (not jitted); further steps change nothing but the count,
so a run's result does not depend on how many steps it is given.

* ``init(key, dataset)`` validates ``images_per_class`` against the class sizes and returns a
  :class:`CoresetState` of zeros with the one-hot labels set.
* ``step(state, dataset, key)``: ``feature_key, selection_key = split(key)``; the feature map
  is resolved from ``feature_key`` (``'random_convnet'`` draws its network from it) and class
  ``c`` selects with ``fold_in(selection_key, c)``, so classes are independent. NumPy-side draws
  come from a ``numpy.random.Generator`` seeded with bits of that key.
* ``result(state, dataset)``: a ``DistilledSet`` of exactly ``images_per_class`` images per
  class, class by class (class 0 first), with float32 one-hot labels; selected training indices
  in ``metadata['indices']`` (selection modes), cluster sizes in ``metadata['cluster_sizes']``
  (k-means, class mean).

Images are taken from ``dataset.x_train`` (already preprocessed), except in the centroid / mean
modes, which return averages of training images in the same space. Distances are Euclidean in
the feature space ``features`` names (:mod:`kip._src.features`):

- ``'pixels'``: the flattened preprocessed image, :math:`\\phi(x) = \\mathrm{vec}(x)`;
- ``'random_convnet'``: the read-out input of a randomly initialised ConvNet-3 (width 128,
  instance norm, average pooling);
- a callable ``(n, H, W, C) -> (n, d)`` passed to the factory as ``feature_fn`` (e.g. the
  embedding of a network trained on the full data set, as for herding / k-center in Zhao,
  Mopuri & Bilen, ICLR 2021); configs hold names only.

The public functions ``random_real(dataset, ipc, key)``, ``herding(...)``, ``kcenter(...)``,
``kmeans(...)`` and ``class_mean(...)`` build the config and run the algorithm with the driver.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kip._src import driver
from kip._src.algorithm import Algorithm, config_dict
from kip._src.distilled import DistilledSet
from kip._src.features import FEATURES, Features, FeatureFn, compute_features, make_feature_fn
from kip._src.random import KeyLike, numpy_rng, per_class_keys

__all__ = [
    "ClassMeanConfig", "CoresetState", "HerdingConfig", "KCenterConfig", "KMeansConfig",
    "RandomConfig", "class_indices", "class_mean", "herding", "herding_select", "kcenter",
    "kcenter_select", "kmeans", "kmeans_fit", "make_class_mean", "make_herding", "make_kcenter",
    "make_kmeans", "make_random", "random_real", "sq_distances",
]

logger = logging.getLogger(__name__)

_FIRST = ("mean", "random")
_MODES = ("centroid", "nearest")


# ----------------------------------------------------------------------------- shared helpers
def _class_name(dataset, c: int) -> str:
  names = getattr(dataset, "class_names", None)
  if names is not None and len(names) > c:
    return f"{c} ({names[c]!r})"
  return str(c)


def _check_ipc(images_per_class) -> None:
  if isinstance(images_per_class, (bool, np.bool_)) or not isinstance(
      images_per_class, (int, np.integer)):
    raise ValueError(f"images_per_class must be a positive int; got {images_per_class!r}.")
  if images_per_class < 1:
    raise ValueError(f"images_per_class must be >= 1; got {images_per_class}.")


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
  _check_ipc(images_per_class)
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


def sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """``(n, m)`` squared Euclidean distances, clipped at 0 (float64)."""
  d = (np.sum(a * a, axis=1)[:, None] - 2.0 * a @ b.T + np.sum(b * b, axis=1)[None, :])
  return np.maximum(d, 0.0)


# ----------------------------------------------------------------------------- selection rules
def herding_select(phi: np.ndarray, m: int) -> np.ndarray:
  """Greedy herding on features ``phi`` ``(n, d)``; returns ``(m,)`` distinct row indices.

  For :math:`k = 1, \\dots, m`, with :math:`\\mu = \\frac1n \\sum_i \\phi_i`,

  .. math::
      i_k = \\operatorname*{arg\\,min}_{i \\notin \\{i_1..i_{k-1}\\}}
            \\Big\\| \\mu - \\frac{1}{k}\\Big(\\phi_i + \\sum_{j<k} \\phi_{i_j}\\Big) \\Big\\|_2,

  ties to the lowest index (Welling, ICML 2009; iCaRL, Rebuffi et al., CVPR 2017).
  """
  phi = np.asarray(phi, np.float64)
  mu = phi.mean(axis=0)
  total = np.zeros_like(mu)
  available = np.ones(len(phi), bool)
  out = np.empty(m, np.int64)
  for k in range(1, m + 1):
    dist = np.sum((mu[None, :] - (total[None, :] + phi) / k) ** 2, axis=1)
    dist[~available] = np.inf
    i = int(np.argmin(dist))
    out[k - 1] = i
    available[i] = False
    total += phi[i]
  return out


def kcenter_select(phi: np.ndarray, m: int, first: int) -> np.ndarray:
  """Greedy farthest-point selection of ``m`` rows of ``phi`` ``(n, d)`` from row ``first``.

  .. math:: i_k = \\operatorname*{arg\\,max}_{i} \\min_{j<k} \\|\\phi_i - \\phi_{i_j}\\|_2,

  the 2-approximation of k-center (Gonzalez, TCS 1985; Sener & Savarese, ICLR 2018).
  """
  phi = np.asarray(phi, np.float64)
  out = np.empty(m, np.int64)
  out[0] = first
  min_d = sq_distances(phi, phi[first:first + 1])[:, 0]
  min_d[first] = -np.inf
  for k in range(1, m):
    i = int(np.argmax(min_d))
    out[k] = i
    min_d = np.minimum(min_d, sq_distances(phi, phi[i:i + 1])[:, 0])
    min_d[out[:k + 1]] = -np.inf  # duplicates (distance 0) never get picked twice
  return out


def kmeans_fit(phi: np.ndarray, k: int, rng: np.random.Generator, num_iters: int = 20
               ) -> tuple[np.ndarray, np.ndarray]:
  """k-means++ (Arthur & Vassilvitskii, SODA 2007) then Lloyd iterations on ``phi`` ``(n, d)``.

  Minimises :math:`\\sum_j \\sum_{i \\in C_j} \\|\\phi_i - \\mu_j\\|_2^2`; an empty cluster is
  re-seeded with the point worst served by its center; stops after ``num_iters`` or when the
  assignment no longer changes.

  Args:
    phi: ``(n, d)`` features, ``n >= k``.
    k: number of clusters.
    rng: numpy generator for the k-means++ draws.
    num_iters: maximum number of Lloyd iterations (``0``: k-means++ centers only).

  Returns:
    ``(centers (k, d), assignment (n,))``; every cluster is non-empty.
  """
  phi = np.asarray(phi, np.float64)
  n = phi.shape[0]
  centers = np.empty((k, phi.shape[1]))
  centers[0] = phi[rng.integers(n)]
  d2 = sq_distances(phi, centers[:1])[:, 0]
  for j in range(1, k):
    total = d2.sum()
    # All remaining points coincide with a center: any point is as good as any other.
    i = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
    centers[j] = phi[i]
    d2 = np.minimum(d2, sq_distances(phi, centers[j:j + 1])[:, 0])
  assign = _fill_empty(np.argmin(sq_distances(phi, centers), axis=1),
                       sq_distances(phi, centers), k)
  for _ in range(num_iters):
    centers = np.stack([phi[assign == j].mean(0) for j in range(k)])
    dist = sq_distances(phi, centers)
    new = _fill_empty(np.argmin(dist, axis=1), dist, k)
    if np.array_equal(new, assign):
      break
    assign = new
  centers = np.stack([phi[assign == j].mean(0) for j in range(k)])
  return centers, assign


def _fill_empty(assign: np.ndarray, dist: np.ndarray, k: int) -> np.ndarray:
  """Moves into each empty cluster the point worst served by its center (from a cluster of >1)."""
  assign = assign.copy()
  counts = np.bincount(assign, minlength=k)
  n = len(assign)
  for j in np.flatnonzero(counts == 0):
    own = dist[np.arange(n), assign]
    own[counts[assign] <= 1] = -np.inf
    i = int(np.argmax(own))
    counts[assign[i]] -= 1
    assign[i] = j
    counts[j] = 1
  return assign


def _nearest_distinct(phi: np.ndarray, centers: np.ndarray) -> np.ndarray:
  """The nearest unused row of ``phi`` to each center, centers taken in order."""
  dist = sq_distances(phi, centers)
  out = np.empty(len(centers), np.int64)
  used = np.zeros(len(phi), bool)
  for j in range(len(centers)):
    d = np.where(used, np.inf, dist[:, j])
    out[j] = int(np.argmin(d))
    used[out[j]] = True
  return out


# ----------------------------------------------------------------------------- configs
def _check_common(config) -> None:
  _check_ipc(config.images_per_class)
  if isinstance(config.steps, bool) or not isinstance(config.steps, (int, np.integer)) \
      or config.steps < 1:
    raise ValueError(f"steps={config.steps!r} must be an int >= 1 (a coreset is one step).")


def _check_features(config) -> None:
  if config.features not in FEATURES:
    raise ValueError(f"features must be 'pixels', 'random_convnet' or a callable "
                     f"(n, H, W, C) -> (n, d) passed as feature_fn; got {config.features!r}.")
  if config.batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {config.batch_size}.")


@dataclasses.dataclass(frozen=True)
class RandomConfig:
  """Random real images: ``images_per_class`` per class, uniformly without replacement.

  .. math:: S_c \\sim \\mathrm{Uniform}\\{S \\subseteq D_c : |S| = m\\}

  (the weakest sensible baseline of every distillation paper, e.g. Wang et al. 2018).

  Attributes:
    images_per_class: ``m``, with ``1 <= m <=`` the smallest class size.
    steps: driver steps (the selection is the first; default 1).
  """
  images_per_class: int = 1
  steps: int = 1

  def __post_init__(self):
    _check_common(self)

  def to_dict(self) -> dict[str, Any]:
    return config_dict(self)


@dataclasses.dataclass(frozen=True)
class HerdingConfig:
  """Herding: greedy match of the running selection mean to the class mean (see
  :func:`herding_select`); deterministic given the features.

  Attributes:
    images_per_class: ``m``, with ``1 <= m <=`` the smallest class size.
    steps: driver steps (the selection is the first; default 1).
    features: ``'pixels'`` or ``'random_convnet'``.
    batch_size: batch size of the feature map.
  """
  images_per_class: int = 1
  steps: int = 1
  features: str = "pixels"
  batch_size: int = 1000

  def __post_init__(self):
    _check_common(self)
    _check_features(self)

  def to_dict(self) -> dict[str, Any]:
    return config_dict(self)


@dataclasses.dataclass(frozen=True)
class KCenterConfig:
  """k-center greedy (see :func:`kcenter_select`).

  Attributes:
    images_per_class: ``m``, with ``1 <= m <=`` the smallest class size.
    steps: driver steps (the selection is the first; default 1).
    features: ``'pixels'`` or ``'random_convnet'``.
    first: first center: ``'mean'`` (the point nearest the class mean, deterministic) or
      ``'random'`` (uniform, from the key).
    batch_size: batch size of the feature map.
  """
  images_per_class: int = 1
  steps: int = 1
  features: str = "pixels"
  first: str = "mean"
  batch_size: int = 1000

  def __post_init__(self):
    _check_common(self)
    _check_features(self)
    if self.first not in _FIRST:
      raise ValueError(f"first must be one of {_FIRST}; got {self.first!r}.")

  def to_dict(self) -> dict[str, Any]:
    return config_dict(self)


@dataclasses.dataclass(frozen=True)
class KMeansConfig:
  """Per-class k-means with ``k = images_per_class`` (see :func:`kmeans_fit`).

  Attributes:
    images_per_class: clusters per class, ``1 <= m <=`` the smallest class size.
    steps: driver steps (the selection is the first; default 1).
    mode: ``'centroid'``: the mean *image* of each cluster (with ``features='pixels'`` exactly
      the centroid); ``'nearest'``: the real image nearest each centroid in feature space,
      distinct across centroids (a subset of the training set).
    features: ``'pixels'`` or ``'random_convnet'``.
    num_iters: maximum Lloyd iterations.
    batch_size: batch size of the feature map.
  """
  images_per_class: int = 1
  steps: int = 1
  mode: str = "centroid"
  features: str = "pixels"
  num_iters: int = 20
  batch_size: int = 1000

  def __post_init__(self):
    _check_common(self)
    if self.mode not in _MODES:
      raise ValueError(f"mode must be one of {_MODES}; got {self.mode!r}.")
    _check_features(self)
    if self.num_iters < 0:
      raise ValueError(f"num_iters must be >= 0; got {self.num_iters}.")

  def to_dict(self) -> dict[str, Any]:
    return config_dict(self)


@dataclasses.dataclass(frozen=True)
class ClassMeanConfig:
  """Class means, :math:`\\bar x_c = \\frac{1}{|D_c|} \\sum_{i \\in D_c} x_i` (nearest-class-mean
  prototypes, Mensink et al., TPAMI 2013); for ``images_per_class > 1`` the pixel-space
  k-means centroids of the class, of which the mean is the ``m = 1`` case
  (``metadata['strategy']`` says which).

  Attributes:
    images_per_class: ``m``.
    steps: driver steps (the selection is the first; default 1).
    num_iters: maximum Lloyd iterations when ``m > 1``.
  """
  images_per_class: int = 1
  steps: int = 1
  num_iters: int = 20

  def __post_init__(self):
    _check_common(self)
    if self.num_iters < 0:
      raise ValueError(f"num_iters must be >= 0; got {self.num_iters}.")

  def to_dict(self) -> dict[str, Any]:
    return config_dict(self)


# ----------------------------------------------------------------------------- the algorithm
class CoresetState(NamedTuple):
  """State of a coreset run (zeros until the selection step).

  Attributes:
    images: ``(K * m, H, W, C)`` float32 selected (or averaged) images, class by class.
    labels: ``(K * m, K)`` float32 one-hot labels.
    indices: ``(K * m,)`` int32 training indices of the selected images (-1 for averages).
    cluster_sizes: ``(K, m)`` int32 members of each cluster (k-means, class mean; else 0).
    count: ``()`` int32 completed steps.
  """
  images: jax.Array
  labels: jax.Array
  indices: jax.Array
  cluster_sizes: jax.Array
  count: jax.Array


# rule(x_c, phi_c, m, key_c) -> (images (m, H, W, C), local indices (m,) or None,
#                                cluster sizes (m,) or None)
_Rule = Callable[[np.ndarray, Optional[np.ndarray], int, jax.Array],
                 tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]]


def _make_coreset(name: str, config, rule: _Rule, *, features: Optional[Features],
                  batch_size: int = 1000, extra_meta: Optional[dict] = None) -> Algorithm:
  """A one-step :class:`~kip._src.algorithm.Algorithm` running ``rule`` class by class.

  ``features`` is ``None`` for rules that read no features (random, class mean).
  """
  m = config.images_per_class
  desc = None
  if features is not None:
    desc = features if isinstance(features, str) else getattr(
        features, "__name__", type(features).__name__)
  config_view = config.to_dict()
  if desc is not None:
    config_view["features"] = desc

  def init(key, dataset) -> CoresetState:
    del key  # the selection draws from its step key
    idx = class_indices(dataset, m)
    k = len(idx)
    shape = (k * m,) + tuple(np.asarray(dataset.x_train).shape[1:])
    labels = np.repeat(np.eye(k, dtype=np.float32), m, axis=0)
    return CoresetState(jnp.zeros(shape, jnp.float32), jnp.asarray(labels),
                        jnp.full((k * m,), -1, jnp.int32), jnp.zeros((k, m), jnp.int32),
                        jnp.zeros((), jnp.int32))

  def step(state: CoresetState, dataset, key) -> tuple[CoresetState, dict]:
    if int(state.count) > 0:  # selected already: later steps only count
      return state._replace(count=state.count + 1), {"loss": 0.0}
    idx = class_indices(dataset, m)
    feature_key, selection_key = jax.random.split(key)
    fn = None if features is None else make_feature_fn(features, dataset, feature_key)[0]
    x = np.asarray(dataset.x_train)
    images, indices, sizes = [], [], []
    for c, (ic, kc) in enumerate(zip(idx, per_class_keys(selection_key, len(idx)))):
      phi = None if fn is None else compute_features(fn, x[ic], batch_size)
      im, local, size = rule(x[ic], phi, m, kc)
      if local is not None:
        local = np.asarray(local, np.int64)
        if local.shape != (m,) or len(np.unique(local)) != m:
          raise RuntimeError(f"{name}: the selection rule returned invalid indices {local} for "
                             f"class {c}.")
        indices.append(ic[local])
      else:
        indices.append(np.full(m, -1, np.int64))
      images.append(np.asarray(im, np.float64) if local is None else im)
      sizes.append(np.zeros(m, np.int64) if size is None else np.asarray(size, np.int64))
    new = CoresetState(jnp.asarray(np.concatenate(images).astype(np.float32)), state.labels,
                       jnp.asarray(np.concatenate(indices).astype(np.int32)),
                       jnp.asarray(np.stack(sizes).astype(np.int32)), state.count + 1)
    return new, {"loss": 0.0}

  def result(state: CoresetState, dataset) -> DistilledSet:
    meta: dict[str, Any] = {"config": config_view, **(extra_meta or {})}
    indices = np.asarray(state.indices)
    if (indices >= 0).all():
      meta["indices"] = indices.tolist()
    if np.asarray(state.cluster_sizes).any():
      meta["cluster_sizes"] = np.asarray(state.cluster_sizes).tolist()
    return DistilledSet(images=np.asarray(state.images, np.float32),
                        labels=np.asarray(state.labels), dataset=dataset.name, method=name,
                        preprocessing=getattr(dataset, "preprocessing", None), metadata=meta)

  spec = {"config": config_view}
  return Algorithm(name, init, lambda dataset: dataset, step, result, spec, config.steps,
                   "a coreset has no learning rate; check the data set and the feature map",
                   watch_loss=False)


def make_random(config: RandomConfig) -> Algorithm:
  """Random real images (see :class:`RandomConfig`)."""

  def rule(xc, phi, m, key_c):
    local = np.asarray(jax.random.choice(key_c, xc.shape[0], (m,), replace=False))
    return xc[local], local, None

  return _make_coreset("random", config, rule, features=None)


def make_herding(config: HerdingConfig, *, feature_fn: Optional[FeatureFn] = None
                 ) -> Algorithm:
  """Herding (see :class:`HerdingConfig`).

  Args:
    config: :class:`HerdingConfig`.
    feature_fn: a callable ``(n, H, W, C) -> (n, d)`` replacing ``config.features`` (recorded
      by its ``__name__``).
  """

  def rule(xc, phi, m, key_c):
    local = herding_select(phi, m)
    return xc[local], local, None

  return _make_coreset("herding", config, rule, features=feature_fn or config.features,
                       batch_size=config.batch_size)


def make_kcenter(config: KCenterConfig, *, feature_fn: Optional[FeatureFn] = None
                 ) -> Algorithm:
  """k-center greedy (see :class:`KCenterConfig`); ``feature_fn`` as in :func:`make_herding`."""

  def rule(xc, phi, m, key_c):
    if config.first == "random":
      start = int(jax.random.randint(key_c, (), 0, phi.shape[0]))
    else:
      start = int(np.argmin(sq_distances(phi, phi.mean(0, keepdims=True))[:, 0]))
    local = kcenter_select(phi, m, start)
    return xc[local], local, None

  return _make_coreset("kcenter", config, rule, features=feature_fn or config.features,
                       batch_size=config.batch_size)


def _kmeans_rule(mode: str, num_iters: int) -> _Rule:
  def rule(xc, phi, m, key_c):
    centers, assign = kmeans_fit(phi, m, numpy_rng(key_c), num_iters)
    sizes = np.bincount(assign, minlength=m)
    if mode == "centroid":
      x64 = xc.astype(np.float64)
      return np.stack([x64[assign == j].mean(0) for j in range(m)]), None, sizes
    local = _nearest_distinct(phi, centers)
    return xc[local], local, sizes
  return rule


def make_kmeans(config: KMeansConfig, *, feature_fn: Optional[FeatureFn] = None) -> Algorithm:
  """Per-class k-means (see :class:`KMeansConfig`); ``feature_fn`` as in :func:`make_herding`."""
  return _make_coreset("kmeans", config, _kmeans_rule(config.mode, config.num_iters),
                       features=feature_fn or config.features, batch_size=config.batch_size)


def make_class_mean(config: ClassMeanConfig) -> Algorithm:
  """Class means, or pixel-space k-means centroids for ``m > 1`` (see :class:`ClassMeanConfig`)."""
  if config.images_per_class == 1:
    def rule(xc, phi, m, key_c):
      return xc.astype(np.float64).mean(0, keepdims=True), None, np.array([len(xc)])

    return _make_coreset("class_mean", config, rule, features=None,
                         extra_meta={"strategy": "mean"})
  logger.info("class_mean with images_per_class=%d: using pixel-space k-means centroids.",
              config.images_per_class)
  return _make_coreset("class_mean", config, _kmeans_rule("centroid", config.num_iters),
                       features="pixels", extra_meta={"strategy": "kmeans_centroids"})


# ----------------------------------------------------------------------------- public functions
def _run(algorithm: Algorithm, dataset, key: KeyLike) -> DistilledSet:
  return driver.run(algorithm, dataset, key=key, progress=False)


def random_real(dataset, images_per_class: int, key: KeyLike) -> DistilledSet:
  """Selects ``images_per_class`` random training images per class.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``m``, with ``1 <= m <=`` the smallest class size.
    key: PRNG key or ``int`` seed.

  Returns:
    A ``DistilledSet`` (``method='random'``) of ``m * K`` real images, class by class, with
    one-hot labels and the chosen training indices in ``metadata['indices']``.

  Raises:
    ValueError: if ``images_per_class`` is not in ``[1, smallest class size]``.
  """
  return _run(make_random(RandomConfig(images_per_class)), dataset, key)


def herding(dataset, images_per_class: int, key: KeyLike, *, features: Features = "pixels",
            batch_size: int = 1000) -> DistilledSet:
  """Selects ``images_per_class`` real images per class by herding in feature space.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``m``, with ``1 <= m <=`` the smallest class size.
    key: PRNG key or ``int`` seed (used by ``features='random_convnet'``).
    features: ``'pixels'``, ``'random_convnet'`` or a callable ``(n, H, W, C) -> (n, d)``.
    batch_size: batch size for the feature map.

  Returns:
    A ``DistilledSet`` (``method='herding'``): ``m * K`` training images, class by class in
    selection order, one-hot labels, training indices in ``metadata['indices']``.
  """
  name, fn = _split_features(features)
  config = HerdingConfig(images_per_class, features=name, batch_size=batch_size)
  return _run(make_herding(config, feature_fn=fn), dataset, key)


def kcenter(dataset, images_per_class: int, key: KeyLike, *, features: Features = "pixels",
            first: str = "mean", batch_size: int = 1000) -> DistilledSet:
  """Selects ``images_per_class`` real images per class by greedy k-center.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``m``, with ``1 <= m <=`` the smallest class size.
    key: PRNG key or ``int`` seed (first center with ``first='random'``; ``'random_convnet'``).
    features: ``'pixels'``, ``'random_convnet'`` or a callable ``(n, H, W, C) -> (n, d)``.
    first: ``'mean'`` (point nearest the class mean) or ``'random'``.
    batch_size: batch size for the feature map.

  Returns:
    A ``DistilledSet`` (``method='kcenter'``), class by class in selection order.
  """
  name, fn = _split_features(features)
  config = KCenterConfig(images_per_class, features=name, first=first, batch_size=batch_size)
  return _run(make_kcenter(config, feature_fn=fn), dataset, key)


def kmeans(dataset, images_per_class: int, key: KeyLike, *, mode: str = "centroid",
           features: Features = "pixels", num_iters: int = 20,
           batch_size: int = 1000) -> DistilledSet:
  """Per-class k-means with ``k = images_per_class``.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: clusters per class, ``1 <= m <=`` the smallest class size.
    key: PRNG key or ``int`` seed (k-means++ draws; ``'random_convnet'`` parameters).
    mode: ``'centroid'`` (mean image of each cluster) or ``'nearest'`` (nearest real image).
    features: ``'pixels'``, ``'random_convnet'`` or a callable ``(n, H, W, C) -> (n, d)``.
    num_iters: maximum Lloyd iterations.
    batch_size: batch size for the feature map.

  Returns:
    A ``DistilledSet`` (``method='kmeans'``); ``metadata['cluster_sizes']`` lists the cluster
    sizes, and with ``mode='nearest'`` ``metadata['indices']`` the training indices.
  """
  name, fn = _split_features(features)
  config = KMeansConfig(images_per_class, mode=mode, features=name, num_iters=num_iters,
                        batch_size=batch_size)
  return _run(make_kmeans(config, feature_fn=fn), dataset, key)


def class_mean(dataset, images_per_class: int = 1, key: Optional[KeyLike] = None, *,
               num_iters: int = 20) -> DistilledSet:
  """The mean image of each class, or ``m`` pixel-space k-means centroids per class for ``m > 1``.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``m``; ``1`` gives the exact class means (the key is unused).
    key: PRNG key or ``int`` seed for the k-means++ initialisation; required when ``m > 1``.
    num_iters: maximum Lloyd iterations when ``m > 1``.

  Returns:
    A ``DistilledSet`` (``method='class_mean'``) of ``m * K`` averaged images, class by class.

  Raises:
    ValueError: ``images_per_class`` out of range, or ``key`` missing with ``m > 1``.
  """
  config = ClassMeanConfig(images_per_class, num_iters=num_iters)
  if key is None:
    if images_per_class > 1:
      raise ValueError(f"class_mean with images_per_class={images_per_class} runs k-means and "
                       "needs a key (a jax PRNG key or an int seed).")
    key = 0
  return _run(make_class_mean(config), dataset, key)


def _split_features(features: Features) -> tuple[str, Optional[FeatureFn]]:
  """``(config name, callable or None)``: configs hold names, callables go to the factory."""
  if callable(features):
    return "pixels", features
  if features not in FEATURES:
    raise ValueError(f"features must be 'pixels', 'random_convnet' or a callable "
                     f"(n, H, W, C) -> (n, d); got {features!r}.")
  return features, None
