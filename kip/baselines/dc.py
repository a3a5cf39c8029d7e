"""Dataset Condensation with gradient matching (DC), and the machinery DSA and DM share.

Zhao, Mopuri, Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021.

DC learns ``images_per_class`` synthetic images per class so that, for networks met along a
training trajectory, the gradient of the loss on a synthetic class batch matches the gradient
on a real class batch:

.. math::
   \\min_S \\; \\mathbb{E}_{\\theta_0}\\Big[\\sum_{t=0}^{T-1} \\sum_{c=1}^{K}
   D\\big(\\nabla_\\theta \\ell(S_c; \\theta_t),\\, \\nabla_\\theta \\ell(B_c; \\theta_t)\\big)\\Big],
   \\qquad
   D(A, B) = \\sum_{\\text{layers}} \\sum_{i=1}^{\\text{out}}
   \\Big(1 - \\frac{A_{i\\cdot} \\cdot B_{i\\cdot}}{\\lVert A_{i\\cdot}\\rVert\\,\\lVert B_{i\\cdot}\\rVert + 10^{-6}}\\Big),

with :math:`B_c` a fresh batch of ``batch_real`` real images of class ``c`` and ``A_{i.}`` the
gradient of output node ``i`` of a layer (conv kernels flattened over ``(kh, kw, in)``). As in
the reference ``distance_wb``, one-dimensional parameters (biases, normalisation scales and
shifts) contribute zero.

One :func:`step` is one DC *iteration*: a freshly initialised network :math:`\\theta_0`; then
``outer_loop`` times: one update of the synthetic images on the summed class distances (SGD,
``lr_img = 0.1``, momentum 0.5, state kept across iterations), followed (except after the last)
by ``inner_loop`` epochs of SGD (``lr_net = 0.01``, batch ``batch_train``) of the network on the
current synthetic set. ``outer_loop`` / ``inner_loop`` default to the paper's table (``ipc``
1: 1/1, 10: 10/50, 20: 20/25, 30: 30/20, 40: 40/15, 50: 50/10).

Stateful API in the optax shape::

    config = DCConfig(iterations=1000)
    pool = class_pool(dataset)                      # real images grouped by class, on device
    state = init(key, dataset, images_per_class=10, config=config)
    for it in range(config.iterations):
      key, sub = jax.random.split(key)
      state, metrics = step(state, pool, sub, config)

or simply :func:`distill_dc`. DSA (:mod:`kip.baselines.dsa`) is this module with
``strategy`` set: real and synthetic class batches go through the *same* random augmentation
inside the distance, and the inner-loop network training is augmented too.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from kip._src.distilled import DistilledSet, library_versions
from kip.baselines import augment as aug_lib

__all__ = [
    "ClassPool",
    "DCConfig",
    "DCState",
    "PAPER_LOOPS",
    "class_pool",
    "config_to_dict",
    "distance_wb",
    "distill_dc",
    "get_loops",
    "init",
    "init_images",
    "init_network",
    "make_model",
    "match_loss",
    "prepare_init",
    "run",
    "sample_class_batches",
    "step",
    "step_key",
]

logger = logging.getLogger(__name__)

# (outer_loop, inner_loop) per images-per-class, from the reference ``get_loops``.
PAPER_LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20),
                                           40: (40, 15), 50: (50, 10)}
_INITS = ("real", "noise")


def freeze_kwargs(kwargs) -> tuple[tuple[str, Any], ...]:
  """A mapping of model overrides as a sorted, hashable tuple of pairs (lists become tuples)."""
  items = dict(kwargs or {}).items()
  return tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in items))


@dataclasses.dataclass(frozen=True)
class DCConfig:
  """Hyperparameters of DC (defaults: the paper and the reference code).

  Attributes:
    iterations: DC iterations (fresh networks); 1000 in the paper.
    model: ``kip.transfer`` model name (``get_model``); ``'convnet'`` is ConvNet-3.
    model_kwargs: overrides for ``get_model`` (e.g. ``{'width': 8, 'depth': 2}``); stored as a
      sorted tuple of pairs so the config stays hashable.
    lr_img: learning rate of the synthetic images (used when ``image_optimizer`` is None).
    momentum_img: momentum of the synthetic-image SGD.
    lr_net: learning rate of the inner-loop network SGD (used when ``net_optimizer`` is None).
    batch_real: real images per class and outer loop (fewer if the class is smaller).
    batch_train: minibatch size of the inner-loop network training on the synthetic set.
    outer_loop: image updates per iteration; ``None`` takes :data:`PAPER_LOOPS`.
    inner_loop: network epochs on the synthetic set between image updates; ``None`` takes
      :data:`PAPER_LOOPS`.
    init: ``'real'`` (random real images of the class) or ``'noise'`` (standard normal). The
      reference script defaults to noise; the paper reports both give similar results.
    strategy: DSA augmentation strategy; ``'none'`` for DC (see :mod:`kip.baselines.dsa`).
    augment: strengths of the DSA transformations.
    image_optimizer: any ``optax.GradientTransformation`` for the images; ``None`` means
      ``optax.sgd(lr_img, momentum_img)`` (PyTorch SGD semantics).
    net_optimizer: any ``optax.GradientTransformation`` for the inner-loop network; ``None``
      means ``optax.sgd(lr_net)``.
  """
  iterations: int = 1000
  model: str = "convnet"
  model_kwargs: Any = ()
  lr_img: float = 0.1
  momentum_img: float = 0.5
  lr_net: float = 0.01
  batch_real: int = 256
  batch_train: int = 256
  outer_loop: int | None = None
  inner_loop: int | None = None
  init: str = "real"
  strategy: str = "none"
  augment: aug_lib.AugmentConfig = aug_lib.AugmentConfig()
  image_optimizer: optax.GradientTransformation | None = None
  net_optimizer: optax.GradientTransformation | None = None

  def __post_init__(self):
    object.__setattr__(self, "model_kwargs", freeze_kwargs(self.model_kwargs))
    aug_lib.parse_strategy(self.strategy)
    if self.init not in _INITS:
      raise ValueError(f"init={self.init!r}; use one of {_INITS}.")
    for name in ("iterations", "batch_real", "batch_train"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
    for name in ("outer_loop", "inner_loop"):
      v = getattr(self, name)
      if v is not None and v < 1:
        raise ValueError(f"{name}={v} must be >= 1 (or None for the paper's table).")

  def loops(self, images_per_class: int) -> tuple[int, int]:
    """``(outer_loop, inner_loop)``: the configured values, else :data:`PAPER_LOOPS`."""
    if self.outer_loop is not None and self.inner_loop is not None:
      return self.outer_loop, self.inner_loop
    outer, inner = get_loops(images_per_class)
    return self.outer_loop or outer, self.inner_loop or inner

  def get_image_optimizer(self) -> optax.GradientTransformation:
    if self.image_optimizer is not None:
      return self.image_optimizer
    return optax.sgd(self.lr_img, momentum=self.momentum_img or None)

  def get_net_optimizer(self) -> optax.GradientTransformation:
    return self.net_optimizer if self.net_optimizer is not None else optax.sgd(self.lr_net)

  def to_dict(self) -> dict[str, Any]:
    """JSON-friendly view for ``DistilledSet.metadata``."""
    return config_to_dict(self)


def config_to_dict(config) -> dict[str, Any]:
  """JSON-friendly view of a DC / DSA / DM config (optimizers by ``repr``)."""
  out = {"class": type(config).__name__}
  for f in dataclasses.fields(config):
    v = getattr(config, f.name)
    if f.name == "model_kwargs":
      v = {k: (list(x) if isinstance(x, tuple) else x) for k, x in v}
    elif isinstance(v, aug_lib.AugmentConfig):
      v = dataclasses.asdict(v)
    elif f.name.endswith("_optimizer"):
      v = None if v is None else repr(v)
    out[f.name] = v
  return out


def get_loops(images_per_class: int) -> tuple[int, int]:
  """The reference ``(outer_loop, inner_loop)`` for ``images_per_class``."""
  if images_per_class not in PAPER_LOOPS:
    raise ValueError(f"the DC paper defines outer/inner loops only for images_per_class in "
                     f"{sorted(PAPER_LOOPS)}, got {images_per_class}; set DCConfig(outer_loop=..., "
                     "inner_loop=...) explicitly.")
  return PAPER_LOOPS[images_per_class]


# --------------------------------------------------------------------------- real data

class ClassPool(NamedTuple):
  """Training images grouped by class, padded to the largest class (a pytree).

  Attributes:
    images: ``(K, M, H, W, C)`` float32; class ``c`` occupies ``images[c, :counts[c]]``.
    counts: ``(K,)`` int32 class sizes.
  """
  images: jax.Array
  counts: jax.Array


def class_pool(dataset) -> ClassPool:
  """Groups ``dataset.x_train`` by ``dataset.y_train`` into a device-resident :class:`ClassPool`."""
  x = np.asarray(dataset.x_train, np.float32)
  y = np.asarray(dataset.y_train)
  k = int(dataset.num_classes)
  counts = np.bincount(y, minlength=k)[:k]
  if np.any(counts == 0):
    empty = np.flatnonzero(counts == 0).tolist()
    raise ValueError(f"classes {empty} of {dataset.name!r} have no training images; every class "
                     "needs at least one.")
  pool = np.zeros((k, int(counts.max())) + x.shape[1:], np.float32)
  for c in range(k):
    members = x[y == c]
    pool[c, :len(members)] = members
  return ClassPool(jnp.asarray(pool), jnp.asarray(counts, jnp.int32))


@functools.partial(jax.jit, static_argnames=("batch_size",))
def sample_class_batches(key: jax.Array, pool: ClassPool, batch_size: int
                         ) -> tuple[jax.Array, jax.Array]:
  """Draws a batch per class without replacement (reference ``get_images(c, n)``).

  A class with fewer than ``batch_size`` images contributes all of them in random order; the
  rest of its row is padding with mask 0.

  Args:
    key: PRNG key.
    pool: :class:`ClassPool`.
    batch_size: requested images per class.

  Returns:
    ``(images (K, B, H, W, C), mask (K, B) float32)`` with ``B = min(batch_size, M)``.
  """
  k, m = pool.images.shape[:2]
  b = min(int(batch_size), m)

  def one(key, images, count):
    u = jax.random.uniform(key, (m,))
    u = jnp.where(jnp.arange(m) < count, u, 2.0)  # padding sorts last
    _, idx = jax.lax.top_k(-u, b)
    return images[idx], (jnp.arange(b) < count).astype(jnp.float32)

  return jax.vmap(one)(jax.random.split(key, k), pool.images, pool.counts)


def init_images(key: jax.Array, pool: ClassPool, images_per_class: int, init: str = "real"
                ) -> jax.Array:
  """Initial synthetic images, class-major (``ipc`` of class 0, then class 1, ...).

  Args:
    key: PRNG key.
    pool: :class:`ClassPool`.
    images_per_class: ``ipc``.
    init: ``'real'`` (distinct random real images of each class) or ``'noise'`` (N(0, 1) in
      the preprocessed space, as the reference ``torch.randn``).

  Returns:
    ``(K * ipc, H, W, C)`` float32.
  """
  k, _, h, w, c = pool.images.shape
  if init == "noise":
    return jax.random.normal(key, (k * images_per_class, h, w, c), jnp.float32)
  if init != "real":
    raise ValueError(f"init={init!r}; use one of {_INITS}.")
  smallest = int(jnp.min(pool.counts))
  if images_per_class > smallest:
    raise ValueError(f"images_per_class={images_per_class} exceeds the smallest class "
                     f"({smallest} images); use images_per_class <= {smallest} or init='noise'.")
  x, _ = sample_class_batches(key, pool, images_per_class)
  return x.reshape((k * images_per_class, h, w, c))


def _check_ipc(images_per_class) -> int:
  if isinstance(images_per_class, bool) or not isinstance(images_per_class, (int, np.integer)) \
      or images_per_class < 1:
    raise ValueError(f"images_per_class must be a positive int; got {images_per_class!r}.")
  return int(images_per_class)


# --------------------------------------------------------------------------- the distance

def _safe_norm(x: jax.Array, axis: int) -> jax.Array:
  # Zero vectors (dead units) get norm 0 and gradient 0, as torch.norm's backward does.
  sq = jnp.sum(x * x, axis=axis)
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def distance_wb(g_real: jax.Array, g_syn: jax.Array) -> jax.Array:
  """DC's layer distance: :math:`\\sum_i 1 - \\cos(A_{i\\cdot}, B_{i\\cdot})`.

  Rows are output nodes. Flax kernels keep the output axis last (Dense ``(in, out)``, Conv
  ``(kh, kw, in, out)``), so the last axis is moved first and the rest flattened, matching
  PyTorch's ``(out, in, kh, kw) -> (out, -1)``; any parameter with two or more axes is read
  this way. One-dimensional parameters (biases, normalisation scales) return 0, as in the
  reference.

  Args:
    g_real: gradient of one parameter on real data (any shape).
    g_syn: gradient of the same parameter on synthetic data.

  Returns:
    Scalar distance in ``[0, 2 * out]``.
  """
  if g_real.shape != g_syn.shape:
    raise ValueError(f"gradient shapes differ: {g_real.shape} vs {g_syn.shape}.")
  if g_real.ndim <= 1:
    return jnp.zeros((), jnp.float32)
  a = jnp.moveaxis(g_real, -1, 0).reshape(g_real.shape[-1], -1)
  b = jnp.moveaxis(g_syn, -1, 0).reshape(g_syn.shape[-1], -1)
  cos = jnp.sum(a * b, axis=-1) / (_safe_norm(a, -1) * _safe_norm(b, -1) + 1e-6)
  return jnp.sum(1.0 - cos)


def match_loss(grads_syn, grads_real) -> jax.Array:
  """Sum of :func:`distance_wb` over the leaves of two matching parameter pytrees."""
  leaves_s, tree_s = jax.tree_util.tree_flatten(grads_syn)
  leaves_r, tree_r = jax.tree_util.tree_flatten(grads_real)
  if tree_s != tree_r:
    raise ValueError("grads_syn and grads_real must have the same pytree structure.")
  return sum((distance_wb(r, s) for r, s in zip(leaves_r, leaves_s)), jnp.zeros(()))


# --------------------------------------------------------------------------- the step

class DCState(NamedTuple):
  """State of a DC / DSA run.

  Attributes:
    images: ``(K * ipc, H, W, C)`` synthetic images, class-major.
    opt_state: state of the image optimizer.
    iteration: ``()`` int32, completed iterations.
  """
  images: jax.Array
  opt_state: Any
  iteration: jax.Array


def make_model(config, num_classes: int):
  """The ``get_model(config.model, num_classes, **config.model_kwargs)`` network."""
  from kip._src.transfer.models import get_model
  return get_model(config.model, num_classes, **dict(config.model_kwargs))


def init_network(model, key: jax.Array, image_shape) -> Any:
  """Fresh parameters; stateful networks (batch norm) are refused."""
  variables = model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  _check_stateless(variables)
  return variables["params"]


def _check_stateless(variables) -> None:
  extra = sorted(set(variables) - {"params"})
  if extra:
    raise ValueError(f"the network carries state {extra} (e.g. norm='batch'); DC / DSA / DM here "
                     "need a stateless network: use norm='instance' (ConvNet-3) or 'none'.")


def prepare_init(key: jax.Array, dataset, images_per_class: int, config,
                 pool: ClassPool | None = None) -> tuple[jax.Array, Any]:
  """Validated initial images and image-optimizer state (shared by DC, DSA and DM)."""
  ipc = _check_ipc(images_per_class)
  if hasattr(config, "loops"):
    config.loops(ipc)  # fail early on an ipc without paper loops
  model = make_model(config, int(dataset.num_classes))
  dummy = jnp.zeros((1,) + tuple(dataset.x_train.shape[1:]), jnp.float32)
  _check_stateless(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy, train=False)))
  pool = class_pool(dataset) if pool is None else pool
  images = init_images(key, pool, ipc, config.init)
  return images, config.get_image_optimizer().init(images)


def init(key: jax.Array, dataset, images_per_class: int, config: DCConfig = DCConfig(), *,
         pool: ClassPool | None = None) -> DCState:
  """Initial :class:`DCState`: synthetic images (from ``config.init``) and optimizer state.

  Args:
    key: PRNG key for the initial images.
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``ipc``.
    config: :class:`DCConfig`.
    pool: :func:`class_pool` of ``dataset`` if already built (saves a copy of the training set).
  """
  images, opt_state = prepare_init(key, dataset, images_per_class, config, pool)
  return DCState(images, opt_state, jnp.zeros((), jnp.int32))


def step_key(key: jax.Array) -> jax.Array:
  """An RBG key derived deterministically from ``key``, used for all randomness inside a step.

  XLA's ``RngBitGenerator`` compiles several times faster on CPU than JAX's (partitionable)
  threefry, which dominated the compile time of the steps (network initialisation draws many
  parameters). Streams are reproducible for a fixed ``key`` on a given backend.
  """
  return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")


def _xent(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy over the unmasked rows (``labels`` int, scalar or ``(n,)``)."""
  logp = jax.nn.log_softmax(logits)
  labels = jnp.broadcast_to(labels, logits.shape[:1])
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
  if mask is None:
    return jnp.mean(nll)
  return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _train_network(model, params, net_state, net_opt, images, labels, key, epochs: int,
                   batch_size: int, augment: Callable | None):
  """``epochs`` shuffled passes of minibatch training on ``(images, labels)`` (no grad to images)."""
  images = jax.lax.stop_gradient(images)
  n = images.shape[0]
  bt = min(batch_size, n)
  nb = -(-n // bt)

  def epoch(carry, k):
    kp, ka = jax.random.split(k)
    perm = jnp.concatenate([jax.random.permutation(kp, n), jnp.zeros(nb * bt - n, jnp.int32)])
    mask = (jnp.arange(nb * bt) < n).astype(jnp.float32)

    def minibatch(carry, xs):
      params, net_state = carry
      idx, m, kb = xs
      x = images[idx]
      if augment is not None:
        x = augment(kb, x)
      g = jax.grad(lambda p: _xent(model.apply({"params": p}, x, train=True), labels[idx], m))(
          params)
      updates, net_state = net_opt.update(g, net_state, params)
      return (optax.apply_updates(params, updates), net_state), None

    xs = (perm.reshape(nb, bt), mask.reshape(nb, bt), jax.random.split(ka, nb))
    return jax.lax.scan(minibatch, carry, xs)[0], None

  return jax.lax.scan(epoch, (params, net_state), jax.random.split(key, epochs))[0]


@functools.partial(jax.jit, static_argnames=("config",))
def step(state: DCState, real: ClassPool, key: jax.Array, config: DCConfig = DCConfig()
         ) -> tuple[DCState, dict[str, jax.Array]]:
  """One DC (or DSA) iteration on a freshly initialised network; jitted.

  Args:
    state: :class:`DCState`.
    real: :class:`ClassPool` of the real training set (from :func:`class_pool`).
    key: PRNG key (network initialisation, real batches, augmentation, shuffling).
    config: :class:`DCConfig` (static: changing it recompiles).

  Returns:
    ``(new_state, metrics)``; ``metrics['loss']`` is the matching distance before each image
    update, averaged over classes and outer loops (the reference's ``loss_avg``).
  """
  k = real.images.shape[0]
  n, h, w, c = state.images.shape
  if n % k or real.images.shape[2:] != state.images.shape[1:]:
    raise ValueError(f"state.images {state.images.shape} do not fit the real pool "
                     f"{real.images.shape}: expected (K * ipc, H, W, C) with K = {k}.")
  ipc = n // k
  outer, inner = config.loops(ipc)
  model = make_model(config, k)
  img_opt = config.get_image_optimizer()
  net_opt = config.get_net_optimizer()
  strategy = aug_lib.parse_strategy(config.strategy)
  labels = jnp.repeat(jnp.arange(k, dtype=jnp.int32), ipc)
  train_aug = aug_lib.augment_fn(strategy, config.augment) if strategy else None

  k_net, k_loop = jax.random.split(step_key(key))
  params = init_network(model, k_net, (h, w, c))
  net_state = net_opt.init(params)

  def grad_of(params, x, cls, mask=None):
    return jax.grad(lambda p: _xent(model.apply({"params": p}, x, train=True), cls, mask))(params)

  def outer_body(carry, xs):
    images, img_state, params, net_state = carry
    ol, kk = xs
    k_real, k_aug, k_train = jax.random.split(kk, 3)
    x_real, m_real = sample_class_batches(k_real, real, config.batch_real)
    classes = jnp.arange(k)
    # Siamese: one shared parameter draw per class for its real and its synthetic batch.
    aug_params = (jax.vmap(lambda kc: aug_lib.sample_params(kc, strategy, (), config.augment))(
        jax.random.split(k_aug, k)) if strategy else None)

    def real_grad(args):
      cls, xr, mr, p = args
      return grad_of(params, aug_lib.apply(xr, p) if strategy else xr, cls, mr)

    g_real = jax.lax.map(real_grad, (classes, x_real, m_real, aug_params))

    def loss_fn(images):
      def per_class(args):
        cls, xs_, p, gr = args
        return match_loss(grad_of(params, aug_lib.apply(xs_, p) if strategy else xs_, cls), gr)

      return jnp.sum(jax.lax.map(per_class, (classes, images.reshape(k, ipc, h, w, c),
                                             aug_params, g_real)))

    loss, g = jax.value_and_grad(loss_fn)(images)
    updates, img_state = img_opt.update(g, img_state, images)
    images = optax.apply_updates(images, updates)
    if outer > 1:  # the network is trained between image updates, not after the last one
      params, net_state = jax.lax.cond(
          ol < outer - 1,
          lambda: _train_network(model, params, net_state, net_opt, images, labels, k_train,
                                 inner, config.batch_train, train_aug),
          lambda: (params, net_state))
    return (images, img_state, params, net_state), loss

  carry = (state.images, state.opt_state, params, net_state)
  (images, img_state, _, _), losses = jax.lax.scan(
      outer_body, carry, (jnp.arange(outer), jax.random.split(k_loop, outer)))
  new = DCState(images, img_state, state.iteration + 1)
  return new, {"loss": jnp.sum(losses) / (k * outer)}


# --------------------------------------------------------------------------- driver

def run(method: str, dataset, images_per_class: int, config, key, progress: bool,
        init_fn: Callable, step_fn: Callable) -> DistilledSet:
  """Shared driver of :func:`distill_dc`, ``distill_dsa`` and ``distill_dm``."""
  from kip.baselines.coresets import as_key
  key, seed = as_key(key)
  ipc = _check_ipc(images_per_class)
  k_init, key = jax.random.split(key)
  pool = class_pool(dataset)
  state = init_fn(k_init, dataset, ipc, config, pool=pool)
  history = []
  logger.info("%s: %d images per class of %s, %d iterations", method, ipc, dataset.name,
              config.iterations)
  bar = tqdm(range(config.iterations), desc=method, disable=not progress)
  for it in bar:
    state, metrics = step_fn(state, pool, jax.random.fold_in(key, it), config)
    history.append(metrics["loss"])
    if it % 10 == 0 or it == config.iterations - 1:
      loss = float(metrics["loss"])
      if not math.isfinite(loss):
        raise ValueError(f"{method} diverged at iteration {it} (loss {loss}); lower the image "
                         "learning rate.")
      bar.set_postfix(loss=f"{loss:.4f}")
      logger.debug("%s iteration %d loss %.6f", method, it, loss)
  k = int(dataset.num_classes)
  labels = np.repeat(np.eye(k, dtype=np.float32), ipc, axis=0)
  meta = {"seed": seed, "config": config.to_dict(), "images_per_class": ipc,
          "loss_history": [float(v) for v in jax.device_get(history)],
          "versions": library_versions()}
  if hasattr(config, "loops"):
    meta["outer_loop"], meta["inner_loop"] = config.loops(ipc)
  return DistilledSet(images=np.asarray(state.images, np.float32), labels=labels,
                      dataset=dataset.name, method=method,
                      preprocessing=getattr(dataset, "preprocessing", None), metadata=meta)


def distill_dc(dataset, images_per_class: int, config: DCConfig = DCConfig(), *, key,
               progress: bool = True) -> DistilledSet:
  """Distils ``dataset`` with DC (Zhao, Mopuri, Bilen, ICLR 2021).

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``ipc``; the paper's loops exist for 1, 10, 20, 30, 40, 50 (else set
      ``config.outer_loop`` and ``config.inner_loop``).
    config: :class:`DCConfig`; ``strategy`` must be ``'none'`` (use ``distill_dsa`` otherwise).
    key: PRNG key or ``int`` seed.
    progress: show a ``tqdm`` bar.

  Returns:
    ``DistilledSet`` (``method='dc'``) of ``K * ipc`` images, class-major, one-hot labels;
    ``metadata`` holds the config, seed, loops and ``loss_history`` (one value per iteration).
  """
  if aug_lib.parse_strategy(config.strategy):
    raise ValueError(f"DC runs without augmentation but config.strategy={config.strategy!r}; "
                     "use kip.baselines.dsa.distill_dsa, or strategy='none'.")
  return run("dc", dataset, images_per_class, config, key, progress, init, step)
