"""kip: kernel-based dataset distillation in JAX."""
