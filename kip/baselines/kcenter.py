"""k-center: greedy farthest-point selection in feature space."""

from kip._src.methods.coresets import kcenter
from kip._src.methods.coresets import kcenter_select

__all__ = ["kcenter", "kcenter_select"]
