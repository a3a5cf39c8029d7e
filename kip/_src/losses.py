"""Losses shared by every method: the one softmax cross-entropy, MSE, and the Platt loss.

.. math::
   \\mathrm{xent}(z, y) = -\\sum_k y_k \\log \\operatorname{softmax}(z)_k,\\qquad
   \\mathrm{mse}(z, y) = \\tfrac12 \\lVert z - y \\rVert^2 / K .
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

__all__ = ["softmax_cross_entropy", "mse", "accuracy"]


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                          mask: Optional[jax.Array] = None) -> jax.Array:
  """Mean softmax cross-entropy over the (unmasked) rows.

  Args:
    logits: ``(n, K)``.
    labels: ``(n,)`` or ``()`` integer classes, or ``(n, K)`` target distributions.
    mask: optional ``(n,)`` weights (1 counts a row, 0 ignores it).

  Returns:
    ``()`` the mean over rows (weighted by ``mask``).
  """
  logp = jax.nn.log_softmax(logits)
  labels = jnp.asarray(labels)
  if jnp.issubdtype(labels.dtype, jnp.integer):
    labels = jnp.broadcast_to(labels, logits.shape[:1])
    nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
  else:
    nll = -jnp.sum(labels * logp, axis=-1)
  if mask is None:
    return jnp.mean(nll)
  return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def mse(pred: jax.Array, targets: jax.Array) -> jax.Array:
  """:math:`\\tfrac12` mean squared error over all entries."""
  return 0.5 * jnp.mean((pred - targets) ** 2)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of rows whose argmax matches ``labels`` (integers or one-hot / soft rows)."""
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    labels = jnp.argmax(labels, -1)
  return jnp.mean(jnp.argmax(logits, -1) == labels)
