"""Data poisoning with distilled images (Wang, Zhu, Torralba, Efros 2018), on the contract.

Given *trained* networks :math:`\\theta \\sim p(\\theta)`, an attacked class :math:`K` and a
target class :math:`T`, learn synthetic images :math:`\\tilde x` (with their own labels) and
step sizes :math:`\\eta` such that the cyclic inner loop of :mod:`kip._src.unroll` on them,
started from a trained network, makes it classify real :math:`K` images as :math:`T` while
keeping the other classes:

.. math::
    \\min_{\\tilde x, \\rho}\\; \\mathbb{E}_{\\theta_0 \\in \\text{pool}}\\,
      \\ell\\big(x, \\pi(y); \\theta_T\\big),\\qquad
    \\pi(y) = \\begin{cases} T & y = K \\\\ y & \\text{otherwise,} \\end{cases}

with :math:`\\theta_T` the network after the :math:`T = s E` inner steps on
:math:`(\\tilde x, \\tilde y)`. As in the reference (SsnL/dataset-distillation,
``--mode distill_attack``): the synthetic images are the ones of
:mod:`kip._src.methods.dd` (``distilled_images_per_class_per_step = 1``: each of the ``s``
batches holds one image of every class, labelled with that class), the relabelling
:math:`K \\to T` happens in the outer loss only (``basics.final_objective_loss``), and every
outer step samples ``nets_per_step = 4`` networks without replacement from a pool of
``pool_size`` pretrained ones (``--train_nets_type loaded --n_nets 2000 --sample_n_nets 4``),
averaging their losses. The outer optimiser is DD's (Adam, :math:`\\beta_1 = 0.5`,
``lr = 0.02`` as the reference's attack command, halved every 40 epochs).

``labelling='target'`` is this library's earlier attack: every image labelled :math:`T` and
initialised from real images of class :math:`K` (``image_init='attacked'``).

The pool is pretrained by :func:`pretrain` (``kip.transfer``'s trainer with
``pretrain_recipe``; the reference trains with Adam, lr 2e-4, 40 epochs) from the keys
``fold_in(PRNGKey(pool_seed), i)``, or by a user's ``pretrained_params_fn(key) -> variables``;
:func:`poison_report` measures the attack on networks pretrained from other keys (the pool's
are refused).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kip._src import driver
from kip._src import losses
from kip._src import unroll
from kip._src.algorithm import Algorithm, cached_step, config_dict
from kip._src.distilled import DistilledSet
from kip._src.matching import freeze_kwargs
from kip._src.methods.dd import IMAGE_INITS as _DD_IMAGE_INITS
from kip._src.random import as_key, key_data
from kip._src.sampling import ClassTable, uniform_indices
from kip._src.transfer import recipes as recipes_lib
from kip._src.transfer import train as transfer_train
from kip._src.transfer.train import TransferResult

__all__ = ["PoisonConfig", "PoisonMetrics", "PoisonReport", "PoisonState", "LABELLINGS",
           "make_poison", "poison", "poison_report", "pool_keys", "pretrain"]

logger = logging.getLogger(__name__)

LABELLINGS = ("own", "target")
IMAGE_INITS = _DD_IMAGE_INITS + ("attacked",)
PretrainFn = Callable[[jax.Array], Any]


def _default_recipe() -> recipes_lib.Recipe:
  return recipes_lib.get_recipe("dc", steps=500, batch_size=256)


@dataclasses.dataclass(frozen=True)
class PoisonConfig:
  """Hyperparameters of the DD poisoning attack (defaults: the reference's attack command).

  Attributes:
    images_per_class: synthetic images of each class (``labelling='own'``), one per class in
      each of the ``distill_steps`` batches by default; with ``labelling='target'`` the attack
      has ``images_per_class * K`` images, all labelled :math:`T`.
    steps: outer steps (reference: 400 epochs of batch 1024 on 60,000 images, 23,600).
    attacked_class: :math:`K` (reference ``attack_class = 0``).
    target_class: :math:`T` (reference ``target_class = 1``).
    model: ``kip.transfer`` model name of the attacked networks (stateless).
    model_kwargs: ``get_model`` overrides; any mapping, stored as sorted pairs with lists as
      tuples so that the config hashes (``{'width': [8, 8]}`` works).
    distill_steps: :math:`s` batches / inner steps per epoch; ``None``: ``images_per_class``.
    distill_epochs: :math:`E` passes (reference 3).
    labelling: ``'own'`` (reference: each image its own class, :math:`K \\to T` in the outer
      loss only) or ``'target'`` (every image labelled :math:`T`).
    lr_init: initial inner step size (reference ``distill_lr = 0.02``).
    lr_param: ``'softplus'`` (reference) or ``'exp'``.
    learn_lr: learn the step sizes.
    image_init: ``'noise'`` (reference ``torch.randn``), ``'real'`` (real images of each
      image's class) or ``'attacked'`` (real images of class :math:`K`).
    learning_rate: outer Adam learning rate (reference attack command: ``--lr 0.02``).
    batch_size: real images per outer step (reference 1024).
    decay_epochs: multiply the outer learning rate by ``decay_factor`` every this many epochs
      of real data (reference 40); ``None``: constant.
    decay_factor: reference 0.5.
    pool_size: pretrained networks in the attack's pool (reference 2,000).
    nets_per_step: pool networks sampled (without replacement) per outer step (reference 4).
    pool_seed: the pool's networks are pretrained from ``fold_in(PRNGKey(pool_seed), i)``.
    pretrain_recipe: ``kip.transfer`` recipe of the default pretraining (``None``: the
      ``'dc'`` recipe with 500 steps of batch 256); a preset name or a mapping
      ``{'name': preset, field: value, ...}`` (as the CLI's ``--option`` gives) is turned
      into that recipe.
    remat: ``jax.checkpoint`` each unrolled step.
  """
  images_per_class: int = 1
  steps: int = 23_600
  attacked_class: int = 0
  target_class: int = 1
  model: str = "lenet"
  model_kwargs: Any = ()
  distill_steps: Optional[int] = None
  distill_epochs: int = 3
  labelling: str = "own"
  lr_init: float = 0.02
  lr_param: str = "softplus"
  learn_lr: bool = True
  image_init: str = "noise"
  learning_rate: float = 0.02
  batch_size: int = 1024
  decay_epochs: Optional[int] = 40
  decay_factor: float = 0.5
  pool_size: int = 2000
  nets_per_step: int = 4
  pool_seed: int = 0
  pretrain_recipe: Optional[recipes_lib.Recipe] = None
  remat: bool = True

  def __post_init__(self):
    try:
      object.__setattr__(self, "model_kwargs", freeze_kwargs(self.model_kwargs))
    except (TypeError, ValueError) as e:
      raise ValueError(f"model_kwargs must be a mapping of get_model overrides; got "
                       f"{self.model_kwargs!r}.") from e
    for name, minimum in (("images_per_class", 1), ("steps", 0), ("distill_epochs", 1),
                          ("batch_size", 1), ("pool_size", 1), ("nets_per_step", 1),
                          ("attacked_class", 0), ("target_class", 0), ("pool_seed", 0)):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {v!r}.")
    for name in ("distill_steps", "decay_epochs"):
      v = getattr(self, name)
      if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                            or v < 1):
        raise ValueError(f"{name} must be an int >= 1 or None; got {v!r}.")
    if self.attacked_class == self.target_class:
      raise ValueError(f"attacked_class and target_class must differ; both are "
                       f"{self.attacked_class}.")
    if self.nets_per_step > self.pool_size:
      raise ValueError(f"nets_per_step={self.nets_per_step} exceeds pool_size="
                       f"{self.pool_size}; sample at most pool_size networks per step.")
    for name, allowed in (("labelling", LABELLINGS), ("image_init", IMAGE_INITS),
                          ("lr_param", unroll.PARAMETERIZATIONS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name}={getattr(self, name)!r}; use one of {allowed}.")
    for name in ("lr_init", "learning_rate", "decay_factor"):
      v = getattr(self, name)
      if isinstance(v, bool) or not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number; got {v!r}.")
    if isinstance(self.pretrain_recipe, str):  # a preset name (CLI: --option)
      object.__setattr__(self, "pretrain_recipe", recipes_lib.get_recipe(self.pretrain_recipe))
    elif isinstance(self.pretrain_recipe, Mapping):  # {'name': preset, field: value, ...}
      fields = dict(self.pretrain_recipe)
      preset = fields.pop("name", "dc")
      object.__setattr__(self, "pretrain_recipe", recipes_lib.get_recipe(preset, **fields))
    if self.pretrain_recipe is not None and not isinstance(self.pretrain_recipe,
                                                           recipes_lib.Recipe):
      raise ValueError(f"pretrain_recipe must be a kip.transfer.Recipe, a preset name, a "
                       f"mapping {{'name': preset, field: value}} or None; got "
                       f"{self.pretrain_recipe!r}.")
    unroll.arrange_classes(self.images_per_class, 1, self.num_batches)

  @property
  def num_batches(self) -> int:
    """:math:`s`."""
    return int(self.images_per_class if self.distill_steps is None else self.distill_steps)

  @property
  def num_inner_steps(self) -> int:
    """:math:`T = s E`."""
    return self.num_batches * int(self.distill_epochs)

  @property
  def recipe(self) -> recipes_lib.Recipe:
    """The pretraining recipe (``pretrain_recipe`` or the default)."""
    return self.pretrain_recipe if self.pretrain_recipe is not None else _default_recipe()

  def to_dict(self) -> dict[str, Any]:
    d = config_dict(self)
    d["model_kwargs"] = {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in self.model_kwargs}
    d["pretrain_recipe"] = self.recipe.to_dict()
    return d


class PoisonState(NamedTuple):
  """State of the attack (arrays only).

  Attributes:
    images: ``(m, H, W, C)`` poison images, batch-major.
    raw_lrs: ``(T,)`` step-size parameters.
    opt_state: outer optimizer state over ``{'images', 'raw_lrs'}``.
    count: ``()`` int32 outer steps taken.
  """
  images: jax.Array
  raw_lrs: jax.Array
  opt_state: Any
  count: jax.Array


class PoisonData(NamedTuple):
  """What a step reads: the training set and the pretrained pool.

  Attributes:
    x: ``(N, H, W, C)`` training images.
    y: ``(N,)`` int32 true labels.
    pool: the pool's variables, stacked on a leading ``(P,)`` axis.
  """
  x: jax.Array
  y: jax.Array
  pool: Any


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
class PoisonReport(TransferResult):
  """The attack on networks it did not see: a ``TransferResult`` of the poisoned networks.

  ``accuracies`` / ``mean`` / ``std`` are the overall test accuracies of the networks *after*
  the learned steps on the poison images; ``recipe`` names the inner loop.

  Attributes:
    before: :class:`PoisonMetrics` of the trained networks.
    after: :class:`PoisonMetrics` after the learned steps on the poison images.
    per_network: ``((before, after), ...)`` for each network.
    attacked_class: :math:`K`.
    target_class: :math:`T`.
  """
  before: Optional[PoisonMetrics] = None
  after: Optional[PoisonMetrics] = None
  per_network: tuple[tuple[PoisonMetrics, PoisonMetrics], ...] = ()
  attacked_class: int = 0
  target_class: int = 1


# ----------------------------------------------------------------------------- pool
def pool_keys(config: PoisonConfig) -> list[jax.Array]:
  """The keys of the pool's networks: ``fold_in(PRNGKey(pool_seed), i)``, ``i < pool_size``."""
  base = jax.random.PRNGKey(config.pool_seed)
  return [jax.random.fold_in(base, i) for i in range(config.pool_size)]


def pretrain(dataset, config: PoisonConfig, key: jax.Array) -> Any:
  """One network of ``config.model`` trained on the whole training set with ``config.recipe``."""
  model = unroll.build_network(config.model, config.model_kwargs, int(dataset.num_classes),
                               tuple(np.shape(dataset.x_train)[1:]))
  return transfer_train.train(model, np.asarray(dataset.x_train),
                                np.asarray(dataset.y_train), config.recipe, key)


def _stack(trees):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _check_pool_member(i: int, variables) -> None:
  extra = sorted(set(variables) - {"params"})
  if extra:
    raise ValueError(f"pool network {i} has state collections {extra}; the attack needs "
                     "stateless networks (no norm='batch').")


# ----------------------------------------------------------------------------- algorithm
def _labels(config: PoisonConfig, num_classes: int) -> np.ndarray:
  classes = unroll.arrange_classes(config.images_per_class, num_classes, config.num_batches)
  if config.labelling == "target":
    return np.full_like(classes, config.target_class)
  return classes


@functools.lru_cache(maxsize=16)
def _step_fn(config: PoisonConfig, optimizer: Optional[optax.GradientTransformation]):
  tx = optimizer if optimizer is not None else unroll.outer_optimizer()
  s, ipc = config.num_batches, config.images_per_class
  attacked, target = config.attacked_class, config.target_class

  def step(state: PoisonState, data: PoisonData, key: jax.Array):
    k = state.images.shape[0] // ipc
    net = unroll.build_network(config.model, config.model_kwargs, k, state.images.shape[1:])
    apply = unroll.apply_fn(net)
    labels = jnp.asarray(_labels(config, k))
    k_batch, k_pool = jax.random.split(key)
    rows = uniform_indices(k_batch, data.x.shape[0], config.batch_size)
    x_real, y_real = data.x[rows], data.y[rows]
    y_outer = jnp.where(y_real == attacked, target, y_real)
    num_pool = jax.tree.leaves(data.pool)[0].shape[0]
    picks = jax.random.choice(k_pool, num_pool, (config.nets_per_step,), replace=False)
    thetas = jax.tree.map(lambda a: a[picks], data.pool)
    is_k = y_real == attacked

    def outer_loss(trainable):
      raw = trainable["raw_lrs"]
      raw = raw if config.learn_lr else jax.lax.stop_gradient(raw)
      lrs = unroll.step_sizes(raw, config.lr_param)

      def one(theta0):
        theta = unroll.unrolled_sgd(apply, theta0, trainable["images"], labels, lrs,
                                    num_batches=s, remat=config.remat)
        logits = apply(theta, x_real)
        pred = jnp.argmax(logits, -1)
        sent = jnp.sum((pred == target) & is_k) / jnp.maximum(jnp.sum(is_k), 1)
        return losses.softmax_cross_entropy(logits, y_outer), sent

      ls, sent = jax.vmap(one)(thetas)
      return jnp.mean(ls), jnp.mean(sent)

    trainable = {"images": state.images, "raw_lrs": state.raw_lrs}
    (loss, sent), grads = jax.value_and_grad(outer_loss, has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    if optimizer is None:
      lr = unroll.outer_learning_rate(
          config.learning_rate, state.count,
          unroll.steps_per_epoch(data.x.shape[0], config.batch_size), config.decay_epochs,
          config.decay_factor)
      updates = jax.tree.map(lambda u: -lr * u, updates)
    else:
      lr = jnp.full((), jnp.nan, jnp.float32)
    new = optax.apply_updates(trainable, updates)
    state = PoisonState(new["images"], new["raw_lrs"], opt_state, state.count + 1)
    return state, {"loss": loss, "attacked_to_target": sent, "outer_lr": lr,
                   "lr_mean": jnp.mean(unroll.step_sizes(new["raw_lrs"], config.lr_param))}

  return jax.jit(step)


def _init_images(key: jax.Array, dataset, config: PoisonConfig) -> jax.Array:
  k = int(dataset.num_classes)
  shape = tuple(np.shape(dataset.x_train)[1:])
  m = config.images_per_class * k
  if config.image_init == "noise":
    return jax.random.normal(key, (m,) + shape, jnp.float32)
  x = np.asarray(dataset.x_train, np.float32)
  if config.image_init == "attacked":
    members = np.flatnonzero(np.asarray(dataset.y_train) == config.attacked_class)
    if len(members) < m:
      raise ValueError(f"image_init='attacked' needs {m} training images of attacked class "
                       f"{config.attacked_class}, which has {len(members)}; use "
                       "image_init='noise' or fewer images.")
    perm = np.asarray(jax.random.permutation(key, len(members)))[:m]
    return jnp.asarray(x[members[perm]])
  table = ClassTable.from_dataset(dataset)
  smallest = int(jnp.min(table.counts))
  if config.images_per_class > smallest:
    raise ValueError(f"image_init='real' with images_per_class={config.images_per_class} "
                     f"exceeds the smallest class ({smallest} images); use image_init='noise'.")
  rows = np.asarray(table.sample_indices(key, m))
  return jnp.asarray(unroll.batch_major(x[rows], k, config.num_batches))


def make_poison(config: PoisonConfig, *, pretrained_params_fn: Optional[PretrainFn] = None,
                optimizer: Optional[optax.GradientTransformation] = None) -> Algorithm:
  """The poisoning :class:`~kip._src.algorithm.Algorithm`.

  Args:
    config: :class:`PoisonConfig`.
    pretrained_params_fn: ``key -> variables`` of a network of ``config.model`` trained on the
      data set; default :func:`pretrain`. It is called on :func:`pool_keys` when the run
      starts (``data``), so a resumed run rebuilds the same pool.
    optimizer: an ``optax.GradientTransformation`` replacing the outer Adam and its decay.

  Returns:
    ``Algorithm('poison', ...)``; ``data`` pretrains the pool (``PoisonData``); a step samples
    ``batch_size`` real images and ``nets_per_step`` pool networks from its key; its metrics
    are ``loss`` (:math:`\\ell_{K \\to T}` before the update), ``attacked_to_target`` (on the
    batch's :math:`K` images), ``lr_mean`` and ``outer_lr``.
  """
  tx = optimizer if optimizer is not None else unroll.outer_optimizer()
  step = cached_step(_step_fn, config, optimizer)

  def _check(dataset):
    k = int(dataset.num_classes)
    for name in ("attacked_class", "target_class"):
      if getattr(config, name) >= k:
        raise ValueError(f"{name}={getattr(config, name)} is not a class of {dataset.name} "
                         f"(classes 0..{k - 1}).")
    unroll.build_network(config.model, config.model_kwargs, k,
                         tuple(np.shape(dataset.x_train)[1:]))

  def init(key: jax.Array, dataset) -> PoisonState:
    _check(dataset)
    images = _init_images(key, dataset, config)
    raw = unroll.raw_step_sizes(config.lr_init, config.num_inner_steps, config.lr_param)
    return PoisonState(images, raw, tx.init({"images": images, "raw_lrs": raw}),
                       jnp.zeros((), jnp.int32))

  def data(dataset) -> PoisonData:
    _check(dataset)
    fn = pretrained_params_fn or (lambda k: pretrain(dataset, config, k))
    t0 = time.time()
    logger.info("poison: pretraining a pool of %d %s networks", config.pool_size, config.model)
    pool = []
    for i, k in enumerate(pool_keys(config)):
      variables = fn(k)
      _check_pool_member(i, variables)
      pool.append(variables)
    logger.info("poison: pool ready in %.1f s", time.time() - t0)
    return PoisonData(jnp.asarray(dataset.x_train, jnp.float32),
                      jnp.asarray(dataset.y_train, jnp.int32), _stack(pool))

  def result(state: PoisonState, dataset) -> DistilledSet:
    k = int(dataset.num_classes)
    lrs = np.asarray(unroll.step_sizes(state.raw_lrs, config.lr_param), np.float64).tolist()
    meta = {"config": config.to_dict(), "attacked_class": config.attacked_class,
            "target_class": config.target_class, "step_sizes": lrs,
            "num_batches": config.num_batches, "distill_epochs": config.distill_epochs,
            "labelling": config.labelling, "model": config.model,
            "model_kwargs": config.to_dict()["model_kwargs"],
            "pretrain_keys": [key_data(kk) for kk in pool_keys(config)]}
    return DistilledSet(images=np.asarray(state.images, np.float32),
                        labels=np.eye(k, dtype=np.float32)[_labels(config, k)],
                        dataset=dataset.name, method="dd_poison",
                        preprocessing=getattr(dataset, "preprocessing", None), metadata=meta)

  spec = {"config": config.to_dict(), "optimizer": "adam" if optimizer is None else "user",
          "pretrained_params_fn": None if pretrained_params_fn is None else "user"}
  hint = (f"lower the outer learning_rate (now {config.learning_rate}) or lr_init (now "
          f"{config.lr_init})")
  return Algorithm("poison", init, data, step, result, spec, config.steps, hint)


def poison(dataset, attacked_class: int, target_class: int, num_images: int,
           config: PoisonConfig = PoisonConfig(), key: Any = 0, *,
           pretrained_params_fn: Optional[PretrainFn] = None,
           optimizer: Optional[optax.GradientTransformation] = None,
           progress: bool = True, **run_options) -> DistilledSet:
  """Learns ``num_images`` poison images and their step sizes that send :math:`K` to :math:`T`.

  Args:
    dataset: a ``kip.data.Dataset``.
    attacked_class: :math:`K` (replaces ``config.attacked_class``).
    target_class: :math:`T` (replaces ``config.target_class``).
    num_images: poison images in all, a multiple of the class count
      (``images_per_class = num_images / K``).
    config: :class:`PoisonConfig`.
    key: PRNG key or ``int`` seed (the image initialisation and the run's sampling).
    pretrained_params_fn: ``key -> variables``, see :func:`make_poison`.
    optimizer: optional outer optimizer.
    progress: show progress.
    **run_options: passed to ``kip.methods.run`` (``steps``, ``checkpoint_dir``, ``resume``,
      ``time_budget``, ``callback``, ...).

  Returns:
    A ``DistilledSet`` (``method='dd_poison'``) with the images' labels and metadata
    ``attacked_class``, ``target_class``, ``step_sizes``, ``num_batches``, ``model``,
    ``model_kwargs``, ``pretrain_keys`` (raw key data of the pool networks, which
    :func:`poison_report` refuses), ``config`` and the driver's ``history``, ``seed``, ...

  Raises:
    ValueError: ``num_images`` not a positive multiple of the class count, equal classes, or a
      class outside the data set.
  """
  k = int(dataset.num_classes)
  if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) \
      or num_images < k or num_images % k:
    raise ValueError(f"num_images={num_images!r} must be a positive multiple of the {k} classes "
                     f"(the same number of images of every class); use num_images={k} (one "
                     "image per class) or another multiple of it.")
  config = dataclasses.replace(config, images_per_class=int(num_images) // k,
                               attacked_class=attacked_class, target_class=target_class)
  algorithm = make_poison(config, pretrained_params_fn=pretrained_params_fn, optimizer=optimizer)
  return driver.run(algorithm, dataset, key=key, progress=progress, **run_options)


# ----------------------------------------------------------------------------- report
def _metrics(pred: np.ndarray, y: np.ndarray, attacked: int, target: int) -> PoisonMetrics:
  is_k = y == attacked
  return PoisonMetrics(attacked_accuracy=float(np.mean(pred[is_k] == attacked)),
                       attacked_to_target=float(np.mean(pred[is_k] == target)),
                       other_accuracy=float(np.mean(pred[~is_k] == y[~is_k])))


def _mean_metrics(ms) -> PoisonMetrics:
  return PoisonMetrics(*(float(np.mean([getattr(m, f.name) for m in ms]))
                         for f in dataclasses.fields(PoisonMetrics)))


def poison_report(distilled: DistilledSet, dataset, key: Any, num_networks: int = 3, *,
                  pretrained_params_fn: Optional[PretrainFn] = None,
                  batch_size: int = 1000) -> PoisonReport:
  """Measures the attack on freshly trained networks the attack did not see.

  Network ``i`` is ``pretrained_params_fn(fold_in(key, i))`` (default: :func:`pretrain` with
  the recipe saved in the metadata); keys equal to one of the attack's pool keys are refused.
  Each is tested on all of ``dataset.x_test`` before and after the learned steps on the poison
  images.

  Args:
    distilled: the output of :func:`poison`.
    dataset: the ``kip.data.Dataset`` it was made from.
    key: PRNG key or ``int`` seed for the evaluation networks (one unrelated to the pool's).
    num_networks: evaluation networks.
    pretrained_params_fn: ``key -> variables``, as in :func:`make_poison`.
    batch_size: test images per forward pass.

  Returns:
    A :class:`PoisonReport`.

  Raises:
    ValueError: ``distilled`` is not a poisoning result for ``dataset``, or an evaluation key
      coincides with a pool key.
  """
  t0 = time.time()
  meta = distilled.metadata
  missing = [k for k in ("attacked_class", "target_class", "step_sizes", "model") if k not in meta]
  if missing:
    raise ValueError(f"distilled set (method {distilled.method!r}) lacks poisoning metadata "
                     f"{missing}; pass the output of poison().")
  distilled.check_compatible(dataset)
  if isinstance(num_networks, bool) or not isinstance(num_networks, (int, np.integer)) \
      or num_networks < 1:
    raise ValueError(f"num_networks must be an int >= 1; got {num_networks!r}.")
  attacked, target = int(meta["attacked_class"]), int(meta["target_class"])
  cfg = dict(meta.get("config", {}))
  recipe = recipes_lib.Recipe(**cfg["pretrain_recipe"]) if "pretrain_recipe" in cfg else None
  kwargs = freeze_kwargs(meta.get("model_kwargs", {}))
  config = PoisonConfig(model=meta["model"], model_kwargs=kwargs, pretrain_recipe=recipe,
                        attacked_class=attacked, target_class=target)
  net = unroll.build_network(meta["model"], kwargs, distilled.num_classes,
                             distilled.image_shape)
  apply = unroll.apply_fn(net)
  fn = pretrained_params_fn or (lambda k: pretrain(dataset, config, k))
  key, seed = as_key(key)
  lrs = jnp.asarray(meta["step_sizes"], jnp.float32)
  s = int(meta.get("num_batches", 1))
  images, labels = jnp.asarray(distilled.images), jnp.asarray(distilled.labels)
  update = jax.jit(lambda theta: unroll.unrolled_sgd(apply, theta, images, labels, lrs,
                                                     num_batches=s, remat=False))
  predict = jax.jit(lambda theta, xb: jnp.argmax(apply(theta, xb), -1))
  x_test = np.asarray(dataset.x_test, np.float32)
  y_test = np.asarray(dataset.y_test)

  def preds(theta):
    return np.concatenate([np.asarray(predict(theta, jnp.asarray(x_test[i:i + batch_size])))
                           for i in range(0, len(x_test), batch_size)])

  seen = {tuple(k) for k in meta.get("pretrain_keys", [])}
  per, accs = [], []
  for i in range(num_networks):
    k = jax.random.fold_in(key, i)
    if tuple(key_data(k)) in seen:
      raise ValueError(f"evaluation network {i} would reuse a key of the attack's pool; pass a "
                       "key unrelated to the pool's (pool_seed).")
    theta = fn(k)
    p_before, p_after = preds(theta), preds(update(theta))
    per.append((_metrics(p_before, y_test, attacked, target),
                _metrics(p_after, y_test, attacked, target)))
    accs.append(float(np.mean(p_after == y_test)))
  report = PoisonReport(
      accuracies=tuple(accs), mean=float(np.mean(accs)), std=float(np.std(accs)),
      model=meta["model"], model_config=dict(meta.get("model_kwargs", {})),
      recipe={"name": "dd_poison", "inner_steps": int(lrs.shape[0]), "num_batches": s},
      num_images=len(distilled), dataset=getattr(dataset, "name", ""),
      seed=seed if isinstance(seed, int) else 0, seconds=time.time() - t0,
      before=_mean_metrics([b for b, _ in per]), after=_mean_metrics([a for _, a in per]),
      per_network=tuple(per), attacked_class=attacked, target_class=target)
  logger.info("poison %d->%d: K accuracy %.3f -> %.3f, K->T %.3f -> %.3f, others %.3f -> %.3f",
              attacked, target, report.before.attacked_accuracy, report.after.attacked_accuracy,
              report.before.attacked_to_target, report.after.attacked_to_target,
              report.before.other_accuracy, report.after.other_accuracy)
  return report
