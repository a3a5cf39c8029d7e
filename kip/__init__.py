"""kip: kernel-based dataset distillation in JAX.

Quick start::

  import kip
  data = kip.data.load("fashion_mnist")
  distilled = kip.distill(data, support_size=10, learn_labels=True, kernel="fc")
  print(kip.evaluate.kernel_accuracy(distilled, data))
  distilled.save("distilled.npz")
"""

from kip import data, evaluate, kernels, krr, methods
from kip._src.distill import KIPConfig, KIPState, distill, label_solve
from kip._src.distilled import DistilledSet

__version__ = "0.1.0"

__all__ = ["DistilledSet", "KIPConfig", "KIPState", "data", "distill", "evaluate", "kernels",
           "krr", "label_solve", "methods", "__version__"]


def __getattr__(name):  # heavier modules (Flax) load on first use
  if name in ("transfer", "baselines", "cli"):
    import importlib
    return importlib.import_module(f"kip.{name}")
  raise AttributeError(f"module 'kip' has no attribute {name!r}")
