"""KIP (kernel inducing points) and LS (label solve) on the algorithm contract.

KIP learns a support set :math:`(X_s, y_s)` so that kernel ridge regression from it predicts a
target batch :math:`(X_t, y_t)`, resampled (class balanced) from the training set every step:

.. math::
   \\hat y_t = K_{ts}(K_{ss} + \\lambda I)^{-1} y_s, \\qquad
   \\lambda = \\text{reg} \\cdot \\operatorname{tr}(K_{ss}) / n_s,

   \\mathcal{L}_{\\text{mse}} = \\frac{1}{2 n_t} \\lVert y_t - \\hat y_t \\rVert^2, \\qquad
   \\mathcal{L}_{\\text{platt}} = \\frac{1}{n_t} \\sum_t
   \\mathrm{xent}\\big(e^{\\tau} \\hat y_t,\\ \\arg\\max y_t\\big),

minimised over the images (and optionally the labels, and for the Platt loss the log
temperature :math:`\\tau`) with an optax optimizer.

LS keeps the support images and solves the labels in closed form for the whole training set
(:func:`label_solve`).

Reference defaults (google-research/kip, the KIP notebooks; Nguyen, Chen, Lee, ICLR 2021 and
Nguyen, Novak, Xiao, Lee, NeurIPS 2021): labels centred (``one_hot - 1/K``), targets drawn
class-balanced without replacement every step, ridge ``1e-6 * tr(K_ss)/n``, Adam. Named
deviations: ``labels='one_hot'`` (0/1 targets, this library's earlier default),
``target_sampling='with_replacement'`` (its earlier sampler). The Platt loss with a learned
temperature follows RFAD (Loo et al., NeurIPS 2022). With a learned-feature kernel (FRePo,
:mod:`kip._src.kernels.learned_features`) the state also holds the kernel's pool of networks,
and every step trains the network it used for one step on the updated support.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm.auto as tqdm

from kip._src import krr
from kip._src import losses
from kip._src.algorithm import Algorithm, config_dict
from kip._src.data.dataset import class_balanced_indices
from kip._src.distilled import DistilledSet
from kip._src.kernels.learned_features import FeaturePool, LearnedFeatureKernel
from kip._src.kernels.presets import get_kernel
from kip._src.sampling import ClassTable

__all__ = ["KIPConfig", "KIPState", "KIPPoolState", "LSConfig", "LSState", "make_kip", "make_ls",
           "make_loss", "init_support", "given_support", "describe_init", "label_solve",
           "resolve_images_per_class", "support_labels", "OPTIMIZERS"]

logger = logging.getLogger(__name__)

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam, "adabelief": optax.adabelief, "sgd": optax.sgd, "lamb": optax.lamb,
}
_LABELS = ("centred", "one_hot")
_SAMPLING = ("without_replacement", "with_replacement")


@dataclasses.dataclass(frozen=True)
class KIPConfig:
  """Hyperparameters of a KIP run (built once at the edge; frozen, hashable, JSON-able).

  Attributes:
    images_per_class: support images per class (support size = this x classes).
    learn_labels: optimise the support labels as well as the images.
    learn_images: optimise the images (``False`` with ``learn_labels`` learns labels only).
    get: ``'ntk'`` or ``'nngp'``.
    reg: relative ridge, ``lambda = reg * tr(K_ss) / n``.
    target_batch_size: targets per step, split evenly over classes.
    steps: optimisation steps.
    learning_rate: step size of ``optimizer``.
    optimizer: ``'adam'`` (reference), ``'adabelief'`` (RFAD), ``'sgd'`` or ``'lamb'``.
    augment: ``None`` or a DSA strategy of flips/crops (``'flip'``, ``'crop'``,
      ``'flip_crop'``) applied to the support images at every step (KIP's "aug" variants).
    loss: ``'mse'`` (KIP) or ``'platt'`` (cross-entropy on the KRR outputs scaled by a learned
      temperature, RFAD).
    temperature_lr: Adam step size of the Platt log temperature (RFAD: 1e-2).
    labels: ``'centred'`` (reference: ``one_hot - 1/K``) or ``'one_hot'`` (0/1).
    target_sampling: ``'without_replacement'`` (reference) or ``'with_replacement'``.
  """
  images_per_class: int = 1
  learn_labels: bool = True
  learn_images: bool = True
  get: str = "ntk"
  reg: float = krr.DEFAULT_REG
  target_batch_size: int = 1000
  steps: int = 1000
  learning_rate: float = 0.01
  optimizer: str = "adam"
  augment: Optional[str] = None
  loss: str = "mse"
  temperature_lr: float = 1e-2
  labels: str = "centred"
  target_sampling: str = "without_replacement"

  def __post_init__(self):
    _positive_int("images_per_class", self.images_per_class)
    if self.get not in ("ntk", "nngp"):
      raise ValueError(f"get={self.get!r}; use 'ntk' or 'nngp'.")
    if not (self.reg >= 0 and np.isfinite(self.reg)):
      raise ValueError(f"reg={self.reg} must be a finite number >= 0.")
    if self.steps < 0:
      raise ValueError(f"steps={self.steps} must be >= 0.")
    _positive_int("target_batch_size", self.target_batch_size)
    for name in ("learning_rate", "temperature_lr"):
      value = getattr(self, name)
      if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value} must be a finite number > 0.")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"optimizer={self.optimizer!r}; expected one of {sorted(OPTIMIZERS)}.")
    if not (self.learn_images or self.learn_labels):
      raise ValueError("learn_images and learn_labels are both False: nothing to learn. Use "
                       "the 'ls' method (mode='ls') for closed-form labels.")
    if self.loss not in ("mse", "platt"):
      raise ValueError(f"loss={self.loss!r}; use 'mse' or 'platt'.")
    if self.labels not in _LABELS:
      raise ValueError(f"labels={self.labels!r}; use one of {_LABELS}.")
    if self.target_sampling not in _SAMPLING:
      raise ValueError(f"target_sampling={self.target_sampling!r}; use one of {_SAMPLING}.")
    if self.augment is not None:
      bad = set(self.augment.split("_")) - {"flip", "crop"}
      if bad:
        raise ValueError(f"augment={self.augment!r}; KIP supports 'flip', 'crop' or "
                         "'flip_crop'.")

  def to_dict(self) -> dict[str, Any]:
    return config_dict(self)


@dataclasses.dataclass(frozen=True)
class LSConfig:
  """Label solve (LS): closed-form labels for class-balanced real support images.

  Attributes:
    images_per_class: support images per class.
    get: ``'ntk'`` or ``'nngp'``.
    reg: relative ridge.
    labels: training targets ``'centred'`` (reference) or ``'one_hot'``.
    batch_size: targets per kernel block.
    num_targets: class-balanced subset of the training set used as targets (``None``: all).
    steps: always 1 (LS is one closed-form step).
  """
  images_per_class: int = 1
  get: str = "ntk"
  reg: float = krr.DEFAULT_REG
  labels: str = "centred"
  batch_size: int = 2000
  num_targets: Optional[int] = None
  steps: int = 1

  def __post_init__(self):
    _positive_int("images_per_class", self.images_per_class)
    _positive_int("batch_size", self.batch_size)
    if self.num_targets is not None:
      _positive_int("num_targets", self.num_targets)
    if self.get not in ("ntk", "nngp"):
      raise ValueError(f"get={self.get!r}; use 'ntk' or 'nngp'.")
    if not (self.reg >= 0 and np.isfinite(self.reg)):
      raise ValueError(f"reg={self.reg} must be a finite number >= 0.")
    if self.labels not in _LABELS:
      raise ValueError(f"labels={self.labels!r}; use one of {_LABELS}.")
    if self.steps != 1:
      raise ValueError(f"steps={self.steps}: LS is a single closed-form step; use steps=1.")

  def to_dict(self) -> dict[str, Any]:
    return config_dict(self)


def _positive_int(name: str, value) -> None:
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f"{name}={value!r} must be an integer >= 1.")


class KIPState(NamedTuple):
  """``params`` (learned arrays), ``fixed`` (the others), ``opt_state`` and ``count``."""
  params: dict
  fixed: dict
  opt_state: Any
  count: jax.Array


class KIPPoolState(NamedTuple):
  """:class:`KIPState` plus the ``pool`` of networks of a learned-feature kernel (FRePo)."""
  params: dict
  fixed: dict
  opt_state: Any
  count: jax.Array
  pool: FeaturePool


class LSState(NamedTuple):
  """Support ``images`` ``(n, H, W, C)``, ``labels`` ``(n, K)`` and ``count``."""
  images: jax.Array
  labels: jax.Array
  count: jax.Array


# ------------------------------------------------------------------------------ support
def resolve_images_per_class(num_classes: int, support_size: Optional[int] = None,
                             images_per_class: Optional[int] = None) -> int:
  """Turns ``support_size`` (total) or ``images_per_class`` into images per class."""
  if images_per_class is not None:
    if support_size is not None and support_size != images_per_class * num_classes:
      raise ValueError(f"support_size={support_size} disagrees with images_per_class="
                       f"{images_per_class} x {num_classes} classes; give one of them.")
    if int(images_per_class) < 1:
      raise ValueError(f"images_per_class={images_per_class} must be >= 1.")
    return int(images_per_class)
  if support_size is None:
    raise ValueError("give support_size or images_per_class.")
  if support_size < num_classes or support_size % num_classes:
    lo = max(num_classes, support_size // num_classes * num_classes)
    raise ValueError(f"support_size={support_size} cannot be split evenly over {num_classes} "
                     f"classes; use a multiple of {num_classes} (e.g. {lo} or "
                     f"{lo + num_classes}), or images_per_class=.")
  return support_size // num_classes


def support_labels(y: np.ndarray, num_classes: int, kind: str = "centred") -> np.ndarray:
  """``(n, K)`` float32 targets: ``one_hot(y) - 1/K`` (``'centred'``) or ``one_hot(y)``."""
  one_hot = np.eye(num_classes, dtype=np.float32)[np.asarray(y)]
  return one_hot - np.float32(1.0 / num_classes) if kind == "centred" else one_hot


def init_support(key: jax.Array, dataset, images_per_class: int,
                 labels: str = "one_hot") -> tuple[jax.Array, jax.Array]:
  """Class-balanced real training images and their labels (see :func:`support_labels`).

  Returns:
    ``images (ipc*K, H, W, C)`` sorted by class and ``labels (ipc*K, K)``.

  Raises:
    ValueError: a class has fewer than ``images_per_class`` images.
  """
  y = np.asarray(dataset.y_train)
  keys = jax.random.split(key, dataset.num_classes)
  chosen = []
  for c in range(dataset.num_classes):
    idx = np.flatnonzero(y == c)
    if len(idx) < images_per_class:
      raise ValueError(f"class {c} ({dataset.class_names[c]!r}) has {len(idx)} training images, "
                       f"fewer than images_per_class={images_per_class}.")
    perm = np.asarray(jax.random.permutation(keys[c], len(idx)))
    chosen.append(idx[np.sort(perm[:images_per_class])])
  rows = np.concatenate(chosen)
  return (jnp.asarray(dataset.x_train[rows]),
          jnp.asarray(support_labels(y[rows], dataset.num_classes, labels)))


# ------------------------------------------------------------------------------ KIP
def _augment_fn(strategy: Optional[str]):
  if strategy is None:
    return None
  from kip._src import augment as dsa  # flips and crops of DSA, differentiable
  return dsa.augment_fn(strategy, dsa.AugmentConfig(mode="multiple"))


def _kernels(kernel_fn: Callable, x_s, x_t, get: str, key, net=None):
  """``K_ss`` and ``K_ts``; a random-feature kernel draws its networks from ``key``.

  With random features :math:`K = \\Phi \\Phi^\\top`-style estimates, the same networks serve
  both blocks and the targets' features carry no gradient (they need no backward pass). A
  learned-feature kernel uses the network ``net`` (parameters) drawn from its pool.
  """
  if isinstance(kernel_fn, LearnedFeatureKernel):
    net = jax.lax.stop_gradient(net)
    phi_s = kernel_fn.features(net, x_s)
    phi_t = jax.lax.stop_gradient(kernel_fn.features(net, x_t))
    return kernel_fn.gram(phi_s, phi_s), kernel_fn.gram(phi_t, phi_s)
  features = getattr(kernel_fn, "features", None)
  if features is not None:
    phi_s = features(key, x_s)
    phi_t = jax.lax.stop_gradient(features(key, x_t))
    return kernel_fn.gram(phi_s, phi_s), kernel_fn.gram(phi_t, phi_s)
  # K_ss is not symmetrised: the Cholesky reads its lower triangle only, and the gradient
  # w.r.t. X_s is the same (K(X_s, X_s)'s tangents are symmetric). `0.5 * (K + K.T)` made
  # XLA re-run the kernel's backward in a transposed fusion: 1.6x the step time measured.
  return kernel_fn(x_s, None, get), kernel_fn(x_s, x_t, get).T


def make_loss(kernel_fn: Callable, config: KIPConfig) -> Callable:
  """Builds ``loss(params, fixed, x_t, y_t, key, net=None) -> (loss, metrics)``.

  ``net``: the parameters of the pool network a learned-feature kernel uses this step.

  Two kernel calls: ``K(X_s, X_s)`` and ``K(X_s, X_t)`` (with several devices the target
  columns are sharded). On a 2-core CPU this measured 0.23 s against 0.36-0.5 s for the loss
  and gradient (500 support x 2,000 targets, FC-3 NTK) of one symmetrised call on
  ``[X_s; X_t]``.
  """
  augment = _augment_fn(config.augment)

  def loss(params, fixed, x_t, y_t, key, net=None):
    support = {**fixed, **params}
    x_s, y_s = support["images"], support["labels"]
    k_aug, k_kernel = jax.random.split(key)
    if augment is not None:
      x_s = augment(k_aug, x_s)
    k_ss, k_ts = _kernels(kernel_fn, x_s, x_t.astype(x_s.dtype), config.get, k_kernel, net)
    pred = k_ts @ krr.solve(k_ss, y_s, config.reg)
    acc = losses.accuracy(pred, y_t)
    if config.loss == "platt":
      value = losses.softmax_cross_entropy(jnp.exp(support["log_temperature"]) * pred,
                                           jnp.argmax(y_t, -1))
    else:
      value = 0.5 * jnp.mean(jnp.sum((pred - y_t) ** 2, axis=-1))
    return value, {"loss": value, "target_accuracy": acc}

  return loss


def _optimizer(config: KIPConfig, params: Mapping[str, Any],
               optimizer: Optional[optax.GradientTransformation]):
  main = optimizer or OPTIMIZERS[config.optimizer](config.learning_rate)
  if "log_temperature" not in params:
    return main
  labels = {k: ("temperature" if k == "log_temperature" else "support") for k in params}
  return optax.multi_transform({"support": main,
                                "temperature": optax.adam(config.temperature_lr)}, labels)


def given_support(init, dataset, images_per_class: int,
                  labels: str = "one_hot") -> tuple[jax.Array, jax.Array]:
  """The support a run starts from when the user gives one (``make_kip(init=...)``).

  Images are taken as they are; labels are the argmax of the given labels (or the given class
  indices), encoded as :func:`support_labels` encodes real images' labels, so a run started
  from a set begins as a run started from real images would, with other images. Learned labels
  are therefore not carried over (resume from a checkpoint to continue a run exactly).

  Args:
    init: a :class:`~kip.DistilledSet` (made from ``dataset``: same name, image shape and
      classes) or a pair ``(images (n, H, W, C), labels)`` with ``labels`` of shape ``(n,)``
      (class indices) or ``(n, K)``.
    dataset: the ``kip.data.Dataset`` being distilled.
    images_per_class: the run's support size per class; ``n`` must be
      ``images_per_class * K``.
    labels: ``'centred'`` or ``'one_hot'``.

  Returns:
    ``images (n, H, W, C)`` and ``labels (n, K)``.

  Raises:
    ValueError: a shape, size, class index or value that does not fit, naming the fix.
  """
  k = dataset.num_classes
  if isinstance(init, DistilledSet):
    init.check_compatible(dataset)
    mine = getattr(getattr(dataset, "preprocessing", None), "kind", None)
    theirs = getattr(init.preprocessing, "kind", None)
    if None not in (mine, theirs) and mine != theirs:
      raise ValueError(f"init was made from data preprocessed with {theirs!r}, this data set "
                       f"with {mine!r}; load the data with preprocess={theirs!r}.")
  images, y = _init_arrays(init)
  shape = tuple(dataset.x_train.shape[1:])
  if images.ndim != 4 or images.shape[1:] != shape:
    raise ValueError(f"init images have shape {images.shape}; this data set's images are "
                     f"(n,) + {shape}.")
  n = images_per_class * k
  if images.shape[0] != n:
    raise ValueError(f"init holds {images.shape[0]} images but the support has {n} "
                     f"({images_per_class} per class x {k} classes); pass "
                     f"support_size={images.shape[0]} or a set of {n} images.")
  if y.ndim == 2 and y.shape == (n, k):
    y = np.argmax(y, axis=1)
  elif y.ndim != 1 or y.shape[0] != n or y.dtype.kind not in "iu":
    raise ValueError(f"init labels have shape {y.shape} (dtype {y.dtype}); give ({n},) class "
                     f"indices or ({n}, {k}) label rows.")
  if y.size and (y.min() < 0 or y.max() >= k):
    raise ValueError(f"init labels hold class {int(y.min() if y.min() < 0 else y.max())}, "
                     f"outside 0..{k - 1}.")
  if not np.isfinite(images).all():
    raise ValueError("init images contain NaN or inf; give finite images.")
  return jnp.asarray(images), jnp.asarray(support_labels(y, k, labels))


def _init_arrays(init) -> tuple[np.ndarray, np.ndarray]:
  if isinstance(init, DistilledSet):
    return init.images, np.asarray(init.labels)
  if isinstance(init, (tuple, list)) and len(init) == 2:
    return np.asarray(init[0], np.float32), np.asarray(init[1])
  raise ValueError(f"init must be a kip.DistilledSet or an (images, labels) pair; got "
                   f"{type(init).__name__}.")


def describe_init(init) -> dict:
  """``{"method", "images", "sha1"}`` of a given starting support (for specs and metadata):
  the set's method (``'arrays'`` for a pair), its size and the SHA-1 of its images and
  labels."""
  images, y = _init_arrays(init)
  h = hashlib.sha1()
  for a in (images, y):
    a = np.ascontiguousarray(a)
    h.update(str((a.dtype.str, a.shape)).encode())
    h.update(a.data)
  return {"method": init.method if isinstance(init, DistilledSet) else "arrays",
          "images": int(images.shape[0]) if images.ndim else 0, "sha1": h.hexdigest()}


def make_kip(config: KIPConfig, kernel_fn: Union[str, Mapping, Callable] = "fc", *,
             optimizer: Optional[optax.GradientTransformation] = None,
             eval_size: int = 1000, eval_seed: int = 0, init=None) -> Algorithm:
  """The KIP :class:`~kip._src.algorithm.Algorithm`.

  Args:
    config: :class:`KIPConfig`.
    kernel_fn: ``'fc'``, ``'convnet'``, a spec dict, any ``kernel_fn(x1, x2, get)`` (e.g. from
      neural-tangents), a random-feature kernel (with ``features(key, x)`` and ``gram``), or a
      learned-feature kernel (:func:`kip._src.kernels.learned_features.learned_features`,
      FRePo: its pool of networks lives in the state, a :class:`KIPPoolState`).
    optimizer: an ``optax.GradientTransformation`` replacing ``config.optimizer`` (recorded as
      ``'user'`` in the spec; a checkpoint resumes only with the same structure).
    eval_size: class-balanced test images of the periodic KRR evaluation.
    eval_seed: seed of that subset.
    init: ``None`` (the reference: class-balanced real training images drawn from the key,
      :func:`init_support`) or the support to start from, a ``kip.DistilledSet`` or an
      ``(images, labels)`` pair (:func:`given_support`: argmax labels, re-encoded). Recorded
      in the spec and the set's metadata as ``init`` (method, size, SHA-1).

  Returns:
    The algorithm; its step key drives the target batch, the augmentation and the random
    features (``k_batch, k_rest = split(key)``); with a learned-feature kernel also the pool
    network drawn and its online step (``k_rest, k_pick, k_online = split(k_rest, 3)``).
  """
  kernel_fn = get_kernel(kernel_fn)
  learned = isinstance(kernel_fn, LearnedFeatureKernel)
  kernel_spec = dict(getattr(kernel_fn, "spec", {"architecture": "user kernel_fn"}))
  ipc = config.images_per_class
  loss = make_loss(kernel_fn, config)
  grad_fn = jax.value_and_grad(loss, has_aux=True)
  replace = config.target_sampling == "with_replacement"
  init_about = None if init is None else describe_init(init)

  def init_state(key, dataset):
    if init is None:
      x_s, y_s = init_support(key, dataset, ipc, config.labels)
    else:
      x_s, y_s = given_support(init, dataset, ipc, config.labels)
    params, fixed = {}, {}
    (params if config.learn_images else fixed)["images"] = x_s
    (params if config.learn_labels else fixed)["labels"] = y_s
    if config.loss == "platt":
      params["log_temperature"] = jnp.zeros((), jnp.float32)
    opt_state = _optimizer(config, params, optimizer).init(params)
    count = jnp.zeros((), jnp.int32)
    if learned:
      kernel_fn.check(x_s.shape[1:], dataset.num_classes)
      pool = kernel_fn.init(jax.random.fold_in(key, 1), x_s.shape[1:])
      return KIPPoolState(params, fixed, opt_state, count, pool)
    return KIPState(params, fixed, opt_state, count)

  def data(dataset):
    table = ClassTable.from_dataset(dataset)
    if config.labels == "centred":
      table = table._replace(y=table.y - 1.0 / table.num_classes)
    return table

  @jax.jit
  def step(state: KIPState, table: ClassTable, key: jax.Array):
    k_batch, k_rest = jax.random.split(key)
    x_t, y_t = table.sample(k_batch, config.target_batch_size, replace)
    net = None
    if learned:
      k_rest, k_pick, k_online = jax.random.split(k_rest, 3)
      index = jax.random.randint(k_pick, (), 0, kernel_fn.num_models)
      net = kernel_fn.select(state.pool, index)
    (_, metrics), grads = grad_fn(state.params, state.fixed, x_t, y_t, k_rest, net)
    tx = _optimizer(config, state.params, optimizer)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.tree_utils.tree_norm(grads)}
    if learned:  # FRePo: the network just used trains one step on the updated support
      support = {**state.fixed, **params}
      pool = kernel_fn.update(state.pool, index, k_online, support["images"],
                              support["labels"])
      return KIPPoolState(params, state.fixed, opt_state, state.count + 1, pool), metrics
    return KIPState(params, state.fixed, opt_state, state.count + 1), metrics

  def support_of(state):
    s = {**state.fixed, **state.params}
    return s["images"], s["labels"]

  def result(state, dataset):
    images, labels = support_of(state)
    meta = {"kernel": kernel_spec, "config": config.to_dict(),
            "class_names": list(dataset.class_names),
            "preprocessing": getattr(dataset.preprocessing, "kind", None),
            "optimizer": config.optimizer if optimizer is None else "user"}
    if init_about is not None:
      meta["init"] = init_about
    if "log_temperature" in state.params:
      meta["temperature"] = float(jnp.exp(state.params["log_temperature"]))
    return DistilledSet(images=np.asarray(images), labels=np.asarray(labels),
                        dataset=dataset.name, method="kip",
                        preprocessing=dataset.preprocessing, metadata=meta)

  eval_cache: dict = {}

  def eval_fn(state, dataset):
    if "data" not in eval_cache:
      eval_cache["data"] = _eval_subset(dataset, eval_size, eval_seed)
    x, y = eval_cache["data"]
    images, labels = support_of(state)
    predict_kernel = kernel_fn
    if learned:
      predict_kernel = kernel_fn.frozen(state.pool)  # the mean kernel of the pool's networks
    elif getattr(kernel_fn, "features", None) is not None:
      key = jax.random.fold_in(jax.random.PRNGKey(eval_seed), int(state.count))
      predict_kernel = lambda a, b, get: kernel_fn(a, b, "nngp", key=key)  # noqa: E731
    pred = krr.predict(predict_kernel, images, labels, x, config.reg, get=config.get,
                       batch_size=1000)
    return {"test_accuracy": krr.accuracy(pred, y)}

  spec = {"config": config.to_dict(), "kernel": kernel_spec,
          "optimizer": config.optimizer if optimizer is None else "user"}
  if init_about is not None:
    spec["init"] = init_about
  hint = (f"lower the learning rate (now {config.learning_rate}) or raise reg "
          f"(now {config.reg})")
  return Algorithm("kip", init_state, data, step, result, spec, config.steps, hint, eval_fn)


# ------------------------------------------------------------------------------ label solve
def label_solve(dataset, support_images: jax.Array, kernel: Union[str, Callable] = "fc",
                reg: float = krr.DEFAULT_REG, *, get: str = "ntk", batch_size: int = 2000,
                num_targets: Optional[int] = None, seed: int = 0, labels: str = "one_hot",
                progress: bool = False) -> np.ndarray:
  """The least-squares support labels for the training set as target (LS).

  With :math:`R = (K_{ss} + \\lambda I)^{-1}`, KRR predicts :math:`K_{ts} R y_s`; the labels
  minimising :math:`\\lVert K_{ts} R y_s - Y_t \\rVert^2` over all targets are

  .. math::
     y_s = (K_{ss} + \\lambda I)(G + \\mu I)^{-1} K_{st} Y_t,\\qquad G = K_{st} K_{ts},

  with :math:`\\mu = \\text{reg} \\cdot \\operatorname{tr}(G) / n_s` (the same convention).
  ``G`` (``n_s x n_s``) and ``K_{st} Y_t`` are accumulated over target blocks: the target kernel
  is never held whole.

  Args:
    dataset: ``kip.data.Dataset``; its training split is the target.
    support_images: ``(n_s, H, W, C)`` in the data set's preprocessed space.
    kernel: ``'fc'``, ``'convnet'``, a spec dict or a ``kernel_fn``.
    reg: relative ridge.
    get: ``'ntk'`` or ``'nngp'``.
    batch_size: targets per kernel block.
    num_targets: use a class-balanced subset of this many training images (``None``: all).
    seed: for that subset.
    labels: targets ``Y_t``: ``'one_hot'`` or ``'centred'`` (``one_hot - 1/K``).
    progress: show a progress bar.

  Returns:
    ``(n_s, K)`` float32 labels.
  """
  kernel_fn = get_kernel(kernel)
  xs = jnp.asarray(support_images)
  if xs.ndim != 4 or xs.shape[1:] != dataset.x_train.shape[1:]:
    raise ValueError(f"support_images must be (n, {', '.join(map(str, dataset.x_train.shape[1:]))})"
                     f"; got {xs.shape}.")
  x_t, y_t = dataset.x_train, np.asarray(dataset.y_train)
  if num_targets is not None and num_targets < len(y_t):
    rows = class_balanced_indices(y_t, num_targets, num_classes=dataset.num_classes, seed=seed)
    x_t, y_t = x_t[rows], y_t[rows]
  yt = support_labels(y_t, dataset.num_classes, labels).astype(np.float64)
  f = jax.jit(lambda a, b: kernel_fn(a, b, get))
  k_ss = np.asarray(f(xs, xs), np.float64)
  n = k_ss.shape[0]
  g = np.zeros((n, n))
  b = np.zeros((n, yt.shape[1]))
  for i in tqdm.trange(0, len(y_t), batch_size, desc="label solve", disable=not progress):
    k_st = np.asarray(f(xs, jnp.asarray(x_t[i:i + batch_size])), np.float64)
    g += k_st @ k_st.T
    b += k_st @ yt[i:i + batch_size]
  lam = reg * np.trace(k_ss) / n
  mu = reg * np.trace(g) / n
  out = (k_ss + lam * np.eye(n)) @ np.linalg.solve(g + mu * np.eye(n), b)
  if not np.isfinite(out).all():
    raise ValueError(f"label solve produced non-finite labels; raise reg (now {reg}).")
  return out.astype(np.float32)


def make_ls(config: LSConfig, kernel_fn: Union[str, Mapping, Callable] = "fc", *,
            progress: bool = False) -> Algorithm:
  """LS as a one-step :class:`~kip._src.algorithm.Algorithm` (the step runs on the host)."""
  kernel_fn = get_kernel(kernel_fn)
  if isinstance(kernel_fn, LearnedFeatureKernel):
    raise ValueError("LS solves labels for a fixed kernel; a learned-feature kernel changes "
                     "with its support set while KIP runs. Use KIP (mode='kip') with it, or a "
                     "fixed kernel ('fc', 'convnet', 'convnet_rf') for LS.")
  kernel_spec = dict(getattr(kernel_fn, "spec", {"architecture": "user kernel_fn"}))

  def init(key, dataset):
    x_s, y_s = init_support(key, dataset, config.images_per_class, config.labels)
    return LSState(x_s, y_s, jnp.zeros((), jnp.int32))

  def step(state, dataset, key):
    del key  # closed form
    labels = label_solve(dataset, state.images, kernel_fn, config.reg, get=config.get,
                         batch_size=config.batch_size, num_targets=config.num_targets,
                         labels=config.labels, progress=progress)
    return LSState(state.images, jnp.asarray(labels), state.count + 1), {"loss": 0.0}

  def result(state, dataset):
    meta = {"kernel": kernel_spec, "config": config.to_dict(),
            "class_names": list(dataset.class_names),
            "preprocessing": getattr(dataset.preprocessing, "kind", None)}
    return DistilledSet(images=np.asarray(state.images), labels=np.asarray(state.labels),
                        dataset=dataset.name, method="ls", preprocessing=dataset.preprocessing,
                        metadata=meta)

  spec = {"config": config.to_dict(), "kernel": kernel_spec}
  return Algorithm("ls", init, lambda dataset: dataset, step, result, spec, 1,
                   f"raise reg (now {config.reg})", watch_loss=False)


def _eval_subset(dataset, size: int, seed: int):
  y = np.asarray(dataset.y_test)
  if size < len(y):
    rows = class_balanced_indices(y, size, num_classes=dataset.num_classes, seed=seed)
  else:
    rows = np.arange(len(y))
  return jnp.asarray(dataset.x_test[rows]), y[rows]
