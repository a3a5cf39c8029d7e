"""k-means: per-class cluster centroids (or the real images nearest them) as the support set.

For each class :math:`c`, Lloyd's algorithm (Lloyd 1982) minimises the within-cluster sum of
squares in feature space,

.. math:: \\min_{\\{C_j\\}_{j=1}^m} \\sum_{j=1}^m \\sum_{i \\in C_j} \\|\\phi_i - \\mu_j\\|_2^2,
          \\qquad \\mu_j = \\frac{1}{|C_j|} \\sum_{i \\in C_j} \\phi_i,

from a k-means++ initialisation (Arthur & Vassilvitskii, SODA 2007: first center uniform, the
next ones drawn with probability proportional to :math:`D(\\phi_i)^2`, the squared distance to
the nearest chosen center). An empty cluster is re-seeded with the point farthest from its
center. Iterations stop after ``num_iters`` or when the assignment no longer changes.

Two outputs (``mode``):

* ``'centroid'``: the mean *image* of each cluster, :math:`\\frac{1}{|C_j|}\\sum_{i\\in C_j} x_i`
  (in the preprocessed space). With ``features='pixels'`` this is exactly :math:`\\mu_j`; with
  other features the clustering happens in feature space and the images are averaged.
* ``'nearest'``: the real training image nearest (in feature space) to each centroid, distinct
  across centroids (centroids are matched greedily in order, each taking the nearest unused
  image), so the result is a subset of the training set.

See :mod:`kip.baselines.coresets` for the shared contract.
"""

from __future__ import annotations

import jax
import numpy as np

from kip._src.distilled import DistilledSet
from kip.baselines import coresets

__all__ = ["kmeans", "kmeans_fit"]

_MODES = ("centroid", "nearest")


def kmeans_fit(phi: np.ndarray, k: int, rng: np.random.Generator, num_iters: int = 20
               ) -> tuple[np.ndarray, np.ndarray]:
  """k-means++ then Lloyd iterations on ``phi`` ``(n, d)``.

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
  d2 = coresets.sq_distances(phi, centers[:1])[:, 0]
  for j in range(1, k):
    total = d2.sum()
    # All remaining points coincide with a center: any point is as good as any other.
    i = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
    centers[j] = phi[i]
    d2 = np.minimum(d2, coresets.sq_distances(phi, centers[j:j + 1])[:, 0])
  assign = _fill_empty(np.argmin(coresets.sq_distances(phi, centers), axis=1),
                       coresets.sq_distances(phi, centers), k)
  for _ in range(num_iters):
    centers = np.stack([phi[assign == j].mean(0) for j in range(k)])
    dist = coresets.sq_distances(phi, centers)
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
  dist = coresets.sq_distances(phi, centers)
  out = np.empty(len(centers), np.int64)
  used = np.zeros(len(phi), bool)
  for j in range(len(centers)):
    d = np.where(used, np.inf, dist[:, j])
    out[j] = int(np.argmin(d))
    used[out[j]] = True
  return out


def kmeans(dataset, images_per_class: int, key: coresets.KeyLike, *,
           mode: str = "centroid", features: coresets.Features = "pixels",
           num_iters: int = 20, batch_size: int = 1000) -> DistilledSet:
  """Per-class k-means with ``k = images_per_class``.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: number of clusters per class, ``1 <= m <=`` the smallest class size.
    key: PRNG key or ``int`` seed (k-means++ draws; ``'random_convnet'`` parameters).
    mode: ``'centroid'`` (mean image of each cluster) or ``'nearest'`` (nearest real image).
    features: ``'pixels'``, ``'random_convnet'`` or a callable ``(n, H, W, C) -> (n, d)``.
    num_iters: maximum Lloyd iterations.
    batch_size: batch size for the feature map.

  Returns:
    A ``DistilledSet`` (``method='kmeans'``) of ``m * K`` images, class by class, with one-hot
    labels. ``metadata['cluster_sizes']`` lists the cluster sizes; with ``mode='nearest'``
    ``metadata['indices']`` holds the training indices.

  Raises:
    ValueError: if ``images_per_class`` is out of range, ``mode`` / ``features`` unknown or
      ``num_iters < 0``.
  """
  if mode not in _MODES:
    raise ValueError(f"mode must be one of {_MODES}; got {mode!r}.")
  if num_iters < 0:
    raise ValueError(f"num_iters must be >= 0; got {num_iters}.")
  key, seed = coresets.as_key(key)
  idx = coresets.class_indices(dataset, images_per_class)
  feat_key, sel_key = jax.random.split(key)
  fn, desc = coresets.make_feature_fn(features, dataset, feat_key)
  x = np.asarray(dataset.x_train)
  images, classes, indices, sizes = [], [], [], []
  for c, (ic, kc) in enumerate(zip(idx, coresets.per_class_keys(sel_key, len(idx)))):
    phi = coresets.compute_features(fn, x[ic], batch_size)
    centers, assign = kmeans_fit(phi, images_per_class, coresets.numpy_rng(kc), num_iters)
    sizes.append(np.bincount(assign, minlength=images_per_class).tolist())
    if mode == "centroid":
      xc = x[ic].astype(np.float64)
      images.append(np.stack([xc[assign == j].mean(0) for j in range(images_per_class)]))
    else:
      local = _nearest_distinct(phi, centers)
      indices.append(ic[local])
      images.append(x[ic[local]])
    classes.append(np.full(images_per_class, c, np.int64))
  extra = {"cluster_sizes": sizes}
  if mode == "nearest":
    extra["indices"] = np.concatenate(indices).tolist()
  config = {"images_per_class": int(images_per_class), "mode": mode, "features": desc,
            "num_iters": int(num_iters)}
  return coresets.make_distilled(dataset, np.concatenate(images), np.concatenate(classes),
                                 "kmeans", seed, config, **extra)
