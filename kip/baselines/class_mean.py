"""Class mean: the average training image of each class (k-means centroids for ``m > 1``)."""

from kip._src.methods.coresets import class_mean

__all__ = ["class_mean"]
