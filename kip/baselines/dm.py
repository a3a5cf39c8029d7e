"""Dataset Condensation with Distribution Matching (DM; Zhao & Bilen, WACV 2023).

``distill_dm(dataset, images_per_class, DMConfig(steps=20000), key=0)``, or
``make_dm(config)`` for ``kip.methods.run``.
"""

from kip._src.methods.dm import DMConfig
from kip._src.methods.dm import DMState
from kip._src.methods.dm import distill_dm
from kip._src.methods.dm import embed
from kip._src.methods.dm import make_dm
from kip._src.methods.dm import masked_mean
from kip._src.methods.dm import mean_embedding_loss

__all__ = ["DMConfig", "DMState", "distill_dm", "embed", "make_dm", "masked_mean",
           "mean_embedding_loss"]
