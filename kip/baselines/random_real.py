"""Random real images: the class-balanced random-subset baseline.

The weakest sensible baseline of every dataset-distillation paper (e.g. Wang et al. 2018,
arXiv:1811.10959; Zhao, Mopuri & Bilen, ICLR 2021): draw ``images_per_class`` training images
of each class uniformly without replacement,

.. math:: S_c \\sim \\mathrm{Uniform}\\{S \\subseteq D_c : |S| = m\\}.

See :mod:`kip.baselines.coresets` for the shared contract.
"""

from __future__ import annotations

import jax
import numpy as np

from kip._src.distilled import DistilledSet
from kip.baselines import coresets

__all__ = ["random_real"]


def random_real(dataset, images_per_class: int, key: coresets.KeyLike) -> DistilledSet:
  """Selects ``images_per_class`` random training images per class.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``m``, with ``1 <= m <=`` the smallest class size.
    key: PRNG key or ``int`` seed (class ``c`` uses ``fold_in(key, c)``).

  Returns:
    A ``DistilledSet`` (``method='random'``) of ``m * K`` real images, class by class, with
    one-hot labels and the chosen training indices in ``metadata['indices']``.

  Raises:
    ValueError: if ``images_per_class`` is not in ``[1, smallest class size]``.
  """

  def select(phi, m, key_c):
    return np.asarray(jax.random.choice(key_c, phi.shape[0], (m,), replace=False))

  # The "features" are only used for their row count here, so skip the copy of real features.
  indices, classes, seed, _ = coresets.select_per_class(
      dataset, images_per_class, key, select, features=lambda x: np.zeros((len(x), 1)))
  return coresets.make_distilled(
      dataset, np.asarray(dataset.x_train)[indices], classes, "random", seed,
      {"images_per_class": int(images_per_class)}, indices=indices.tolist())
