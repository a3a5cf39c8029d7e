"""Class mean: the average training image of each class (k-means centroids for ``m > 1``).

With one image per class the support is the class mean in the preprocessed space,

.. math:: \\bar x_c = \\frac{1}{|D_c|} \\sum_{i \\in D_c} x_i,

i.e. the nearest-class-mean prototype (Mensink et al., TPAMI 2013). For ``m > 1`` images per
class we take the natural generalisation rather than raising: the ``m`` pixel-space k-means
centroids of the class (:func:`kip.baselines.kmeans.kmeans` with ``features='pixels'``,
``mode='centroid'``), of which the class mean is the ``m = 1`` case. The chosen strategy is
recorded in ``metadata['strategy']`` (``'mean'`` or ``'kmeans_centroids'``).

See :mod:`kip.baselines.coresets` for the shared contract.
"""

from __future__ import annotations

import logging

import numpy as np

from kip._src.distilled import DistilledSet
from kip.baselines import coresets
from kip.baselines.kmeans import kmeans

__all__ = ["class_mean"]

logger = logging.getLogger(__name__)


def class_mean(dataset, images_per_class: int = 1, key: coresets.KeyLike | None = None, *,
               num_iters: int = 20) -> DistilledSet:
  """The mean image of each class, or ``m`` k-means centroids per class for ``m > 1``.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``m``; ``1`` gives the exact class means (deterministic, the key is
      unused); ``m > 1`` gives pixel-space k-means centroids.
    key: PRNG key or ``int`` seed for the k-means++ initialisation; required when ``m > 1``,
      ignored when ``m = 1``.
    num_iters: maximum Lloyd iterations when ``m > 1``.

  Returns:
    A ``DistilledSet`` (``method='class_mean'``) of ``m * K`` averaged images with one-hot
    labels, class by class.

  Raises:
    ValueError: if ``images_per_class`` is not in ``[1, smallest class size]``, or ``key`` is
      missing with ``m > 1``.
  """
  idx = coresets.class_indices(dataset, images_per_class)
  seed = None
  if images_per_class > 1:
    if key is None:
      raise ValueError(f"class_mean with images_per_class={images_per_class} runs k-means and "
                       "needs a key (a jax PRNG key or an int seed).")
    key, seed = coresets.as_key(key)
    logger.info("class_mean with images_per_class=%d: using pixel-space k-means centroids.",
                images_per_class)
    out = kmeans(dataset, images_per_class, key, mode="centroid", features="pixels",
                 num_iters=num_iters)
    meta = dict(out.metadata, seed=seed, strategy="kmeans_centroids")
    return out.replace(method="class_mean", metadata=meta)
  x = np.asarray(dataset.x_train, np.float64)
  images = np.stack([x[ic].mean(0) for ic in idx])
  return coresets.make_distilled(dataset, images, np.arange(len(idx)), "class_mean", seed,
                                 {"images_per_class": 1}, strategy="mean",
                                 cluster_sizes=[[len(ic)] for ic in idx])
