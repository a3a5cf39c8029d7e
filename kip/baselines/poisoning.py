"""Data poisoning with distilled images (Wang, Zhu, Torralba & Efros 2018, Sec. 3.5 / 4.3).

Given *trained* networks :math:`\\theta \\sim p(\\theta)`, an attacked class :math:`K` and a
target class :math:`T`, learn a few images :math:`\\tilde x` (labelled :math:`T`) and step sizes
:math:`\\tilde\\eta` such that a few gradient steps on them,

.. math::
    \\theta_{t+1} = \\theta_t - \\tilde\\eta_t \\nabla_\\theta \\ell(\\tilde x, T; \\theta_t),
    \\qquad \\theta_0 = \\theta,

make the network classify real :math:`K` images as :math:`T` while keeping the other classes:

.. math::
    \\min_{\\tilde x, \\tilde\\eta}\\; \\mathbb{E}_{\\theta}\\,
      \\ell_{K \\to T}(x_{\\text{real}}, y_{\\text{real}}; \\theta_{\\text{steps}}),
    \\qquad \\ell_{K\\to T}: \\text{cross-entropy with every label } K
    \\text{ replaced by } T.

The expectation runs over a pool of ``num_pretrained`` networks trained on the real training set
from different seeds (one drawn per outer step). :func:`poison_report` measures the attack on
networks the attack never saw (trained from other seeds): accuracy on class :math:`K`, fraction
of :math:`K` sent to :math:`T`, and accuracy on the other classes, before and after the
poisoned update. Networks are pretrained with ``kip.transfer.train`` (or a user's
``pretrained_params_fn(key) -> variables``). The unrolled update is
:func:`kip.baselines.dd.unrolled_sgd` (``jax.lax.scan`` with ``jax.checkpoint``).

API (optax style)::

  state = init(key, dataset, attacked_class, target_class, num_images, config, pool)
  state, metrics = step(state, (x_real, y_real), key)          # jitted
  poisoned = poison(dataset, K, T, num_images, config, key)    # pretrains, loops
  report = poison_report(poisoned, dataset, other_key)
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from tqdm.auto import tqdm

from kip._src.distilled import DistilledSet, library_versions
from kip._src.transfer import recipes as recipes_lib
from kip._src.transfer import train as transfer_train
from kip.baselines import coresets
from kip.baselines import dd

__all__ = [
    "PoisonConfig",
    "PoisonMetrics",
    "PoisonReport",
    "PoisonState",
    "init",
    "poison",
    "poison_report",
    "pretrain",
    "step",
]

logger = logging.getLogger(__name__)

_IMAGE_INITS = ("attacked", "noise")
PretrainFn = Callable[[jax.Array], Any]


def _default_recipe() -> recipes_lib.Recipe:
  return recipes_lib.get_recipe("dc", steps=500, batch_size=256)


@dataclasses.dataclass(frozen=True)
class PoisonConfig:
  """Hyperparameters of the DD poisoning attack.

  Attributes:
    model: ``kip.transfer`` model name (the paper: LeNet on MNIST, AlexNet on CIFAR-10).
    model_kwargs: ``get_model`` overrides (mapping; stored as sorted pairs).
    steps: gradient steps taken on the poison images (the paper: 1).
    lr_init: initial step size.
    lr_param: ``'softplus'`` or ``'exp'`` parameterisation of the step sizes.
    learn_lr: learn the step sizes.
    image_init: ``'attacked'`` (random real images of class :math:`K`) or ``'noise'``.
    learning_rate: outer ``optax.adam(lr, b1=0.5)`` learning rate.
    batch_size: real images per outer step.
    num_steps: outer steps of :func:`poison`.
    num_pretrained: trained networks in the attack's pool.
    pretrain_recipe: ``kip.transfer`` recipe for the default pretraining (``None``: the
      ``'dc'`` recipe with 500 steps of batch 256).
    remat: checkpoint each unrolled step.
  """
  model: str = "lenet"
  model_kwargs: Any = ()
  steps: int = 1
  lr_init: float = 0.02
  lr_param: str = "softplus"
  learn_lr: bool = True
  image_init: str = "attacked"
  learning_rate: float = 0.01
  batch_size: int = 256
  num_steps: int = 200
  num_pretrained: int = 4
  pretrain_recipe: recipes_lib.Recipe | None = None
  remat: bool = True

  def __post_init__(self):
    # Reuse DDConfig's validation of the shared fields.
    dd.DDConfig(model=self.model, model_kwargs=self.model_kwargs, steps=self.steps, epochs=1,
                lr_init=self.lr_init, lr_param=self.lr_param, learning_rate=self.learning_rate,
                batch_size=self.batch_size, num_steps=self.num_steps)
    kwargs = self.model_kwargs.items() if isinstance(self.model_kwargs, Mapping) \
        else self.model_kwargs
    object.__setattr__(self, "model_kwargs", tuple(sorted((str(k), v) for k, v in kwargs)))
    if self.image_init not in _IMAGE_INITS:
      raise ValueError(f"image_init must be one of {_IMAGE_INITS}; got {self.image_init!r}.")
    if isinstance(self.num_pretrained, bool) or not isinstance(self.num_pretrained, int) \
        or self.num_pretrained < 1:
      raise ValueError(f"num_pretrained must be a positive int; got {self.num_pretrained!r}.")
    if self.pretrain_recipe is not None and not isinstance(self.pretrain_recipe,
                                                           recipes_lib.Recipe):
      raise ValueError(f"pretrain_recipe must be a kip.transfer.Recipe or None; got "
                       f"{self.pretrain_recipe!r}.")

  @property
  def recipe(self) -> recipes_lib.Recipe:
    return self.pretrain_recipe if self.pretrain_recipe is not None else _default_recipe()

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["model_kwargs"] = dict(self.model_kwargs)
    d["pretrain_recipe"] = self.recipe.to_dict()
    return d


@struct.dataclass
class PoisonState:
  """State of the attack (pytree; ``config``, ``model``, ``optimizer`` static).

  Attributes:
    images: ``(m, H, W, C)`` poison images.
    labels: ``(m, K)`` one-hot labels of the target class.
    raw_lrs: ``(steps,)`` step-size parameters.
    opt_state: outer optimiser state over ``{'images', 'raw_lrs'}``.
    pool: the pretrained networks' variables stacked on a leading ``(P,)`` axis.
    attacked_class: ``()`` int32 :math:`K`.
    target_class: ``()`` int32 :math:`T`.
    count: ``()`` int32 outer steps taken.
    config: :class:`PoisonConfig`.
    model: the Flax module.
    optimizer: the outer optimiser.
  """
  images: jax.Array
  labels: jax.Array
  raw_lrs: jax.Array
  opt_state: Any
  pool: Any
  attacked_class: jax.Array
  target_class: jax.Array
  count: jax.Array
  config: PoisonConfig = struct.field(pytree_node=False)
  model: nn.Module = struct.field(pytree_node=False)
  optimizer: optax.GradientTransformation = struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class PoisonMetrics:
  """Effect on the test set, averaged over networks (fractions in ``[0, 1]``).

  Attributes:
    attacked_accuracy: fraction of test images of class :math:`K` classified as :math:`K`.
    attacked_to_target: fraction of test images of class :math:`K` classified as :math:`T`.
    other_accuracy: accuracy on the test images of all other classes.
  """
  attacked_accuracy: float
  attacked_to_target: float
  other_accuracy: float


@dataclasses.dataclass(frozen=True)
class PoisonReport:
  """Before / after the poisoned update, on networks the attack did not see.

  Attributes:
    before: :class:`PoisonMetrics` of the trained networks.
    after: :class:`PoisonMetrics` after the learned steps on the poison images.
    per_network: ``((before, after), ...)`` for each network.
    attacked_class: :math:`K`.
    target_class: :math:`T`.
  """
  before: PoisonMetrics
  after: PoisonMetrics
  per_network: tuple[tuple[PoisonMetrics, PoisonMetrics], ...]
  attacked_class: int
  target_class: int


# ---------------------------------------------------------------------------- helpers


def _check_classes(dataset, attacked_class: int, target_class: int) -> None:
  k = int(dataset.num_classes)
  for name, c in (("attacked_class", attacked_class), ("target_class", target_class)):
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < k:
      raise ValueError(f"{name} must be an int in [0, {k}); got {c!r}.")
  if attacked_class == target_class:
    raise ValueError(f"attacked_class and target_class must differ; both are {attacked_class}.")


def pretrain(dataset, config: PoisonConfig, key: jax.Array) -> Any:
  """Trains one network on the full real training set with ``config.recipe``.

  Uses ``kip.transfer.train(model, x_train, y_train, recipe, key)``.
  """
  model = dd._build_model(config, int(dataset.num_classes))  # pylint: disable=protected-access
  return transfer_train.train(model, np.asarray(dataset.x_train), np.asarray(dataset.y_train),
                              config.recipe, key)


def _key_data(key: jax.Array) -> list[int]:
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(key, np.uint32).ravel().tolist()


def _stack(trees):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _relabel(y: jax.Array, attacked: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.where(y == attacked, target, y)


# ---------------------------------------------------------------------------- optax-style API


def init(key: coresets.KeyLike, dataset, attacked_class: int, target_class: int,
         num_images: int, config: PoisonConfig, pool: list[Any],
         optimizer: optax.GradientTransformation | None = None) -> PoisonState:
  """Initialises the poison images and step sizes for a pool of trained networks.

  Args:
    key: PRNG key or ``int`` seed for the image initialisation.
    dataset: a ``kip.data.Dataset``.
    attacked_class: :math:`K`.
    target_class: :math:`T`.
    num_images: number of poison images.
    config: :class:`PoisonConfig`.
    pool: list of trained variables (``{'params': ...}``) of ``config.model``.
    optimizer: outer optimiser; default ``optax.adam(config.learning_rate, b1=0.5)``.

  Returns:
    A :class:`PoisonState`.
  """
  _check_classes(dataset, attacked_class, target_class)
  if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) \
      or num_images < 1:
    raise ValueError(f"num_images must be a positive int; got {num_images!r}.")
  if not pool:
    raise ValueError("pool must hold at least one trained network's variables.")
  key, _ = coresets.as_key(key)
  k = int(dataset.num_classes)
  shape = tuple(np.asarray(dataset.x_train).shape[1:])
  model = dd._build_model(config, k)  # pylint: disable=protected-access
  dd._check_pure(model, config.model, shape)  # pylint: disable=protected-access
  for i, variables in enumerate(pool):
    extra = sorted(set(variables) - {"params"})
    if extra:
      raise ValueError(f"pool network {i} has state collections {extra}; the attack needs "
                       "stateless networks (no norm='batch').")
  if config.image_init == "attacked":
    members = np.flatnonzero(np.asarray(dataset.y_train) == attacked_class)
    if len(members) < num_images:
      raise ValueError(f"num_images={num_images} exceeds the {len(members)} training images of "
                       f"attacked class {attacked_class}; use image_init='noise' or fewer images.")
    pick = coresets.numpy_rng(key).choice(members, num_images, replace=False)
    images = jnp.asarray(np.asarray(dataset.x_train)[pick], jnp.float32)
  else:
    images = jax.random.normal(key, (num_images, *shape), jnp.float32)
  labels = jax.nn.one_hot(jnp.full((num_images,), target_class), k, dtype=jnp.float32)
  raw = jnp.full((config.steps,), dd._raw_from_lr(config.lr_init, config.lr_param),  # pylint: disable=protected-access
                 jnp.float32)
  optimizer = optimizer if optimizer is not None else optax.adam(config.learning_rate, b1=0.5)
  return PoisonState(images=images, labels=labels, raw_lrs=raw,
                     opt_state=optimizer.init({"images": images, "raw_lrs": raw}),
                     pool=_stack(pool), attacked_class=jnp.asarray(attacked_class, jnp.int32),
                     target_class=jnp.asarray(target_class, jnp.int32),
                     count=jnp.zeros((), jnp.int32), config=config, model=model,
                     optimizer=optimizer)


def _poisoned(state: PoisonState, theta, images, raw_lrs):
  cfg = state.config
  apply_fn = dd._apply_fn(state.model)  # pylint: disable=protected-access
  lrs = dd.step_sizes(raw_lrs, cfg.lr_param)
  return dd.unrolled_sgd(apply_fn, theta, images, state.labels, lrs, steps=cfg.steps,
                         split_steps=False, remat=cfg.remat)


def _outer_loss(trainable, state: PoisonState, x_real, y_real, key):
  raw = trainable["raw_lrs"] if state.config.learn_lr else \
      jax.lax.stop_gradient(trainable["raw_lrs"])
  num = jax.tree.leaves(state.pool)[0].shape[0]
  theta = jax.tree.map(lambda a: a[jax.random.randint(key, (), 0, num)], state.pool)
  theta = _poisoned(state, theta, trainable["images"], raw)
  logits = dd._apply_fn(state.model)(theta, x_real)  # pylint: disable=protected-access
  y_mod = _relabel(y_real, state.attacked_class, state.target_class)
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y_mod))
  pred = jnp.argmax(logits, -1)
  is_k = y_real == state.attacked_class
  sent = jnp.sum((pred == state.target_class) & is_k) / jnp.maximum(jnp.sum(is_k), 1)
  return loss, sent


@jax.jit
def step(state: PoisonState, real_batch: tuple[jax.Array, jax.Array], key: jax.Array
         ) -> tuple[PoisonState, dict[str, jax.Array]]:
  """One outer step of the attack on a network drawn from the pool.

  Args:
    state: :class:`PoisonState`.
    real_batch: ``(x (B, H, W, C), y (B,) int)`` real images with their *true* labels.
    key: PRNG key choosing the pool network.

  Returns:
    ``(state, metrics)``: ``loss`` (:math:`\\ell_{K \\to T}` before the update),
    ``attacked_to_target`` (fraction of the batch's :math:`K` images sent to :math:`T`),
    ``lr_mean``.
  """
  x_real, y_real = real_batch
  trainable = {"images": state.images, "raw_lrs": state.raw_lrs}
  (loss, sent), grads = jax.value_and_grad(_outer_loss, has_aux=True)(
      trainable, state, x_real, y_real, key)
  updates, opt_state = state.optimizer.update(grads, state.opt_state, trainable)
  new = optax.apply_updates(trainable, updates)
  state = state.replace(images=new["images"], raw_lrs=new["raw_lrs"], opt_state=opt_state,
                        count=state.count + 1)
  return state, {"loss": loss, "attacked_to_target": sent,
                 "lr_mean": jnp.mean(dd.step_sizes(new["raw_lrs"], state.config.lr_param))}


def poison(dataset, attacked_class: int, target_class: int, num_images: int,
           config: PoisonConfig, key: coresets.KeyLike, *,
           pretrained_params_fn: PretrainFn | None = None,
           optimizer: optax.GradientTransformation | None = None,
           progress: bool = True) -> DistilledSet:
  """Learns ``num_images`` poison images (labelled ``target_class``) and their step sizes.

  Args:
    dataset: a ``kip.data.Dataset``.
    attacked_class: :math:`K`, the class to be misclassified.
    target_class: :math:`T`, the class it should be sent to.
    num_images: number of poison images.
    config: :class:`PoisonConfig`.
    key: PRNG key or ``int`` seed; the pool networks use ``fold_in(k_pool, i)``.
    pretrained_params_fn: ``key -> variables`` of a network of ``config.model`` trained on
      ``dataset``; default :func:`pretrain` (``kip.transfer.train`` with ``config.recipe``).
    optimizer: outer optimiser; default ``optax.adam(config.learning_rate, b1=0.5)``.
    progress: show ``tqdm`` progress.

  Returns:
    A ``DistilledSet`` with ``method='dd_poison'``, one-hot labels of ``target_class`` and
    metadata ``attacked_class``, ``target_class``, ``step_sizes``, ``steps``, ``model``,
    ``model_kwargs``, ``pretrain_keys`` (raw key data of the pool networks, so
    :func:`poison_report` can avoid them), ``config``, ``seed``, ``loss_history``.
  """
  _check_classes(dataset, attacked_class, target_class)
  key, seed = coresets.as_key(key)
  k_pool, k_img, k_loop = jax.random.split(key, 3)
  fn = pretrained_params_fn or (lambda k: pretrain(dataset, config, k))
  pool_keys = [jax.random.fold_in(k_pool, i) for i in range(config.num_pretrained)]
  logger.info("poison: pretraining %d %s networks", len(pool_keys), config.model)
  pool = [fn(k) for k in pool_keys]
  state = init(k_img, dataset, attacked_class, target_class, num_images, config, pool,
               optimizer)
  x = jnp.asarray(dataset.x_train, jnp.float32)
  y = jnp.asarray(dataset.y_train, jnp.int32)
  batch = min(config.batch_size, x.shape[0])
  rng = coresets.numpy_rng(jax.random.fold_in(k_loop, 0))
  history = []
  with tqdm(range(config.num_steps), disable=not progress, desc="DD poison") as bar:
    for t in bar:
      idx = rng.choice(x.shape[0], batch, replace=False)
      state, metrics = step(state, (x[idx], y[idx]), jax.random.fold_in(k_loop, t + 1))
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        raise ValueError(f"poisoning loss became {loss} at step {t}; lower learning_rate or "
                         "lr_init.")
      history.append(loss)
      if t % 10 == 0:
        bar.set_postfix(loss=f"{loss:.3f}", sent=f"{float(metrics['attacked_to_target']):.2f}")
  lrs = np.asarray(dd.step_sizes(state.raw_lrs, config.lr_param)).tolist()
  meta = {"seed": seed, "config": config.to_dict(), "attacked_class": int(attacked_class),
          "target_class": int(target_class), "step_sizes": lrs, "steps": config.steps,
          "model": config.model, "model_kwargs": dict(config.model_kwargs),
          "pretrain_keys": [_key_data(k) for k in pool_keys], "loss_history": history,
          "versions": library_versions()}
  return DistilledSet(images=np.asarray(state.images), labels=np.asarray(state.labels),
                      dataset=dataset.name, method="dd_poison",
                      preprocessing=getattr(dataset, "preprocessing", None), metadata=meta)


def _metrics(pred: np.ndarray, y: np.ndarray, attacked: int, target: int) -> PoisonMetrics:
  is_k = y == attacked
  return PoisonMetrics(attacked_accuracy=float(np.mean(pred[is_k] == attacked)),
                       attacked_to_target=float(np.mean(pred[is_k] == target)),
                       other_accuracy=float(np.mean(pred[~is_k] == y[~is_k])))


def _mean_metrics(ms) -> PoisonMetrics:
  return PoisonMetrics(*(float(np.mean([getattr(m, f.name) for m in ms]))
                         for f in dataclasses.fields(PoisonMetrics)))


def poison_report(distilled: DistilledSet, dataset, key: coresets.KeyLike,
                  num_networks: int = 3, *, pretrained_params_fn: PretrainFn | None = None,
                  batch_size: int = 1000) -> PoisonReport:
  """Measures the attack on freshly trained networks the attack did not see.

  Network ``i`` is ``pretrained_params_fn(fold_in(key, i))`` (default: :func:`pretrain` with
  the recipe saved in the metadata); keys equal to one of the attack's pool keys are refused.
  Each is evaluated on ``dataset.x_test`` before and after the learned steps on the poison
  images.

  Args:
    distilled: the output of :func:`poison`.
    dataset: the ``kip.data.Dataset`` it was made from.
    key: PRNG key or ``int`` seed for the evaluation networks (use one unrelated to the
      attack's key).
    num_networks: number of evaluation networks.
    pretrained_params_fn: ``key -> variables``, as in :func:`poison`.
    batch_size: test images per forward pass.

  Returns:
    A :class:`PoisonReport`.

  Raises:
    ValueError: if ``distilled`` is not a poisoning result for ``dataset``, or an evaluation
      key coincides with a pool key.
  """
  meta = distilled.metadata
  missing = [k for k in ("attacked_class", "target_class", "step_sizes", "model") if k not in meta]
  if missing:
    raise ValueError(f"distilled set (method {distilled.method!r}) lacks poisoning metadata "
                     f"{missing}; pass the output of poison().")
  distilled.check_compatible(dataset)
  if num_networks < 1:
    raise ValueError(f"num_networks must be >= 1; got {num_networks}.")
  attacked, target = int(meta["attacked_class"]), int(meta["target_class"])
  cfg_dict = dict(meta.get("config", {}))
  recipe = recipes_lib.Recipe(**cfg_dict["pretrain_recipe"]) if "pretrain_recipe" in cfg_dict \
      else None
  config = PoisonConfig(model=meta["model"], model_kwargs=meta.get("model_kwargs", {}),
                        steps=len(meta["step_sizes"]), pretrain_recipe=recipe,
                        lr_param=cfg_dict.get("lr_param", "softplus"))
  model = dd._build_model(config, distilled.num_classes)  # pylint: disable=protected-access
  apply_fn = dd._apply_fn(model)  # pylint: disable=protected-access
  fn = pretrained_params_fn or (lambda k: pretrain(dataset, config, k))
  key, _ = coresets.as_key(key)
  lrs = jnp.asarray(meta["step_sizes"], jnp.float32)
  update = jax.jit(lambda theta: dd.unrolled_sgd(
      apply_fn, theta, jnp.asarray(distilled.images), jnp.asarray(distilled.labels), lrs,
      steps=len(meta["step_sizes"]), split_steps=False, remat=False))
  predict = jax.jit(lambda theta, xb: jnp.argmax(apply_fn(theta, xb), -1))
  x_test = np.asarray(dataset.x_test, np.float32)
  y_test = np.asarray(dataset.y_test)

  def preds(theta):
    return np.concatenate([np.asarray(predict(theta, jnp.asarray(x_test[s:s + batch_size])))
                           for s in range(0, len(x_test), batch_size)])

  seen = {tuple(k) for k in meta.get("pretrain_keys", [])}
  per = []
  for i in range(num_networks):
    k = jax.random.fold_in(key, i)
    if tuple(_key_data(k)) in seen:
      raise ValueError(f"evaluation network {i} would reuse a key of the attack's pool; pass a "
                       "key unrelated to the one given to poison().")
    theta = fn(k)
    per.append((_metrics(preds(theta), y_test, attacked, target),
                _metrics(preds(update(theta)), y_test, attacked, target)))
  report = PoisonReport(before=_mean_metrics([b for b, _ in per]),
                        after=_mean_metrics([a for _, a in per]), per_network=tuple(per),
                        attacked_class=attacked, target_class=target)
  logger.info("poison %d->%d: K accuracy %.3f -> %.3f, K->T %.3f -> %.3f, others %.3f -> %.3f",
              attacked, target, report.before.attacked_accuracy, report.after.attacked_accuracy,
              report.before.attacked_to_target, report.after.attacked_to_target,
              report.before.other_accuracy, report.after.other_accuracy)
  return report
