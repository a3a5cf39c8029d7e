"""Dataset Condensation with gradient matching (DC) on the algorithm contract.

Zhao, Mopuri, Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021.

DC learns ``images_per_class`` synthetic images per class so that, for networks met along a
training trajectory, the gradient of the loss on a synthetic class batch matches the gradient
on a real class batch:

.. math::
   \\min_S \\; \\mathbb{E}_{\\theta_0}\\Big[\\sum_{t=0}^{T-1} \\sum_{c=1}^{K}
   D\\big(\\nabla_\\theta \\ell(S_c; \\theta_t),\\,
     \\nabla_\\theta \\ell(B_c; \\theta_t)\\big)\\Big],

with :math:`B_c` a fresh batch of ``batch_real`` real images of class ``c`` and :math:`D` the
layer-wise cosine distance :func:`kip._src.matching.distance_wb` (one-dimensional parameters
contribute zero, as in the reference).

One step is one DC *iteration*: a freshly initialised network :math:`\\theta_0`; then
``outer_loop`` times: one update of the synthetic images on the class-summed distance (SGD,
``image_lr = 0.1``, momentum 0.5, its state kept across steps), followed (except after the
last) by ``inner_loop`` epochs of SGD (``net_lr = 0.01``, batch ``batch_train``) of the network
on the current synthetic set. ``outer_loop`` / ``inner_loop`` default to the paper's table
(:data:`PAPER_LOOPS`).

Networks with batch norm (``model_kwargs={'norm': 'batch'}``) are handled as the reference
``main.py`` does: before each image update, 16 real images of every class pass through the
network in train mode (moving its running statistics), and the matching gradients are taken
with those statistics frozen (eval mode); the inner loop trains in train mode
(:func:`kip._src.matching.freeze_batch_stats`).

::

    algorithm = make_dc(DCConfig(images_per_class=10, steps=1000))
    distilled = kip.methods.run(algorithm, dataset, key=0)   # or kip.baselines.distill_dc

The step's randomness is an RBG key derived from its key (``rbg_key``): ``k_net, k_loop``
draw the network and, per outer loop, the real batches, augmentations and shuffles (and,
with batch norm, the statistics batch: ``fold_in(k, 3)`` of that loop's key). DSA
(:mod:`kip._src.methods.dsa`) is this step with an augmentation strategy.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kip._src import augment as aug_lib
from kip._src import driver
from kip._src import losses
from kip._src import matching
from kip._src.algorithm import Algorithm, cached_step, config_dict
from kip._src.distilled import DistilledSet
from kip._src.random import rbg_key
from kip._src.sampling import ClassTable

__all__ = ["DCConfig", "DCState", "PAPER_LOOPS", "distill_dc", "get_loops", "make_dc",
           "make_gradient_matching", "matching_config_dict"]

logger = logging.getLogger(__name__)

# (outer_loop, inner_loop) per images-per-class, from the reference ``get_loops``.
PAPER_LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20),
                                           40: (40, 15), 50: (50, 10)}


def get_loops(images_per_class: int) -> tuple[int, int]:
  """The reference ``(outer_loop, inner_loop)`` for ``images_per_class``.

  Raises:
    ValueError: the paper defines no loops for this ``images_per_class``.
  """
  if images_per_class not in PAPER_LOOPS:
    raise ValueError(f"the DC paper defines outer/inner loops only for images_per_class in "
                     f"{sorted(PAPER_LOOPS)}, got {images_per_class}; set outer_loop=... and "
                     "inner_loop=... in the config explicitly.")
  return PAPER_LOOPS[images_per_class]


def matching_config_dict(config) -> dict[str, Any]:
  """JSON view of a DC / DSA / DM config (``model_kwargs`` as a dict)."""
  out = config_dict(config)
  out["model_kwargs"] = {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in config.model_kwargs}
  return out


@dataclasses.dataclass(frozen=True)
class DCConfig:
  """Hyperparameters of DC (defaults: the paper and the reference code).

  Attributes:
    images_per_class: synthetic images per class; the paper's loops exist for 1, 10, 20, 30,
      40, 50 (else set ``outer_loop`` and ``inner_loop``).
    steps: DC iterations (fresh networks); 1000 in the paper.
    model: ``kip.transfer`` model name (``get_model``); ``'convnet'`` is ConvNet-3.
    model_kwargs: overrides for ``get_model`` (e.g. ``{'width': 8, 'depth': 2}``); stored as a
      sorted tuple of pairs so the config stays hashable.
    image_optimizer: ``'sgd'`` (reference) or ``'adam'``, for the synthetic images.
    image_lr: its learning rate (reference ``lr_img = 0.1``).
    image_momentum: its momentum (SGD only; reference 0.5, PyTorch semantics).
    net_optimizer: ``'sgd'`` or ``'adam'``, for the inner-loop network training.
    net_lr: its learning rate (reference ``lr_net = 0.01``).
    net_momentum: its momentum (SGD only; reference 0.5: ``main.py``'s
      ``optimizer_net = torch.optim.SGD(net.parameters(), lr=args.lr_net, momentum=0.5)``).
      Results of this library before 2026-12-05 used 0 (``net_momentum=0.0`` reproduces
      them); at one image per class the paper's loops never train the network, so it has no
      effect there.
    batch_real: real images per class and outer loop (fewer if the class is smaller).
    batch_train: minibatch size of the inner-loop network training on the synthetic set.
    outer_loop: image updates per iteration; ``None`` takes :data:`PAPER_LOOPS`.
    inner_loop: network epochs on the synthetic set between image updates; ``None`` takes
      :data:`PAPER_LOOPS`.
    init: ``'real'`` (random real images of the class) or ``'noise'`` (standard normal). The
      reference script defaults to noise; the paper reports both give similar results.
  """
  images_per_class: int = 1
  steps: int = 1000
  model: str = "convnet"
  model_kwargs: Any = ()
  image_optimizer: str = "sgd"
  image_lr: float = 0.1
  image_momentum: float = 0.5
  net_optimizer: str = "sgd"
  net_lr: float = 0.01
  net_momentum: float = 0.5
  batch_real: int = 256
  batch_train: int = 256
  outer_loop: Optional[int] = None
  inner_loop: Optional[int] = None
  init: str = "real"

  def __post_init__(self):
    object.__setattr__(self, "model_kwargs", matching.freeze_kwargs(self.model_kwargs))
    matching.check_positive(self, "images_per_class", "steps", "batch_real", "batch_train")
    if self.init not in matching.INITS:
      raise ValueError(f"init={self.init!r}; use one of {matching.INITS}.")
    matching.check_optimizer_fields(self, "image")
    matching.check_optimizer_fields(self, "net")
    for name in ("outer_loop", "inner_loop"):
      v = getattr(self, name)
      if v is not None and v < 1:
        raise ValueError(f"{name}={v} must be >= 1 (or None for the paper's table).")
    self.loops()  # fails early on an images_per_class without paper loops

  def loops(self) -> tuple[int, int]:
    """``(outer_loop, inner_loop)``: the configured values, else :data:`PAPER_LOOPS`."""
    if self.outer_loop is not None and self.inner_loop is not None:
      return self.outer_loop, self.inner_loop
    outer, inner = get_loops(self.images_per_class)
    return self.outer_loop or outer, self.inner_loop or inner

  def to_dict(self) -> dict[str, Any]:
    """JSON view (for specs, checkpoints and ``DistilledSet.metadata``)."""
    return matching_config_dict(self)


class DCState(NamedTuple):
  """State of a DC / DSA run.

  Attributes:
    images: ``(K * ipc, H, W, C)`` synthetic images, class-major.
    opt_state: state of the image optimizer.
    count: ``()`` int32, completed iterations.
  """
  images: jax.Array
  opt_state: Any
  count: jax.Array


def _optimizers(config, image_optimizer, net_optimizer):
  img = image_optimizer or matching.make_optimizer(config.image_optimizer, config.image_lr,
                                                   config.image_momentum)
  net = net_optimizer or matching.make_optimizer(config.net_optimizer, config.net_lr,
                                                 config.net_momentum)
  return img, net


@functools.lru_cache(maxsize=16)
def _step_fn(config, image_optimizer, net_optimizer):
  """The jitted step of ``config``; cached so that equal configs (up to ``steps``) share one
  compilation, as a static jit argument did."""
  strategy = aug_lib.parse_strategy(getattr(config, "strategy", "none"))
  aug_config = getattr(config, "augment", aug_lib.AugmentConfig())
  ipc = config.images_per_class
  outer, inner = config.loops()
  img_opt, net_opt = _optimizers(config, image_optimizer, net_optimizer)
  train_aug = aug_lib.augment_fn(strategy, aug_config) if strategy else None

  def step(state: DCState, table: ClassTable, key: jax.Array):
    k = table.table.shape[0]
    n, h, w, c = state.images.shape
    if n != k * ipc or table.x.shape[1:] != state.images.shape[1:]:
      raise ValueError(f"state.images {state.images.shape} do not fit the training set "
                       f"{table.x.shape}: expected ({k} * {ipc}, H, W, C).")
    model = matching.make_model(config, k)
    labels = jnp.repeat(jnp.arange(k, dtype=jnp.int32), ipc)
    k_net, k_loop = jax.random.split(rbg_key(key))
    params, batch_stats = matching.init_network(model, k_net, (h, w, c))
    net_state = net_opt.init(params)

    def outer_body(carry, xs):
      images, img_state, params, batch_stats, net_state = carry
      ol, kk = xs
      k_real, k_aug, k_train = jax.random.split(kk, 3)
      # Batch norm: statistics of 16 real images per class, then frozen for the matching.
      frozen = matching.freeze_batch_stats(model, params, batch_stats, jax.random.fold_in(kk, 3),
                                           table)

      def grad_of(params, x, cls, mask=None):
        return jax.grad(lambda p: losses.softmax_cross_entropy(
            matching.apply_network(model, p, frozen, x, train=not frozen)[0], cls, mask))(params)

      x_real, m_real = matching.sample_class_batches(k_real, table, config.batch_real)
      classes = jnp.arange(k)
      # Siamese: one shared parameter draw per class for its real and its synthetic batch.
      aug_params = (jax.vmap(lambda kc: aug_lib.sample_params(kc, strategy, (), aug_config))(
          jax.random.split(k_aug, k)) if strategy else None)

      def real_grad(args):
        cls, xr, mr, p = args
        return grad_of(params, aug_lib.apply(xr, p) if strategy else xr, cls, mr)

      g_real = jax.lax.map(real_grad, (classes, x_real, m_real, aug_params))

      def loss_fn(images):
        def per_class(args):
          cls, xs_, p, gr = args
          return matching.match_loss(
              grad_of(params, aug_lib.apply(xs_, p) if strategy else xs_, cls), gr)

        return jnp.sum(jax.lax.map(per_class, (classes, images.reshape(k, ipc, h, w, c),
                                               aug_params, g_real)))

      loss, g = jax.value_and_grad(loss_fn)(images)
      updates, img_state = img_opt.update(g, img_state, images)
      images = optax.apply_updates(images, updates)
      if outer > 1:  # the network is trained between image updates, not after the last one
        params, batch_stats, net_state = jax.lax.cond(
            ol < outer - 1,
            lambda: matching.train_network(model, params, frozen, net_state, net_opt, images,
                                           labels, k_train, inner, config.batch_train,
                                           train_aug),
            lambda: (params, frozen, net_state))
      return (images, img_state, params, batch_stats, net_state), loss

    carry = (state.images, state.opt_state, params, batch_stats, net_state)
    (images, img_state, _, _, _), losses_ = jax.lax.scan(
        outer_body, carry, (jnp.arange(outer), jax.random.split(k_loop, outer)))
    return DCState(images, img_state, state.count + 1), {"loss": jnp.sum(losses_) / (k * outer)}

  return jax.jit(step)


def make_gradient_matching(name: str, config, *,
                           image_optimizer: Optional[optax.GradientTransformation] = None,
                           net_optimizer: Optional[optax.GradientTransformation] = None
                           ) -> Algorithm:
  """The gradient-matching :class:`~kip._src.algorithm.Algorithm` of DC (and DSA).

  Args:
    name: ``'dc'`` or ``'dsa'`` (the result's ``method``).
    config: :class:`DCConfig` or a ``DSAConfig`` (its ``strategy`` and ``augment`` apply).
    image_optimizer: an ``optax.GradientTransformation`` replacing the named image optimizer
      (recorded as ``'user'`` in the spec).
    net_optimizer: likewise for the inner-loop network optimizer.
  """
  ipc = config.images_per_class
  outer, inner = config.loops()
  img_opt, _ = _optimizers(config, image_optimizer, net_optimizer)
  step = cached_step(_step_fn, config, image_optimizer, net_optimizer)

  def init(key: jax.Array, dataset) -> DCState:
    matching.check_network(config, int(dataset.num_classes), dataset.x_train.shape[1:])
    images = matching.init_images(key, ClassTable.from_dataset(dataset), ipc, config.init)
    return DCState(images, img_opt.init(images), jnp.zeros((), jnp.int32))

  def result(state: DCState, dataset) -> DistilledSet:
    k = int(dataset.num_classes)
    meta = {"config": config.to_dict(), "images_per_class": ipc, "outer_loop": outer,
            "inner_loop": inner}
    return DistilledSet(images=np.asarray(state.images, np.float32),
                        labels=np.repeat(np.eye(k, dtype=np.float32), ipc, axis=0),
                        dataset=dataset.name, method=name,
                        preprocessing=getattr(dataset, "preprocessing", None), metadata=meta)

  spec = {"config": config.to_dict(),
          "image_optimizer": config.image_optimizer if image_optimizer is None else "user",
          "net_optimizer": config.net_optimizer if net_optimizer is None else "user"}
  hint = (f"lower the image learning rate (image_lr, now {config.image_lr}) or use "
          "init='real'")
  return Algorithm(name, init, ClassTable.from_dataset, step, result, spec, config.steps, hint,
                   watch_loss=False)


def make_dc(config: DCConfig, *, image_optimizer: Optional[optax.GradientTransformation] = None,
            net_optimizer: Optional[optax.GradientTransformation] = None) -> Algorithm:
  """The DC :class:`~kip._src.algorithm.Algorithm` (no augmentation).

  Its loss (the matching distance on a fresh random network every step) is not expected to
  decrease steadily, so the driver only stops it when the loss is non-finite.

  Args:
    config: :class:`DCConfig`.
    image_optimizer: optional ``optax.GradientTransformation`` replacing
      ``config.image_optimizer``.
    net_optimizer: optional ``optax.GradientTransformation`` replacing
      ``config.net_optimizer``.

  Raises:
    ValueError: ``config`` carries an augmentation strategy (that is DSA).
  """
  if aug_lib.parse_strategy(getattr(config, "strategy", "none")):
    raise ValueError(f"DC runs without augmentation but config.strategy={config.strategy!r}; "
                     "use DSA (make_dsa, kip.baselines.distill_dsa), or strategy='none'.")
  return make_gradient_matching("dc", config, image_optimizer=image_optimizer,
                                net_optimizer=net_optimizer)


def distill_dc(dataset, images_per_class: int, config: DCConfig = DCConfig(), *,
               key: Any, progress: bool = True, **run_options) -> DistilledSet:
  """Distils ``dataset`` with DC (Zhao, Mopuri, Bilen, ICLR 2021).

  Args:
    dataset: a ``kip.data.Dataset``.
    images_per_class: ``ipc`` (replaces ``config.images_per_class``).
    config: :class:`DCConfig`; ``config.steps`` iterations.
    key: PRNG key or ``int`` seed.
    progress: show progress.
    **run_options: passed to ``kip.methods.run`` (``checkpoint_dir``, ``resume``,
      ``time_budget``, ``callback``, ...).

  Returns:
    ``DistilledSet`` (``method='dc'``) of ``K * ipc`` images, class-major, one-hot labels;
    ``metadata`` holds the config, loops, seed and ``history`` (one loss per iteration).
  """
  config = dataclasses.replace(config, images_per_class=images_per_class)
  return driver.run(make_dc(config), dataset, key=key, progress=progress, **run_options)
