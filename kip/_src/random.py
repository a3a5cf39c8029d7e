"""PRNG key helpers: the one place where seeds become keys and keys become other streams.

Randomness in kip comes only from explicit ``key: jax.Array`` arguments (jax's example stax
rule). These helpers turn an ``int`` seed into a key, derive per-class and per-step keys, and
derive the faster RBG keys and NumPy generators some methods need, all deterministically.
"""

from __future__ import annotations

from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["KeyLike", "as_key", "numpy_rng", "per_class_keys", "rbg_key", "key_data"]

KeyLike = Union[jax.Array, int]


def as_key(key: KeyLike) -> tuple[jax.Array, Any]:
  """Returns ``(key, seed_for_metadata)`` from a PRNG key or an ``int`` seed.

  The metadata value is the ``int`` seed when one was given, else the key's raw ``uint32``
  data as a list (enough to rebuild the key with ``jnp.asarray(data, jnp.uint32)``).

  Raises:
    ValueError: ``key`` is neither an ``int`` nor a PRNG key.
  """
  if isinstance(key, (bool, np.bool_)):
    raise ValueError(f"key must be a jax PRNG key or an int seed; got {key!r}.")
  if isinstance(key, (int, np.integer)):
    return jax.random.PRNGKey(int(key)), int(key)
  try:
    arr = jnp.asarray(key) if not hasattr(key, "dtype") else key
  except TypeError as e:
    raise ValueError(f"key must be a jax PRNG key or an int seed; got {type(key).__name__}.") from e
  if jax.dtypes.issubdtype(arr.dtype, jax.dtypes.prng_key):
    return arr, key_data(arr)
  if arr.dtype != jnp.uint32 or arr.shape != (2,):
    raise ValueError(f"key must be a jax PRNG key (jax.random.key / PRNGKey) or an int seed; got "
                     f"an array of dtype {arr.dtype} and shape {arr.shape}.")
  return arr, key_data(arr)


def key_data(key: jax.Array) -> list[int]:
  """The raw ``uint32`` words of ``key`` as a list (for JSON metadata and fingerprints)."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(key).ravel().tolist()


def numpy_rng(key: jax.Array) -> np.random.Generator:
  """A ``numpy.random.Generator`` seeded deterministically from 128 bits of ``key``."""
  return np.random.default_rng(np.asarray(jax.random.bits(key, (4,), jnp.uint32)))


def per_class_keys(key: jax.Array, num_classes: int) -> list[jax.Array]:
  """``fold_in(key, c)`` for each class, so each class's randomness is independent."""
  return [jax.random.fold_in(key, c) for c in range(num_classes)]


def rbg_key(key: jax.Array) -> jax.Array:
  """An RBG key derived deterministically from ``key``, for randomness inside a jitted step.

  XLA's ``RngBitGenerator`` compiles several times faster on CPU than JAX's threefry, whose
  compilation dominated the compile time of steps that initialise networks (every parameter
  is a draw). Streams are reproducible for a fixed ``key`` on a given backend.
  """
  return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
