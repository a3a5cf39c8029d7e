"""Baselines: real-image coresets, DC, DSA, DM, original Dataset Distillation and poisoning.

Every method returns a ``kip._src.distilled.DistilledSet`` in the data set's preprocessed
space. One module per method: ``random_real``, ``herding``, ``kcenter``, ``kmeans``,
``class_mean`` (shared machinery in ``coresets``), ``dd`` (``distill_dd``, ``evaluate_dd``,
``make_dd``) and ``poisoning`` (``poison``, ``poison_report``, ``make_poison``).
"""

from kip.baselines import augment
from kip.baselines.class_mean import class_mean
from kip.baselines.dc import DCConfig
from kip.baselines.dc import distill_dc
from kip.baselines.dm import DMConfig
from kip.baselines.dm import distill_dm
from kip.baselines.dsa import DSAConfig
from kip.baselines.dsa import distill_dsa
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
    "DCConfig",
    "DMConfig",
    "DSAConfig",
    "augment",
    "distill_dc",
    "distill_dm",
    "distill_dsa",
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
