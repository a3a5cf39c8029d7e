"""Shared helpers of the exact-kernel path tests (fused, banded): inputs and the error measure."""

import jax.numpy as jnp
import numpy as np


def images(shape, n, seed, dtype=jnp.float32):
  """``n`` standard-normal images of ``shape`` from ``seed``."""
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n,) + shape), dtype)


def rel_err(a, b):
  """Largest absolute difference relative to the largest entry of the reference ``b``."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())
