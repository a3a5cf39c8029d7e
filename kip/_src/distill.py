"""KIP (kernel inducing points) and LS (label solve).

KIP learns a support set :math:`(X_s, y_s)` so that kernel ridge regression from it predicts a
target batch :math:`(X_t, y_t)`, resampled (class balanced) from the training set every step:

.. math::
   \\mathcal{L}(X_s, y_s) = \\frac{1}{2 n_t} \\big\\lVert y_t - K_{ts}(K_{ss} + \\lambda I)^{-1}
   y_s \\big\\rVert^2, \\qquad \\lambda = \\text{reg} \\cdot \\operatorname{tr}(K_{ss}) / n_s,

minimised over the images (and optionally the labels) with any optax optimizer.

LS keeps the support images and solves the labels in closed form for the whole training set
(:func:`label_solve`).

References:
  Nguyen, Chen, Lee, "Dataset Meta-Learning from Kernel Ridge-Regression", ICLR 2021.
  Nguyen, Novak, Xiao, Lee, "Dataset Distillation with Infinitely Wide Convolutional
  Networks", NeurIPS 2021.

The stateful part follows optax: ``init(params, optimizer) -> KIPState`` and a jitted
``step(state, data, key) -> (state, metrics)`` built by :func:`make_step`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm.auto as tqdm

from kip._src import checkpoint as ckpt
from kip._src import krr
from kip._src.distilled import DistilledSet, library_versions
from kip._src.kernels.presets import get_kernel

__all__ = ["KIPConfig", "KIPState", "TargetData", "init_support", "init", "make_loss",
           "make_step", "distill", "label_solve", "resolve_images_per_class"]

logger = logging.getLogger(__name__)
_CHECKPOINT_NAME = "checkpoint.npz"


@dataclasses.dataclass(frozen=True)
class KIPConfig:
  """Hyperparameters of a KIP run (built once at the edge; frozen).

  Attributes:
    images_per_class: support images per class (support size = this x classes).
    learn_labels: optimise the support labels as well as the images.
    learn_images: optimise the images (``False`` with ``learn_labels`` learns labels only).
    get: ``'ntk'`` or ``'nngp'``.
    reg: relative ridge, ``lambda = reg * tr(K_ss) / n``.
    target_batch_size: targets per step, split evenly over classes.
    steps: optimisation steps.
    learning_rate: Adam step size when no optimizer is given.
    augment: ``None`` or a DSA strategy of flips/crops (``'flip'``, ``'crop'``,
      ``'flip_crop'``) applied to the support images at every step (KIP's "aug" variants).
    mode: ``'kip'`` or ``'ls'``.
  """
  images_per_class: int
  learn_labels: bool = True
  learn_images: bool = True
  get: str = "ntk"
  reg: float = krr.DEFAULT_REG
  target_batch_size: int = 1000
  steps: int = 1000
  learning_rate: float = 0.01
  augment: Optional[str] = None
  mode: str = "kip"

  def __post_init__(self):
    if self.images_per_class < 1:
      raise ValueError(f"images_per_class={self.images_per_class} must be >= 1.")
    if self.get not in ("ntk", "nngp"):
      raise ValueError(f"get={self.get!r}; use 'ntk' or 'nngp'.")
    if not (self.reg >= 0 and np.isfinite(self.reg)):
      raise ValueError(f"reg={self.reg} must be a finite number >= 0.")
    if self.steps < 0:
      raise ValueError(f"steps={self.steps} must be >= 0.")
    if self.target_batch_size < 1:
      raise ValueError(f"target_batch_size={self.target_batch_size} must be >= 1.")
    if self.mode not in ("kip", "ls"):
      raise ValueError(f"mode={self.mode!r}; use 'kip' or 'ls'.")
    if self.mode == "kip" and not (self.learn_images or self.learn_labels):
      raise ValueError("learn_images and learn_labels are both False: nothing to learn. Use "
                       "mode='ls' for closed-form labels.")
    if self.augment is not None:
      bad = set(self.augment.split("_")) - {"flip", "crop"}
      if bad:
        raise ValueError(f"augment={self.augment!r}; KIP supports 'flip', 'crop' or "
                         "'flip_crop'.")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class KIPState(NamedTuple):
  """``params`` (learned arrays), ``fixed`` (the others), ``opt_state`` and ``step``."""
  params: dict
  fixed: dict
  opt_state: Any
  step: jax.Array


class TargetData(NamedTuple):
  """The training set on device, indexed by class for class-balanced sampling.

  Attributes:
    x: ``(N, H, W, C)`` training images.
    y: ``(N, K)`` one-hot training labels.
    table: ``(K, M)`` int32: row ``c`` lists the indices of class ``c`` (cycled to length M).
    counts: ``(K,)`` int32 number of images of each class.
  """
  x: jax.Array
  y: jax.Array
  table: jax.Array
  counts: jax.Array

  @classmethod
  def from_dataset(cls, dataset) -> "TargetData":
    y = np.asarray(dataset.y_train)
    k = dataset.num_classes
    idx = [np.flatnonzero(y == c) for c in range(k)]
    counts = np.array([len(i) for i in idx], np.int32)
    if (counts == 0).any():
      raise ValueError(f"classes {np.flatnonzero(counts == 0).tolist()} have no training "
                       "images; KIP needs every class.")
    m = int(counts.max())
    table = np.stack([np.resize(i, m) for i in idx]).astype(np.int32)
    return cls(jnp.asarray(dataset.x_train), jnp.asarray(dataset.one_hot(y)),
               jnp.asarray(table), jnp.asarray(counts))

  def sample(self, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """``batch_size // K`` uniformly drawn images of every class (with replacement)."""
    k = self.table.shape[0]
    per = max(batch_size // k, 1)
    u = jax.random.uniform(key, (k, per))
    col = jnp.minimum((u * self.counts[:, None]).astype(jnp.int32), self.counts[:, None] - 1)
    rows = jnp.take_along_axis(self.table, col, axis=1).reshape(-1)
    return self.x[rows], self.y[rows]


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


def init_support(key: jax.Array, dataset, images_per_class: int) -> tuple[jax.Array, jax.Array]:
  """Class-balanced real training images and their one-hot labels.

  Returns:
    ``images (ipc*K, H, W, C)`` sorted by class and ``labels (ipc*K, K)`` one-hot.

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
          jnp.asarray(dataset.one_hot(y[rows]), jnp.float32))


def init(params: Mapping[str, jax.Array], fixed: Mapping[str, jax.Array],
         optimizer: optax.GradientTransformation) -> KIPState:
  """Initial :class:`KIPState` for learned ``params`` and fixed arrays ``fixed``."""
  return KIPState(dict(params), dict(fixed), optimizer.init(dict(params)),
                  jnp.zeros((), jnp.int32))


def _augment_fn(strategy: Optional[str]):
  if strategy is None:
    return None
  from kip.baselines import augment as dsa  # flips and crops of DSA, differentiable
  return dsa.augment_fn(strategy, dsa.AugmentConfig(mode="multiple"))


def make_loss(kernel_fn: Callable, config: KIPConfig) -> Callable:
  """Builds ``loss(params, fixed, x_t, y_t, key) -> (loss, metrics)``.

  Two kernel calls: ``K(X_s, X_s)`` and ``K(X_s, X_t)`` (with several devices the target
  columns are sharded). On a 2-core CPU this measured 0.23 s against 0.36-0.5 s for the loss
  and gradient (500 support x 2,000 targets, FC-3 NTK) of one symmetrised call on
  ``[X_s; X_t]``.
  """
  augment = _augment_fn(config.augment)

  def loss(params, fixed, x_t, y_t, key):
    support = {**fixed, **params}
    x_s, y_s = support["images"], support["labels"]
    if augment is not None:
      x_s = augment(key, x_s)
    # K_ss is not symmetrised: the Cholesky reads its lower triangle only, and the gradient
    # w.r.t. X_s is the same (K(X_s, X_s)'s tangents are symmetric). `0.5 * (K + K.T)` made
    # XLA re-run the kernel's backward in a transposed fusion: 1.6x the step time measured.
    k_ss = kernel_fn(x_s, None, config.get)
    k_ts = kernel_fn(x_s, x_t.astype(x_s.dtype), config.get).T
    pred = k_ts @ krr.solve(k_ss, y_s, config.reg)
    value = 0.5 * jnp.mean(jnp.sum((pred - y_t) ** 2, axis=-1))
    acc = jnp.mean(jnp.argmax(pred, -1) == jnp.argmax(y_t, -1))
    return value, {"loss": value, "target_accuracy": acc}

  return loss


def make_step(kernel_fn: Callable, optimizer: optax.GradientTransformation,
              config: KIPConfig) -> Callable:
  """Builds the jitted ``step(state, data, key) -> (state, metrics)``.

  ``key`` drives both the target batch and the support augmentation; :func:`distill` uses
  ``fold_in(base_key, step)`` so a resumed run draws exactly the same batches.
  """
  loss = make_loss(kernel_fn, config)
  grad_fn = jax.value_and_grad(loss, has_aux=True)

  @jax.jit
  def step(state: KIPState, data: TargetData, key: jax.Array):
    k_batch, k_aug = jax.random.split(key)
    x_t, y_t = data.sample(k_batch, config.target_batch_size)
    (_, metrics), grads = grad_fn(state.params, state.fixed, x_t, y_t, k_aug)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.tree_utils.tree_norm(grads)}
    return KIPState(params, state.fixed, opt_state, state.step + 1), metrics

  return step


# ------------------------------------------------------------------------------ label solve
def label_solve(dataset, support_images: jax.Array, kernel: Union[str, Callable] = "fc",
                reg: float = krr.DEFAULT_REG, *, get: str = "ntk", batch_size: int = 2000,
                num_targets: Optional[int] = None, seed: int = 0,
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
    from kip.data import class_balanced_indices
    rows = class_balanced_indices(y_t, num_targets, num_classes=dataset.num_classes, seed=seed)
    x_t, y_t = x_t[rows], y_t[rows]
  yt = dataset.one_hot(y_t).astype(np.float64)
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
  labels = (k_ss + lam * np.eye(n)) @ np.linalg.solve(g + mu * np.eye(n), b)
  if not np.isfinite(labels).all():
    raise ValueError(f"label solve produced non-finite labels; raise reg (now {reg}).")
  return labels.astype(np.float32)


# ------------------------------------------------------------------------------ driver
def distill(dataset, support_size: Optional[int] = None, learn_labels: bool = True, *,
            images_per_class: Optional[int] = None, kernel: Union[str, Mapping, Callable] = "fc",
            get: str = "ntk", steps: int = 1000, optimizer: Optional[
                optax.GradientTransformation] = None, learning_rate: float = 0.01,
            target_batch_size: int = 1000, reg: float = krr.DEFAULT_REG, seed: int = 0,
            augment: Optional[str] = None, mode: str = "kip", learn_images: bool = True,
            checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
            checkpoint_every: int = 100, resume: bool = False, eval_every: int = 0,
            eval_size: int = 1000, progress: bool = True,
            callback: Optional[Callable[[int, dict], None]] = None,
            time_budget: Optional[float] = None) -> DistilledSet:
  """Distils ``dataset`` into a small support set with KIP (or LS).

  Args:
    dataset: a ``kip.data.Dataset``.
    support_size: total support images, class balanced (must divide by the class count);
      default 10 unless ``images_per_class`` is given.
    learn_labels: learn the labels too (KIP with label learning).
    images_per_class: alternative to ``support_size``.
    kernel: ``'fc'``, ``'convnet'``, a spec dict, or any ``kernel_fn(x1, x2, get)`` (e.g. from
      neural-tangents).
    get: ``'ntk'`` or ``'nngp'``.
    steps: optimisation steps.
    optimizer: any ``optax.GradientTransformation`` (default ``optax.adam(learning_rate)``).
    learning_rate: for the default optimizer.
    target_batch_size: targets per step (class balanced, resampled each step).
    reg: relative ridge ``lambda = reg * tr(K_ss)/n``.
    seed: seeds the support initialisation, the target batches and augmentation.
    augment: ``None``, ``'flip'``, ``'crop'`` or ``'flip_crop'`` on the support at each step.
    mode: ``'kip'`` or ``'ls'`` (label solve on class-balanced real images; no steps).
    learn_images: set ``False`` to learn labels only.
    checkpoint_dir: where ``checkpoint.npz`` is written every ``checkpoint_every`` steps (and
      on interruption); ``None`` disables checkpoints.
    checkpoint_every: steps between checkpoints (0: only at the end and on interruption).
    resume: continue from ``checkpoint_dir/checkpoint.npz`` if it exists; the result is
      bit-identical to an uninterrupted run with the same arguments.
    eval_every: steps between KRR test-accuracy evaluations (0: only at the end).
    eval_size: test images used for those evaluations (class balanced).
    progress: show a tqdm bar.
    callback: ``callback(step, metrics)`` after every step.
    time_budget: stop after this many seconds of optimisation (the set so far is returned and
      ``metadata['stopped_early']`` is set); ``None``: run all ``steps``.

  Returns:
    The :class:`~kip.DistilledSet`.
  """
  if support_size is None and images_per_class is None:
    support_size = 10
  ipc = resolve_images_per_class(dataset.num_classes, support_size, images_per_class)
  for name, value in (("checkpoint_every", checkpoint_every), ("eval_every", eval_every)):
    if value < 0:
      raise ValueError(f"{name}={value} must be >= 0 (0: only at the end).")
  config = KIPConfig(images_per_class=ipc, learn_labels=learn_labels, learn_images=learn_images,
                     get=get, reg=reg, target_batch_size=target_batch_size, steps=steps,
                     learning_rate=learning_rate, augment=augment, mode=mode)
  kernel_fn = get_kernel(kernel)
  kernel_spec = dict(getattr(kernel_fn, "spec", {"architecture": "user kernel_fn"}))
  key = jax.random.PRNGKey(seed)
  k_init, k_loop = jax.random.split(key)
  x_s, y_s = init_support(k_init, dataset, ipc)
  t0 = time.time()
  base_meta = {"kernel": kernel_spec, "config": config.to_dict(), "seed": seed,
               "class_names": list(dataset.class_names),
               "preprocessing": getattr(dataset.preprocessing, "kind", None),
               "versions": library_versions(), "optimizer": "adam" if optimizer is None
               else "user"}

  if mode == "ls":
    labels = label_solve(dataset, x_s, kernel_fn, reg, get=get, progress=progress)
    return DistilledSet(images=np.asarray(x_s), labels=labels, dataset=dataset.name,
                        method="ls", preprocessing=dataset.preprocessing,
                        metadata={**base_meta, "seconds": time.time() - t0})

  optimizer = optimizer or optax.adam(learning_rate)
  params = {}
  fixed = {}
  (params if learn_images else fixed)["images"] = x_s
  (params if learn_labels else fixed)["labels"] = y_s
  state = init(params, fixed, optimizer)
  history: dict[str, list] = {"loss": [], "test_accuracy": []}
  path = None if checkpoint_dir is None else os.path.join(os.fspath(checkpoint_dir),
                                                          _CHECKPOINT_NAME)
  if resume and path is not None and ckpt.exists(path):
    state, meta = ckpt.restore(path, state)
    same_config = {k: v for k, v in meta.get("config", {}).items() if k != "steps"} == {
        k: v for k, v in config.to_dict().items() if k != "steps"}  # more steps: a resume
    if not same_config or meta.get("kernel") != _jsonable(kernel_spec) \
        or meta.get("dataset") != dataset.name or meta.get("seed") != seed:
      raise ValueError(f"checkpoint {path!r} was written by a different run (config, kernel, "
                       "data set or seed differ); use another checkpoint_dir or resume=False.")
    history = meta.get("history", history)
    logger.info("resumed from %s at step %d", path, int(state.step))
  elif resume:
    logger.info("resume requested but no checkpoint at %s; starting fresh", path)

  data = TargetData.from_dataset(dataset)
  step_fn = make_step(kernel_fn, optimizer, config)
  eval_data = _eval_subset(dataset, eval_size, seed) if eval_every else None

  def save(state):
    if path is None:
      return
    ckpt.save(path, state, {"config": config.to_dict(), "kernel": kernel_spec,
                            "dataset": dataset.name, "seed": seed, "history": history,
                            "step": int(state.step)})

  start = int(state.step)
  stopped_early = False
  first_step_seconds = 0.0
  loop_start = time.time()
  bar = tqdm.tqdm(total=steps, initial=start, desc=f"KIP {ipc} img/class", disable=not progress,
                  dynamic_ncols=True)
  try:
    for i in range(start, steps):
      state, metrics = step_fn(state, data, jax.random.fold_in(k_loop, i))
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        raise FloatingPointError(f"KIP loss became {loss} at step {i}; lower the learning rate "
                                 f"(now {learning_rate}) or raise reg (now {reg}).")
      history["loss"].append(loss)
      if i == start:  # the first step of a process includes compilation
        first_step_seconds = time.time() - loop_start
      post = {"loss": f"{loss:.4f}"}
      if eval_every and ((i + 1) % eval_every == 0 or i + 1 == steps):
        acc = _krr_accuracy(kernel_fn, {**state.fixed, **state.params}, eval_data, config)
        history["test_accuracy"].append([i + 1, acc])
        post["test_acc"] = f"{acc:.4f}"
        logger.info("step %d loss %.5f test accuracy %.4f", i + 1, loss, acc)
      bar.set_postfix(post)
      bar.update(1)
      if callback is not None:
        callback(i + 1, {k: float(v) for k, v in metrics.items()})
      if checkpoint_every and (i + 1) % checkpoint_every == 0:
        save(state)
      if time_budget is not None and time.time() - loop_start > time_budget and i + 1 < steps:
        stopped_early = True
        logger.info("time budget of %.0f s spent after step %d of %d", time_budget, i + 1,
                    steps)
        break
  except KeyboardInterrupt:
    save(state)
    logger.warning("interrupted at step %d; checkpoint saved to %s", int(state.step), path)
    raise
  finally:
    bar.close()
  save(state)
  support = {**state.fixed, **state.params}
  return DistilledSet(images=np.asarray(support["images"]), labels=np.asarray(support["labels"]),
                      dataset=dataset.name, method="kip", preprocessing=dataset.preprocessing,
                      metadata={**base_meta, "steps": int(state.step), "history": history,
                                "seconds": time.time() - t0,
                                "loop_seconds": time.time() - loop_start,
                                "first_step_seconds": first_step_seconds,
                                "steps_this_run": int(state.step) - start,
                                "stopped_early": stopped_early})


def _jsonable(x):
  import json
  return json.loads(json.dumps(x))


def _eval_subset(dataset, size: int, seed: int):
  from kip.data import class_balanced_indices
  y = np.asarray(dataset.y_test)
  if size < len(y):
    rows = class_balanced_indices(y, size, num_classes=dataset.num_classes, seed=seed)
  else:
    rows = np.arange(len(y))
  return jnp.asarray(dataset.x_test[rows]), y[rows]


def _krr_accuracy(kernel_fn, support, eval_data, config) -> float:
  x, y = eval_data
  pred = krr.predict(kernel_fn, support["images"], support["labels"], x, config.reg,
                     get=config.get, batch_size=1000)
  return krr.accuracy(pred, y)
