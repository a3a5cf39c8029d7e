"""Dataset Condensation with Differentiable Siamese Augmentation (DSA) on the contract.

Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021.

DSA is DC (:mod:`kip._src.methods.dc`) with the real and the synthetic class batches passed
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
:mod:`kip._src.augment`). All other hyperparameters, the state and the step are DC's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import optax

from kip._src import augment as aug_lib
from kip._src import driver
from kip._src.algorithm import Algorithm
from kip._src.distilled import DistilledSet
from kip._src.methods import dc

__all__ = ["DSAConfig", "distill_dsa", "make_dsa"]


@dataclasses.dataclass(frozen=True)
class DSAConfig(dc.DCConfig):
  """:class:`~kip._src.methods.dc.DCConfig` plus DSA's augmentation.

  Attributes:
    strategy: DSA strategy, default ``'color_crop_cutout_flip_scale_rotate'`` (``'none'`` is
      refused: that is DC).
    augment: strengths of the DSA transformations (the reference ``ParamDiffAug``).
  """
  strategy: str = aug_lib.DEFAULT_STRATEGY
  augment: aug_lib.AugmentConfig = aug_lib.AugmentConfig()

  def __post_init__(self):
    super().__post_init__()
    aug_lib.parse_strategy(self.strategy)
    if not isinstance(self.augment, aug_lib.AugmentConfig):
      raise ValueError(f"augment must be an AugmentConfig; got {type(self.augment).__name__}.")


def make_dsa(config: DSAConfig, *,
             image_optimizer: Optional[optax.GradientTransformation] = None,
             net_optimizer: Optional[optax.GradientTransformation] = None) -> Algorithm:
  """The DSA :class:`~kip._src.algorithm.Algorithm` (DC's step with siamese augmentation).

  Args:
    config: :class:`DSAConfig`.
    image_optimizer: optional ``optax.GradientTransformation`` replacing
      ``config.image_optimizer``.
    net_optimizer: optional ``optax.GradientTransformation`` replacing
      ``config.net_optimizer``.

  Raises:
    ValueError: ``config.strategy`` is ``'none'`` (that is DC).
  """
  if not aug_lib.parse_strategy(getattr(config, "strategy", "none")):
    raise ValueError("DSA needs an augmentation strategy but config.strategy is 'none'; use "
                     f"{aug_lib.DEFAULT_STRATEGY!r}, or DC (make_dc, kip.baselines.distill_dc).")
  return dc.make_gradient_matching("dsa", config, image_optimizer=image_optimizer,
                                   net_optimizer=net_optimizer)


def distill_dsa(dataset, images_per_class: int, config: DSAConfig = DSAConfig(), *,
                key: Any, progress: bool = True, **run_options) -> DistilledSet:
  """Distils ``dataset`` with DSA (Zhao & Bilen, ICML 2021).

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``ipc`` (replaces ``config.images_per_class``; paper loops for 1, 10,
      20, 30, 40, 50, else set ``outer_loop`` / ``inner_loop``).
    config: :class:`DSAConfig`.
    key: PRNG key or ``int`` seed.
    progress: show progress.
    **run_options: passed to ``kip.methods.run`` (``checkpoint_dir``, ``resume``,
      ``time_budget``, ``callback``, ...).

  Returns:
    ``DistilledSet`` (``method='dsa'``); evaluate it with DSA augmentation
    (``kip.baselines.augment.augment_fn(config.strategy)``), as the paper does.
  """
  config = dataclasses.replace(config, images_per_class=images_per_class)
  return driver.run(make_dsa(config), dataset, key=key, progress=progress, **run_options)
