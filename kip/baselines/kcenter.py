"""k-center: greedy farthest-point selection in feature space.

The greedy 2-approximation of the k-center problem (Gonzalez, TCS 1985; used as a coreset by
Sener & Savarese, ICLR 2018, and as a distillation baseline by Zhao, Mopuri & Bilen, ICLR 2021).
Starting from a first center :math:`i_1`, each next center is the point farthest from the
current centers,

.. math:: i_k = \\operatorname*{arg\\,max}_{i \\in D_c} \\min_{j<k} \\|\\phi_i - \\phi_{i_j}\\|_2,

which keeps the covering radius :math:`\\max_i \\min_j \\|\\phi_i - \\phi_{i_j}\\|` within twice
the optimum. The first center is the point closest to the class mean (``first='mean'``,
deterministic) or a uniformly random point (``first='random'``, drawn from the key).

See :mod:`kip.baselines.coresets` for the shared contract.
"""

from __future__ import annotations

import jax
import numpy as np

from kip._src.distilled import DistilledSet
from kip.baselines import coresets

__all__ = ["kcenter", "kcenter_select"]

_FIRST = ("mean", "random")


def kcenter_select(phi: np.ndarray, m: int, first: int) -> np.ndarray:
  """Greedy farthest-point selection of ``m`` rows of ``phi`` ``(n, d)`` from row ``first``."""
  phi = np.asarray(phi, np.float64)
  out = np.empty(m, np.int64)
  out[0] = first
  min_d = coresets.sq_distances(phi, phi[first:first + 1])[:, 0]
  min_d[first] = -np.inf
  for k in range(1, m):
    i = int(np.argmax(min_d))
    out[k] = i
    min_d = np.minimum(min_d, coresets.sq_distances(phi, phi[i:i + 1])[:, 0])
    min_d[out[:k + 1]] = -np.inf  # duplicates (distance 0) never get picked twice
  return out


def kcenter(dataset, images_per_class: int, key: coresets.KeyLike, *,
            features: coresets.Features = "pixels", first: str = "mean",
            batch_size: int = 1000) -> DistilledSet:
  """Selects ``images_per_class`` real images per class by greedy k-center.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``m``, with ``1 <= m <=`` the smallest class size.
    key: PRNG key or ``int`` seed (first center with ``first='random'``; ``'random_convnet'``).
    features: ``'pixels'``, ``'random_convnet'`` or a callable ``(n, H, W, C) -> (n, d)``.
    first: ``'mean'`` (point nearest the class mean) or ``'random'``.
    batch_size: batch size for the feature map.

  Returns:
    A ``DistilledSet`` (``method='kcenter'``): ``m * K`` training images, class by class in
    selection order, with one-hot labels and the training indices in ``metadata['indices']``.

  Raises:
    ValueError: if ``images_per_class`` is out of range, or ``first`` / ``features`` unknown.
  """
  if first not in _FIRST:
    raise ValueError(f"first must be one of {_FIRST}; got {first!r}.")

  def select(phi, m, key_c):
    if first == "random":
      start = int(jax.random.randint(key_c, (), 0, phi.shape[0]))
    else:
      start = int(np.argmin(coresets.sq_distances(phi, phi.mean(0, keepdims=True))[:, 0]))
    return kcenter_select(phi, m, start)

  indices, classes, seed, desc = coresets.select_per_class(
      dataset, images_per_class, key, select, features=features, batch_size=batch_size)
  return coresets.make_distilled(
      dataset, np.asarray(dataset.x_train)[indices], classes, "kcenter", seed,
      {"images_per_class": int(images_per_class), "features": desc, "first": first},
      indices=indices.tolist())
