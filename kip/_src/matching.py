"""Machinery shared by the matching methods DC, DSA and DM.

* **Real batches**: :func:`sample_class_batches` draws a batch of every class, without
  replacement, from a :class:`~kip._src.sampling.ClassTable` (the reference ``get_images(c, n)``);
  :func:`init_images` draws the initial synthetic images (real images or noise), class-major.
* **Networks**: :func:`make_model` builds the ``kip.transfer`` network a config names,
  :func:`init_network` draws fresh parameters (and, for ``norm='batch'``, fresh running
  statistics), :func:`apply_network` runs it in train mode (batch statistics, updating the
  running ones; padded rows masked out of the statistics) or in eval mode (running
  statistics), :func:`freeze_batch_stats` is the reference's statistics step before matching,
  :func:`train_network` runs the inner-loop SGD epochs of DC / DSA on the synthetic set.
* **Batch norm** as the reference (VICO-UoE/DatasetCondensation ``main.py``): before every
  outer-loop matching step, ``BNSizePC = 16`` real images of every class go through the network
  in train mode (the running statistics move by PyTorch momentum 0.1 towards their batch
  statistics), then the batch-norm layers are put in eval mode, so that the real and the
  synthetic gradients are taken under the same frozen statistics; the inner loop trains the
  network in train mode. DM (``main_DM.py``, ``ConvNetBN``) embeds all classes' real images in
  one train-mode batch and all synthetic images in another. One difference: Flax's running
  variance uses the biased batch variance, PyTorch's the unbiased one (a factor
  :math:`m / (m - 1)`, :math:`m = 160 H W` values per channel in the first layer).
* **Optimizers by name**: :func:`make_optimizer` (``'sgd'`` with PyTorch momentum semantics,
  ``'adam'``), so that configs hold names and numbers only.
* **The DC distance**: :func:`distance_wb` and :func:`match_loss`,

.. math::
   D(A, B) = \\sum_{\\text{layers}} \\sum_{i=1}^{\\text{out}}
   \\Big(1 - \\frac{A_{i\\cdot} \\cdot B_{i\\cdot}}{\\lVert A_{i\\cdot}\\rVert\\,
   \\lVert B_{i\\cdot}\\rVert + 10^{-6}}\\Big),

  with :math:`A_{i\\cdot}` the gradient of output node ``i`` of a layer (Zhao, Mopuri, Bilen,
  "Dataset Condensation with Gradient Matching", ICLR 2021, reference ``distance_wb``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kip._src import losses
from kip._src.sampling import ClassTable

__all__ = ["BN_IMAGES_PER_CLASS", "INITS", "OPTIMIZERS", "apply_network", "batch_norm_mask",
           "check_network", "check_optimizer_fields", "check_positive", "check_stateless",
           "distance_wb", "freeze_batch_stats", "freeze_kwargs", "init_images", "init_network", "make_model",
           "make_optimizer", "match_loss", "sample_class_batches", "train_network"]

INITS = ("real", "noise")
BN_IMAGES_PER_CLASS = 16  # the reference's BNSizePC


# --------------------------------------------------------------------------- configs

def freeze_kwargs(kwargs) -> tuple[tuple[str, Any], ...]:
  """A mapping of model overrides as a sorted, hashable tuple of pairs (lists become tuples)."""
  items = dict(kwargs or {}).items()
  return tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in items))


def _sgd(learning_rate: float, momentum: float) -> optax.GradientTransformation:
  # optax's trace is PyTorch's SGD momentum (v <- m v + g; x <- x - lr v, no dampening).
  return optax.sgd(learning_rate, momentum=momentum or None)


def _adam(learning_rate: float, momentum: float) -> optax.GradientTransformation:
  del momentum  # Adam's own first-moment decay (b1 = 0.9) is used
  return optax.adam(learning_rate)


OPTIMIZERS: Mapping[str, Callable[[float, float], optax.GradientTransformation]] = {
    "sgd": _sgd, "adam": _adam}


def make_optimizer(name: str, learning_rate: float, momentum: float = 0.0
                   ) -> optax.GradientTransformation:
  """The optax optimizer called ``name`` (``'sgd'``: momentum SGD; ``'adam'``: ``momentum`` unused).

  Raises:
    ValueError: an unknown name.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer {name!r} is not known; use one of {sorted(OPTIMIZERS)} (or "
                     "pass an optax.GradientTransformation to the method's factory).")
  return OPTIMIZERS[name](learning_rate, momentum)


def check_optimizer_fields(config, prefix: str) -> None:
  """Validates ``{prefix}_optimizer`` / ``_lr`` / ``_momentum`` of a matching config."""
  name = getattr(config, f"{prefix}_optimizer")
  if not isinstance(name, str) or name not in OPTIMIZERS:
    raise ValueError(
        f"{prefix}_optimizer={name!r}; configs name their optimizer, one of "
        f"{sorted(OPTIMIZERS)}. To use another optax.GradientTransformation pass it to the "
        f"factory instead (make_dc(config, {prefix}_optimizer=optax.adam(0.1))).")
  lr, momentum = getattr(config, f"{prefix}_lr"), getattr(config, f"{prefix}_momentum")
  if not (np.isfinite(lr) and lr > 0):
    raise ValueError(f"{prefix}_lr={lr} must be a finite number > 0.")
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"{prefix}_momentum={momentum} must lie in [0, 1).")


def check_positive(config, *names: str) -> None:
  """Raises ``ValueError`` unless every named field of ``config`` is an ``int >= 1``."""
  for name in names:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise ValueError(f"{name} must be a positive int; got {value!r}.")
    if value < 1:
      raise ValueError(f"{name} must be >= 1; got {value}.")


# --------------------------------------------------------------------------- real data

@functools.partial(jax.jit, static_argnames=("batch_size",))
def sample_class_batches(key: jax.Array, table: ClassTable, batch_size: int
                         ) -> tuple[jax.Array, jax.Array]:
  """Draws a batch of every class without replacement (reference ``get_images(c, n)``).

  Class ``c`` uses ``split(key, K)[c]``: its first ``B`` images under uniform scores (padding
  sorts last). A class with fewer than ``batch_size`` images contributes all of them in random
  order, and the rest of its row is padding with mask 0.

  Args:
    key: PRNG key.
    table: the training set's :class:`~kip._src.sampling.ClassTable`.
    batch_size: requested images per class.

  Returns:
    ``(images (K, B, H, W, C), mask (K, B) float32)`` with ``B = min(batch_size, M)``, ``M``
    the largest class size.
  """
  k, m = table.table.shape
  b = min(int(batch_size), m)

  def one(key, rows, count):
    u = jax.random.uniform(key, (m,))
    u = jnp.where(jnp.arange(m) < count, u, 2.0)
    _, idx = jax.lax.top_k(-u, b)
    return rows[idx], (jnp.arange(b) < count).astype(jnp.float32)

  rows, mask = jax.vmap(one)(jax.random.split(key, k), table.table, table.counts)
  return table.x[rows], mask


def init_images(key: jax.Array, table: ClassTable, images_per_class: int, init: str = "real"
                ) -> jax.Array:
  """Initial synthetic images, class-major (``ipc`` of class 0, then class 1, ...).

  Args:
    key: PRNG key.
    table: the training set's :class:`~kip._src.sampling.ClassTable`.
    images_per_class: ``ipc``.
    init: ``'real'`` (distinct random real images of each class) or ``'noise'`` (N(0, 1) in
      the preprocessed space, as the reference ``torch.randn``).

  Returns:
    ``(K * ipc, H, W, C)`` float32.

  Raises:
    ValueError: an unknown ``init``, or ``init='real'`` with more images per class than the
      smallest class holds.
  """
  k = table.table.shape[0]
  h, w, c = table.x.shape[1:]
  if init == "noise":
    return jax.random.normal(key, (k * images_per_class, h, w, c), jnp.float32)
  if init != "real":
    raise ValueError(f"init={init!r}; use one of {INITS}.")
  smallest = int(jnp.min(table.counts))
  if images_per_class > smallest:
    raise ValueError(f"images_per_class={images_per_class} exceeds the smallest class "
                     f"({smallest} images); use images_per_class <= {smallest} or init='noise'.")
  x, _ = sample_class_batches(key, table, images_per_class)
  return x.reshape((k * images_per_class, h, w, c)).astype(jnp.float32)


# --------------------------------------------------------------------------- networks

def make_model(config, num_classes: int):
  """``get_model(config.model, num_classes, **dict(config.model_kwargs))``."""
  from kip._src.transfer.models import get_model
  return get_model(config.model, num_classes, **dict(config.model_kwargs))


def check_stateless(variables) -> None:
  """Refuses networks with state besides ``params`` and batch-norm ``batch_stats``."""
  extra = sorted(set(variables) - {"params", "batch_stats"})
  if extra:
    raise ValueError(f"the network carries state {extra}; DC / DSA / DM here handle parameters "
                     "and batch-norm statistics only: use norm='batch', 'instance' or 'none'.")


def check_network(config, num_classes: int, image_shape) -> None:
  """Builds the config's network abstractly (no FLOPs) and checks its collections."""
  model = make_model(config, num_classes)
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  check_stateless(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy, train=False)))


def init_network(model, key: jax.Array, image_shape) -> tuple[Any, Any]:
  """Fresh ``(params, batch_stats)`` of ``model`` for ``(H, W, C)`` images.

  ``batch_stats`` is ``{}`` for a stateless network, else the running statistics of its
  batch-norm layers at their initial values (mean 0, variance 1).
  """
  variables = model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  check_stateless(variables)
  return variables["params"], variables.get("batch_stats", {})


def batch_norm_mask(mask: jax.Array):
  """An interceptor giving every ``nn.BatchNorm`` call the row mask ``mask`` ``(n,)``."""
  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      x = args[0]
      m = mask.reshape((x.shape[0],) + (1,) * (x.ndim - 1)) > 0
      kwargs = {**kwargs, "mask": jnp.broadcast_to(m, x.shape)}
    return next_fun(*args, **kwargs)
  return nn.intercept_methods(interceptor)


def apply_network(model, params, batch_stats, x: jax.Array, *, train: bool,
                  mask: Optional[jax.Array] = None) -> tuple[jax.Array, Any]:
  """``(output, batch_stats)`` of ``model`` on ``x``.

  Stateless networks (``batch_stats == {}``) ignore ``train`` and ``mask``. With batch norm,
  ``train=True`` normalises by the statistics of the rows of ``x`` whose ``mask`` is 1 (all
  rows when ``mask`` is None) and returns the running statistics moved towards them
  (:math:`\\mu \\leftarrow 0.9\\mu + 0.1\\mu_B`, likewise the variance); ``train=False``
  normalises by the running statistics and returns them unchanged.

  Args:
    model: the Flax network.
    params: its ``'params'``.
    batch_stats: its ``'batch_stats'`` (``{}`` when it has none).
    x: ``(n, H, W, C)`` inputs.
    train: batch statistics (and their update) or the running ones.
    mask: optional ``(n,)`` 0/1 row weights (padding = 0) for the batch statistics.
  """
  if not batch_stats:
    return model.apply({"params": params}, x, train=train), batch_stats
  variables = {"params": params, "batch_stats": batch_stats}
  if not train:
    return model.apply(variables, x, train=False), batch_stats
  if mask is None:
    out, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  else:
    with batch_norm_mask(mask):
      out, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  return out, updated["batch_stats"]


def freeze_batch_stats(model, params, batch_stats, key: jax.Array, table: ClassTable) -> Any:
  """The reference's batch-norm step before matching: running statistics after one train-mode
  pass of :data:`BN_IMAGES_PER_CLASS` real images of every class (one joint batch).

  Returns ``batch_stats`` unchanged for a stateless network. The caller then evaluates the
  network with ``train=False`` (the frozen statistics).
  """
  if not batch_stats:
    return batch_stats
  x, mask = sample_class_batches(key, table, BN_IMAGES_PER_CLASS)
  _, batch_stats = apply_network(model, params, batch_stats, x.reshape((-1,) + x.shape[2:]),
                                 train=True, mask=mask.reshape(-1))
  return batch_stats


def train_network(model, params, batch_stats, net_state, net_opt: optax.GradientTransformation,
                  images: jax.Array, labels: jax.Array, key: jax.Array, epochs: int,
                  batch_size: int, augment: Optional[Callable] = None):
  """``epochs`` shuffled passes of minibatch training on ``(images, labels)``.

  The reference inner loop of DC / DSA: cross-entropy, ``batch_size`` images per minibatch
  (the last one masked where it runs past the set, in the loss and in batch-norm statistics),
  the network in train mode, the images detached (no gradient flows to them), each minibatch
  augmented with ``augment(key, x)`` when given.

  Args:
    model: the Flax network.
    params: its parameters.
    batch_stats: its batch-norm running statistics (``{}`` for a stateless network).
    net_state: ``net_opt``'s state.
    net_opt: the network optimizer.
    images: ``(n, H, W, C)`` synthetic images.
    labels: ``(n,)`` int32 classes.
    key: PRNG key (shuffles and augmentations).
    epochs: passes over the set.
    batch_size: minibatch size.
    augment: optional ``(key, x) -> x``.

  Returns:
    ``(params, batch_stats, net_state)`` after training.
  """
  images = jax.lax.stop_gradient(images)
  n = images.shape[0]
  bt = min(batch_size, n)
  nb = -(-n // bt)
  masked = nb * bt != n

  def epoch(carry, k):
    kp, ka = jax.random.split(k)
    perm = jnp.concatenate([jax.random.permutation(kp, n), jnp.zeros(nb * bt - n, jnp.int32)])
    mask = (jnp.arange(nb * bt) < n).astype(jnp.float32)

    def minibatch(carry, xs):
      params, batch_stats, net_state = carry
      idx, m, kb = xs
      x = images[idx]
      if augment is not None:
        x = augment(kb, x)

      def loss_fn(p):
        logits, stats = apply_network(model, p, batch_stats, x, train=True,
                                      mask=m if masked else None)
        return losses.softmax_cross_entropy(logits, labels[idx], m), stats

      g, batch_stats = jax.grad(loss_fn, has_aux=True)(params)
      updates, net_state = net_opt.update(g, net_state, params)
      return (optax.apply_updates(params, updates), batch_stats, net_state), None

    xs = (perm.reshape(nb, bt), mask.reshape(nb, bt), jax.random.split(ka, nb))
    return jax.lax.scan(minibatch, carry, xs)[0], None

  return jax.lax.scan(epoch, (params, batch_stats, net_state),
                      jax.random.split(key, epochs))[0]


# --------------------------------------------------------------------------- the DC distance

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
  this way. One-dimensional parameters (biases, normalisation scales) give 0, as in the
  reference.

  Args:
    g_real: gradient of one parameter on real data (any shape).
    g_syn: gradient of the same parameter on synthetic data.

  Returns:
    ``()`` distance in ``[0, 2 * out]``.
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
  """:math:`D` summed over the leaves of two parameter pytrees of the same structure."""
  leaves_s, tree_s = jax.tree_util.tree_flatten(grads_syn)
  leaves_r, tree_r = jax.tree_util.tree_flatten(grads_real)
  if tree_s != tree_r:
    raise ValueError("grads_syn and grads_real must have the same pytree structure.")
  return sum((distance_wb(r, s) for r, s in zip(leaves_r, leaves_s)), jnp.zeros(()))
