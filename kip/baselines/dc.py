"""Dataset Condensation with gradient matching (DC; Zhao, Mopuri, Bilen, ICLR 2021).

``distill_dc(dataset, images_per_class, DCConfig(steps=1000), key=0)`` distils a data set;
``make_dc(config)`` returns the method's ``Algorithm`` for ``kip.methods.run`` (checkpoints,
resume, time budget). ``distance_wb`` / ``match_loss`` are DC's gradient distance.
"""

from kip._src.matching import distance_wb
from kip._src.matching import match_loss
from kip._src.methods.dc import PAPER_LOOPS
from kip._src.methods.dc import DCConfig
from kip._src.methods.dc import DCState
from kip._src.methods.dc import distill_dc
from kip._src.methods.dc import get_loops
from kip._src.methods.dc import make_dc

__all__ = ["DCConfig", "DCState", "PAPER_LOOPS", "distance_wb", "distill_dc", "get_loops",
           "make_dc", "match_loss"]
