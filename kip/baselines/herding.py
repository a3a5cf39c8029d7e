"""Herding: greedily match the running mean of the selection to the class mean.

For each class :math:`c` with features :math:`\\phi_i`, :math:`i \\in D_c`, and mean
:math:`\\mu_c = \\frac{1}{|D_c|} \\sum_{i \\in D_c} \\phi_i`, herding selects, for
:math:`k = 1, \\dots, m`,

.. math::
    i_k = \\operatorname*{arg\\,min}_{i \\in D_c \\setminus \\{i_1..i_{k-1}\\}}
          \\Big\\| \\mu_c - \\frac{1}{k}\\Big(\\phi_i + \\sum_{j<k} \\phi_{i_j}\\Big) \\Big\\|_2,

so every prefix of the selection has a mean as close to :math:`\\mu_c` as one greedy step
allows. This is the greedy "herding" of Welling (ICML 2009, "Herding dynamical weights to
learn") in the form used for exemplar selection by iCaRL (Rebuffi et al., CVPR 2017) and as a
coreset baseline by Zhao, Mopuri & Bilen (ICLR 2021). Ties go to the lowest index, so the
result is deterministic given the features (the key only matters for ``'random_convnet'``).

See :mod:`kip.baselines.coresets` for the shared contract.
"""

from __future__ import annotations

import numpy as np

from kip._src.distilled import DistilledSet
from kip.baselines import coresets

__all__ = ["herding", "herding_select"]


def herding_select(phi: np.ndarray, m: int) -> np.ndarray:
  """Greedy herding on features ``phi`` ``(n, d)``; returns ``(m,)`` distinct row indices."""
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


def herding(dataset, images_per_class: int, key: coresets.KeyLike, *,
            features: coresets.Features = "pixels", batch_size: int = 1000) -> DistilledSet:
  """Selects ``images_per_class`` real images per class by herding in feature space.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``m``, with ``1 <= m <=`` the smallest class size.
    key: PRNG key or ``int`` seed (used by ``features='random_convnet'``).
    features: ``'pixels'``, ``'random_convnet'`` or a callable ``(n, H, W, C) -> (n, d)``.
    batch_size: batch size for the feature map.

  Returns:
    A ``DistilledSet`` (``method='herding'``): ``m * K`` training images, class by class in
    selection order, with one-hot labels and the training indices in ``metadata['indices']``.

  Raises:
    ValueError: if ``images_per_class`` is not in ``[1, smallest class size]`` or
      ``features`` is unknown.
  """
  indices, classes, seed, desc = coresets.select_per_class(
      dataset, images_per_class, key, lambda phi, m, _: herding_select(phi, m),
      features=features, batch_size=batch_size)
  return coresets.make_distilled(
      dataset, np.asarray(dataset.x_train)[indices], classes, "herding", seed,
      {"images_per_class": int(images_per_class), "features": desc}, indices=indices.tolist())
