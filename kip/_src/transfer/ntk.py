"""The empirical NTK of a finite network at initialisation, and the learning rate it implies.

Used to set step sizes from the network itself (the KIP transfer notebook's rule,
``nt.predict.max_learning_rate``) and to rescale DD's learned step sizes to another network.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ntk_max_eigenvalue", "ntk_learning_rate"]

Variables = Any  # a Flax variables dict: {'params': ...} (+ 'batch_stats' for norm='batch')

_POWER_ITERATIONS = 30
_POWER_RTOL = 1e-4
_NTK_EPS = 1e-12  # nt.predict.max_learning_rate's eps, as the KIP notebook passes it

def _variables(params, batch_stats):
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _reduced_output(model: nn.Module, batch_stats, x: jax.Array):
  """:math:`r(\\theta)_i = \\sum_k f_k(x_i; \\theta) / \\sqrt{K}` as a function of ``params``."""
  def r(params):
    out = model.apply(_variables(params, batch_stats), x, train=False)
    return jnp.sum(out, axis=-1) / jnp.sqrt(out.shape[-1]).astype(out.dtype)
  return r


def _ntk_matvec(model: nn.Module, params, batch_stats, x: jax.Array, v: jax.Array):
  """:math:`\\Theta v = J (J^\\top v)` with :math:`J = \\partial r / \\partial \\theta`."""
  r = _reduced_output(model, batch_stats, x)
  _, vjp = jax.vjp(r, params)
  (u,) = vjp(v.astype(jnp.float32))
  return jax.jvp(r, (params,), (u,))[1]


@functools.partial(jax.jit, static_argnums=0)
def _batched_matvec(model, params, batch_stats, x, v):
  return jax.vmap(lambda p, b, v: _ntk_matvec(model, p, b, x, v))(params, batch_stats, v)


def _stacked_max_eigenvalue(model: nn.Module, params, batch_stats, x: jax.Array) -> np.ndarray:
  """Power iteration for every network of a stacked (leading restart axis) ``params``."""
  r = jax.tree.leaves(params)[0].shape[0]
  m = x.shape[0]
  v = jnp.full((r, m), 1.0 / math.sqrt(m), jnp.float32)
  estimate = np.zeros(r)
  for i in range(_POWER_ITERATIONS):
    w = _batched_matvec(model, params, batch_stats, x, v)
    new = np.asarray(jnp.sum(v * w, axis=1), np.float64)  # Rayleigh quotient, ||v|| = 1
    norms = jnp.linalg.norm(w, axis=1, keepdims=True)
    v = w / jnp.maximum(norms, 1e-30)
    if i and np.all(np.abs(new - estimate) <= _POWER_RTOL * np.abs(new)):
      estimate = new
      break
    estimate = new
  return estimate


def ntk_max_eigenvalue(model: nn.Module, variables: Variables, x: Any) -> float:
  """Largest eigenvalue of the network's empirical NTK on ``x``, by power iteration.

  The kernel is that of the logit-summed output
  :math:`r(x) = \\sum_k f_k(x) / \\sqrt{K}`, :math:`\\Theta = J J^\\top` with
  :math:`J = \\partial r(x) / \\partial \\theta` (``m x m`` for ``m`` images), as the KIP transfer
  notebook computes it (``nt.empirical_ntk_fn(logit_reduced_f, trace_axes=())``). Each
  iteration is one VJP and one JVP (:math:`\\Theta v = J (J^\\top v)`); no Jacobian is formed.
  Starting from :math:`\\mathbf{1}/\\sqrt m` (close to the top eigenvector of a kernel with
  positive entries), it stops when the Rayleigh quotient changes by less than 1e-4
  (relative), after at most 30 products.

  Args:
    model: a Flax module (evaluated with ``train=False``).
    variables: its variables (``{'params': ...}``, plus ``'batch_stats'``).
    x: ``(m, H, W, C)`` images.

  Returns:
    :math:`\\lambda_{\\max}(\\Theta)`.
  """
  stacked = jax.tree.map(lambda a: jnp.asarray(a)[None], variables)
  return float(_stacked_max_eigenvalue(model, stacked["params"], stacked.get("batch_stats", {}),
                                       jnp.asarray(x, jnp.float32))[0])


def _lr_from_eigenvalue(lam: Any, m: int, num_outputs: int) -> Any:
  return 2.0 * m * num_outputs / (lam + _NTK_EPS)


def ntk_learning_rate(model: nn.Module, variables: Variables, x: Any) -> float:
  """The maximal stable learning rate of MSE gradient descent from the empirical NTK.

  .. math::
    \\eta_{\\max} = \\frac{2\\, m K}{\\lambda_{\\max}(\\Theta) + 10^{-12}},

  ``nt.predict.max_learning_rate(ntk, y_train_size=m * K, momentum=0, eps=1e-12)`` with
  :math:`\\Theta` of :func:`ntk_max_eigenvalue` on ``m`` images and :math:`K` logits: the
  largest :math:`\\eta` for which :math:`I - \\eta\\,\\Theta / (mK)` is a contraction under the
  loss :math:`\\tfrac{1}{2mK}\\lVert f - y\\rVert^2` (our ``'mse'``). The KIP notebook
  passes no momentum although it trains with momentum 0.9, so this is conservative for the
  ``'kip'`` recipe; for cross-entropy it is a heuristic scale.

  Reference: Lee et al., "Finite Versus Infinite Neural Networks: an Empirical Study",
  NeurIPS 2020; google-research ``kip/nn_training.ipynb``.
  """
  x = jnp.asarray(x, jnp.float32)
  k = jax.eval_shape(lambda v: model.apply(v, x[:1], train=False), variables).shape[-1]
  return float(_lr_from_eigenvalue(ntk_max_eigenvalue(model, variables, x), x.shape[0], k))
