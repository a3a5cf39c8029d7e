"""Data poisoning with distilled images (Wang, Zhu, Torralba, Efros, 2018, the DD attack).

``poison(dataset, attacked_class, target_class, num_images, PoisonConfig(...), key)`` learns
poison images (one per class and step, each with its own label; the attacked class is sent to
the target in the outer loss only) on a pool of pretrained networks; ``poison_report``
measures the attack on networks it never saw; ``make_poison(config)`` returns the method's
``Algorithm`` for ``kip.methods.run``.
"""

from kip._src.methods.poisoning import LABELLINGS
from kip._src.methods.poisoning import PoisonConfig
from kip._src.methods.poisoning import PoisonMetrics
from kip._src.methods.poisoning import PoisonReport
from kip._src.methods.poisoning import PoisonState
from kip._src.methods.poisoning import make_poison
from kip._src.methods.poisoning import poison
from kip._src.methods.poisoning import poison_report
from kip._src.methods.poisoning import pool_keys
from kip._src.methods.poisoning import pretrain

__all__ = ["LABELLINGS", "PoisonConfig", "PoisonMetrics", "PoisonReport", "PoisonState",
           "make_poison", "poison", "poison_report", "pool_keys", "pretrain"]
