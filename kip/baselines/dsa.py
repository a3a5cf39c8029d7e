"""DC with Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021).

``distill_dsa(dataset, images_per_class, DSAConfig(), key=0)``, or ``make_dsa(config)`` for
``kip.methods.run``. The state and step are DC's (``kip.baselines.dc``).
"""

from kip._src.methods.dc import DCState
from kip._src.methods.dsa import DSAConfig
from kip._src.methods.dsa import distill_dsa
from kip._src.methods.dsa import make_dsa

__all__ = ["DCState", "DSAConfig", "distill_dsa", "make_dsa"]
