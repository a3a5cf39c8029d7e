"""Dataset Distillation (DD) on the algorithm contract: learn images and step sizes by unrolling SGD.

Wang, Zhu, Torralba, Efros, "Dataset Distillation", arXiv:1811.10959 (2018); reference code
SsnL/dataset-distillation.

Synthetic images :math:`\\tilde x` (``images_per_class`` per class, fixed labels) in :math:`s`
batches, and one step size :math:`\\eta_k` per inner step, are learned so that networks trained
on them by the cyclic inner loop of :mod:`kip._src.unroll`,

.. math::
    \\theta_0 \\sim p(\\theta_0),\\qquad
    \\theta_{k+1} = \\theta_k - \\eta_k \\nabla_\\theta
        \\ell(\\tilde x_{i(k)}, \\tilde y_{i(k)}; \\theta_k),\\qquad i(k) = k \\bmod s,
    \\quad k = 0, \\dots, T - 1,\\ T = s \\cdot E,

classify real data well:

.. math::
    \\min_{\\tilde x, \\rho}\\; \\frac{1}{|A|} \\sum_{a \\in A}
        \\mathbb{E}_{\\theta_0 \\sim p_a}\\Big[\\ell(x, y; \\theta_T^{(a)})\\Big],

with :math:`A` the architectures of ``DDConfig.models`` (one by default) and :math:`(x, y)` a
batch of real training images. One driver step is one outer step.

Reference defaults (``base_options.py``, ``train_distilled_image.py``, ``networks/utils.py``):

* networks re-initialised every outer step (``--train_nets_type unknown_init``) with
  xavier-normal kernels and zero biases (``--init xavier --init_param 1``);
* each inner step its own batch of one image per class (``distilled_images_per_class_per_step
  = 1``): ``distill_steps`` :math:`s` = ``images_per_class`` by default, cycled
  ``distill_epochs = 3`` times;
* step sizes :math:`\\operatorname{softplus}(\\rho_k)`, initialised to ``distill_lr = 0.02``;
  synthetic images initialised as ``torch.randn``;
* Adam, ``lr = 0.01``, ``betas = (0.5, 0.999)``, halved every ``decay_epochs = 40`` epochs of
  real data; real batches of ``batch_size = 1024``; ``epochs = 400`` (400 x 59 = 23,600 steps
  on 60,000 images: :func:`kip._src.unroll.reference_steps`).

This library's earlier behaviour stays available by name: ``init_scheme='pytorch'`` (the
network's own, PyTorch-default uniform, initialiser), ``batching='all'`` (every image in every
inner step, ``distill_steps = 10`` inner steps per epoch), ``decay_epochs=None`` (constant
learning rate), ``batch_size=256``, ``steps=1000``.

Departure: real batches are drawn uniformly without replacement per step from the step's key
(the driver's rule), not by shuffling epochs; the epoch count behind the learning-rate decay is
``count // ceil(N / batch_size)``.

Evaluation on a network other than the one distilled for (:func:`evaluate_dd`,
``step_strategy``): ``'raw'`` uses the learned step sizes as they are; ``'rescaled'`` multiplies
them by :math:`\\bar\\lambda_\\text{distilled} / \\bar\\lambda_\\text{new}`, the ratio of the
largest eigenvalues of the two networks' empirical NTKs on the synthetic images at
initialisation (geometric mean over the architectures distilled for; the stable step size of
gradient descent scales as :math:`1/\\lambda_{\\max}`);
``'tuned'`` replaces them by one constant step size for the same :math:`T` steps, the best of a
grid of multiples of their mean by accuracy on training images (never the test set).

::

  algorithm = make_dd(DDConfig(images_per_class=10, steps=2000))
  distilled = kip.methods.run(algorithm, dataset, key=0)     # or distill_dd(...)
  report = evaluate_dd(distilled, dataset, key=1, restarts=10, model='fc', step_strategy='tuned')
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Mapping, NamedTuple, Optional, Sequence

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
from kip._src.random import as_key, rbg_key
from kip._src.sampling import ClassTable, uniform_indices
from kip._src.transfer import ntk as transfer_ntk
from kip._src.transfer import train as transfer_train
from kip._src.transfer.train import TransferResult

__all__ = ["DDConfig", "DDState", "DDEvaluation", "INITS", "BATCHINGS", "IMAGE_INITS",
           "STEP_STRATEGIES", "TrainedNetworks", "distill_dd", "evaluate_dd",
           "images_per_class_for", "make_dd", "normalize_models", "train_networks"]

logger = logging.getLogger(__name__)

INITS = ("random", "fixed")
BATCHINGS = ("cyclic", "all")
IMAGE_INITS = ("noise", "real")
STEP_STRATEGIES = ("raw", "rescaled", "tuned")
_ALL_BATCHING_STEPS = 10  # inner steps per epoch with batching='all' (reference distill_steps)


def normalize_models(models: Any) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
  """Architectures as a hashable tuple of ``(name, sorted kwargs pairs)``.

  Args:
    models: a sequence whose entries are a model name (``'fc'``) or a ``(name, kwargs)`` pair
      with ``kwargs`` a mapping or a sequence of pairs (``('fc', {'depth': 1})``).

  Raises:
    ValueError: an empty sequence, or an entry of another form.
  """
  if isinstance(models, str) or not isinstance(models, Sequence):
    raise ValueError(f"models={models!r} must be a tuple of model names or (name, kwargs) "
                     "pairs, e.g. models=('fc', ('lenet', {'padding': 'same'})).")
  if len(models) == 0:
    raise ValueError("models=() names no architecture; give at least one, e.g. "
                     "models=('fc', 'lenet'), or leave models=None to distil for `model`.")
  out = []
  for entry in models:
    if isinstance(entry, str):
      out.append((entry, ()))
    elif isinstance(entry, Sequence) and len(entry) == 2 and isinstance(entry[0], str):
      kwargs = entry[1]
      out.append((entry[0], freeze_kwargs(dict(kwargs) if not isinstance(kwargs, Mapping)
                                          else kwargs)))
    else:
      raise ValueError(f"models entry {entry!r} must be a model name or a (name, kwargs) pair.")
  return tuple(out)


def _check_int(config, name: str, minimum: int = 1) -> None:
  value = getattr(config, name)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")


def _check_positive_float(config, name: str) -> None:
  value = getattr(config, name)
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
      or not (np.isfinite(value) and value > 0):
    raise ValueError(f"{name} must be a positive finite number; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class DDConfig:
  """Hyperparameters of Dataset Distillation (defaults: the reference code, see the module doc).

  Attributes:
    images_per_class: synthetic images of each class, in all (over the ``distill_steps``
      batches).
    steps: outer steps. Default: the reference's 400 epochs of batch 1024 on 60,000 images
      (23,600); :func:`kip._src.unroll.reference_steps` gives it for another training set.
    model: ``kip.transfer`` model name of the network distilled for.
    model_kwargs: ``get_model`` overrides (a mapping; stored as sorted pairs, lists as tuples,
      so the config stays hashable).
    models: a set of architectures (names or ``(name, kwargs)`` pairs) replacing
      ``model``/``model_kwargs``: the outer loss is the mean over networks of each of them,
      all trained with the same synthetic images and step sizes. ``None``: ``model`` alone.
    init: ``'random'`` (a fresh :math:`\\theta_0` every outer step, reference
      ``unknown_init``) or ``'fixed'`` (one :math:`\\theta_0` per architecture, drawn at
      initialisation and reused for evaluation, reference ``known_init``).
    init_scheme: ``'xavier'`` (reference: xavier-normal kernels, zero biases) or
      ``'pytorch'`` (the network's own initialiser: PyTorch's default uniform for the
      presets; this library's earlier behaviour).
    inits_per_step: :math:`\\theta_0` draws per architecture and outer step (reference
      ``n_nets``; ``init='random'`` only).
    distill_steps: :math:`s`, inner steps per epoch. With ``batching='cyclic'`` each of them
      has its own batch of ``images_per_class / s`` images per class; ``None`` takes
      ``images_per_class`` (one image per class per step, the reference). With
      ``batching='all'`` every inner step uses every image; ``None`` takes 10.
    distill_epochs: :math:`E`, passes over the ``s`` inner steps; :math:`T = s E` step sizes.
    batching: ``'cyclic'`` (reference) or ``'all'``.
    lr_init: initial inner step size (reference ``distill_lr = 0.02``).
    lr_param: ``'softplus'`` (reference) or ``'exp'``.
    learn_lr: learn the step sizes (otherwise they stay at ``lr_init``).
    image_init: ``'noise'`` (standard normal in the preprocessed space, reference) or
      ``'real'`` (distinct random real images of each class).
    learning_rate: outer Adam learning rate (reference ``lr = 0.01``).
    batch_size: real images per outer step (reference 1024).
    decay_epochs: multiply the outer learning rate by ``decay_factor`` every this many epochs
      of real data (reference 40); ``None`` keeps it constant.
    decay_factor: the factor (reference 0.5).
    remat: ``jax.checkpoint`` each unrolled step (bounded memory).
  """
  images_per_class: int = 1
  steps: int = 23_600
  model: str = "lenet"
  model_kwargs: Any = ()
  models: Optional[Any] = None
  init: str = "random"
  init_scheme: str = "xavier"
  inits_per_step: int = 1
  distill_steps: Optional[int] = None
  distill_epochs: int = 3
  batching: str = "cyclic"
  lr_init: float = 0.02
  lr_param: str = "softplus"
  learn_lr: bool = True
  image_init: str = "noise"
  learning_rate: float = 0.01
  batch_size: int = 1024
  decay_epochs: Optional[int] = 40
  decay_factor: float = 0.5
  remat: bool = True

  def __post_init__(self):
    try:
      object.__setattr__(self, "model_kwargs", freeze_kwargs(self.model_kwargs))
    except (TypeError, ValueError) as e:
      raise ValueError(f"model_kwargs must be a mapping of get_model overrides; got "
                       f"{self.model_kwargs!r}.") from e
    if self.models is not None:
      object.__setattr__(self, "models", normalize_models(self.models))
    if not isinstance(self.model, str):
      raise ValueError(f"model must be a kip.transfer model name; got {self.model!r}.")
    for name in ("images_per_class", "inits_per_step", "distill_epochs", "batch_size"):
      _check_int(self, name)
    _check_int(self, "steps", 0)
    if self.distill_steps is not None:
      _check_int(self, "distill_steps")
    if self.decay_epochs is not None:
      _check_int(self, "decay_epochs")
    for name, allowed in (("init", INITS), ("init_scheme", unroll.INIT_SCHEMES),
                          ("batching", BATCHINGS), ("lr_param", unroll.PARAMETERIZATIONS),
                          ("image_init", IMAGE_INITS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name}={getattr(self, name)!r}; use one of {allowed}.")
    for name in ("lr_init", "learning_rate", "decay_factor"):
      _check_positive_float(self, name)
    if self.batching == "cyclic":
      unroll.arrange_classes(self.images_per_class, 1, self.num_batches)  # raises on bad s

  @property
  def networks(self) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    """The architectures distilled for: ``((name, kwargs pairs), ...)``."""
    return self.models if self.models is not None else ((self.model, self.model_kwargs),)

  @property
  def inner_steps_per_epoch(self) -> int:
    """:math:`s` (``distill_steps``, or its default)."""
    if self.distill_steps is not None:
      return int(self.distill_steps)
    return int(self.images_per_class) if self.batching == "cyclic" else _ALL_BATCHING_STEPS

  @property
  def num_batches(self) -> int:
    """Synthetic batches the inner steps cycle through (:math:`s`, or 1 with ``'all'``)."""
    return self.inner_steps_per_epoch if self.batching == "cyclic" else 1

  @property
  def num_inner_steps(self) -> int:
    """:math:`T = s \\cdot E`."""
    return self.inner_steps_per_epoch * int(self.distill_epochs)

  def to_dict(self) -> dict[str, Any]:
    """JSON view (kwargs as dicts)."""
    d = config_dict(self)
    d["model_kwargs"] = _kwargs_dict(self.model_kwargs)
    d["models"] = None if self.models is None else [[n, _kwargs_dict(k)] for n, k in self.models]
    return d


def _kwargs_dict(pairs) -> dict[str, Any]:
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in pairs}


def images_per_class_for(dataset, compression: float) -> int:
  """Synthetic images per class for a compression ratio :math:`N / |\\tilde X|`.

  :math:`\\lfloor N / (\\text{compression} \\cdot K) \\rfloor` for a training set of
  :math:`N` images in :math:`K` classes (compression 3: a synthetic set a third the size of
  the training set).

  Raises:
    ValueError: a ratio that is not > 0, or one that leaves a class with no synthetic image
      (the message gives the largest ratio that works).
  """
  if isinstance(compression, bool) or not (np.isfinite(compression) and compression > 0):
    raise ValueError(f"compression={compression!r} must be a positive finite number.")
  n, k = int(np.shape(dataset.y_train)[0]), int(dataset.num_classes)
  ipc = int(n // (compression * k))
  if ipc < 1:
    raise ValueError(f"compression={compression} leaves {n / compression:.1f} synthetic images "
                     f"for {k} classes, so some class would have no synthetic image; use "
                     f"compression <= {n / k:.4g} (one image per class) or images_per_class=1.")
  return ipc


class DDState(NamedTuple):
  """State of a DD run (arrays only).

  Attributes:
    images: ``(K * ipc, H, W, C)`` synthetic images, batch-major
      (:func:`kip._src.unroll.arrange_classes`).
    raw_lrs: ``(T,)`` step-size parameters :math:`\\rho_k`.
    opt_state: the outer optimizer's state over ``{'images', 'raw_lrs'}``.
    init_params: ``init='fixed'``: one variables tree :math:`\\theta_0` per architecture;
      ``init='random'``: ``()``.
    init_key: ``(2,)`` uint32 key the fixed :math:`\\theta_0` were drawn from
      (architecture ``a`` uses ``fold_in(init_key, a)``); zeros for random init.
    count: ``()`` int32 outer steps taken.
  """
  images: jax.Array
  raw_lrs: jax.Array
  opt_state: Any
  init_params: Any
  init_key: jax.Array
  count: jax.Array


def _labels(config: DDConfig, num_classes: int) -> np.ndarray:
  s = config.num_batches
  return unroll.arrange_classes(config.images_per_class, num_classes, s)


def _networks(config: DDConfig, num_classes: int, image_shape) -> list:
  return [unroll.build_network(name, kwargs, num_classes, image_shape)
          for name, kwargs in config.networks]


def _fixed_params(config: DDConfig, nets, init_key: jax.Array, image_shape) -> tuple:
  return tuple(unroll.init_params(net, jax.random.fold_in(init_key, a), image_shape,
                                  config.init_scheme) for a, net in enumerate(nets))


@functools.lru_cache(maxsize=16)
def _step_fn(config: DDConfig, optimizer: Optional[optax.GradientTransformation]):
  """The jitted step of ``config``; cached so that equal configs share one compilation."""
  tx = optimizer if optimizer is not None else unroll.outer_optimizer()
  ipc, s = config.images_per_class, config.num_batches

  def step(state: DDState, data, key: jax.Array):
    x_all, y_all = data
    n_img = state.images.shape[0]
    k = n_img // ipc
    shape = state.images.shape[1:]
    nets = _networks(config, k, shape)
    labels = jnp.asarray(_labels(config, k))
    k_batch, k_theta = jax.random.split(key)
    rows = uniform_indices(k_batch, x_all.shape[0], config.batch_size)
    x_real, y_real = x_all[rows], y_all[rows]

    def outer_loss(trainable):
      raw = trainable["raw_lrs"]
      raw = raw if config.learn_lr else jax.lax.stop_gradient(raw)
      lrs = unroll.step_sizes(raw, config.lr_param)
      total_loss, total_acc = 0.0, 0.0
      for a, net in enumerate(nets):
        apply = unroll.apply_fn(net)

        def loss_from(theta0, apply=apply):
          theta = unroll.unrolled_sgd(apply, theta0, trainable["images"], labels, lrs,
                                      num_batches=s, remat=config.remat)
          logits = apply(theta, x_real)
          return (losses.softmax_cross_entropy(logits, y_real),
                  losses.accuracy(logits, y_real))

        if config.init == "fixed":
          loss, acc = loss_from(state.init_params[a])
        else:
          keys = jax.vmap(rbg_key)(jax.random.split(jax.random.fold_in(k_theta, a),
                                                    config.inits_per_step))
          per_init = lambda kk, net=net, f=loss_from: f(
              unroll.init_params(net, kk, shape, config.init_scheme))
          # Sequential over draws: vmapping a convolution over parameters makes it a grouped
          # convolution, several times slower on CPU.
          ls, accs = jax.lax.map(per_init, keys)
          loss, acc = jnp.mean(ls), jnp.mean(accs)
        total_loss, total_acc = total_loss + loss, total_acc + acc
      return total_loss / len(nets), total_acc / len(nets)

    trainable = {"images": state.images, "raw_lrs": state.raw_lrs}
    (loss, acc), grads = jax.value_and_grad(outer_loss, has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    if optimizer is None:
      lr = unroll.outer_learning_rate(
          config.learning_rate, state.count,
          unroll.steps_per_epoch(x_all.shape[0], config.batch_size), config.decay_epochs,
          config.decay_factor)
      updates = jax.tree.map(lambda u: -lr * u, updates)
    else:
      lr = jnp.full((), jnp.nan, jnp.float32)
    new = optax.apply_updates(trainable, updates)
    lrs = unroll.step_sizes(new["raw_lrs"], config.lr_param)
    state = state._replace(images=new["images"], raw_lrs=new["raw_lrs"], opt_state=opt_state,
                           count=state.count + 1)
    return state, {"loss": loss, "accuracy": acc, "lr_mean": jnp.mean(lrs), "outer_lr": lr}

  return jax.jit(step)


def _data(dataset) -> tuple[jax.Array, jax.Array]:
  return (jnp.asarray(dataset.x_train, jnp.float32), jnp.asarray(dataset.y_train, jnp.int32))


def _init_images(key: jax.Array, dataset, config: DDConfig) -> jax.Array:
  k = int(dataset.num_classes)
  ipc = config.images_per_class
  shape = tuple(np.shape(dataset.x_train)[1:])
  if config.image_init == "noise":
    return jax.random.normal(key, (k * ipc,) + shape, jnp.float32)
  table = ClassTable.from_dataset(dataset)
  smallest = int(jnp.min(table.counts))
  if ipc > smallest:
    raise ValueError(f"image_init='real' with images_per_class={ipc} exceeds the smallest "
                     f"class ({smallest} images); use images_per_class <= {smallest} or "
                     "image_init='noise'.")
  rows = np.asarray(table.sample_indices(key, k * ipc))  # class-major, distinct per class
  x = np.asarray(dataset.x_train, np.float32)[rows]
  return jnp.asarray(unroll.batch_major(x, k, config.num_batches))


def make_dd(config: DDConfig, *, optimizer: Optional[optax.GradientTransformation] = None
            ) -> Algorithm:
  """The DD :class:`~kip._src.algorithm.Algorithm`.

  Args:
    config: :class:`DDConfig`.
    optimizer: an ``optax.GradientTransformation`` replacing the outer Adam and its step decay
      (recorded as ``'user'`` in the spec; it carries its own learning rate).

  Returns:
    ``Algorithm('dd', ...)``; ``data`` is the training set on device ``(x, y)``; a step draws
    ``batch_size`` real images and (random init) ``inits_per_step`` networks per architecture
    from its key; its metrics are ``loss`` (outer cross-entropy before the update),
    ``accuracy`` (of :math:`\\theta_T` on the real batch), ``lr_mean`` (mean step size) and
    ``outer_lr``.
  """
  tx = optimizer if optimizer is not None else unroll.outer_optimizer()
  step = cached_step(_step_fn, config, optimizer)

  def init(key: jax.Array, dataset) -> DDState:
    k = int(dataset.num_classes)
    shape = tuple(np.shape(dataset.x_train)[1:])
    nets = _networks(config, k, shape)
    k_img, k_theta = jax.random.split(key)
    images = _init_images(k_img, dataset, config)
    raw = unroll.raw_step_sizes(config.lr_init, config.num_inner_steps, config.lr_param)
    # A raw (threefry) key from the key's bits: rebuilt from metadata for evaluation.
    init_key = jax.random.bits(k_theta, (2,), jnp.uint32)
    if config.init == "fixed":
      params = _fixed_params(config, nets, init_key, shape)
    else:
      params, init_key = (), jnp.zeros((2,), jnp.uint32)
    return DDState(images, raw, tx.init({"images": images, "raw_lrs": raw}), params, init_key,
                   jnp.zeros((), jnp.int32))

  def result(state: DDState, dataset) -> DistilledSet:
    k = int(dataset.num_classes)
    lrs = np.asarray(unroll.step_sizes(state.raw_lrs, config.lr_param), np.float64).tolist()
    labels = np.eye(k, dtype=np.float32)[_labels(config, k)]
    nets = [[n, _kwargs_dict(kw)] for n, kw in config.networks]
    meta = {"config": config.to_dict(), "images_per_class": config.images_per_class,
            "step_sizes": lrs, "distill_steps": config.inner_steps_per_epoch,
            "distill_epochs": config.distill_epochs, "num_batches": config.num_batches,
            "batching": config.batching, "init": config.init,
            "init_scheme": config.init_scheme,
            "init_key": (np.asarray(state.init_key).tolist() if config.init == "fixed"
                         else None),
            "models": nets, "model": nets[0][0], "model_kwargs": nets[0][1]}
    return DistilledSet(images=np.asarray(state.images, np.float32), labels=labels,
                        dataset=dataset.name, method="dd",
                        preprocessing=getattr(dataset, "preprocessing", None), metadata=meta)

  spec = {"config": config.to_dict(), "optimizer": "adam" if optimizer is None else "user"}
  hint = (f"lower the outer learning_rate (now {config.learning_rate}) or lr_init (now "
          f"{config.lr_init})")
  return Algorithm("dd", init, _data, step, result, spec, config.steps, hint)


def distill_dd(dataset, images_per_class: int, config: DDConfig = DDConfig(),
               key: Any = 0, *, optimizer: Optional[optax.GradientTransformation] = None,
               progress: bool = True, **run_options) -> DistilledSet:
  """Distils ``dataset`` with Dataset Distillation for ``config.steps`` outer steps.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: synthetic images per class (replaces ``config.images_per_class``).
    config: :class:`DDConfig`.
    key: PRNG key or ``int`` seed.
    optimizer: optional outer optimizer (see :func:`make_dd`).
    progress: show progress.
    **run_options: passed to ``kip.methods.run`` (``steps``, ``checkpoint_dir``, ``resume``,
      ``time_budget``, ``callback``, ...).

  Returns:
    A ``DistilledSet`` (``method='dd'``) of ``K * ipc`` images, batch-major, one-hot labels;
    ``metadata`` holds the config, ``step_sizes`` (:math:`T` floats), ``distill_steps``,
    ``distill_epochs``, ``num_batches``, ``batching``, ``init``, ``init_scheme``,
    ``init_key`` (fixed init), ``models``, and the driver's ``history``, ``seed``, ...
  """
  config = dataclasses.replace(config, images_per_class=images_per_class)
  return driver.run(make_dd(config, optimizer=optimizer), dataset, key=key, progress=progress,
                    **run_options)


# ----------------------------------------------------------------------------- evaluation
@dataclasses.dataclass(frozen=True)
class DDEvaluation(TransferResult):
  """Test accuracy of networks trained on a DD set by its inner loop (a ``TransferResult``).

  ``recipe`` holds ``{'name': 'dd', 'step_strategy': ..., 'inner_steps': T, ...}``.

  Attributes:
    init_accuracy: mean test accuracy of the same initialisations before training.
    init: ``'fixed'`` or ``'random'``.
    step_strategy: ``'raw'``, ``'rescaled'`` or ``'tuned'``.
    step_scale: factor applied to the learned step sizes (``'rescaled'``), or the constant
      step size used (``'tuned'``); 1.0 for ``'raw'``.
    step_sizes: the :math:`T` step sizes the networks were trained with.
    distilled_for: names of the architectures the set was distilled for.
  """
  init_accuracy: float = float("nan")
  init: str = "random"
  step_strategy: str = "raw"
  step_scale: float = 1.0
  step_sizes: tuple[float, ...] = ()
  distilled_for: tuple[str, ...] = ()

  def to_dict(self) -> dict[str, Any]:
    d = super().to_dict()
    d["step_sizes"] = list(self.step_sizes)
    d["distilled_for"] = list(self.distilled_for)
    return d


def _dd_meta(distilled: DistilledSet) -> Mapping[str, Any]:
  meta = distilled.metadata
  missing = [k for k in ("step_sizes", "init", "model") if k not in meta]
  if missing:
    raise ValueError(f"distilled set (method {distilled.method!r}) lacks DD metadata {missing}; "
                     "evaluate non-DD sets with kip.transfer.evaluate.")
  return meta


def _num_batches(meta: Mapping[str, Any]) -> int:
  if "num_batches" in meta:
    return int(meta["num_batches"])
  return int(meta["steps"]) if meta.get("split_steps") else 1  # sets of earlier versions


def _lambda_max(net, thetas: Sequence[Any], images: np.ndarray) -> float:
  """Mean largest eigenvalue of the empirical NTK on ``images`` over the given networks."""
  return float(np.mean([transfer_ntk.ntk_max_eigenvalue(net, t, images) for t in thetas]))


@functools.lru_cache(maxsize=32)
def _train_fn(net, num_batches: int):
  """``(params0 (r, ...), images, labels, lrs) -> params_T (r, ...)``, jitted once per network
  and batch count (a benchmark's many evaluations of one architecture share it)."""
  apply = unroll.apply_fn(net)
  return jax.jit(jax.vmap(lambda p0, x, y, lrs: unroll.unrolled_sgd(
      apply, p0, x, y, lrs, num_batches=num_batches, remat=False), in_axes=(0, None, None, None)))


def _stack(trees):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


class TrainedNetworks(NamedTuple):
  """Networks trained on a DD set by its inner loop (:func:`train_networks`).

  Attributes:
    model: the Flax module.
    initial: its initial variables, stacked on a leading ``(r,)`` axis.
    trained: the variables after the :math:`T` inner steps, stacked likewise.
    step_sizes: ``(T,)`` the step sizes used.
    step_scale: see :class:`DDEvaluation`.
    init: ``'fixed'`` or ``'random'``.
    name: the architecture's name.
    kwargs: its ``get_model`` overrides (sorted pairs).
    distilled_for: ``((name, kwargs pairs), ...)`` the set was distilled for.
  """
  model: Any
  initial: Any
  trained: Any
  step_sizes: np.ndarray
  step_scale: float
  init: str
  name: str
  kwargs: tuple
  distilled_for: tuple


def train_networks(distilled: DistilledSet, dataset, key: Any = 0, restarts: int = 5,
                   model: Optional[str] = None,
                   model_kwargs: Optional[Mapping[str, Any]] = None,
                   init: Optional[str] = None, step_strategy: str = "raw", *,
                   tune_grid: Sequence[float] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
                   validation_size: int = 1000, tune_restarts: int = 3,
                   ntk_networks: int = 3, ntk_images: int = 100,
                   batch_size: int = 1000) -> TrainedNetworks:
  """Trains networks on ``distilled`` with DD's inner loop (the training half of
  :func:`evaluate_dd`, whose arguments it takes); returns them with their initialisations.

  Raises:
    ValueError: as :func:`evaluate_dd`.
  """
  meta = _dd_meta(distilled)
  distilled.check_compatible(dataset)
  if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) or restarts < 1:
    raise ValueError(f"restarts must be an int >= 1; got {restarts!r}.")
  if step_strategy not in STEP_STRATEGIES:
    raise ValueError(f"step_strategy={step_strategy!r}; use one of {STEP_STRATEGIES}.")
  init = init or meta["init"]
  if init not in INITS:
    raise ValueError(f"init={init!r}; use one of {INITS}.")
  distilled_nets = [(n, freeze_kwargs(kw)) for n, kw in
                    meta.get("models") or [[meta["model"], meta.get("model_kwargs", {})]]]
  name = model or distilled_nets[0][0]
  if model_kwargs is not None:
    kwargs = freeze_kwargs(model_kwargs)
  else:
    kwargs = next((kw for n, kw in distilled_nets if n == name), ())
  scheme = meta.get("init_scheme", "pytorch")  # earlier sets used the networks' own init
  k = distilled.num_classes
  shape = distilled.image_shape
  net = unroll.build_network(name, kwargs, k, shape)
  images = jnp.asarray(distilled.images, jnp.float32)
  labels = jnp.asarray(distilled.labels, jnp.float32)
  learned = np.asarray(meta["step_sizes"], np.float32)
  s = _num_batches(meta)
  key, _ = as_key(key)

  if init == "fixed":
    if meta.get("init_key") is None:
      raise ValueError("init='fixed' needs the θ0 key of a fixed-init distillation; this set was "
                       "distilled with random init. Use init='random'.")
    if (name, kwargs) not in distilled_nets:
      raise ValueError(f"fixed-init evaluation needs an architecture the set was distilled for "
                       f"({[n for n, _ in distilled_nets]} with their kwargs); got {name!r} with "
                       f"{dict(kwargs)}.")
    a = distilled_nets.index((name, kwargs))
    init_key = jnp.asarray(np.asarray(meta["init_key"], np.uint32))
    thetas = [unroll.init_params(net, jax.random.fold_in(init_key, a), shape, scheme)]
  else:
    thetas = [unroll.init_params(net, jax.random.fold_in(key, r), shape, scheme)
              for r in range(restarts)]

  fit = _train_fn(net, s)
  train = lambda p0, lrs: fit(p0, images, labels, lrs)

  scale = 1.0
  if step_strategy == "raw":
    lrs = learned
  elif step_strategy == "rescaled":
    probe = np.asarray(images[:ntk_images])
    same = (name, kwargs) in distilled_nets and len(distilled_nets) == 1
    if not same:
      k_ntk = jax.random.fold_in(key, 2**20)

      def lam(m):
        return _lambda_max(m, [unroll.init_params(m, jax.random.fold_in(k_ntk, i), shape,
                                                  scheme) for i in range(ntk_networks)], probe)

      lam_ref = [lam(unroll.build_network(n, kw, k, shape)) for n, kw in distilled_nets]
      scale = float(np.exp(np.mean(np.log(lam_ref))) / lam(net))
    lrs = learned * np.float32(scale)
  else:  # tuned
    x_tr = np.asarray(dataset.x_train, np.float32)
    y_tr = np.asarray(dataset.y_train)
    rows = np.asarray(ClassTable.from_dataset(dataset).sample_indices(
        jax.random.fold_in(key, 2**21), min(validation_size, len(y_tr))))
    k_tune = jax.random.fold_in(key, 2**22)
    tune_thetas = _stack([unroll.init_params(net, jax.random.fold_in(k_tune, i), shape, scheme)
                          for i in range(tune_restarts)])
    base = float(np.mean(learned))
    scores = []
    for c in tune_grid:
      trained = train(tune_thetas, jnp.full(learned.shape, base * c, jnp.float32))
      acc = transfer_train.group_accuracies(net, trained, x_tr[rows], y_tr[rows], batch_size)
      scores.append(float(np.nan_to_num(np.mean(acc), nan=-1.0)))
    best = int(np.argmax(scores))
    scale = base * float(tune_grid[best])
    lrs = np.full_like(learned, scale)
    logger.info("DD tuned step size: %s -> %.4g (validation %.4f)",
                dict(zip(tune_grid, np.round(scores, 4))), scale, scores[best])

  stacked = _stack(thetas)
  lrs = np.asarray(lrs, np.float32)
  return TrainedNetworks(net, stacked, train(stacked, jnp.asarray(lrs)), lrs, float(scale),
                         init, name, kwargs, tuple(distilled_nets))


def evaluate_dd(distilled: DistilledSet, dataset, key: Any = 0, restarts: int = 5,
                model: Optional[str] = None, model_kwargs: Optional[Mapping[str, Any]] = None,
                init: Optional[str] = None, step_strategy: str = "raw", *,
                tune_grid: Sequence[float] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
                validation_size: int = 1000, tune_restarts: int = 3,
                ntk_networks: int = 3, ntk_images: int = 100,
                batch_size: int = 1000) -> DDEvaluation:
  """Trains networks on ``distilled`` with DD's inner loop and tests them on ``dataset``.

  Network ``r`` starts from the saved fixed :math:`\\theta_0` (``init='fixed'``; one network)
  or from a fresh draw with the distillation's ``init_scheme`` from ``fold_in(key, r)``, takes
  the :math:`T` cyclic steps of :func:`kip._src.unroll.unrolled_sgd` with the step sizes the
  ``step_strategy`` gives (see the module docstring), and is tested on all of
  ``dataset.x_test``.

  Args:
    distilled: a set made by :func:`distill_dd`.
    dataset: the ``kip.data.Dataset`` it was distilled from.
    key: PRNG key or ``int`` seed for the initialisations.
    restarts: networks (random init).
    model: architecture to train; default the (first) one distilled for.
    model_kwargs: its ``get_model`` overrides; default the distillation's for that model.
    init: ``'fixed'`` or ``'random'``; default the distillation's. Fixed needs one of the
      architectures distilled for.
    step_strategy: ``'raw'``, ``'rescaled'`` or ``'tuned'``.
    tune_grid: ``'tuned'``: multiples of the mean learned step size tried.
    validation_size: ``'tuned'``: class-balanced training images the grid is scored on (the
      distillation saw the training set; the test set is never used for tuning).
    tune_restarts: ``'tuned'``: networks per grid point (keys unrelated to the restarts').
    ntk_networks: ``'rescaled'``: initialisations the NTK eigenvalues are averaged over.
    ntk_images: ``'rescaled'``: synthetic images the NTK is computed on.
    batch_size: test images per forward pass.

  Returns:
    A :class:`DDEvaluation`.

  Raises:
    ValueError: a set without DD metadata or not matching ``dataset``, ``restarts < 1``, an
      unknown strategy, or fixed init on an architecture the set was not distilled for.
  """
  t0 = time.time()
  nets = train_networks(distilled, dataset, key, restarts, model, model_kwargs, init,
                        step_strategy, tune_grid=tune_grid, validation_size=validation_size,
                        tune_restarts=tune_restarts, ntk_networks=ntk_networks,
                        ntk_images=ntk_images, batch_size=batch_size)
  _, seed = as_key(key)
  x_test = np.asarray(dataset.x_test, np.float32)
  y_test = np.asarray(dataset.y_test)
  init_accs = transfer_train.group_accuracies(nets.model, nets.initial, x_test, y_test,
                                                batch_size)
  accs = [float(a) for a in transfer_train.group_accuracies(nets.model, nets.trained, x_test,
                                                              y_test, batch_size)]
  result = DDEvaluation(
      accuracies=tuple(accs), mean=float(np.mean(accs)), std=float(np.std(accs)),
      model=nets.name, model_config=_kwargs_dict(nets.kwargs),
      recipe={"name": "dd", "step_strategy": step_strategy,
              "inner_steps": int(len(nets.step_sizes)),
              "num_batches": _num_batches(distilled.metadata),
              "init_scheme": distilled.metadata.get("init_scheme", "pytorch")},
      num_images=len(distilled), dataset=getattr(dataset, "name", ""),
      seed=seed if isinstance(seed, int) else 0, seconds=time.time() - t0,
      init_accuracy=float(np.mean(init_accs)), init=nets.init, step_strategy=step_strategy,
      step_scale=nets.step_scale, step_sizes=tuple(float(v) for v in nets.step_sizes),
      distilled_for=tuple(n for n, _ in nets.distilled_for))
  logger.info("DD evaluation (%s init, %s, %s steps): %s (untrained %.4f)", nets.init,
              nets.name, step_strategy, result, result.init_accuracy)
  return result
