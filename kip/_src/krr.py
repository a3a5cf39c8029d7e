"""Closed-form kernel ridge regression with one regularisation convention.

Every place in the library that solves with a support kernel (the KIP loss, label solve,
evaluation) uses the same ridge:

.. math::
   \\lambda = \\text{reg} \\cdot \\frac{\\operatorname{tr} K_{ss}}{n_s},\\qquad
   \\hat y(x_t) = K_{ts} (K_{ss} + \\lambda I)^{-1} y_s,

so ``reg`` is relative to the kernel's scale (KIP: ``reg = 1e-6``).

Reference: Nguyen, Chen, Lee, "Dataset Meta-Learning from Kernel Ridge-Regression", ICLR 2021.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

__all__ = ["KernelFn", "ridge", "solve", "predict", "predict_from_kernels", "accuracy", "mse",
           "kernel_matrix", "DEFAULT_REG"]

logger = logging.getLogger(__name__)
DEFAULT_REG = 1e-6
# Jitter multipliers tried (relative to trace/n) when the Cholesky factor is not finite.
_JITTERS = (0.0, 1e-6, 1e-4, 1e-2)


class KernelFn(Protocol):
  """Anything with the neural-tangents ``kernel_fn(x1, x2, get)`` signature."""

  def __call__(self, x1: jax.Array, x2: Optional[jax.Array], get: str) -> jax.Array:
    ...


def ridge(k_ss: jax.Array, reg: float) -> jax.Array:
  """:math:`\\lambda = \\text{reg} \\cdot \\operatorname{tr}(K_{ss}) / n`."""
  return reg * jnp.trace(k_ss) / k_ss.shape[0]


def solve(k_ss: jax.Array, y_s: jax.Array, reg: float = DEFAULT_REG, *,
          jitter_fallback: bool = True) -> jax.Array:
  """Returns :math:`\\alpha = (K_{ss} + \\lambda I)^{-1} y_s` by Cholesky.

  If the Cholesky factor is not finite (``K_ss`` not numerically positive definite), a larger
  ridge is tried, up to ``1e-2 * tr(K)/n`` extra, when ``jitter_fallback``, and the raise is
  logged (a warning the 1st, 10th, 100th, ... time, with the ridge used); otherwise the NaNs
  propagate so the caller can raise. Works under ``jit`` and ``grad``.

  Args:
    k_ss: ``(n, n)`` support kernel.
    y_s: ``(n, k)`` support targets.
    reg: relative ridge (see module docstring).
    jitter_fallback: retry with more ridge instead of returning NaNs.

  Returns:
    ``(n, k)`` dual coefficients.
  """
  return _solve(k_ss, y_s, reg, jitter_fallback)


# Jitted so that eager callers (predict, evaluation) compile the fallback chain once per shape
# instead of re-tracing its ``cond`` branches on every call.
@functools.partial(jax.jit, static_argnums=(3,))
def _solve(k_ss, y_s, reg, jitter_fallback):
  n = k_ss.shape[0]
  eye = jnp.eye(n, dtype=k_ss.dtype)

  def attempt(k, y, extra):
    scale = jnp.trace(k) / n
    chol = jnp.linalg.cholesky(k + (reg * scale + extra * scale) * eye)
    return jax.scipy.linalg.cho_solve((chol, True), y)

  if not jitter_fallback:
    return attempt(k_ss, y_s, _JITTERS[0])
  # The ridge is chosen on values only, then one factorisation is differentiated: reverse mode
  # through a failed (NaN) attempt poisons the gradient even when its result is discarded.
  k_sg, y_sg = jax.lax.stop_gradient(k_ss), jax.lax.stop_gradient(y_s)
  ok = jnp.all(jnp.isfinite(attempt(k_sg, y_sg, _JITTERS[0])))
  extra = jnp.asarray(_JITTERS[0], k_ss.dtype)
  for e in _JITTERS[1:]:
    e_ok = jax.lax.cond(ok, lambda e=e: jnp.array(True),
                        lambda e=e: jnp.all(jnp.isfinite(attempt(k_sg, y_sg, e))))
    extra = jnp.where(ok, extra, jnp.asarray(e, k_ss.dtype))
    ok = ok | e_ok
  jax.debug.callback(_log_raised_ridge, extra, reg, n)
  return attempt(k_ss, y_s, extra)


_raised = {"count": 0}


def _log_raised_ridge(extra, reg, n) -> None:
  """Host side of :func:`solve`: reports a ridge raised beyond ``reg`` (rate-limited)."""
  extra = np.max(np.asarray(extra))
  if extra <= 0:
    return
  _raised["count"] += 1
  count = _raised["count"]
  level = logging.WARNING if math.log10(count).is_integer() else logging.DEBUG
  logger.log(level, "KRR: the %d x %d support kernel is not numerically positive definite at "
             "reg=%g; solved with reg=%g instead (raised %d time(s) so far). Use float64 or a "
             "larger reg to avoid it.", n, n, float(np.max(np.asarray(reg))),
             float(np.max(np.asarray(reg))) + float(extra), count)


def kernel_matrix(kernel_fn: Callable, x1: jax.Array, x2: Optional[jax.Array], get: str,
                  batch_size: Optional[int] = None) -> np.ndarray:
  """Kernel between ``x1`` and ``x2`` evaluated in chunks of ``x2`` rows (host memory).

  Use for large target sets (e.g. 10,000 test images) outside of ``jit``; each chunk is one
  ``kernel_fn`` call, which blocks further by its own memory budget.
  """
  x2 = x1 if x2 is None else x2
  n2 = x2.shape[0]
  batch_size = batch_size or n2
  f = jax.jit(lambda a, b: kernel_fn(a, b, get))
  out = [np.asarray(f(x1, x2[i:i + batch_size])) for i in range(0, n2, batch_size)]
  return np.concatenate(out, axis=1)


def predict_from_kernels(k_ss: jax.Array, k_ts: jax.Array, y_s: jax.Array,
                         reg: float = DEFAULT_REG) -> jax.Array:
  """:math:`K_{ts} (K_{ss} + \\lambda I)^{-1} y_s` from precomputed kernels."""
  return k_ts @ solve(k_ss, y_s, reg)


def predict(kernel_fn: Callable, x_support: jax.Array, y_support: jax.Array,
            x_target: jax.Array, reg: float = DEFAULT_REG, *, get: str = "ntk",
            batch_size: Optional[int] = None, dtype=None, progress: bool = False) -> jax.Array:
  """KRR predictions for ``x_target`` from the support set.

  Args:
    kernel_fn: ``kernel_fn(x1, x2, get)``.
    x_support: ``(n, ...)`` support inputs.
    y_support: ``(n, k)`` support targets (one-hot or learned labels).
    x_target: ``(m, ...)`` inputs to predict.
    reg: relative ridge.
    get: ``'ntk'`` or ``'nngp'``.
    batch_size: targets per kernel call (default: all at once).
    dtype: e.g. ``jnp.float64`` to solve in double precision (needs ``jax_enable_x64``).
    progress: show a bar over the target chunks.

  Returns:
    ``(m, k)`` predictions.

  Raises:
    ValueError: shapes disagree, inputs are not finite, or ``K_ss`` cannot be factorised.
  """
  _check(x_support, y_support, x_target)
  k_ss = jnp.asarray(kernel_fn(x_support, None, get))
  if dtype is not None:
    k_ss = k_ss.astype(dtype)
  alpha = solve(k_ss, jnp.asarray(y_support, k_ss.dtype), reg)
  if not bool(jnp.all(jnp.isfinite(alpha))):
    raise ValueError("K_ss is not positive definite even with extra ridge; raise reg "
                     f"(now {reg}) or check the support set for duplicates/NaNs.")
  m = x_target.shape[0]
  batch_size = batch_size or m
  f = jax.jit(lambda a, b: kernel_fn(a, b, get))
  outs = []
  for i in tqdm(range(0, m, batch_size), desc="K(target, support)", unit="chunk",
                disable=not progress):
    k_ts = jnp.asarray(f(x_target[i:i + batch_size], x_support)).astype(alpha.dtype)
    # Waited for, so the bar shows computed chunks rather than dispatched ones.
    outs.append(jax.block_until_ready(k_ts @ alpha))
  return jnp.concatenate(outs, axis=0)


def accuracy(predictions: jax.Array, labels: jax.Array) -> float:
  """Top-1 accuracy; ``labels`` are ``(m,)`` ints or ``(m, k)`` one-hot / soft."""
  labels = jnp.asarray(labels)
  if labels.ndim == 2:
    labels = jnp.argmax(labels, axis=1)
  return float(jnp.mean(jnp.argmax(predictions, axis=1) == labels))


def mse(predictions: jax.Array, targets: jax.Array) -> float:
  """:math:`\\frac{1}{2m}\\sum_i \\lVert \\hat y_i - y_i\\rVert^2` (KIP's loss)."""
  return float(0.5 * jnp.mean(jnp.sum((predictions - targets) ** 2, axis=-1)))


def _check(x_s, y_s, x_t):
  if x_s.shape[0] != y_s.shape[0]:
    raise ValueError(f"{x_s.shape[0]} support inputs but {y_s.shape[0]} support labels.")
  if y_s.ndim != 2:
    raise ValueError(f"y_support must be (n, k); got shape {y_s.shape}. One-hot encode integer "
                     "labels (jax.nn.one_hot).")
  if x_s.shape[1:] != x_t.shape[1:]:
    raise ValueError(f"support inputs {x_s.shape[1:]} and targets {x_t.shape[1:]} differ in "
                     "shape.")
  for name, a in (("x_support", x_s), ("y_support", y_s), ("x_target", x_t)):
    if not bool(jnp.all(jnp.isfinite(jnp.asarray(a)))):
      raise ValueError(f"{name} contains NaN or inf.")
