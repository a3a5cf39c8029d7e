"""Dataset Condensation with Distribution Matching (DM).

Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023.

DM matches, class by class, the mean embedding of real and synthetic images under randomly
initialised networks, with DSA's siamese augmentation:

.. math::
   \\min_S \\; \\mathbb{E}_{\\theta \\sim p_0,\\, \\omega}\\Big[\\sum_{c=1}^{K}
   \\Big\\lVert \\frac{1}{|B_c|}\\sum_{x \\in B_c} \\psi_\\theta(\\mathcal{A}_\\omega(x))
   - \\frac{1}{|S_c|}\\sum_{s \\in S_c} \\psi_\\theta(\\mathcal{A}_\\omega(s)) \\Big\\rVert^2\\Big],

where :math:`\\psi_\\theta` is the network's embedding (the flattened input of its final linear
read-out; ConvNet-3's ``embed`` in the reference), :math:`B_c` a fresh batch of
``batch_real`` real images of class ``c``, and :math:`\\omega` one augmentation draw shared by the
real and synthetic batch of a class. Every :func:`step` draws a new network; there is no
network training. Images are updated by SGD (``lr_img = 1.0``, momentum 0.5) on the loss
summed over classes; the reported ``loss`` is that sum divided by ``K`` as in the reference.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from kip._src.distilled import DistilledSet
from kip.baselines import augment as aug_lib
from kip.baselines import dc

__all__ = ["DMConfig", "DMState", "distill_dm", "embed", "init", "masked_mean",
           "mean_embedding_loss", "step"]


@dataclasses.dataclass(frozen=True)
class DMConfig:
  """Hyperparameters of DM (defaults: the paper and the reference ``main_DM.py``).

  Attributes:
    iterations: image updates, each with a fresh random network (20,000 in the reference).
    model: ``kip.transfer`` model name (``get_model``); ``'convnet'`` is ConvNet-3.
    model_kwargs: overrides for ``get_model`` (stored as a sorted tuple of pairs).
    lr_img: learning rate of the images (used when ``image_optimizer`` is None).
    momentum_img: momentum of the image SGD.
    batch_real: real images per class and iteration (fewer if the class is smaller).
    init: ``'real'`` (default) or ``'noise'``.
    strategy: DSA augmentation strategy (``'none'`` disables it).
    augment: strengths of the DSA transformations.
    image_optimizer: any ``optax.GradientTransformation``; ``None`` means
      ``optax.sgd(lr_img, momentum_img)``.
  """
  iterations: int = 20000
  model: str = "convnet"
  model_kwargs: Any = ()
  lr_img: float = 1.0
  momentum_img: float = 0.5
  batch_real: int = 256
  init: str = "real"
  strategy: str = aug_lib.DEFAULT_STRATEGY
  augment: aug_lib.AugmentConfig = aug_lib.AugmentConfig()
  image_optimizer: optax.GradientTransformation | None = None

  def __post_init__(self):
    object.__setattr__(self, "model_kwargs", dc.freeze_kwargs(self.model_kwargs))
    aug_lib.parse_strategy(self.strategy)
    if self.init not in ("real", "noise"):
      raise ValueError(f"init={self.init!r}; use 'real' or 'noise'.")
    for name in ("iterations", "batch_real"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")

  def get_image_optimizer(self) -> optax.GradientTransformation:
    if self.image_optimizer is not None:
      return self.image_optimizer
    return optax.sgd(self.lr_img, momentum=self.momentum_img or None)

  def to_dict(self) -> dict[str, Any]:
    """JSON-friendly view for ``DistilledSet.metadata``."""
    return dc.config_to_dict(self)


class DMState(NamedTuple):
  """State of a DM run.

  Attributes:
    images: ``(K * ipc, H, W, C)`` synthetic images, class-major.
    opt_state: state of the image optimizer.
    iteration: ``()`` int32, completed iterations.
  """
  images: jax.Array
  opt_state: Any
  iteration: jax.Array


def embed(model: nn.Module, params, x: jax.Array) -> jax.Array:
  """Penultimate embedding: the flattened input of the model's last ``nn.Dense``.

  Captured with ``flax.linen.intercept_methods``, so any ``kip.transfer`` model ending in a
  linear read-out works (for ConvNet this is the reference ``ConvNet.embed``).

  Args:
    model: a Flax module.
    params: its ``'params'`` collection.
    x: ``(n, H, W, C)`` images.

  Returns:
    ``(n, d)`` features.
  """
  captured = []

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
      captured.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    model.apply({"params": params}, x, train=True)  # the reference embeds in train mode
  if not captured:
    raise ValueError(f"{type(model).__name__} has no nn.Dense read-out whose input could be "
                     "used as the embedding; DM needs a network ending in a linear layer.")
  h = captured[-1]
  return h.reshape(h.shape[0], -1)


def masked_mean(emb: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of the rows of ``emb`` ``(B, d)`` with 0/1 weights ``mask`` ``(B,)`` (padding = 0)."""
  return jnp.sum(emb * mask[:, None], 0) / jnp.maximum(jnp.sum(mask), 1.0)


def mean_embedding_loss(mean_real: jax.Array, emb_syn: jax.Array) -> jax.Array:
  """:math:`\\lVert \\bar e_{real} - \\mathrm{mean}(e_{syn})\\rVert^2` for one class.

  Args:
    mean_real: ``(d,)`` mean real embedding (see :func:`masked_mean`).
    emb_syn: ``(ipc, d)`` synthetic embeddings.
  """
  return jnp.sum((mean_real - jnp.mean(emb_syn, 0)) ** 2)


def init(key: jax.Array, dataset, images_per_class: int, config: DMConfig = DMConfig(), *,
         pool: dc.ClassPool | None = None) -> DMState:
  """Initial :class:`DMState` (images from ``config.init``, fresh optimizer state).

  Args:
    key: PRNG key for the initial images.
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``ipc``.
    config: :class:`DMConfig`.
    pool: ``dc.class_pool(dataset)`` if already built (saves a copy of the training set).
  """
  images, opt_state = dc.prepare_init(key, dataset, images_per_class, config, pool)
  return DMState(images, opt_state, jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnames=("config",))
def step(state: DMState, real: dc.ClassPool, key: jax.Array, config: DMConfig = DMConfig()
         ) -> tuple[DMState, dict[str, jax.Array]]:
  """One DM iteration: a new random network, one image update; jitted.

  Args:
    state: :class:`DMState`.
    real: ``kip.baselines.dc.ClassPool`` of the real training set.
    key: PRNG key (network, real batches, augmentation).
    config: :class:`DMConfig` (static).

  Returns:
    ``(new_state, metrics)``; ``metrics['loss']`` is the class-summed loss before the update
    divided by ``K``.
  """
  k = real.images.shape[0]
  n, h, w, c = state.images.shape
  if n % k or real.images.shape[2:] != state.images.shape[1:]:
    raise ValueError(f"state.images {state.images.shape} do not fit the real pool "
                     f"{real.images.shape}: expected (K * ipc, H, W, C) with K = {k}.")
  ipc = n // k
  model = dc.make_model(config, k)
  strategy = aug_lib.parse_strategy(config.strategy)
  k_net, k_real, k_aug = jax.random.split(dc.step_key(key), 3)
  params = dc.init_network(model, k_net, (h, w, c))
  x_real, m_real = dc.sample_class_batches(k_real, real, config.batch_real)

  # Siamese: one shared parameter draw per class for its real and its synthetic batch.
  aug_params = (jax.vmap(lambda kc: aug_lib.sample_params(kc, strategy, (), config.augment))(
      jax.random.split(k_aug, k)) if strategy else None)

  def real_mean(args):
    xr, mr, p = args
    return masked_mean(embed(model, params, aug_lib.apply(xr, p) if strategy else xr), mr)

  mean_real = jax.lax.map(real_mean, (x_real, m_real, aug_params))

  def loss_fn(images):
    def per_class(args):
      xs, p, mu = args
      return mean_embedding_loss(mu, embed(model, params,
                                           aug_lib.apply(xs, p) if strategy else xs))

    return jnp.sum(jax.lax.map(per_class, (images.reshape(k, ipc, h, w, c), aug_params,
                                           mean_real)))

  loss, g = jax.value_and_grad(loss_fn)(state.images)
  opt = config.get_image_optimizer()
  updates, opt_state = opt.update(g, state.opt_state, state.images)
  images = optax.apply_updates(state.images, updates)
  return DMState(images, opt_state, state.iteration + 1), {"loss": loss / k}


def distill_dm(dataset, images_per_class: int, config: DMConfig = DMConfig(), *, key,
               progress: bool = True) -> DistilledSet:
  """Distils ``dataset`` with DM (Zhao & Bilen, WACV 2023).

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``ipc``.
    config: :class:`DMConfig`.
    key: PRNG key or ``int`` seed.
    progress: show a ``tqdm`` bar.

  Returns:
    ``DistilledSet`` (``method='dm'``) of ``K * ipc`` images, class-major, one-hot labels;
    ``metadata`` holds the config, seed and ``loss_history``.
  """
  return dc.run("dm", dataset, images_per_class, config, key, progress, init, step)
