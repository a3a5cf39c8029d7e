"""Dataset Distillation (DD; Wang, Zhu, Torralba, Efros, 2018): unrolled SGD, learned step sizes.

``distill_dd(dataset, images_per_class, DDConfig(...), key)`` distils a data set;
``make_dd(config)`` returns the method's ``Algorithm`` for ``kip.methods.run`` (checkpoints,
resume, time budget); ``evaluate_dd`` trains networks with the learned steps (``step_strategy``
``'raw'``, ``'rescaled'`` or ``'tuned'`` for another architecture; ``train_networks`` returns
the trained networks themselves). ``unrolled_sgd`` and ``step_sizes`` are the inner loop
shared with poisoning.
"""

from kip._src.methods.dd import BATCHINGS
from kip._src.methods.dd import DDConfig
from kip._src.methods.dd import DDEvaluation
from kip._src.methods.dd import DDState
from kip._src.methods.dd import INITS
from kip._src.methods.dd import STEP_STRATEGIES
from kip._src.methods.dd import TrainedNetworks
from kip._src.methods.dd import distill_dd
from kip._src.methods.dd import evaluate_dd
from kip._src.methods.dd import images_per_class_for
from kip._src.methods.dd import make_dd
from kip._src.methods.dd import train_networks
from kip._src.unroll import reference_steps
from kip._src.unroll import step_sizes
from kip._src.unroll import unrolled_sgd

__all__ = ["BATCHINGS", "DDConfig", "DDEvaluation", "DDState", "INITS", "STEP_STRATEGIES",
           "TrainedNetworks", "distill_dd", "evaluate_dd", "images_per_class_for", "make_dd",
           "reference_steps", "step_sizes", "train_networks", "unrolled_sgd"]
