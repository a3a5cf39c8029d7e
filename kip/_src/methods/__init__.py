"""Implementations of the registered distillation methods (see kip._src.registry)."""
