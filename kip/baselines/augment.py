"""Differentiable Siamese Augmentation (DSA) for NHWC image batches.

Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021.
``sample_params(key, strategy, batch_shape)`` draws every random quantity once and
``apply(x, params)`` transforms a batch with them (differentiably in ``x``), so two batches
can be transformed identically; ``augment_fn(strategy)`` is the training-time ``f(key, x)``.
"""

from kip._src.augment import DEFAULT_STRATEGY
from kip._src.augment import GROUPS
from kip._src.augment import AugmentConfig
from kip._src.augment import AugParams
from kip._src.augment import apply
from kip._src.augment import augment_fn
from kip._src.augment import parse_strategy
from kip._src.augment import sample_params

__all__ = ["AugmentConfig", "AugParams", "DEFAULT_STRATEGY", "GROUPS", "apply", "augment_fn",
           "parse_strategy", "sample_params"]
