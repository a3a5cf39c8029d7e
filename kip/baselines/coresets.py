"""Shared pieces of the coreset baselines: configs, feature maps, class indexing, keys.

Every coreset (``random_real``, ``herding``, ``kcenter``, ``kmeans``, ``class_mean``) is a
one-step algorithm: ``method(dataset, images_per_class, key, **options) -> DistilledSet`` with
exactly ``images_per_class`` images per class, class by class, one-hot labels. Their configs
(``RandomConfig``, ``HerdingConfig``, ...) and factories (``make_random``, ...) serve
``kip.methods``.
"""

from kip._src.features import FeatureFn
from kip._src.features import Features
from kip._src.features import compute_features
from kip._src.features import make_feature_fn
from kip._src.features import random_convnet_features
from kip._src.methods.coresets import ClassMeanConfig
from kip._src.methods.coresets import CoresetState
from kip._src.methods.coresets import HerdingConfig
from kip._src.methods.coresets import KCenterConfig
from kip._src.methods.coresets import KMeansConfig
from kip._src.methods.coresets import RandomConfig
from kip._src.methods.coresets import class_indices
from kip._src.methods.coresets import make_class_mean
from kip._src.methods.coresets import make_herding
from kip._src.methods.coresets import make_kcenter
from kip._src.methods.coresets import make_kmeans
from kip._src.methods.coresets import make_random
from kip._src.methods.coresets import sq_distances
from kip._src.random import KeyLike
from kip._src.random import as_key
from kip._src.random import numpy_rng
from kip._src.random import per_class_keys

__all__ = [
    "ClassMeanConfig", "CoresetState", "FeatureFn", "Features", "HerdingConfig",
    "KCenterConfig", "KMeansConfig", "KeyLike", "RandomConfig", "as_key", "class_indices",
    "compute_features", "make_class_mean", "make_feature_fn", "make_herding", "make_kcenter",
    "make_kmeans", "make_random", "numpy_rng", "per_class_keys", "random_convnet_features",
    "sq_distances",
]
