"""k-means per class: cluster centroids (or the real images nearest them)."""

from kip._src.methods.coresets import kmeans
from kip._src.methods.coresets import kmeans_fit

__all__ = ["kmeans", "kmeans_fit"]
