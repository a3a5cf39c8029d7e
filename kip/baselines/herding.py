"""Herding: greedily match the running mean of the selection to the class mean."""

from kip._src.methods.coresets import herding
from kip._src.methods.coresets import herding_select

__all__ = ["herding", "herding_select"]
