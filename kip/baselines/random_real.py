"""Random real images: ``images_per_class`` training images per class, uniformly drawn."""

from kip._src.methods.coresets import random_real

__all__ = ["random_real"]
