"""Baselines: real-image coresets, original Dataset Distillation (DD) and DD data poisoning.

Every method returns a ``kip._src.distilled.DistilledSet`` in the data set's preprocessed
space. One module per method: ``random_real``, ``herding``, ``kcenter``, ``kmeans``,
``class_mean`` (shared machinery in ``coresets``), ``dd`` (with its optax-style
``dd.init`` / ``dd.step``) and ``poisoning`` (``poisoning.init`` / ``poisoning.step``).
"""

from kip.baselines.class_mean import class_mean
from kip.baselines.dd import DDConfig
from kip.baselines.dd import DDEvaluation
from kip.baselines.dd import DDState
from kip.baselines.dd import distill_dd
from kip.baselines.dd import evaluate_dd
from kip.baselines.herding import herding
from kip.baselines.kcenter import kcenter
from kip.baselines.kmeans import kmeans
from kip.baselines.poisoning import PoisonConfig
from kip.baselines.poisoning import PoisonMetrics
from kip.baselines.poisoning import PoisonReport
from kip.baselines.poisoning import poison
from kip.baselines.poisoning import poison_report
from kip.baselines.random_real import random_real

__all__ = [
    "DDConfig",
    "DDEvaluation",
    "DDState",
    "PoisonConfig",
    "PoisonMetrics",
    "PoisonReport",
    "class_mean",
    "distill_dd",
    "evaluate_dd",
    "herding",
    "kcenter",
    "kmeans",
    "poison",
    "poison_report",
    "random_real",
]
