"""Evaluation of distilled sets by kernel ridge regression (see ``kip.transfer`` for networks)."""

from kip._src.evaluate import kernel_accuracy, kernel_predictions

__all__ = ["kernel_accuracy", "kernel_predictions"]
