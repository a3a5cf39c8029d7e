"""Distillation methods by name: the registry, the algorithm contract and the driver.

``kip.methods.make(name, config)`` returns an ``Algorithm(init, data, step, result)``;
``kip.methods.run(algorithm, dataset, steps, key=...)`` drives it (progress, checkpoints,
bit-identical resume, time budget, divergence detection) and returns a ``DistilledSet``.
"""

from kip._src.algorithm import Algorithm
from kip._src.driver import Divergence
from kip._src.driver import DivergenceError
from kip._src.driver import RunFolderError
from kip._src.driver import dataset_fingerprint
from kip._src.driver import run
from kip._src.registry import METHODS
from kip._src.registry import Method
from kip._src.registry import get
from kip._src.registry import make
from kip._src.registry import make_config
from kip._src.registry import names

__all__ = ["Algorithm", "Divergence", "DivergenceError", "METHODS", "Method", "RunFolderError",
           "dataset_fingerprint", "get", "make", "make_config", "names", "run"]
