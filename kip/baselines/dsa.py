"""Dataset Condensation with Differentiable Siamese Augmentation (DSA).

Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021.

DSA is DC (:mod:`kip.baselines.dc`) with the real and the synthetic class batches passed
through the *same* random differentiable augmentation :math:`\\mathcal{A}_\\omega` before their
gradients are compared,

.. math::
   \\min_S \\; \\mathbb{E}_{\\theta_0, \\omega}\\Big[\\sum_t \\sum_c
   D\\big(\\nabla_\\theta \\ell(\\mathcal{A}_{\\omega}(S_c); \\theta_t),\\,
          \\nabla_\\theta \\ell(\\mathcal{A}_{\\omega}(B_c); \\theta_t)\\big)\\Big],

where one parameter draw :math:`\\omega` per class and outer loop is shared by the whole real
batch and the whole synthetic batch (the reference's batch-mode ``DiffAugment(..., seed=s)``);
the gradient flows through :math:`\\mathcal{A}_\\omega` into :math:`S`. The inner-loop network
training on the synthetic set is augmented too (one draw per image). Strategy default
``'color_crop_cutout_flip_scale_rotate'``: one of the six groups is drawn per call (see
:mod:`kip.baselines.augment`). All other hyperparameters are DC's.

The state, :func:`init` and :func:`step` are DC's; only the config default differs.
"""

from __future__ import annotations

import dataclasses

import jax

from kip._src.distilled import DistilledSet
from kip.baselines import augment as aug_lib
from kip.baselines import dc
from kip.baselines.dc import ClassPool, DCState

__all__ = ["DSAConfig", "DCState", "distill_dsa", "init", "step"]


@dataclasses.dataclass(frozen=True)
class DSAConfig(dc.DCConfig):
  """:class:`kip.baselines.dc.DCConfig` with DSA's default augmentation strategy.

  Attributes:
    strategy: DSA strategy, default ``'color_crop_cutout_flip_scale_rotate'``.
  """
  strategy: str = aug_lib.DEFAULT_STRATEGY


def init(key: jax.Array, dataset, images_per_class: int, config: DSAConfig = DSAConfig(), *,
         pool: ClassPool | None = None) -> DCState:
  """:func:`kip.baselines.dc.init` with a :class:`DSAConfig` default."""
  return dc.init(key, dataset, images_per_class, config, pool=pool)


def step(state: DCState, real: ClassPool, key: jax.Array, config: DSAConfig = DSAConfig()
         ) -> tuple[DCState, dict[str, jax.Array]]:
  """One DSA iteration: the jitted :func:`kip.baselines.dc.step` with a :class:`DSAConfig`."""
  return dc.step(state, real, key, config)


def distill_dsa(dataset, images_per_class: int, config: DSAConfig = DSAConfig(), *, key,
                progress: bool = True) -> DistilledSet:
  """Distils ``dataset`` with DSA (Zhao & Bilen, ICML 2021).

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``ipc`` (paper loops for 1, 10, 20, 30, 40, 50; else set
      ``config.outer_loop`` / ``config.inner_loop``).
    config: :class:`DSAConfig` (any ``DCConfig`` with a non-``'none'`` strategy).
    key: PRNG key or ``int`` seed.
    progress: show a ``tqdm`` bar.

  Returns:
    ``DistilledSet`` (``method='dsa'``); evaluate it with DSA augmentation
    (``kip.baselines.augment.augment_fn(config.strategy)``), as the paper does.
  """
  if not aug_lib.parse_strategy(config.strategy):
    raise ValueError("DSA needs an augmentation strategy but config.strategy is 'none'; use "
                     f"{aug_lib.DEFAULT_STRATEGY!r} or kip.baselines.dc.distill_dc.")
  return dc.run("dsa", dataset, images_per_class, config, key, progress, init, step)
