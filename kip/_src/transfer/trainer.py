"""Training finite networks on a support set: targets, optimizer, the NTK learning rate, fits.

Contract: :func:`train` ``(model, images, labels, recipe, key) -> variables`` trains one
network following a :class:`~kip._src.transfer.recipes.Recipe`; the protocol module trains many
at once through :class:`Trainer` (jitted init and step, vmapped over restarts) and
:func:`fit` (the host loop).

Randomness: a network's key is split into an initialisation key and a data key. Step ``t`` of
epoch ``e`` takes the ``(t mod steps_per_epoch)``-th batch of the permutation drawn from
``fold_in(fold_in(data_key, 0), e)``, so every example is seen once per epoch and the batch
shape is fixed (the last batch of an epoch is the last ``batch_size`` entries of the
permutation and may overlap the one before). An ``augment_fn`` gets
``fold_in(fold_in(data_key, 1), t)``. A network's trajectory therefore depends only on its
key, whether restarts run one by one or vmapped together.

Learning rate. ``recipe.lr_rule='fixed'`` trains with ``recipe.learning_rate``;
``lr_rule='ntk'`` (the KIP transfer protocol) sets each network's peak learning rate at
initialisation from its empirical NTK (:func:`ntk_learning_rate`) times
``recipe.learning_rate``. Either way the update is
:math:`\\theta \\leftarrow \\theta - \\eta\\, s_t\\, v_t`, with :math:`v_t` the momentum trace
of the decayed gradient and :math:`s_t` the recipe's schedule with peak 1.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kip._src.transfer import recipes as recipes_lib
from kip._src.transfer.recipes import Recipe

__all__ = ["AugmentFn", "Trainer", "accuracy", "fit", "make_optimizer", "ntk_learning_rate",
           "ntk_max_eigenvalue", "train", "training_targets"]

logger = logging.getLogger(__name__)

Variables = Any  # a Flax variables dict: {'params': ...} (+ 'batch_stats' for norm='batch')

# Power iteration on the empirical NTK: at most this many matrix-vector products, stopping
# early once the Rayleigh quotient changes by less than _POWER_RTOL (relative).
_POWER_ITERATIONS = 30
_POWER_RTOL = 1e-4
_NTK_EPS = 1e-12  # nt.predict.max_learning_rate's eps, as the KIP notebook passes it


class AugmentFn(Protocol):
  """A jax-traceable augmentation ``(key, x) -> x`` for an ``(b, H, W, C)`` batch (e.g. DSA)."""

  def __call__(self, key: jax.Array, x: jax.Array) -> jax.Array:
    ...


# ---------------------------------------------------------------------------- targets / loss
def _is_one_hot(labels: np.ndarray) -> bool:
  return bool(np.isin(labels, (0.0, 1.0)).all() and (labels.sum(axis=1) == 1).all())


def training_targets(labels: Any, loss: str, *, mse_targets: str = "centre_one_hot",
                     xent_targets: str = "argmax") -> np.ndarray:
  """The regression or cross-entropy targets a recipe's loss is computed against.

  With :math:`K` classes and shift :math:`c = 1/K` (:math:`c = 1/2` for :math:`K = 1`), as the
  KIP transfer notebook (``kip/nn_training.ipynb``: ``train_labels -= 1 / num_classes``):

  * ``loss='mse'``, ``mse_targets='centre_one_hot'`` (the reference): one-hot labels become
    :math:`e_y - c` (``-0.1 / 0.9`` for 10 classes); any other labels (learned, label-solved,
    already centred) are used as given, as the notebook uses a loaded KIP checkpoint's labels.
    ``'as_given'``: the labels unchanged (this library's earlier rule). ``'centre'``: every
    label minus :math:`c` (learned labels that were learned against 0/1 targets).
  * ``loss='xent'``, ``xent_targets='argmax'`` (the reference: "Recover one-hot label even for
    the learned labels"): :math:`e_{\\arg\\max_k y_k}` for every row. ``'soft'`` (the earlier
    rule): rows that are probability vectors (entries >= 0, sums 1 within 1e-3) as given,
    otherwise ``softmax(labels)`` on every row.

  Args:
    labels: ``(n, K)`` float labels.
    loss: ``'mse'`` or ``'xent'``.
    mse_targets: ``'centre_one_hot'``, ``'as_given'`` or ``'centre'``.
    xent_targets: ``'argmax'`` or ``'soft'``.

  Returns:
    ``(n, K)`` float32 targets.

  Raises:
    ValueError: an unknown loss or rule, or labels that are not ``(n, K)``.
  """
  labels = np.asarray(labels, np.float32)
  if labels.ndim != 2:
    raise ValueError(f"labels must be (n, K); got shape {labels.shape}.")
  k = labels.shape[1]
  shift = 1.0 / k if k > 1 else 0.5
  if loss == "mse":
    recipes_lib.check_choice("mse_targets", mse_targets, recipes_lib.MSE_TARGETS)
    if mse_targets == "centre" or (mse_targets == "centre_one_hot" and _is_one_hot(labels)):
      return labels - np.float32(shift)
    return labels
  if loss != "xent":
    raise ValueError(f"loss={loss!r} is not supported; use 'mse' or 'xent'.")
  recipes_lib.check_choice("xent_targets", xent_targets, recipes_lib.XENT_TARGETS)
  if xent_targets == "argmax":
    return np.eye(k, dtype=np.float32)[np.argmax(labels, axis=1)]
  if (labels >= 0).all() and np.allclose(labels.sum(axis=1), 1.0, atol=1e-3):
    return labels
  logger.info("labels are not probability vectors; cross-entropy uses softmax(labels).")
  z = labels - labels.max(axis=1, keepdims=True)
  e = np.exp(z)
  return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def recipe_targets(labels: Any, recipe: Recipe) -> np.ndarray:
  """:func:`training_targets` with the recipe's loss and target rules."""
  return training_targets(labels, recipe.loss, mse_targets=recipe.mse_targets,
                          xent_targets=recipe.xent_targets)


def _loss(kind: str, logits: jax.Array, targets: jax.Array) -> jax.Array:
  if kind == "mse":
    return 0.5 * jnp.mean((logits - targets) ** 2)
  return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1))


def _schedule(recipe: Recipe, peak: float, num_steps: int) -> optax.Schedule:
  if recipe.schedule == "cosine":
    return optax.cosine_decay_schedule(peak, max(int(num_steps), 1))
  return optax.piecewise_constant_schedule(peak, {max(int(num_steps) // 2, 1): 0.1})


def make_optimizer(recipe: Recipe, num_steps: int) -> optax.GradientTransformation:
  """SGD with momentum, coupled weight decay and the recipe's schedule over ``num_steps``.

  ``chain(add_decayed_weights(wd), sgd(schedule, momentum))``: PyTorch's
  ``SGD(lr, momentum, weight_decay)`` update with a scheduled learning rate peaking at
  ``recipe.learning_rate`` (for ``lr_rule='ntk'`` that is the factor; the trainer multiplies
  it by each network's NTK learning rate).
  """
  return optax.chain(optax.add_decayed_weights(recipe.weight_decay),
                     optax.sgd(_schedule(recipe, recipe.learning_rate, num_steps),
                               momentum=recipe.momentum or None))


def _unit_optimizer(recipe: Recipe, num_steps: int) -> optax.GradientTransformation:
  """:func:`make_optimizer` with peak learning rate 1 (the trainer scales the update)."""
  return optax.chain(optax.add_decayed_weights(recipe.weight_decay),
                     optax.sgd(_schedule(recipe, 1.0, num_steps),
                               momentum=recipe.momentum or None))


# ---------------------------------------------------------------------------- NTK learning rate
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


# ---------------------------------------------------------------------------- training core
class _State(NamedTuple):
  step: jax.Array        # () int32
  params: Any
  batch_stats: Any       # {} for stateless models
  opt_state: Any
  key: jax.Array         # data key of this network
  loss: jax.Array        # () float32 loss of the last step
  lr: jax.Array          # () float32 peak learning rate of this network


class Trainer:
  """Jitted, restart-vmapped init and step for one (model, recipe, set size, augmentation).

  Attributes:
    num_steps: SGD steps of one fit.
    init: ``(keys (r,), images) -> state`` (vmapped over the restart axis).
    step: ``(state, images, targets) -> state``.
  """

  def __init__(self, model: nn.Module, recipe: Recipe, n: int,
               augment_fn: AugmentFn | None, per_restart_data: bool):
    self.model = model
    self.recipe = recipe
    self.num_steps = recipe.num_steps(n)
    batch = recipe.batch_size_for(n)
    steps_per_epoch = math.ceil(n / batch)
    tx = _unit_optimizer(recipe, self.num_steps)
    lr0 = recipe.learning_rate if recipe.lr_rule == "fixed" else math.nan

    def init(key, images):
      k_init, k_data = jax.random.split(key)
      variables = model.init(k_init, images[:1], train=False)
      params = variables["params"]
      return _State(jnp.zeros((), jnp.int32), params, variables.get("batch_stats", {}),
                    tx.init(params), k_data, jnp.full((), jnp.nan, jnp.float32),
                    jnp.full((), lr0, jnp.float32))

    def loss_fn(params, batch_stats, x, y):
      if batch_stats:
        logits, updated = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=True, mutable=["batch_stats"])
        batch_stats = updated["batch_stats"]
      else:
        logits = model.apply({"params": params}, x, train=True)
      return _loss(recipe.loss, logits, y), batch_stats

    def step(state, images, targets):
      if batch < n:
        epoch = state.step // steps_per_epoch
        perm = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(state.key, 0), epoch),
                                      n)
        start = jnp.minimum((state.step % steps_per_epoch) * batch, n - batch)
        idx = jax.lax.dynamic_slice(perm, (start,), (batch,))
        x, y = images[idx], targets[idx]
      else:
        x, y = images, targets
      if augment_fn is not None:
        x = augment_fn(jax.random.fold_in(jax.random.fold_in(state.key, 1), state.step), x)
      (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params, state.batch_stats, x, y)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      updates = jax.tree.map(lambda u: (state.lr * u).astype(u.dtype), updates)
      params = optax.apply_updates(state.params, updates)
      return state._replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, loss=loss)

    ax = 0 if per_restart_data else None
    donate = () if jax.default_backend() == "cpu" else (0,)  # CPU cannot donate; avoid warnings
    self.init = jax.jit(jax.vmap(init, in_axes=(0, ax)))
    # One jitted step driven from Python: XLA:CPU runs convolutions inside lax.fori_loop /
    # lax.scan bodies ~20x slower than at top level, and on accelerators async dispatch hides
    # the per-step launch cost.
    self.step = jax.jit(jax.vmap(step, in_axes=(0, ax, ax)), donate_argnums=donate)

  def set_learning_rates(self, state: _State, ntk_images: jax.Array | None) -> _State:
    """For ``lr_rule='ntk'``: each network's ``factor * ntk_learning_rate`` on ``ntk_images``."""
    if self.recipe.lr_rule != "ntk":
      return state
    if ntk_images is None or ntk_images.shape[0] == 0:
      raise ValueError("lr_rule='ntk' needs images to estimate the NTK on (ntk_images).")
    lam = _stacked_max_eigenvalue(self.model, state.params, state.batch_stats, ntk_images)
    k = jax.eval_shape(lambda p, b: self.model.apply(_variables(p, b), ntk_images[:1]),
                       jax.tree.map(lambda a: a[0], state.params),
                       jax.tree.map(lambda a: a[0], state.batch_stats)).shape[-1]
    lr = self.recipe.learning_rate * _lr_from_eigenvalue(lam, ntk_images.shape[0], k)
    if not np.all(np.isfinite(lr)) or np.any(lr <= 0):
      raise ValueError(f"the NTK learning rate is not a positive number ({lr}); the network's "
                       f"empirical NTK on the {ntk_images.shape[0]} images has eigenvalue "
                       f"{lam}. Use lr_rule='fixed'.")
    logger.info("NTK lr rule: lambda_max %s on %d images -> lr %s (factor %g)",
                np.array2string(lam, precision=4), ntk_images.shape[0],
                np.array2string(lr, precision=4), self.recipe.learning_rate)
    return state._replace(lr=jnp.asarray(lr, jnp.float32))


def fit(trainer: Trainer, keys: jax.Array, images: jax.Array, targets: jax.Array, *,
        ntk_images: jax.Array | None = None, bar: Any | None = None
        ) -> tuple[Variables, np.ndarray]:
  """Trains ``len(keys)`` networks: the host loop over jitted steps.

  Args:
    trainer: the :class:`Trainer` of the model, recipe and set size.
    keys: ``(r,)`` PRNG keys, one network each.
    images: ``(n, H, W, C)`` images, or ``(r, n, H, W, C)`` for per-network data.
    targets: ``(n, K)`` targets (see :func:`training_targets`), or ``(r, n, K)``.
    ntk_images: ``(m, H, W, C)`` images for ``lr_rule='ntk'``.
    bar: optional ``tqdm`` bar, advanced by networks x steps.

  Returns:
    The trained variables stacked along a leading restart axis, and the ``(r,)`` peak learning
    rates the networks were trained with.

  Raises:
    ValueError: a network diverged (NaN or inf loss or parameters).
  """
  state = trainer.set_learning_rates(trainer.init(keys, images), ntk_images)
  chunk = max(1, math.ceil(trainer.num_steps / 50))
  reported = 0
  for t in range(1, trainer.num_steps + 1):
    state = trainer.step(state, images, targets)
    if t % chunk == 0 or t == trainer.num_steps:
      jax.block_until_ready(state.loss)  # bounds the dispatch queue; keeps the bar honest
      if bar is not None:
        bar.update((t - reported) * len(keys))
      reported = t
  finite = np.asarray(jnp.isfinite(state.loss) & _all_finite(state.params))
  if not finite.all():
    raise ValueError(f"training diverged (NaN or inf loss/parameters) in "
                     f"{int((~finite).sum())} of {len(keys)} networks; lower the recipe's "
                     f"learning_rate (with lr_rule='ntk': the factor) or check the support set.")
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables, np.asarray(state.lr, np.float64)


@functools.lru_cache(maxsize=8)
def _cached_trainer(model: nn.Module, recipe: Recipe, n: int, augment_fn: AugmentFn | None,
                    per_restart_data: bool) -> Trainer:
  # Models and recipes are frozen and hashable: evaluating several sets of one size with one
  # configuration (a benchmark table row) compiles the step once.
  return Trainer(model, recipe, n, augment_fn, per_restart_data)


def get_trainer(model: nn.Module, recipe: Recipe, n: int, augment_fn: AugmentFn | None,
                per_restart_data: bool) -> Trainer:
  """A (cached when the arguments hash) :class:`Trainer`."""
  try:
    hash((model, recipe, augment_fn))
  except TypeError:  # e.g. a module holding a list attribute: no caching
    return Trainer(model, recipe, n, augment_fn, per_restart_data)
  return _cached_trainer(model, recipe, n, augment_fn, per_restart_data)


@jax.jit
def _all_finite(tree) -> jax.Array:
  """Per-restart flag: every leaf of the stacked ``tree`` is finite."""
  flags = [jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
           for leaf in jax.tree.leaves(tree)]
  return functools.reduce(jnp.logical_and, flags)


# ---------------------------------------------------------------------------- input checks
def as_images(images: Any, what: str = "images") -> np.ndarray:
  """``(n, H, W, C)`` finite float32 images, else ``ValueError``."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"{what} must be (n, H, W, C); got shape {images.shape}.")
  if not np.isfinite(images).all():
    raise ValueError(f"{what} contain NaN or inf.")
  return images


def as_labels(labels: Any, n: int, num_classes: int | None) -> np.ndarray:
  """``(n, K)`` float32 labels; ``(n,)`` integer labels are one-hot encoded."""
  labels = np.asarray(labels)
  if labels.ndim == 1:
    if not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"1-D labels must be integer class indices; got dtype {labels.dtype}.")
    if num_classes is None:
      raise ValueError("integer labels need num_classes to be one-hot encoded.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(f"integer labels must lie in [0, {num_classes}); got range "
                       f"[{labels.min()}, {labels.max()}].")
    labels = np.eye(num_classes, dtype=np.float32)[labels]
  labels = labels.astype(np.float32)
  if labels.ndim != 2:
    raise ValueError(f"labels must be (n, num_classes) floats or (n,) integers; got shape "
                     f"{labels.shape}.")
  if labels.shape[0] != n:
    raise ValueError(f"{labels.shape[0]} labels for {n} images; they must match.")
  if num_classes is not None and labels.shape[1] != num_classes:
    raise ValueError(f"labels have {labels.shape[1]} columns (classes) but num_classes="
                     f"{num_classes}.")
  if not np.isfinite(labels).all():
    raise ValueError("labels contain NaN or inf.")
  return labels


def as_class_indices(y: Any) -> np.ndarray:
  y = np.asarray(y)
  return np.argmax(y, axis=1) if y.ndim == 2 else y.astype(np.int64)


def check_augment(recipe: Recipe, augment_fn: AugmentFn | None) -> None:
  if recipe.augment and augment_fn is None:
    raise ValueError(f"recipe {recipe.name!r} has augment=True but no augmentation was given; "
                     f"pass augment='dsa' (evaluation) or augment_fn=(key, x) -> x, or use "
                     f"augment=False.")
  if augment_fn is not None and not callable(augment_fn):
    raise ValueError(f"augment_fn must be a callable (key, x) -> x; got {augment_fn!r}.")


def train(model: nn.Module, images: Any, labels: Any, recipe: Recipe | str, key: jax.Array, *,
          augment_fn: AugmentFn | None = None, ntk_images: Any | None = None) -> Variables:
  """Trains one network on ``(images, labels)`` with ``recipe``.

  Args:
    model: a Flax module following the :mod:`~kip._src.transfer.models` contract.
    images: ``(n, H, W, C)`` float32 support images.
    labels: ``(n, K)`` float labels (mapped to targets by the recipe's rules, see
      :func:`training_targets`), or ``(n,)`` integer labels (one-hot with
      ``K = model.num_classes``).
    recipe: a :class:`Recipe` or a preset name.
    key: PRNG key; split into an initialisation key and a data (batch, augmentation) key.
    augment_fn: jax-traceable ``(key, x) -> x`` applied to every training batch whenever it
      is given; required when ``recipe.augment``.
    ntk_images: images the ``lr_rule='ntk'`` learning rate is estimated on; default the first
      ``recipe.ntk_samples`` training images.

  Returns:
    The trained Flax variables: ``{'params': ...}``, plus ``'batch_stats'`` for batch norm;
    use as ``model.apply(variables, x)``.

  Raises:
    ValueError: bad shapes, NaN inputs, or a diverged run.
  """
  recipe = recipes_lib.get_recipe(recipe) if isinstance(recipe, str) else recipe
  check_augment(recipe, augment_fn)
  images = as_images(images)
  labels = as_labels(labels, images.shape[0], getattr(model, "num_classes", None))
  targets = recipe_targets(labels, recipe)
  ntk = images[:recipe.ntk_samples] if ntk_images is None else as_images(ntk_images,
                                                                          "ntk_images")
  trainer = get_trainer(model, recipe, images.shape[0], augment_fn, False)
  stacked, _ = fit(trainer, jnp.asarray(key)[None], jnp.asarray(images), jnp.asarray(targets),
                   ntk_images=jnp.asarray(ntk))
  return jax.tree.map(lambda a: a[0], stacked)


# ---------------------------------------------------------------------------- accuracy
@functools.partial(jax.jit, static_argnums=0)
def _predict_group(model: nn.Module, variables: Variables, x: jax.Array) -> jax.Array:
  return jax.vmap(lambda v: jnp.argmax(model.apply(v, x, train=False), axis=-1))(variables)


def group_accuracies(model: nn.Module, variables: Variables, x: np.ndarray, y: np.ndarray,
                     batch_size: int) -> np.ndarray:
  """Accuracy of each of the stacked networks on ``(x, y)``; one compile (padded last batch)."""
  n = x.shape[0]
  if n == 0:
    raise ValueError("cannot measure accuracy on an empty test set.")
  batch_size = max(1, min(int(batch_size), n))
  correct = 0
  for start in range(0, n, batch_size):
    xb = x[start:start + batch_size]
    yb = y[start:start + batch_size]
    pad = batch_size - xb.shape[0]
    if pad:
      xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
    pred = np.asarray(_predict_group(model, variables, jnp.asarray(xb)))[:, :len(yb)]
    correct = correct + (pred == yb[None]).sum(axis=1)
  return correct / n


def accuracy(model: nn.Module, params: Variables, x: Any, y: Any, batch_size: int = 1000
             ) -> float:
  """Top-1 accuracy of one network (jitted, in batches of ``batch_size``).

  Args:
    model: the Flax module.
    params: its variables, as returned by :func:`train`.
    x: ``(n, H, W, C)`` images.
    y: ``(n,)`` integer labels or ``(n, K)`` labels (argmax taken).
    batch_size: images per forward pass.

  Returns:
    The fraction in [0, 1] of images whose argmax logit is the label.
  """
  x = as_images(x, "x")
  y = as_class_indices(y)
  if y.shape[0] != x.shape[0]:
    raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} images; they must match.")
  stacked = jax.tree.map(lambda a: jnp.asarray(a)[None], params)
  return float(group_accuracies(model, stacked, x, y, batch_size)[0])
