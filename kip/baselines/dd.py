"""Dataset Distillation (DD): learn images and step sizes through unrolled gradient descent.

Wang, Zhu, Torralba & Efros, "Dataset Distillation", arXiv:1811.10959 (2018).

Synthetic images :math:`\\tilde x` (``images_per_class`` per class, fixed one-hot labels
:math:`\\tilde y`) and one step size per inner gradient step and epoch,
:math:`\\tilde\\eta_t = \\mathrm{softplus}(\\rho_t)` (or :math:`e^{\\rho_t}`), are trained so that
a network trained on them for :math:`T = \\text{epochs} \\times \\text{steps}` gradient steps
classifies real data well:

.. math::
    \\theta_{t+1} = \\theta_t - \\tilde\\eta_t\\, \\nabla_\\theta\\,
        \\ell(\\tilde x_{(t)}, \\tilde y_{(t)}; \\theta_t), \\qquad t = 0, \\dots, T-1,

.. math::
    \\min_{\\tilde x, \\rho}\\; \\mathbb{E}_{\\theta_0 \\sim p(\\theta_0)}
        \\Big[\\ell(x_{\\text{real}}, y_{\\text{real}}; \\theta_T)\\Big],

with :math:`\\ell` the softmax cross-entropy. The outer gradient back-propagates through all
:math:`T` inner updates (second-order, through :math:`\\nabla_\\theta \\ell`). The unrolled loop
is a ``jax.lax.scan`` whose body is wrapped in ``jax.checkpoint``: the backward pass stores only
the :math:`T` parameter vectors :math:`\\theta_t` and recomputes each step's activations, so
memory grows as :math:`O(T |\\theta|)` instead of :math:`O(T (|\\theta| + \\text{activations}))`.

Initialisation (``DDConfig.init``):

* ``'fixed'``: one known :math:`\\theta_0` (drawn from the key given to :func:`init` and saved
  in the metadata) is used for distillation *and* evaluation; the images may encode
  information specific to that :math:`\\theta_0` (the paper's 10-image MNIST result).
* ``'random'``: a fresh :math:`\\theta_0 \\sim p(\\theta_0)` (the model's initialiser) every outer
  step, averaged over ``inits_per_step`` draws; evaluation uses unseen initialisations.

Inner batches (``DDConfig.split_steps``): ``False`` (default) uses all synthetic images in every
inner step; ``True`` splits them, class balanced, into ``steps`` groups so that step ``i`` of
each epoch uses group ``i``, as in the reference code (``images_per_class`` must then be a
multiple of ``steps``). The images are stored group by group (class by class inside a group).

Networks: any ``kip.transfer`` model (``get_model(name, num_classes, **model_kwargs)``) whose
variables are only ``'params'``; normalisation with running statistics (``norm='batch'``) is
not supported, because DD needs a pure ``apply(params, x)``. The paper uses LeNet for MNIST and
the small AlexNet for CIFAR-10.

API (optax style)::

  state = init(key, dataset, config, images_per_class=10)
  state, metrics = step(state, (x_real, y_real), key)      # jitted
  distilled = distill_dd(dataset, 10, config, key)         # the loop, returns a DistilledSet
  result = evaluate_dd(distilled, dataset, key, restarts=5)
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
from kip._src.transfer import train as transfer_train
from kip._src.transfer.models import get_model
from kip.baselines import coresets

__all__ = [
    "DDConfig",
    "DDEvaluation",
    "DDState",
    "default_optimizer",
    "distill_dd",
    "evaluate_dd",
    "init",
    "step",
    "step_sizes",
    "unrolled_sgd",
]

logger = logging.getLogger(__name__)

_INITS = ("fixed", "random")
_LR_PARAMS = ("softplus", "exp")
_IMAGE_INITS = ("noise", "real")

ApplyFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class DDConfig:
  """Hyperparameters of Dataset Distillation.

  Attributes:
    model: ``kip.transfer`` model name (``'lenet'``, ``'alexnet'``, ``'fc'``, ``'convnet'``...).
    model_kwargs: overrides for ``get_model`` (a mapping; stored as sorted ``(key, value)``
      pairs so the config stays hashable), e.g. ``{'width': 32}``.
    steps: inner gradient steps per epoch.
    epochs: passes of the ``steps`` inner steps; :math:`T = \\text{epochs} \\times \\text{steps}`
      step sizes are learned.
    init: ``'fixed'`` or ``'random'`` network initialisation (see the module docstring).
    inits_per_step: :math:`\\theta_0` draws averaged per outer step (``init='random'`` only).
    lr_init: initial inner step size :math:`\\tilde\\eta_t` (0.02 in the reference code).
    lr_param: ``'softplus'`` (:math:`\\eta = \\log(1 + e^\\rho)`) or ``'exp'``
      (:math:`\\eta = e^\\rho`), either keeps the step sizes positive.
    learn_lr: learn the step sizes (otherwise they stay at ``lr_init``).
    split_steps: give every inner step its own group of images (see the module docstring).
    image_init: ``'noise'`` (standard normal in the preprocessed space, as the paper) or
      ``'real'`` (random real images of each class).
    learning_rate: learning rate of the default outer optimiser, ``optax.adam(lr, b1=0.5)``
      as in the reference code.
    batch_size: real images per outer step (:func:`distill_dd`).
    num_steps: outer steps of :func:`distill_dd`.
    remat: wrap each unrolled step in ``jax.checkpoint`` (bounded memory; recomputes
      activations on the backward pass).
  """
  model: str = "lenet"
  model_kwargs: Any = ()
  steps: int = 10
  epochs: int = 3
  init: str = "random"
  inits_per_step: int = 1
  lr_init: float = 0.02
  lr_param: str = "softplus"
  learn_lr: bool = True
  split_steps: bool = False
  image_init: str = "noise"
  learning_rate: float = 0.01
  batch_size: int = 256
  num_steps: int = 1000
  remat: bool = True

  def __post_init__(self):
    kwargs = self.model_kwargs
    if isinstance(kwargs, Mapping):
      kwargs = kwargs.items()
    try:
      # Hashable (the config is static under jit): lists become tuples.
      object.__setattr__(self, "model_kwargs", tuple(sorted(
          (str(k), tuple(v) if isinstance(v, list) else v) for k, v in kwargs)))
    except (TypeError, ValueError) as e:
      raise ValueError(f"model_kwargs must be a mapping of get_model overrides; got "
                       f"{self.model_kwargs!r}.") from e
    for name in ("steps", "epochs", "inits_per_step", "batch_size"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int; got {v!r}.")
    if not isinstance(self.num_steps, (int, np.integer)) or self.num_steps < 0:
      raise ValueError(f"num_steps must be a non-negative int; got {self.num_steps!r}.")
    if self.init not in _INITS:
      raise ValueError(f"init must be one of {_INITS}; got {self.init!r}.")
    if self.lr_param not in _LR_PARAMS:
      raise ValueError(f"lr_param must be one of {_LR_PARAMS}; got {self.lr_param!r}.")
    if self.image_init not in _IMAGE_INITS:
      raise ValueError(f"image_init must be one of {_IMAGE_INITS}; got {self.image_init!r}.")
    if not (self.lr_init > 0 and np.isfinite(self.lr_init)):
      raise ValueError(f"lr_init must be positive and finite; got {self.lr_init!r}.")
    if not (self.learning_rate > 0 and np.isfinite(self.learning_rate)):
      raise ValueError(f"learning_rate must be positive and finite; got {self.learning_rate!r}.")

  @property
  def num_inner_steps(self) -> int:
    """:math:`T = \\text{epochs} \\times \\text{steps}`."""
    return self.epochs * self.steps

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["model_kwargs"] = dict(self.model_kwargs)
    return d


@struct.dataclass
class DDState:
  """State of DD; a pytree (arrays are leaves; ``config``, ``model``, ``optimizer`` static).

  Attributes:
    images: ``(n, H, W, C)`` synthetic images, ``n = images_per_class * K`` (group-major when
      ``split_steps``).
    labels: ``(n, K)`` fixed one-hot labels.
    raw_lrs: ``(epochs * steps,)`` unconstrained step-size parameters :math:`\\rho_t`.
    opt_state: the outer optimiser's state over ``{'images', 'raw_lrs'}``.
    init_params: the fixed :math:`\\theta_0` variables (``init='fixed'``), else ``None``.
    count: ``()`` int32 number of outer steps taken.
    config: the :class:`DDConfig`.
    model: the Flax module.
    optimizer: the outer ``optax.GradientTransformation``.
  """
  images: jax.Array
  labels: jax.Array
  raw_lrs: jax.Array
  opt_state: Any
  init_params: Any
  count: jax.Array
  config: DDConfig = struct.field(pytree_node=False)
  model: nn.Module = struct.field(pytree_node=False)
  optimizer: optax.GradientTransformation = struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class DDEvaluation:
  """Test accuracy of networks trained with DD's learned step schedule on a distilled set.

  Attributes:
    mean: mean test accuracy over restarts, in ``[0, 1]``.
    std: standard deviation over restarts.
    accuracies: per-restart test accuracies.
    init_accuracy: mean test accuracy of the same initialisations before training.
    init: ``'fixed'`` or ``'random'``.
    model: model name.
  """
  mean: float
  std: float
  accuracies: tuple[float, ...]
  init_accuracy: float
  init: str
  model: str


# ---------------------------------------------------------------------------- core


def step_sizes(raw_lrs: jax.Array, lr_param: str) -> jax.Array:
  """Positive step sizes :math:`\\tilde\\eta = \\mathrm{softplus}(\\rho)` or :math:`e^\\rho`."""
  return jax.nn.softplus(raw_lrs) if lr_param == "softplus" else jnp.exp(raw_lrs)


def _raw_from_lr(lr: float, lr_param: str) -> float:
  return float(np.log(np.expm1(lr))) if lr_param == "softplus" else float(np.log(lr))


def _xent(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy against target distributions ``(n, K)``."""
  return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1))


def _xent_int(logits: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def unrolled_sgd(apply_fn: ApplyFn, params0: Any, images: jax.Array, labels: jax.Array,
                 lrs: jax.Array, *, steps: int, split_steps: bool, remat: bool = True) -> Any:
  """Runs :math:`T = ` ``len(lrs)`` steps of gradient descent on the synthetic set.

  .. math:: \\theta_{t+1} = \\theta_t - \\eta_t \\nabla_\\theta
            \\ell(\\tilde x_{(t \\bmod \\text{steps})}, \\tilde y_{(t \\bmod \\text{steps})};
            \\theta_t)

  Differentiable with respect to ``params0``, ``images`` and ``lrs``. Each step is a
  ``jax.lax.scan`` iteration; with ``remat`` the body is ``jax.checkpoint``-ed so the backward
  pass keeps only the :math:`\\theta_t`.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params0: initial parameters :math:`\\theta_0` (any pytree).
    images: ``(n, H, W, C)``; with ``split_steps``, ``steps`` consecutive groups of ``n/steps``.
    labels: ``(n, K)`` target distributions.
    lrs: ``(T,)`` step sizes.
    steps: inner steps per epoch (group count when ``split_steps``).
    split_steps: step ``t`` uses group ``t mod steps`` instead of all images.
    remat: checkpoint each step.

  Returns:
    :math:`\\theta_T`, same structure as ``params0``.
  """
  if split_steps:
    xs_img = images.reshape(steps, -1, *images.shape[1:])
    xs_lab = labels.reshape(steps, -1, labels.shape[-1])

  def body(params, xs):
    lr, i = xs
    if split_steps:
      x, y = xs_img[i], xs_lab[i]
    else:
      x, y = images, labels
    grads = jax.grad(lambda p: _xent(apply_fn(p, x), y))(params)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), None

  if remat:
    body = jax.checkpoint(body, prevent_cse=False)
  group = jnp.arange(lrs.shape[0]) % steps
  params, _ = jax.lax.scan(body, params0, (lrs, group))
  return params


def _build_model(config, num_classes: int) -> nn.Module:
  """``get_model(config.model, num_classes, **config.model_kwargs)``."""
  return get_model(config.model, num_classes, **dict(config.model_kwargs))


def _init_variables(model: nn.Module, key: jax.Array, image_shape) -> Any:
  return model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)


def _check_pure(model: nn.Module, name: str, image_shape) -> None:
  shapes = jax.eval_shape(lambda k: _init_variables(model, k, image_shape), jax.random.PRNGKey(0))
  extra = sorted(set(shapes) - {"params"})
  if extra:
    raise ValueError(f"model {name!r} carries state collections {extra} (batch normalisation?); "
                     "DD back-propagates through a pure apply(params, x). Use norm='instance' or "
                     "norm='none' in model_kwargs.")


def _apply_fn(model: nn.Module) -> ApplyFn:
  return lambda params, x: model.apply(params, x, train=False)


def _arrange(images_per_class: int, num_classes: int, steps: int, split: bool) -> np.ndarray:
  """Class of each synthetic image: class-major, or group-major with class-major groups."""
  if not split:
    return np.repeat(np.arange(num_classes), images_per_class)
  if images_per_class % steps:
    raise ValueError(f"split_steps=True needs images_per_class to be a multiple of steps; got "
                     f"images_per_class={images_per_class}, steps={steps}. Use "
                     f"split_steps=False or images_per_class={steps * max(1, images_per_class // steps)}.")
  per = images_per_class // steps
  return np.tile(np.repeat(np.arange(num_classes), per), steps)


def _init_images(key: jax.Array, dataset, classes: np.ndarray, how: str) -> jax.Array:
  x = np.asarray(dataset.x_train)
  if how == "noise":
    return jax.random.normal(key, (len(classes), *x.shape[1:]), jnp.float32)
  ipc = int(np.bincount(classes).max())
  idx = coresets.class_indices(dataset, ipc)
  rng = coresets.numpy_rng(key)
  picks = {c: list(rng.choice(idx[c], ipc, replace=False)) for c in np.unique(classes)}
  return jnp.asarray(x[[picks[c].pop() for c in classes]], jnp.float32)


def default_optimizer(config: DDConfig) -> optax.GradientTransformation:
  """``optax.adam(config.learning_rate, b1=0.5)``, the reference code's outer optimiser."""
  return optax.adam(config.learning_rate, b1=0.5)


# ---------------------------------------------------------------------------- optax-style API


def init(key: coresets.KeyLike, dataset, config: DDConfig, images_per_class: int = 1,
         optimizer: optax.GradientTransformation | None = None) -> DDState:
  """Initialises the synthetic images, step sizes, optimiser state and (fixed) :math:`\\theta_0`.

  Args:
    key: PRNG key or ``int`` seed; split into an image key and the :math:`\\theta_0` key.
    dataset: a ``kip.data.Dataset`` (shapes, classes; real images if ``image_init='real'``).
    config: :class:`DDConfig`.
    images_per_class: synthetic images per class.
    optimizer: outer optimiser; default :func:`default_optimizer`.

  Returns:
    A :class:`DDState`.

  Raises:
    ValueError: bad ``images_per_class``, a model with batch statistics, or ``split_steps``
      with ``images_per_class`` not a multiple of ``steps``.
  """
  key, _ = coresets.as_key(key)
  if isinstance(images_per_class, bool) or not isinstance(images_per_class, (int, np.integer)) \
      or images_per_class < 1:
    raise ValueError(f"images_per_class must be a positive int; got {images_per_class!r}.")
  k = int(dataset.num_classes)
  shape = tuple(np.asarray(dataset.x_train).shape[1:])
  model = _build_model(config, k)
  _check_pure(model, config.model, shape)
  classes = _arrange(int(images_per_class), k, config.steps, config.split_steps)
  k_img, k_theta = jax.random.split(key)
  images = _init_images(k_img, dataset, classes, config.image_init)
  labels = jax.nn.one_hot(classes, k, dtype=jnp.float32)
  raw = jnp.full((config.num_inner_steps,), _raw_from_lr(config.lr_init, config.lr_param),
                 jnp.float32)
  optimizer = optimizer if optimizer is not None else default_optimizer(config)
  opt_state = optimizer.init({"images": images, "raw_lrs": raw})
  theta0 = _init_variables(model, k_theta, shape) if config.init == "fixed" else None
  return DDState(images=images, labels=labels, raw_lrs=raw, opt_state=opt_state,
                 init_params=theta0, count=jnp.zeros((), jnp.int32), config=config, model=model,
                 optimizer=optimizer)


def _rbg_key(key: jax.Array) -> jax.Array:
  """An RBG key derived deterministically from ``key`` for the in-step :math:`\\theta_0` draws.

  XLA's ``RngBitGenerator`` compiles several times faster on CPU than threefry, whose
  compilation dominated the step's compile time (a network initialisation draws every
  parameter). Draws are reproducible for a fixed ``key`` on a given backend.
  """
  return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")


def _outer_loss(trainable, state: DDState, x_real, y_real, key):
  cfg = state.config
  apply_fn = _apply_fn(state.model)
  raw = trainable["raw_lrs"] if cfg.learn_lr else jax.lax.stop_gradient(trainable["raw_lrs"])
  lrs = step_sizes(raw, cfg.lr_param)

  def loss_from(theta0):
    theta = unrolled_sgd(apply_fn, theta0, trainable["images"], state.labels, lrs,
                         steps=cfg.steps, split_steps=cfg.split_steps, remat=cfg.remat)
    logits = apply_fn(theta, x_real)
    return _xent_int(logits, y_real), jnp.mean(jnp.argmax(logits, -1) == y_real)

  if cfg.init == "fixed":
    loss, acc = loss_from(state.init_params)
  else:
    shape = state.images.shape[1:]
    keys = jax.vmap(_rbg_key)(jax.random.split(key, cfg.inits_per_step))
    losses, accs = jax.vmap(lambda k: loss_from(_init_variables(state.model, k, shape)))(keys)
    loss, acc = jnp.mean(losses), jnp.mean(accs)
  return loss, acc


@jax.jit
def step(state: DDState, real_batch: tuple[jax.Array, jax.Array], key: jax.Array
         ) -> tuple[DDState, dict[str, jax.Array]]:
  """One outer step: back-propagate the real-batch loss through the unrolled training.

  Args:
    state: current :class:`DDState`.
    real_batch: ``(x, y)`` with ``x`` ``(B, H, W, C)`` real images and ``y`` ``(B,)`` int labels.
    key: PRNG key for the :math:`\\theta_0` draws (``init='random'``; unused when fixed).

  Returns:
    ``(new_state, metrics)`` with metrics ``loss`` (outer cross-entropy before the update),
    ``accuracy`` (of :math:`\\theta_T` on the real batch) and ``lr_mean`` (mean step size).
  """
  x_real, y_real = real_batch
  trainable = {"images": state.images, "raw_lrs": state.raw_lrs}
  (loss, acc), grads = jax.value_and_grad(_outer_loss, has_aux=True)(
      trainable, state, x_real, y_real, key)
  updates, opt_state = state.optimizer.update(grads, state.opt_state, trainable)
  new = optax.apply_updates(trainable, updates)
  lrs = step_sizes(new["raw_lrs"], state.config.lr_param)
  state = state.replace(images=new["images"], raw_lrs=new["raw_lrs"], opt_state=opt_state,
                        count=state.count + 1)
  return state, {"loss": loss, "accuracy": acc, "lr_mean": jnp.mean(lrs)}


def distill_dd(dataset, images_per_class: int, config: DDConfig, key: coresets.KeyLike,
               optimizer: optax.GradientTransformation | None = None,
               progress: bool = True) -> DistilledSet:
  """Runs Dataset Distillation for ``config.num_steps`` outer steps.

  Each outer step draws ``config.batch_size`` real training images uniformly without
  replacement and calls :func:`step`.

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: synthetic images per class.
    config: :class:`DDConfig`.
    key: PRNG key or ``int`` seed.
    optimizer: outer optimiser; default ``optax.adam(config.learning_rate, b1=0.5)``.
    progress: show a ``tqdm`` progress bar.

  Returns:
    A ``DistilledSet`` with ``method='dd'``, one-hot labels and metadata: ``seed``,
    ``config``, ``step_sizes`` (list of :math:`T` floats), ``steps``, ``epochs``,
    ``split_steps``, ``init``, ``init_key`` (raw ``uint32`` data of the fixed
    :math:`\\theta_0` key, ``None`` for random init), ``init_key_impl`` (its PRNG
    implementation for typed keys, else ``None``), ``model``, ``model_kwargs``,
    ``loss_history``.
  """
  key, seed = coresets.as_key(key)
  k_init, k_loop = jax.random.split(key)
  state = init(k_init, dataset, config, images_per_class, optimizer)
  x = jnp.asarray(dataset.x_train, jnp.float32)
  y = jnp.asarray(dataset.y_train, jnp.int32)
  batch = min(config.batch_size, x.shape[0])
  rng = coresets.numpy_rng(jax.random.fold_in(k_loop, 0))
  history = []
  with tqdm(range(config.num_steps), disable=not progress, desc="DD") as bar:
    for t in bar:
      idx = rng.choice(x.shape[0], batch, replace=False)
      state, metrics = step(state, (x[idx], y[idx]), jax.random.fold_in(k_loop, t + 1))
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        raise ValueError(f"DD outer loss became {loss} at step {t}; lower learning_rate or "
                         "lr_init.")
      history.append(loss)
      if t % 10 == 0:
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{float(metrics['lr_mean']):.4f}")
  lrs = np.asarray(step_sizes(state.raw_lrs, config.lr_param)).tolist()
  logger.info("DD: %d outer steps, final loss %s, mean step size %.4f", config.num_steps,
              history[-1] if history else None, float(np.mean(lrs)))
  init_key = init_key_impl = None
  if config.init == "fixed":
    init_key, init_key_impl = _theta_key_data(k_init)
  meta = {"seed": seed, "config": config.to_dict(), "step_sizes": lrs, "steps": config.steps,
          "epochs": config.epochs, "split_steps": config.split_steps, "init": config.init,
          "init_key": init_key, "init_key_impl": init_key_impl, "model": config.model,
          "model_kwargs": dict(config.model_kwargs), "images_per_class": int(images_per_class),
          "loss_history": history, "versions": library_versions()}
  return DistilledSet(images=np.asarray(state.images), labels=np.asarray(state.labels),
                      dataset=dataset.name, method="dd",
                      preprocessing=getattr(dataset, "preprocessing", None), metadata=meta)


def _theta_key_data(init_key: jax.Array) -> tuple[list[int], str | None]:
  """Raw data and implementation name (``None``: a legacy ``uint32`` key) of the
  :math:`\\theta_0` key that :func:`init` derives from ``init_key``."""
  k = jax.random.split(init_key)[1]
  impl = None
  if jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key):
    impl = str(jax.random.key_impl(k))
    k = jax.random.key_data(k)
  return np.asarray(k, np.uint32).ravel().tolist(), impl


def _theta_key(meta: Mapping[str, Any]) -> jax.Array:
  """Rebuilds the fixed :math:`\\theta_0` key saved by :func:`distill_dd`."""
  data = jnp.asarray(np.asarray(meta["init_key"], np.uint32))
  impl = meta.get("init_key_impl")
  return data if impl is None else jax.random.wrap_key_data(data, impl=impl)


# ---------------------------------------------------------------------------- evaluation


def evaluate_dd(distilled: DistilledSet, dataset, key: coresets.KeyLike, restarts: int = 5,
                model: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
                init: str | None = None) -> DDEvaluation:
  """Trains networks with the learned step schedule on ``distilled`` and tests them.

  For each restart, :math:`\\theta_0` is the saved fixed initialisation (``init='fixed'``;
  all restarts then coincide, so one network is trained) or a fresh draw
  ``model.init(fold_in(key, r))`` (``init='random'``), followed by the :math:`T` unrolled steps
  of :func:`unrolled_sgd` with ``metadata['step_sizes']``; accuracy is measured on
  ``dataset.x_test``.

  Args:
    distilled: a set made by :func:`distill_dd` (its metadata holds the step schedule).
    dataset: the ``kip.data.Dataset`` it was distilled from.
    key: PRNG key or ``int`` seed for random initialisations.
    restarts: number of networks for random initialisation.
    model: model name; default the one used for distillation.
    model_kwargs: ``get_model`` overrides; default the distillation's.
    init: ``'fixed'`` or ``'random'``; default the distillation's. Fixed needs the same model.

  Returns:
    A :class:`DDEvaluation`.

  Raises:
    ValueError: if ``distilled`` lacks DD metadata, does not match ``dataset``, or fixed
      initialisation is requested without a saved key.
  """
  meta = distilled.metadata
  missing = [k for k in ("step_sizes", "steps", "split_steps", "init", "model") if k not in meta]
  if missing:
    raise ValueError(f"distilled set (method {distilled.method!r}) lacks DD metadata {missing}; "
                     "evaluate non-DD sets with kip.transfer.evaluate.")
  distilled.check_compatible(dataset)
  if restarts < 1:
    raise ValueError(f"restarts must be >= 1; got {restarts}.")
  init = init or meta["init"]
  if init not in _INITS:
    raise ValueError(f"init must be one of {_INITS}; got {init!r}.")
  name = model or meta["model"]
  kwargs = dict(meta.get("model_kwargs", {}) if model_kwargs is None else model_kwargs)
  if init == "fixed":
    if meta.get("init_key") is None:
      raise ValueError("init='fixed' needs the θ0 key saved by a fixed-init distillation; this "
                       "set was distilled with random init. Use init='random'.")
    if name != meta["model"] or kwargs != dict(meta.get("model_kwargs", {})):
      raise ValueError(f"fixed-init evaluation needs the distillation model {meta['model']!r} "
                       f"with {meta.get('model_kwargs', {})}; got {name!r} with {kwargs}.")
    restarts = 1
  key, _ = coresets.as_key(key)
  cfg = DDConfig(model=name, model_kwargs=kwargs)
  net = _build_model(cfg, distilled.num_classes)
  shape = distilled.image_shape
  _check_pure(net, name, shape)
  apply_fn = _apply_fn(net)
  lrs = jnp.asarray(meta["step_sizes"], jnp.float32)
  train = jax.jit(lambda p0, x, y: unrolled_sgd(
      apply_fn, p0, x, y, lrs, steps=int(meta["steps"]), split_steps=bool(meta["split_steps"]),
      remat=False))
  x_test = np.asarray(dataset.x_test, np.float32)
  y_test = np.asarray(dataset.y_test)
  images = jnp.asarray(distilled.images)
  labels = jnp.asarray(distilled.labels)
  accs, init_accs = [], []
  for r in range(restarts):
    if init == "fixed":
      k = _theta_key(meta)
    else:
      k = jax.random.fold_in(key, r)
    theta0 = _init_variables(net, k, shape)
    init_accs.append(transfer_train.accuracy(net, theta0, x_test, y_test))
    accs.append(transfer_train.accuracy(net, train(theta0, images, labels), x_test, y_test))
  result = DDEvaluation(mean=float(np.mean(accs)), std=float(np.std(accs)),
                        accuracies=tuple(accs), init_accuracy=float(np.mean(init_accs)),
                        init=init, model=name)
  logger.info("DD evaluation (%s init, %s): %.4f +- %.4f over %d networks (untrained %.4f)",
              init, name, result.mean, result.std, restarts, result.init_accuracy)
  return result
