"""Class-balanced sampling of training batches inside jitted steps.

:class:`ClassTable` holds the training set on device with one row of indices per class; its
:meth:`~ClassTable.sample` draws ``batch_size // K`` images of every class from a key, either
without replacement within the batch (the KIP reference notebook's ``class_balanced_sample``)
or with replacement (``replace=True``, this library's earlier behaviour).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ClassTable", "uniform_indices"]


class ClassTable(NamedTuple):
  """The training set on device, indexed by class for class-balanced sampling.

  Attributes:
    x: ``(N, H, W, C)`` training images.
    y: ``(N, K)`` one-hot training labels (float32).
    table: ``(K, M)`` int32: row ``c`` lists the indices of class ``c`` (cycled to length M).
    counts: ``(K,)`` int32 number of images of each class.
  """
  x: jax.Array
  y: jax.Array
  table: jax.Array
  counts: jax.Array

  @classmethod
  def from_dataset(cls, dataset) -> "ClassTable":
    """Builds the table of ``dataset``'s training split.

    Raises:
      ValueError: a class has no training image.
    """
    y = np.asarray(dataset.y_train)
    k = int(dataset.num_classes)
    idx = [np.flatnonzero(y == c) for c in range(k)]
    counts = np.array([len(i) for i in idx], np.int32)
    if (counts == 0).any():
      raise ValueError(f"classes {np.flatnonzero(counts == 0).tolist()} have no training "
                       "images; class-balanced sampling needs every class.")
    m = int(counts.max())
    table = np.stack([np.resize(i, m) for i in idx]).astype(np.int32)
    return cls(jnp.asarray(dataset.x_train), jnp.asarray(np.eye(k, dtype=np.float32)[y]),
               jnp.asarray(table), jnp.asarray(counts))

  @property
  def num_classes(self) -> int:
    return int(self.table.shape[0])

  def sample_indices(self, key: jax.Array, batch_size: int, replace: bool = False) -> jax.Array:
    """``(K * max(batch_size // K, 1),)`` training indices, class by class.

    Without replacement each class's images in the batch are distinct (a class with fewer
    images than ``batch_size // K`` repeats them, cycling).
    """
    k = self.table.shape[0]
    per = max(batch_size // k, 1)
    if replace:
      u = jax.random.uniform(key, (k, per))
      col = jnp.minimum((u * self.counts[:, None]).astype(jnp.int32), self.counts[:, None] - 1)
    else:
      m = self.table.shape[1]
      scores = jax.random.uniform(key, (k, m))
      scores = jnp.where(jnp.arange(m)[None, :] < self.counts[:, None], scores, 2.0)
      order = jnp.argsort(scores, axis=1)[:, :per] if per <= m else jnp.argsort(scores, axis=1)
      col = jnp.resize(order, (k, per)) % self.counts[:, None] if per > m else order
    return jnp.take_along_axis(self.table, col, axis=1).reshape(-1)

  def sample(self, key: jax.Array, batch_size: int, replace: bool = False
             ) -> tuple[jax.Array, jax.Array]:
    """A class-balanced batch ``(x, y_one_hot)`` of ``K * max(batch_size // K, 1)`` images."""
    rows = self.sample_indices(key, batch_size, replace)
    return self.x[rows], self.y[rows]


def uniform_indices(key: jax.Array, n: int, batch_size: int) -> jax.Array:
  """``min(batch_size, n)`` distinct indices drawn uniformly from ``range(n)``."""
  return jax.random.permutation(key, n)[:min(batch_size, n)]
