"""Dataset Condensation with Distribution Matching (DM) on the algorithm contract.

Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023.

DM matches, class by class, the mean embedding of real and synthetic images under randomly
initialised networks, with DSA's siamese augmentation:

.. math::
   \\min_S \\; \\mathbb{E}_{\\theta \\sim p_0,\\, \\omega}\\Big[\\sum_{c=1}^{K}
   \\Big\\lVert \\frac{1}{|B_c|}\\sum_{x \\in B_c} \\psi_\\theta(\\mathcal{A}_\\omega(x))
   - \\frac{1}{|S_c|}\\sum_{s \\in S_c} \\psi_\\theta(\\mathcal{A}_\\omega(s)) \\Big\\rVert^2\\Big],

where :math:`\\psi_\\theta` is the network's embedding (the flattened input of its final linear
read-out, :func:`kip._src.features.readout_input`; ConvNet-3's ``embed`` in the reference),
:math:`B_c` a fresh batch of ``batch_real`` real images of class ``c``, and :math:`\\omega` one
augmentation draw shared by the real and synthetic batch of a class. Every step draws a new
network; there is no network training. Images are updated by SGD (``image_lr = 1.0``,
momentum 0.5) on the loss summed over classes; the reported ``loss`` is that sum divided by
``K`` as in the reference.

With batch norm (``model_kwargs={'norm': 'batch'}``, the reference's ``ConvNetBN``), the real
images of all classes are embedded as one train-mode batch and the synthetic images as another
(each normalised by its own batch statistics; padding rows of small classes are masked out of
them), as ``main_DM.py`` does; the per-class means are then matched as above.

The step's randomness is an RBG key derived from its key: ``k_net, k_real, k_aug``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kip._src import augment as aug_lib
from kip._src import driver
from kip._src import matching
from kip._src.algorithm import Algorithm, cached_step
from kip._src.distilled import DistilledSet
from kip._src.features import readout_input
from kip._src.methods.dc import DCState, matching_config_dict
from kip._src.random import rbg_key
from kip._src.sampling import ClassTable

__all__ = ["DMConfig", "DMState", "distill_dm", "embed", "make_dm", "masked_mean",
           "mean_embedding_loss"]


@dataclasses.dataclass(frozen=True)
class DMConfig:
  """Hyperparameters of DM (defaults: the paper and the reference ``main_DM.py``).

  Attributes:
    images_per_class: synthetic images per class.
    steps: image updates, each with a fresh random network (20,000 in the reference).
    model: ``kip.transfer`` model name (``get_model``); ``'convnet'`` is ConvNet-3.
    model_kwargs: overrides for ``get_model`` (stored as a sorted tuple of pairs).
    image_optimizer: ``'sgd'`` (reference) or ``'adam'``.
    image_lr: its learning rate (reference ``lr_img = 1.0``).
    image_momentum: its momentum (SGD only; reference 0.5).
    batch_real: real images per class and step (fewer if the class is smaller).
    init: ``'real'`` (reference default) or ``'noise'``.
    strategy: DSA augmentation strategy (``'none'`` disables it).
    augment: strengths of the DSA transformations.
  """
  images_per_class: int = 1
  steps: int = 20000
  model: str = "convnet"
  model_kwargs: Any = ()
  image_optimizer: str = "sgd"
  image_lr: float = 1.0
  image_momentum: float = 0.5
  batch_real: int = 256
  init: str = "real"
  strategy: str = aug_lib.DEFAULT_STRATEGY
  augment: aug_lib.AugmentConfig = aug_lib.AugmentConfig()

  def __post_init__(self):
    object.__setattr__(self, "model_kwargs", matching.freeze_kwargs(self.model_kwargs))
    matching.check_positive(self, "images_per_class", "steps", "batch_real")
    matching.check_optimizer_fields(self, "image")
    aug_lib.parse_strategy(self.strategy)
    if self.init not in matching.INITS:
      raise ValueError(f"init={self.init!r}; use one of {matching.INITS}.")
    if not isinstance(self.augment, aug_lib.AugmentConfig):
      raise ValueError(f"augment must be an AugmentConfig; got {type(self.augment).__name__}.")

  def to_dict(self) -> dict[str, Any]:
    """JSON view (for specs, checkpoints and ``DistilledSet.metadata``)."""
    return matching_config_dict(self)


DMState = DCState  # synthetic images, image-optimizer state, count (as DC)


def embed(model: nn.Module, params, x: jax.Array, batch_stats: Any = None,
          mask: Optional[jax.Array] = None) -> jax.Array:
  """:math:`\\psi_\\theta(x)`: the flattened read-out input, in train mode as the reference.

  Args:
    model: a Flax module ending in ``nn.Dense``.
    params: its ``'params'`` collection.
    x: ``(n, H, W, C)`` images.
    batch_stats: its ``'batch_stats'`` for batch norm (``None`` / ``{}``: stateless). In train
      mode batch norm uses the statistics of ``x`` itself (the reference's ``ConvNetBN``).
    mask: optional ``(n,)`` 0/1 rows (padding = 0) left out of those statistics.

  Returns:
    ``(n, d)`` features.
  """
  if not batch_stats:
    return readout_input(model, {"params": params}, x, train=True)
  variables = {"params": params, "batch_stats": batch_stats}
  if mask is None:
    return readout_input(model, variables, x, train=True, mutable=["batch_stats"])
  with matching.batch_norm_mask(mask):
    return readout_input(model, variables, x, train=True, mutable=["batch_stats"])


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


def _image_optimizer(config: DMConfig, image_optimizer):
  return image_optimizer or matching.make_optimizer(config.image_optimizer, config.image_lr,
                                                    config.image_momentum)


@functools.lru_cache(maxsize=16)
def _step_fn(config: DMConfig, image_optimizer):
  """The jitted step of ``config``; cached so that equal configs (up to ``steps``) share one
  compilation, as a static jit argument did."""
  strategy = aug_lib.parse_strategy(config.strategy)
  ipc = config.images_per_class
  opt = _image_optimizer(config, image_optimizer)

  def step(state: DMState, table: ClassTable, key: jax.Array):
    k = table.table.shape[0]
    n, h, w, c = state.images.shape
    if n != k * ipc or table.x.shape[1:] != state.images.shape[1:]:
      raise ValueError(f"state.images {state.images.shape} do not fit the training set "
                       f"{table.x.shape}: expected ({k} * {ipc}, H, W, C).")
    model = matching.make_model(config, k)
    k_net, k_real, k_aug = jax.random.split(rbg_key(key), 3)
    params, batch_stats = matching.init_network(model, k_net, (h, w, c))
    x_real, m_real = matching.sample_class_batches(k_real, table, config.batch_real)

    # Siamese: one shared parameter draw per class for its real and its synthetic batch.
    aug_params = (jax.vmap(lambda kc: aug_lib.sample_params(kc, strategy, (), config.augment))(
        jax.random.split(k_aug, k)) if strategy else None)

    def augmented(x, p):
      return aug_lib.apply(x, p) if strategy else x

    if batch_stats:  # batch norm: one joint batch of every class's real, then synthetic images
      b = x_real.shape[1]
      xr = jax.vmap(augmented)(x_real, aug_params) if strategy else x_real
      emb = embed(model, params, xr.reshape((k * b, h, w, c)), batch_stats, m_real.reshape(-1))
      mean_real = jax.vmap(masked_mean)(emb.reshape(k, b, -1), m_real)

      def loss_fn(images):
        xs = images.reshape(k, ipc, h, w, c)
        xs = jax.vmap(augmented)(xs, aug_params) if strategy else xs
        e = embed(model, params, xs.reshape((k * ipc, h, w, c)), batch_stats)
        return jnp.sum(jax.vmap(mean_embedding_loss)(mean_real, e.reshape(k, ipc, -1)))
    else:
      def real_mean(args):
        xr, mr, p = args
        return masked_mean(embed(model, params, augmented(xr, p)), mr)

      mean_real = jax.lax.map(real_mean, (x_real, m_real, aug_params))

      def loss_fn(images):
        def per_class(args):
          xs, p, mu = args
          return mean_embedding_loss(mu, embed(model, params, augmented(xs, p)))

        return jnp.sum(jax.lax.map(per_class, (images.reshape(k, ipc, h, w, c), aug_params,
                                               mean_real)))

    loss, g = jax.value_and_grad(loss_fn)(state.images)
    updates, opt_state = opt.update(g, state.opt_state, state.images)
    images = optax.apply_updates(state.images, updates)
    return DMState(images, opt_state, state.count + 1), {"loss": loss / k}

  return jax.jit(step)


def make_dm(config: DMConfig, *,
            image_optimizer: Optional[optax.GradientTransformation] = None) -> Algorithm:
  """The DM :class:`~kip._src.algorithm.Algorithm`.

  Its loss is measured on a fresh random network every step, so the driver only stops it when
  the loss is non-finite (``watch_loss=False``).

  Args:
    config: :class:`DMConfig`.
    image_optimizer: optional ``optax.GradientTransformation`` replacing
      ``config.image_optimizer`` (recorded as ``'user'`` in the spec).
  """
  ipc = config.images_per_class
  opt = _image_optimizer(config, image_optimizer)
  step = cached_step(_step_fn, config, image_optimizer)

  def init(key: jax.Array, dataset) -> DMState:
    matching.check_network(config, int(dataset.num_classes), dataset.x_train.shape[1:])
    images = matching.init_images(key, ClassTable.from_dataset(dataset), ipc, config.init)
    return DMState(images, opt.init(images), jnp.zeros((), jnp.int32))

  def result(state: DMState, dataset) -> DistilledSet:
    k = int(dataset.num_classes)
    meta = {"config": config.to_dict(), "images_per_class": ipc}
    return DistilledSet(images=np.asarray(state.images, np.float32),
                        labels=np.repeat(np.eye(k, dtype=np.float32), ipc, axis=0),
                        dataset=dataset.name, method="dm",
                        preprocessing=getattr(dataset, "preprocessing", None), metadata=meta)

  spec = {"config": config.to_dict(),
          "image_optimizer": config.image_optimizer if image_optimizer is None else "user"}
  hint = f"lower the image learning rate (image_lr, now {config.image_lr})"
  return Algorithm("dm", init, ClassTable.from_dataset, step, result, spec, config.steps, hint,
                   watch_loss=False)


def distill_dm(dataset, images_per_class: int, config: DMConfig = DMConfig(), *,
               key: Any, progress: bool = True, **run_options) -> DistilledSet:
  """Distils ``dataset`` with DM (Zhao & Bilen, WACV 2023).

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``ipc`` (replaces ``config.images_per_class``).
    config: :class:`DMConfig`; ``config.steps`` image updates.
    key: PRNG key or ``int`` seed.
    progress: show progress.
    **run_options: passed to ``kip.methods.run`` (``checkpoint_dir``, ``resume``,
      ``time_budget``, ``callback``, ...).

  Returns:
    ``DistilledSet`` (``method='dm'``) of ``K * ipc`` images, class-major, one-hot labels;
    ``metadata`` holds the config, seed and ``history``.
  """
  config = dataclasses.replace(config, images_per_class=images_per_class)
  return driver.run(make_dm(config), dataset, key=key, progress=progress, **run_options)
