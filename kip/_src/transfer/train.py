"""Training finite networks on a support set, and the transfer evaluation protocol.

The protocol behind every "finite network" number: train ``restarts`` freshly initialised
networks on the support set with a :class:`~kip._src.transfer.recipes.Recipe`, measure each
one's accuracy on the full test split, report mean and standard deviation.

Randomness: restart ``r`` uses ``jax.random.split(jax.random.PRNGKey(seed), restarts)[r]``,
split once more into an initialisation key and a data key. Step ``t`` of epoch ``e`` takes
the ``(t mod steps_per_epoch)``-th batch of the permutation drawn from
``fold_in(fold_in(data_key, 0), e)``, so every example is seen once per epoch and the batch
shape is fixed (the last batch of an epoch is the last ``batch_size`` entries of the
permutation and may overlap the one before). An ``augment_fn`` gets
``fold_in(fold_in(data_key, 1), t)``. A restart's trajectory therefore depends only on its
key, whether restarts run one by one or vmapped together.

Restarts are trained several at a time with ``jax.vmap`` over their keys when the estimated
memory allows (``vmap_restarts='auto'``; on CPU, where XLA's batched convolutions are slower
than a loop, ``'auto'`` trains them one by one). Each training step is one jitted call
(vmapped over the restarts of a group) driven from Python, with a ``tqdm`` bar.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from kip._src import driver
from kip._src.distilled import DistilledSet
from kip._src.transfer import models as models_lib
from kip._src.transfer import ntk as ntk_lib
from kip._src.transfer import recipes as recipes_lib
from kip._src.transfer import tuning as tuning_lib
from kip._src.transfer.recipes import Recipe

__all__ = ["AugmentFn", "TransferResult", "train", "accuracy", "group_accuracies", "evaluate",
           "evaluate_full", "evaluate_random", "make_optimizer", "resolve_augment",
           "training_targets"]

logger = logging.getLogger(__name__)

Variables = Any  # a Flax variables dict: {'params': ...} (+ 'batch_stats' for norm='batch')


class AugmentFn(Protocol):
  """A jax-traceable augmentation ``(key, x) -> x`` for an ``(b, H, W, C)`` batch (e.g. DSA)."""

  def __call__(self, key: jax.Array, x: jax.Array) -> jax.Array:
    ...


# ---------------------------------------------------------------------------- targets / loss
def training_targets(labels: Any, loss: str, label_targets: str = "reference") -> np.ndarray:
  """The regression or cross-entropy targets a recipe's loss is computed against.

  ``label_targets='reference'`` (the KIP transfer notebook): ``'mse'`` regresses on centred
  labels, :math:`t = e_y - 1/K` for rows that are plain 0/1 one-hot vectors, any other row as
  given; ``'xent'`` on :math:`\\mathrm{one\\_hot}(\\arg\\max_k y_{ik})`.
  ``label_targets='as_given'``: ``'mse'`` on the labels unchanged; ``'xent'`` unchanged if
  every row is a probability vector (entries >= 0, row sums 1 within 1e-3), otherwise
  ``softmax(labels)`` on every row.

  Args:
    labels: ``(n, K)`` float labels.
    loss: ``'mse'`` or ``'xent'``.
    label_targets: ``'reference'`` or ``'as_given'``.

  Returns:
    ``(n, K)`` float32 targets.
  """
  labels = np.asarray(labels, np.float32)
  if loss not in ("mse", "xent"):
    raise ValueError(f"loss={loss!r} is not supported; use 'mse' or 'xent'.")
  if label_targets not in recipes_lib.LABEL_TARGETS:
    raise ValueError(f"label_targets={label_targets!r} is not supported; use one of "
                     f"{list(recipes_lib.LABEL_TARGETS)}.")
  k = labels.shape[1]
  if label_targets == "reference":
    if loss == "xent":
      return np.eye(k, dtype=np.float32)[np.argmax(labels, axis=1)]
    plain = np.all((labels == 0) | (labels == 1), axis=1) & (labels.sum(axis=1) == 1)
    shift = np.float32(1.0 / k if k > 1 else 0.5)
    return np.where(plain[:, None], labels - shift, labels).astype(np.float32)
  if loss == "mse":
    return labels
  if (labels >= 0).all() and np.allclose(labels.sum(axis=1), 1.0, atol=1e-3):
    return labels
  logger.info("labels are not probability vectors; cross-entropy uses softmax(labels).")
  z = labels - labels.max(axis=1, keepdims=True)
  e = np.exp(z)
  return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _loss(kind: str, logits: jax.Array, targets: jax.Array) -> jax.Array:
  if kind == "mse":
    return 0.5 * jnp.mean((logits - targets) ** 2)
  return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1))


def _unit_schedule(recipe: Recipe, num_steps: int) -> optax.Schedule:
  """The recipe's learning-rate schedule for a learning rate of 1 (its shape over the run)."""
  if recipe.schedule == "cosine":
    return optax.cosine_decay_schedule(1.0, max(int(num_steps), 1))
  return optax.piecewise_constant_schedule(1.0, {max(int(num_steps) // 2, 1): 0.1})  # step_half


def make_optimizer(recipe: Recipe, num_steps: int) -> optax.GradientTransformation:
  r"""SGD with momentum, coupled weight decay and the recipe's schedule over ``num_steps``.

  ``chain(add_decayed_weights(wd), sgd(schedule, momentum))``: PyTorch's
  ``SGD(lr, momentum, weight_decay)`` update with a scheduled learning rate,

  .. math:: g_t = \nabla_t + \mathrm{wd}\,\theta_t,\quad m_t = \mu m_{t-1} + g_t,\quad
     \theta_{t+1} = \theta_t - \eta\, s(t)\, m_t,

  with :math:`s` the schedule's shape (cosine to 0, or x0.1 at half the steps). The trainer
  applies this same update with :math:`\eta` and :math:`\mathrm{wd}` as run-time values, so
  that recipes differing only in them (a tuning grid) share one compiled step.
  """
  unit = _unit_schedule(recipe, num_steps)
  schedule = lambda count: recipe.learning_rate * unit(count)  # noqa: E731
  return optax.chain(optax.add_decayed_weights(recipe.weight_decay),
                     optax.sgd(schedule, momentum=recipe.momentum or None))


# ---------------------------------------------------------------------------- training core
class _State(NamedTuple):
  step: jax.Array        # () int32
  params: Any
  batch_stats: Any       # {} for stateless models
  opt_state: Any
  key: jax.Array         # data key of this restart
  loss: jax.Array        # () float32 loss of the last step


class _Trainer:
  """Jitted, restart-vmapped init and training loop for one (model, recipe, set size).

  The recipe's learning rate and weight decay are arguments of the compiled step, not
  constants in it (the update of :func:`make_optimizer`, written out), so one trainer serves
  every recipe that differs only in those two.
  """

  def __init__(self, model: nn.Module, recipe: Recipe, n: int,
               augment_fn: AugmentFn | None, per_restart_data: bool):
    self.num_steps = recipe.num_steps(n)
    batch = recipe.batch_size_for(n)
    steps_per_epoch = math.ceil(n / batch)
    unit = _unit_schedule(recipe, self.num_steps)
    tx = optax.trace(recipe.momentum) if recipe.momentum else optax.identity()

    def init(key, images):
      k_init, k_data = jax.random.split(key)
      variables = model.init(k_init, images[:1], train=False)
      params = variables["params"]
      return _State(jnp.zeros((), jnp.int32), params, variables.get("batch_stats", {}),
                    tx.init(params), k_data, jnp.full((), jnp.nan, jnp.float32))

    def loss_fn(params, batch_stats, x, y):
      if batch_stats:
        logits, updated = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=True, mutable=["batch_stats"])
        batch_stats = updated["batch_stats"]
      else:
        logits = model.apply({"params": params}, x, train=True)
      return _loss(recipe.loss, logits, y), batch_stats

    def step(state, images, targets, learning_rate, weight_decay):
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
      grads = jax.tree.map(lambda g, p: g + weight_decay * p, grads, state.params)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      step_size = -learning_rate * unit(state.step)
      updates = jax.tree.map(lambda u: jnp.asarray(step_size, u.dtype) * u, updates)
      params = optax.apply_updates(state.params, updates)
      return _State(state.step + 1, params, batch_stats, opt_state, state.key, loss)

    ax = 0 if per_restart_data else None
    donate = () if jax.default_backend() == "cpu" else (0,)  # CPU cannot donate; avoid warnings
    self.init = jax.jit(jax.vmap(init, in_axes=(0, ax)))
    # One jitted step driven from Python: XLA:CPU runs convolutions inside lax.fori_loop /
    # lax.scan bodies ~20x slower than at top level, and on accelerators async dispatch hides
    # the per-step launch cost.
    self.step = jax.jit(jax.vmap(step, in_axes=(0, ax, ax, None, None)),
                        donate_argnums=donate)

  def fit(self, keys: jax.Array, images: jax.Array, targets: jax.Array, recipe: Recipe,
          bar: Any | None = None) -> Variables:
    """Trains ``len(keys)`` networks; returns their stacked variables (leading restart axis).

    ``recipe`` gives the learning rate and weight decay (its other fields are this
    trainer's).

    The steps run in the library's one loop (:func:`kip._src.driver.iterate`); each network
    draws its batches from its own data key, so the loop key is unused. Metrics are fetched
    about 50 times per run, which bounds the dispatch queue and keeps ``bar`` honest.
    """
    state = self.init(keys, images)
    reported = [0]
    hyper = (jnp.float32(recipe.learning_rate), jnp.float32(recipe.weight_decay))

    def step(state, data, unused_key):
      state = self.step(state, *data, *hyper)
      return state, {"loss": state.loss}

    def advance(t, unused_metrics):
      if bar is not None:
        bar.update((t - reported[0]) * len(keys))
      reported[0] = t

    try:
      state, _ = driver.iterate(step, state, (images, targets), self.num_steps,
                                key=jax.random.PRNGKey(0), watch_loss=False, progress=False,
                                sync_every=max(1, math.ceil(self.num_steps / 50)),
                                callback=advance, desc="transfer")
      finite = np.asarray(jnp.isfinite(state.loss) & _all_finite(state.params))
    except driver.DivergenceError:
      finite = np.zeros(len(keys), bool)
    if not finite.all():
      raise ValueError(f"training diverged (NaN or inf loss/parameters) in "
                       f"{int((~finite).sum())} of {len(keys)} networks; lower the recipe's "
                       f"learning_rate or check the support set.")
    variables = {"params": state.params}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    return variables


@functools.lru_cache(maxsize=8)
def _cached_trainer(model: nn.Module, recipe: Recipe, n: int, augment_fn: AugmentFn | None,
                    per_restart_data: bool) -> _Trainer:
  # Models and recipes are frozen and hashable: evaluating several sets of one size with one
  # configuration (a benchmark table row) compiles the step once.
  return _Trainer(model, recipe, n, augment_fn, per_restart_data)


def _trainer(model, recipe, n, augment_fn, per_restart_data) -> _Trainer:
  recipe = recipe.replace(learning_rate=1.0, weight_decay=0.0)  # run-time values of fit()
  try:
    hash((model, recipe, augment_fn))
  except TypeError:  # e.g. a module holding a list attribute: no caching
    return _Trainer(model, recipe, n, augment_fn, per_restart_data)
  return _cached_trainer(model, recipe, n, augment_fn, per_restart_data)


@jax.jit
def _all_finite(tree) -> jax.Array:
  """Per-restart flag: every leaf of the stacked ``tree`` is finite."""
  flags = [jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
           for leaf in jax.tree.leaves(tree)]
  return functools.reduce(jnp.logical_and, flags)


def _as_images(images: Any, what: str = "images") -> np.ndarray:
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"{what} must be (n, H, W, C); got shape {images.shape}.")
  if not np.isfinite(images).all():
    raise ValueError(f"{what} contain NaN or inf.")
  return images


def _as_labels(labels: Any, n: int, num_classes: int | None) -> np.ndarray:
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
    raise ValueError(f"labels have {labels.shape[1]} columns but num_classes={num_classes}.")
  if not np.isfinite(labels).all():
    raise ValueError("labels contain NaN or inf.")
  return labels


@functools.lru_cache(maxsize=None)
def _strategy_fn(strategy: str) -> AugmentFn:
  from kip._src import augment as aug_lib
  return aug_lib.augment_fn(aug_lib.DEFAULT_STRATEGY if strategy == "dsa" else strategy)


def resolve_augment(augment_fn: AugmentFn | str | None) -> AugmentFn | None:
  """An augmentation argument as a function (one per string, so trainers stay cached).

  * ``'dsa'`` (DSA's ``color_crop_cutout_flip_scale_rotate``) or another DSA strategy string
    (e.g. ``'crop_flip'``): that differentiable augmentation;
  * ``'dc'`` (DC's ``crop_scale_rotate``) or ``'dc:<groups>'`` (e.g. ``'dc:crop_noise'``):
    the DatasetCondensation reference's evaluation augmentation (:mod:`kip._src.dc_augment`);
  * ``'none'``, ``None``: no augmentation; callables pass through.

  ``'reference'`` depends on the recipe and data set and is resolved by ``evaluate``.
  """
  if isinstance(augment_fn, str):
    if augment_fn == "none":
      return None
    if augment_fn == "reference":
      raise ValueError("augment_fn='reference' is resolved by evaluate / evaluate_random (it "
                       "depends on the recipe and data set); pass 'dc', 'dsa', a strategy, "
                       "a callable or None here.")
    if augment_fn == "dc" or augment_fn.startswith("dc:"):
      from kip._src import dc_augment
      strategy = augment_fn[3:] if augment_fn.startswith("dc:") else "crop_scale_rotate"
      return dc_augment.augment_fn(strategy)
    return _strategy_fn(augment_fn)
  return augment_fn


def reference_augment(augment_fn: AugmentFn | str | None, recipe: Recipe, dataset: Any,
                      model: nn.Module, preset_length: bool = True
                      ) -> tuple[AugmentFn | str | None, Recipe, str]:
  """Resolves ``augment_fn='reference'``: the augmentation the reference code evaluates with.

  * Recipes with ``augment=True`` (``'dsa'``): DSA with all its groups
    (``color_crop_cutout_flip_scale_rotate``), as DSA / DM's ``evaluate_synset``.
  * The ``'dc'`` recipe: DC's ``get_daparam`` (:func:`kip._src.dc_augment.reference_strategy`):
    ``crop_scale_rotate`` on MNIST, ``crop_noise`` for a batch-norm ConvNet, none otherwise;
    with augmentation the run is 1,000 epochs (``main.py``) when ``preset_length`` (the
    recipe was named ``'dc'`` and its ``epochs`` / ``steps`` not overridden).
  * Other recipes (``'kip'``): none.

  Any other ``augment_fn`` is returned unchanged with the recipe.

  Returns:
    ``(augment_fn, recipe, description)``, the description for reports (``'none'``,
    ``'dsa'``, ``'dc:crop_scale_rotate'``, the string given, or ``'callable'``).
  """
  if not (isinstance(augment_fn, str) and augment_fn == "reference"):
    if augment_fn is None:
      return None, recipe, "none"
    return augment_fn, recipe, augment_fn if isinstance(augment_fn, str) else "callable"
  if recipe.augment:
    return "dsa", recipe, "dsa"
  if recipe.name != "dc":
    return None, recipe, "none"
  from kip._src import dc_augment
  strategy = dc_augment.reference_strategy(getattr(dataset, "name", ""), model)
  if strategy == "none":
    return None, recipe, "none"
  if preset_length:
    recipe = recipe.replace(epochs=dc_augment.REFERENCE_AUGMENT_EPOCHS, steps=None)
  logger.info("DC reference evaluation augmentation %r (%s epochs) for %s.", strategy,
              recipe.epochs, getattr(dataset, "name", "this data set"))
  return f"dc:{strategy}", recipe, f"dc:{strategy}"


def _check_augment(recipe: Recipe, augment_fn: AugmentFn | None) -> None:
  if recipe.augment and augment_fn is None:
    raise ValueError(f"recipe {recipe.name!r} has augment=True but no augment_fn was given; "
                     f"pass augment_fn=(key, x) -> x, 'dsa' or 'reference', or use "
                     f"augment=False.")
  if augment_fn is not None and not callable(augment_fn):
    raise ValueError(f"augment_fn must be a callable (key, x) -> x; got {augment_fn!r}.")


def train(model: nn.Module, images: Any, labels: Any, recipe: Recipe | str, key: jax.Array, *,
          augment_fn: AugmentFn | None = None) -> Variables:
  """Trains one network on ``(images, labels)`` with ``recipe``.

  Args:
    model: a Flax module following the :mod:`~kip._src.transfer.models` contract.
    images: ``(n, H, W, C)`` float32 support images.
    labels: ``(n, K)`` float labels used as given (see :func:`training_targets`), or ``(n,)``
      integer labels (one-hot with ``K = model.num_classes``).
    recipe: a :class:`Recipe` or a preset name.
    key: PRNG key; split into an initialisation key and a data (batch, augmentation) key.
    augment_fn: jax-traceable ``(key, x) -> x`` applied to every training batch whenever it
      is given; required when ``recipe.augment``.

  Returns:
    The trained Flax variables: ``{'params': ...}``, plus ``'batch_stats'`` for batch norm;
    use as ``model.apply(variables, x)``.

  Raises:
    ValueError: bad shapes, NaN inputs, or a diverged run.
  """
  recipe = recipes_lib.get_recipe(recipe) if isinstance(recipe, str) else recipe
  augment_fn = resolve_augment(augment_fn)
  _check_augment(recipe, augment_fn)
  images = _as_images(images)
  labels = _as_labels(labels, images.shape[0], getattr(model, "num_classes", None))
  targets = training_targets(labels, recipe.loss, recipe.label_targets)
  trainer = _trainer(model, recipe, images.shape[0], augment_fn, False)
  stacked = trainer.fit(jnp.asarray(key)[None], jnp.asarray(images), jnp.asarray(targets),
                        recipe)
  return jax.tree.map(lambda a: a[0], stacked)


# ---------------------------------------------------------------------------- accuracy
def _as_class_indices(y: Any) -> np.ndarray:
  y = np.asarray(y)
  return np.argmax(y, axis=1) if y.ndim == 2 else y.astype(np.int64)


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
  x = _as_images(x, "x")
  y = _as_class_indices(y)
  if y.shape[0] != x.shape[0]:
    raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} images; they must match.")
  stacked = jax.tree.map(lambda a: jnp.asarray(a)[None], params)
  return float(group_accuracies(model, stacked, x, y, batch_size)[0])


# ---------------------------------------------------------------------------- protocol
@dataclasses.dataclass(frozen=True)
class TransferResult:
  """Test accuracies of networks trained on a support set.

  Attributes:
    accuracies: per-restart test accuracy, fractions in [0, 1].
    mean: mean of ``accuracies``.
    std: population standard deviation (``np.std``, as the DC reference code) of them.
    model: preset name (or class name of a module passed directly).
    model_config: the module's attributes.
    recipe: the recipe's fields, ``name`` included.
    num_images: support images per network.
    dataset: name of the evaluation data set.
    seed: the seed the restart keys were split from.
    seconds: wall time of training and evaluation.
    tuning: with ``evaluate(..., tune=...)``: the validation search (``validation_size``,
      ``lr_rule``, ``base_learning_rate``, every ``grid`` point with its ``val_accuracy``,
      the ``chosen`` point); ``None`` otherwise.
    augment: the training-batch augmentation (``'none'``, ``'dsa'``, a DSA strategy,
      ``'dc:crop_scale_rotate'``, ..., or ``'callable'``).
  """
  accuracies: tuple[float, ...]
  mean: float
  std: float
  model: str
  model_config: dict[str, Any]
  recipe: dict[str, Any]
  num_images: int
  dataset: str
  seed: int
  seconds: float
  tuning: dict[str, Any] | None = None
  augment: str = "none"

  @property
  def restarts(self) -> int:
    return len(self.accuracies)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["accuracies"] = list(self.accuracies)
    d["restarts"] = self.restarts
    d["model_config"] = {k: list(v) if isinstance(v, tuple) else v
                         for k, v in self.model_config.items()}
    return d

  def __str__(self) -> str:
    word = "restart" if self.restarts == 1 else "restarts"
    out = f"{100 * self.mean:.2f} ± {100 * self.std:.2f} % ({self.restarts} {word})"
    if self.tuning:
      c = self.tuning["chosen"]
      out += (f" [tuned on {self.tuning['validation_size']} validation images: lr "
              f"{c['learning_rate']:.4g} = {c['lr_factor']:g} x {self.tuning['lr_rule']} lr, "
              f"L2 {c['weight_decay']:g}]")
    if self.augment != "none":
      out += f" [augment {self.augment}]"
    return out


def _resolve_model(model: str | nn.Module, num_classes: int,
                   model_kwargs: dict[str, Any] | None) -> tuple[nn.Module, str]:
  if isinstance(model, str):
    return models_lib.get_model(model, num_classes, **(model_kwargs or {})), model
  if isinstance(model, nn.Module):
    if model_kwargs:
      raise ValueError("model_kwargs only apply to a model given by name; configure the module "
                       "instance directly.")
    if getattr(model, "num_classes", num_classes) != num_classes:
      raise ValueError(f"model has num_classes={model.num_classes} but the labels have "
                       f"{num_classes} classes.")
    return model, type(model).__name__
  raise ValueError(f"model must be a preset name {list(models_lib.MODEL_NAMES)} or a Flax "
                   f"module; got {model!r}.")


def _model_config(model: nn.Module) -> dict[str, Any]:
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
          if f.name not in ("parent", "name")}


def _resolve_recipe(recipe: str | Recipe, overrides: dict[str, Any] | None) -> Recipe:
  if isinstance(recipe, str):
    return recipes_lib.get_recipe(recipe, **(overrides or {}))
  if isinstance(recipe, Recipe):
    return recipes_lib.apply_overrides(recipe, overrides or {})
  raise ValueError(f"recipe must be a preset name {list(recipes_lib.RECIPE_NAMES)} or a "
                   f"Recipe; got {recipe!r}.")


def _preset_length(recipe: str | Recipe, overrides: dict[str, Any] | None) -> bool:
  """A recipe named by preset whose length (``epochs`` / ``steps``) was not overridden."""
  return isinstance(recipe, str) and not ({"epochs", "steps"} & set(overrides or {}))


def _check_restarts(restarts: Any) -> int:
  if isinstance(restarts, bool) or int(restarts) != restarts or restarts < 1:
    raise ValueError(f"restarts must be a positive integer; got {restarts!r}.")
  return int(restarts)


def _memory_budget() -> int:
  """Bytes the vmapped restarts may use: 40% of accelerator memory (1 GiB if unreported)."""
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # some backends do not report memory
    stats = {}
  limit = stats.get("bytes_limit")
  return int(0.4 * limit) if limit else 1 << 30


def _bytes_per_restart(model: nn.Module, image_shape: tuple[int, ...], batch: int,
                       data_bytes: int) -> int:
  """Rough training footprint of one network: activations, parameters, optimizer, data.

  Activations are every submodule's output (captured abstractly with ``eval_shape``) times 3
  for the pre-activations, nonlinearity outputs and their cotangents; parameters count 4x
  (values, gradients, momentum, updates).
  """
  x = jax.ShapeDtypeStruct((batch,) + tuple(image_shape), jnp.float32)

  def forward(key, x):
    variables = model.init(key, x, train=False)
    _, inter = model.apply(variables, x, train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    return variables, inter

  variables, inter = jax.eval_shape(forward, jax.random.PRNGKey(0), x)
  size = lambda tree: sum(int(np.prod(a.shape)) * 4 for a in jax.tree.leaves(tree))
  return 3 * size(inter) + 4 * size(variables) + data_bytes


def _group_size(vmap_restarts: Any, restarts: int, model: nn.Module,
                image_shape: tuple[int, ...], batch: int, data_bytes: int) -> int:
  if vmap_restarts == "auto" and jax.default_backend() == "cpu":
    most = 1
  elif vmap_restarts == "auto":
    per = _bytes_per_restart(model, image_shape, batch, data_bytes)
    most = max(1, min(restarts, _memory_budget() // max(per, 1)))
    logger.info("about %.1f MiB per network; training %d of %d restarts at once.",
                per / 2**20, most, restarts)
  elif vmap_restarts is True:
    most = restarts
  elif vmap_restarts is False:
    most = 1
  elif isinstance(vmap_restarts, int) and vmap_restarts >= 1:
    most = min(vmap_restarts, restarts)
  else:
    raise ValueError(f"vmap_restarts must be 'auto', True, False or a positive integer (the "
                     f"number of restarts trained at once); got {vmap_restarts!r}.")
  groups = math.ceil(restarts / most)
  return math.ceil(restarts / groups)  # fewest groups, each as small as that allows


def _run_protocol(*, images: np.ndarray, targets: np.ndarray, per_restart_data: bool,
                  dataset: Any, model: nn.Module, model_name: str, recipe: Recipe,
                  restarts: int, seed: int, augment_fn: AugmentFn | str | None,
                  vmap_restarts: Any, progress: bool, augment_name: str | None = None,
                  eval_batch_size: int = 1000) -> TransferResult:
  if augment_name is None:
    augment_name = reference_augment(augment_fn, recipe, dataset, model)[2]
  augment_fn = resolve_augment(augment_fn)
  _check_augment(recipe, augment_fn)
  start = time.perf_counter()
  n = images.shape[-4]
  image_shape = images.shape[-3:]
  x_test = _as_images(dataset.x_test, "dataset.x_test")
  y_test = _as_class_indices(dataset.y_test)
  data_bytes = (images[0].nbytes + targets[0].nbytes) if per_restart_data else 0
  group = _group_size(vmap_restarts, restarts, model, image_shape, recipe.batch_size_for(n),
                      data_bytes)
  trainer = _trainer(model, recipe, n, augment_fn, per_restart_data)
  keys = jax.random.split(jax.random.PRNGKey(seed), restarts)
  shared_images, shared_targets = jnp.asarray(images), jnp.asarray(targets)
  accuracies = []
  with tqdm(total=restarts * trainer.num_steps, disable=not progress, unit="step",
            desc=f"{model_name}/{recipe.name} x{restarts}", leave=False) as bar:
    for lo in range(0, restarts, group):
      hi = min(lo + group, restarts)
      if per_restart_data:
        im, tg = shared_images[lo:hi], shared_targets[lo:hi]
      else:
        im, tg = shared_images, shared_targets
      variables = trainer.fit(keys[lo:hi], im, tg, recipe, bar)
      accs = group_accuracies(model, variables, x_test, y_test,
                               max(1, eval_batch_size // (hi - lo)))
      accuracies.extend(float(a) for a in accs)
  accs = np.asarray(accuracies)
  result = TransferResult(
      accuracies=tuple(accuracies), mean=float(accs.mean()), std=float(accs.std()),
      model=model_name, model_config=_model_config(model), recipe=recipe.to_dict(),
      num_images=int(n), dataset=str(getattr(dataset, "name", "")), seed=int(seed),
      seconds=time.perf_counter() - start, augment=augment_name)
  logger.info("%s on %s, %d images, %s/%s: %s", model_name, result.dataset, n, model_name,
              recipe.name, result)
  return result


def _prepare(dataset: Any, num_classes: int | None, model: str | nn.Module,
             model_kwargs: dict[str, Any] | None, recipe: str | Recipe,
             recipe_overrides: dict[str, Any] | None, restarts: int):
  restarts = _check_restarts(restarts)
  k = int(dataset.num_classes if num_classes is None else num_classes)
  if k != dataset.num_classes:
    raise ValueError(f"num_classes={k} but the data set has {dataset.num_classes} classes.")
  recipe = _resolve_recipe(recipe, recipe_overrides)
  model, name = _resolve_model(model, k, model_kwargs)
  return restarts, k, model, name, recipe


def evaluate(distilled: DistilledSet | tuple[Any, Any], dataset: Any, *,
             model: str | nn.Module = "convnet", recipe: str | Recipe = "dc", restarts: int = 10,
             seed: int = 0, augment_fn: AugmentFn | str | None = "reference",
             num_classes: int | None = None,
             model_kwargs: dict[str, Any] | None = None,
             recipe_overrides: dict[str, Any] | None = None, vmap_restarts: Any = "auto",
             progress: bool = True, tune: Any = None) -> TransferResult:
  """Transfer accuracy: networks trained on the distilled set, tested on ``dataset.x_test``.

  With ``tune``, the recipe's learning rate and L2 are first chosen on a validation split
  carved from the end of ``dataset.x_train`` (:mod:`kip._src.transfer.tuning`: the KIP
  notebook's NTK learning-rate rule and a grid), then ``restarts`` networks are trained with
  the chosen values and tested; the search is in ``result.tuning`` and in ``str(result)``.

  Args:
    distilled: a :class:`~kip.DistilledSet` (checked with ``check_compatible(dataset)``) or
      an ``(images, labels)`` tuple: ``(n, H, W, C)`` images in the data set's preprocessed
      space and ``(n, K)`` float labels (used as given) or ``(n,)`` integer labels.
    dataset: a ``kip.data.Dataset`` (``name``, ``x_test``, ``y_test``, ``num_classes``, ...).
    model: preset name (see ``get_model``) or a Flax module.
    recipe: preset name (``'kip'``, ``'dc'``, ``'dsa'``) or a :class:`Recipe`.
    restarts: number of freshly initialised networks.
    seed: restart ``r`` uses ``jax.random.split(PRNGKey(seed), restarts)[r]``.
    augment_fn: ``'reference'`` (default: what the reference code evaluates this recipe with,
      :func:`reference_augment`: DSA for ``'dsa'``, DC's ``crop_scale_rotate`` and 1,000
      epochs for ``'dc'`` on MNIST, none on the other data sets and for ``'kip'``), a
      jax-traceable ``(key, x) -> x`` applied to each training batch, a DSA strategy string
      (``'dsa'``: all of DSA's groups; ``'crop_flip'``, ...: evaluation augmentation for any
      set, DC-BENCH), ``'dc'`` / ``'dc:<groups>'`` (DC's augmentation), or ``None`` /
      ``'none'`` (no augmentation; for ``'dc'`` on MNIST a deviation from the reference).
    num_classes: number of classes; defaults to (and must equal) ``dataset.num_classes``.
    model_kwargs: attribute overrides for a preset model (e.g. ``{'width': 256}``).
    recipe_overrides: field overrides for the recipe (e.g. ``{'steps': 1000}``).
    vmap_restarts: ``'auto'`` (as many restarts at once as ~40% of accelerator memory allows;
      one by one on CPU, where vmapped convolutions are slower than a loop), ``True`` (all
      at once), ``False`` (one by one) or an int (group size). The results do not depend on
      it beyond floating-point reassociation.
    progress: show a ``tqdm`` bar over restarts x steps.
    tune: ``None`` (no tuning), ``True`` (``Tune()``), a :class:`~kip.transfer.Tune` or a
      dict of its fields.

  Returns:
    A :class:`TransferResult`.

  Raises:
    ValueError: ``restarts < 1``, image/label count or shape mismatch, a distilled set made
      from another data set, NaN inputs, a diverged run, a validation split that would be
      empty (it says how to disable tuning).
  """
  if isinstance(distilled, DistilledSet):
    distilled.check_compatible(dataset)
    images, labels = distilled.images, distilled.labels
  elif isinstance(distilled, (tuple, list)) and len(distilled) == 2:
    images, labels = distilled
  else:
    raise ValueError(f"distilled must be a DistilledSet or an (images, labels) tuple; got "
                     f"{type(distilled).__name__}.")
  recipe_arg = recipe
  restarts, k, model, name, recipe = _prepare(dataset, num_classes, model, model_kwargs,
                                              recipe, recipe_overrides, restarts)
  images = _as_images(images)
  if images.shape[1:] != tuple(dataset.x_test.shape[1:]):
    raise ValueError(f"images have shape {images.shape[1:]} but the data set's are "
                     f"{tuple(dataset.x_test.shape[1:])}.")
  labels = _as_labels(labels, images.shape[0], k)
  targets = training_targets(labels, recipe.loss, recipe.label_targets)
  augment_fn, recipe, augment_name = reference_augment(
      augment_fn, recipe, dataset, model, _preset_length(recipe_arg, recipe_overrides))
  run = functools.partial(_run_protocol, images=images, targets=targets, per_restart_data=False,
                          model=model, model_name=name, augment_fn=augment_fn,
                          augment_name=augment_name, vmap_restarts=vmap_restarts,
                          progress=progress)
  tune = tuning_lib.as_tune(tune)
  if tune is None:
    return run(dataset=dataset, recipe=recipe, restarts=restarts, seed=seed)
  recipe, report = _tune(run, dataset, model, recipe, tune, seed)
  result = run(dataset=dataset, recipe=recipe, restarts=restarts, seed=seed)
  result = dataclasses.replace(result, tuning=report,
                               seconds=result.seconds + report["seconds"])
  logger.info("%s", result)
  return result


def _tune(run, dataset: Any, model: nn.Module, recipe: Recipe, tune: "tuning_lib.Tune",
          seed: int) -> tuple[Recipe, dict[str, Any]]:
  """Chooses the learning rate and L2 on the validation split; returns the recipe and report."""
  start = time.perf_counter()
  x_val, y_val = tuning_lib.validation_split(dataset, tune)
  val = _Split(name=f"{getattr(dataset, 'name', '')}[validation]",
               num_classes=dataset.num_classes, x_test=x_val, y_test=y_val)
  if tune.lr_rule == "ntk":
    x_ntk = jnp.asarray(x_val[:tune.ntk_images], jnp.float32)
    variables = model.init(jax.random.fold_in(jax.random.PRNGKey(seed), 2), x_ntk[:1],
                           train=False)
    base = ntk_lib.ntk_learning_rate(model, variables, x_ntk)
  else:
    base = float(recipe.learning_rate)
  points = tuning_lib.grid(tune, base)
  for p in points:
    trial = recipe.replace(learning_rate=p["learning_rate"], weight_decay=p["weight_decay"])
    if tune.search_epochs is not None:
      trial = trial.replace(epochs=int(tune.search_epochs), steps=None)
    try:
      res = run(dataset=val, recipe=trial, restarts=tune.restarts, seed=seed + 1)
      p["val_accuracy"] = res.mean
    except ValueError as e:
      if "diverged" not in str(e):
        raise
      p["val_accuracy"] = float("nan")
    logger.info("tuning: lr %.4g (%g x %s lr), L2 %g -> validation accuracy %.4f",
                p["learning_rate"], p["lr_factor"], tune.lr_rule, p["weight_decay"],
                p["val_accuracy"])
  chosen = tuning_lib.choose(points)
  edges = tuning_lib.grid_edges(points, chosen)
  if edges:
    logger.warning("tuning: %s; the best value may lie outside the grid, widen "
                   "Tune.lr_factors / Tune.weight_decays to check", "; ".join(edges))
  report = {"validation_size": int(x_val.shape[0]), "lr_rule": tune.lr_rule,
            "base_learning_rate": float(base), "ntk_images": int(tune.ntk_images),
            "restarts": int(tune.restarts), "search_epochs": tune.search_epochs,
            "grid": points, "chosen": chosen, "grid_edges": edges,
            "seconds": time.perf_counter() - start}
  return recipe.replace(learning_rate=chosen["learning_rate"],
                        weight_decay=chosen["weight_decay"]), report


class _Split(NamedTuple):
  """The fields of a data set that :func:`_run_protocol` reads, for the validation split."""
  name: str
  num_classes: int
  x_test: np.ndarray
  y_test: np.ndarray


def evaluate_full(dataset: Any, *, model: str | nn.Module = "convnet",
                  recipe: str | Recipe = "dc", restarts: int = 1, seed: int = 0,
                  augment_fn: AugmentFn | None = None,
                  model_kwargs: dict[str, Any] | None = None,
                  recipe_overrides: dict[str, Any] | None = None, vmap_restarts: Any = "auto",
                  progress: bool = True) -> TransferResult:
  """Reference point: the same protocol trained on the whole training set (one-hot labels).

  Epoch-based recipes get their epochs over all of ``dataset.x_train`` (``'dc'``: 300 epochs,
  expensive on 60,000 images); hence ``restarts`` defaults to 1. Arguments as in
  :func:`evaluate`.
  """
  restarts, k, model, name, recipe = _prepare(dataset, None, model, model_kwargs, recipe,
                                              recipe_overrides, restarts)
  images = _as_images(dataset.x_train, "dataset.x_train")
  labels = _as_labels(np.asarray(dataset.y_train), images.shape[0], k)
  targets = training_targets(labels, recipe.loss, recipe.label_targets)
  return _run_protocol(images=images, targets=targets,
                       per_restart_data=False, dataset=dataset, model=model, model_name=name,
                       recipe=recipe, restarts=restarts, seed=seed, augment_fn=augment_fn,
                       vmap_restarts=vmap_restarts, progress=progress)


def _random_subset(key: jax.Array, y: np.ndarray, images_per_class: int,
                   num_classes: int) -> np.ndarray:
  """Indices of ``images_per_class`` distinct random examples of every class, class-sorted."""
  out = []
  for c, k in zip(range(num_classes), jax.random.split(key, num_classes)):
    members = np.flatnonzero(y == c)
    if members.size < images_per_class:
      raise ValueError(f"class {c} has {members.size} training images, fewer than "
                       f"images_per_class={images_per_class}.")
    pick = np.asarray(jax.random.choice(k, members.size, (images_per_class,), replace=False))
    out.append(members[pick])
  return np.concatenate(out)


def evaluate_random(dataset: Any, images_per_class: int, *, model: str | nn.Module = "convnet",
                    recipe: str | Recipe = "dc", restarts: int = 10, seed: int = 0,
                    augment_fn: AugmentFn | str | None = "reference",
                    model_kwargs: dict[str, Any] | None = None,
                    recipe_overrides: dict[str, Any] | None = None,
                    vmap_restarts: Any = "auto", progress: bool = True) -> TransferResult:
  """Reference point: random class-balanced real subsets, a new subset for every restart.

  Restart ``r`` trains with the same key as in :func:`evaluate` on the subset drawn with
  ``jax.random.split(fold_in(PRNGKey(seed), 1), restarts)[r]``: ``images_per_class``
  distinct training images of every class, with one-hot labels. Other arguments as in
  :func:`evaluate`.
  """
  if isinstance(images_per_class, bool) or int(images_per_class) != images_per_class \
      or images_per_class < 1:
    raise ValueError(f"images_per_class must be a positive integer; got {images_per_class!r}.")
  recipe_arg = recipe
  restarts, k, model, name, recipe = _prepare(dataset, None, model, model_kwargs, recipe,
                                              recipe_overrides, restarts)
  augment_fn, recipe, augment_name = reference_augment(
      augment_fn, recipe, dataset, model, _preset_length(recipe_arg, recipe_overrides))
  x = _as_images(dataset.x_train, "dataset.x_train")
  y = np.asarray(dataset.y_train)
  subset_keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1), restarts)
  idx = np.stack([_random_subset(sk, y, int(images_per_class), k) for sk in subset_keys])
  images = x[idx]
  labels = np.eye(k, dtype=np.float32)[y[idx]]
  return _run_protocol(images=images, targets=training_targets(
      labels.reshape(-1, k), recipe.loss, recipe.label_targets).reshape(labels.shape),
                       per_restart_data=True,
                       dataset=dataset, model=model, model_name=name, recipe=recipe,
                       restarts=restarts, seed=seed, augment_fn=augment_fn,
                       augment_name=augment_name, vmap_restarts=vmap_restarts,
                       progress=progress)
