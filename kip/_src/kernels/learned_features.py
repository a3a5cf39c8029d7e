"""Learned-feature kernels (FRePo): KRR on the embeddings of a pool of networks trained online.

A pool of ``M`` finite networks :math:`f_m(x) = W_m h_m(x) + b_m` (any Flax model of
:mod:`kip._src.transfer.models` whose last layer is ``nn.Dense``) defines the kernel

.. math:: K_m(x, x') = h_m(x) \\cdot h_m(x'),

:math:`h_m` the input of network ``m``'s read-out (:func:`kip._src.features.readout_input`).
Unlike a random-feature kernel the networks are *trained*, on the support set itself, while the
support is distilled. At every KIP step (:func:`kip._src.methods.kip.make_kip`):

1. a network ``m`` is drawn uniformly from the pool (from the step key);
2. the support takes one optimizer step on the KRR loss with :math:`K_m` (the targets'
   features carry no gradient);
3. network ``m`` takes one online step on the *updated* support, over ``b = min(n_s,
   batch_size)`` support rows drawn without replacement: with ``online='frepo'`` (the default)
   one Adam step on :math:`\\tfrac{1}{2 b} \\sum_i \\lVert f_m(x_i) - y_i \\rVert^2`; with
   ``online='dc'`` one step of the DC-protocol evaluation's own training (below). Once it has
   taken more than ``reset_every`` steps it is re-initialised instead. The initial step counts
   are staggered,
   :math:`c_m = \\lfloor \\text{reset\\_every} / M \\rfloor \\cdot m`, so the pool always holds
   networks at every stage of training.

Defaults are FRePo's released ones, read from its code (github.com/yongchaoz/FRePo,
``script/distill.py`` and ``lib/datadistillation/frepo.py``): ``num_nn_state=10`` networks,
``max_online_updates=100``, online optimizer Adam with lr ``3e-4`` (``config.online``), online
batch ``min(n_s, 1000)`` (``get_sample_proto(bs=config.kernel.eval_batch_size)``), features =
the flattened input of the last dense layer (``output='feat_fc'``), ``K = h h^T`` with ridge
``1e-6 * tr(K)/n`` (``nfr``). FRePo's outer recipe (not part of the kernel): LAMB lr ``3e-4``
with cosine decay to 10 %, 1,024 targets per step, centred learned labels with a label-margin
penalty, MSE loss.

Deviations, named. The network: FRePo's ``Conv`` doubles its width per block (128/256/512
channels, no normalisation); the default here is the DC ConvNet-3 (``model='convnet'``: 128
channels in every block, instance norm), the network the DC-protocol transfer evaluates, and
about a third of the FLOPs on a CPU. Any ``get_model`` name and overrides can be given.
Networks with batch norm are refused (FRePo's ``has_bn`` path keeps running statistics per
network; not implemented here). And, as an option only, the online training:
``online='dc'`` trains the pool as the DC protocol (:func:`kip._src.transfer.recipes.get_recipe`
``('dc')``) trains the network that evaluates the set, so that the support is distilled for
the features that network passes through: softmax cross-entropy on the argmax of the support
labels, SGD with momentum 0.9 and coupled weight decay 5e-4
(:func:`kip._src.transfer.train.make_optimizer`), learning rate ``0.01`` divided by 10 after
half of the ``reset_every`` steps of each network's life (set ``reset_every`` to the
evaluation's step count, e.g. 300 for 300 epochs of one batch; the protocol's batches hold
256 rows, so set ``batch_size=256`` for larger supports). Not from FRePo's code.

Reference:
  Zhou, Nezhadarya, Ba, "Dataset Distillation using Neural Feature Regression" (FRePo),
  NeurIPS 2022.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from kip._src import losses
from kip._src.kernels.random_features import RandomFeatureKernel, _check_count

__all__ = ["FeaturePool", "LearnedFeatureKernel", "PoolKernel", "learned_features"]


class FeaturePool(NamedTuple):
  """The pool's networks: every leaf has a leading model axis ``M``.

  Attributes:
    params: the networks' ``'params'``.
    opt_state: their Adam states.
    count: ``(M,)`` int32, online steps each network has taken since its (re-)initialisation.
  """
  params: Any
  opt_state: Any
  count: jax.Array


def _pick(tree: Any, index: jax.Array) -> Any:
  return jax.tree_util.tree_map(lambda a: a[index], tree)


def _put(tree: Any, index: jax.Array, value: Any) -> Any:
  return jax.tree_util.tree_map(lambda a, v: a.at[index].set(v), tree, value)


@dataclasses.dataclass(frozen=True, eq=False)
class LearnedFeatureKernel:
  """A FRePo pool of networks trained online on the support set (see the module docstring).

  A learned kernel has state, so it is not a ``kernel_fn(x1, x2, get)``: KIP keeps the
  :class:`FeaturePool` in its own state and calls :meth:`init`, :meth:`features` and
  :meth:`update`; :meth:`frozen` turns a pool into an ordinary kernel (for evaluation).

  Attributes:
    model: the unbound Flax network (``num_classes`` outputs; last layer ``nn.Dense``).
    num_models: ``M``, networks in the pool.
    reset_every: online steps after which a network is re-initialised.
    learning_rate: step size of the online training (Adam for ``'frepo'``, SGD for ``'dc'``).
    batch_size: support rows per online step (all of them when fewer).
    online: ``'frepo'`` (Adam, MSE on the labels) or ``'dc'`` (the DC protocol's training).
    spec: JSON-serialisable description (``DistilledSet`` metadata).
  """
  model: Any
  num_models: int = 10
  reset_every: int = 100
  learning_rate: float = 3e-4
  batch_size: int = 1000
  online: str = "frepo"
  spec: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def _optimizer(self) -> optax.GradientTransformation:
    if self.online == "dc":
      from kip._src.transfer import recipes, train  # transfer imports the kernels
      recipe = recipes.get_recipe("dc", learning_rate=self.learning_rate)
      return train.make_optimizer(recipe, self.reset_every)
    return optax.adam(self.learning_rate)

  def _online_loss(self, out: jax.Array, y: jax.Array) -> jax.Array:
    if self.online == "dc":
      return losses.softmax_cross_entropy(out, jnp.argmax(y, axis=-1))
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))

  def _init_one(self, key: jax.Array, image_shape: Sequence[int]):
    dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    params = self.model.init(key, dummy, train=False)["params"]
    return params, self._optimizer().init(params)

  def check(self, image_shape: Sequence[int], num_classes: int) -> None:
    """Builds one network abstractly (no FLOPs) and checks what the pool needs of it.

    Raises:
      ValueError: the network cannot take ``(H, W, C)`` images, has batch-norm (or other)
        state, or does not output ``num_classes`` values.
    """
    shape = tuple(int(s) for s in image_shape)
    try:
      variables, out = jax.eval_shape(
          lambda: self.model.init_with_output(jax.random.PRNGKey(0),
                                              jnp.zeros((1,) + shape, jnp.float32),
                                              train=False)[::-1])
    except (TypeError, ValueError) as err:
      raise ValueError(f"the pool's network ({type(self.model).__name__}) cannot take images "
                       f"of shape {shape}: {err}") from err
    extra = sorted(set(variables) - {"params"})
    if extra:
      raise ValueError(f"the pool's network carries state {extra} (batch norm?); a learned-"
                       "feature kernel here trains stateless networks only: use "
                       "norm='instance' or norm='none'.")
    if out.shape[-1] != num_classes:
      raise ValueError(f"the pool's networks output {out.shape[-1]} values but the data set has "
                       f"{num_classes} classes; build the kernel with "
                       f"learned_features(num_classes={num_classes}).")

  def init(self, key: jax.Array, image_shape: Sequence[int]) -> FeaturePool:
    """``M`` freshly initialised networks for ``(H, W, C)`` images, counts staggered.

    Compiled once per kernel and image shape (Flax's initialisers run op by op otherwise,
    several seconds on a CPU).
    """
    return _init_pool(self, key, tuple(int(s) for s in image_shape))

  def select(self, pool: FeaturePool, index: jax.Array) -> Any:
    """The ``params`` of network ``index``."""
    return _pick(pool.params, index)

  def features(self, params: Any, x: jax.Array) -> jax.Array:
    """``(n, D)`` embeddings :math:`h(x)` (the read-out's input) of one network."""
    from kip._src.features import readout_input  # features imports the transfer models
    return readout_input(self.model, {"params": params}, x, train=False)

  gram = staticmethod(RandomFeatureKernel.gram)  # K = h_1 h_2^T; (M, n, D) stacks sum

  def update(self, pool: FeaturePool, index: jax.Array, key: jax.Array, x_s: jax.Array,
             y_s: jax.Array) -> FeaturePool:
    """Network ``index`` after one online step on ``(x_s, y_s)``, or re-initialised.

    Re-initialised (from ``key``, count 0) when its count exceeds ``reset_every`` (FRePo:
    ``nn_step > max_online_updates``); otherwise one step of the ``online`` training (Adam on
    the MSE of its outputs against ``y_s``, or the DC protocol's SGD on the cross-entropy
    against ``argmax(y_s)``) over ``min(n_s, batch_size)`` rows drawn without replacement.
    """
    x_s, y_s = jax.lax.stop_gradient(x_s), jax.lax.stop_gradient(y_s)
    params, opt_state = _pick(pool.params, index), _pick(pool.opt_state, index)
    count = pool.count[index]
    k_init, k_rows = jax.random.split(key)
    n = x_s.shape[0]
    b = min(n, self.batch_size)

    rows = jax.random.permutation(k_rows, n)[:b] if b < n else jnp.arange(n)
    xb, yb = x_s[rows], y_s[rows]

    def loss(p):
      return self._online_loss(self.model.apply({"params": p}, xb, train=True), yb)

    grads = jax.grad(loss)(params)
    updates, trained_opt = self._optimizer().update(grads, opt_state, params)
    trained = optax.apply_updates(params, updates)
    # Both branches are computed and one is selected: a fresh network costs one tiny forward
    # pass, while `lax.cond` made XLA's CPU backend run the training branch's convolutions
    # 25x slower (100 support images, ConvNet-3 width 128: 43 s vs 1.6 s per update).
    fresh, fresh_opt = self._init_one(k_init, x_s.shape[1:])
    reset = count > self.reset_every
    choose = lambda a, b: jax.tree_util.tree_map(  # noqa: E731
        lambda u, v: jnp.where(reset, u, v), a, b)
    p, o = choose(fresh, trained), choose(fresh_opt, trained_opt)
    c = jnp.where(reset, 0, count + 1).astype(jnp.int32)
    return FeaturePool(_put(pool.params, index, p), _put(pool.opt_state, index, o),
                       pool.count.at[index].set(c))

  def frozen(self, pool: FeaturePool) -> "PoolKernel":
    """The pool as a fixed kernel, the mean of its networks' kernels (for evaluation)."""
    return PoolKernel(self, pool.params)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_pool(kernel: LearnedFeatureKernel, key: jax.Array,
               image_shape: tuple[int, ...]) -> FeaturePool:
  keys = jax.random.split(key, kernel.num_models)
  params, opt_state = jax.vmap(lambda k: kernel._init_one(k, image_shape))(keys)
  stagger = kernel.reset_every // kernel.num_models
  count = stagger * jnp.arange(kernel.num_models, dtype=jnp.int32)
  return FeaturePool(params, opt_state, count)


@dataclasses.dataclass(frozen=True, eq=False)
class PoolKernel:
  """:math:`K(x, x') = \\frac{1}{M} \\sum_m h_m(x) \\cdot h_m(x')` over a pool's networks.

  An ordinary ``kernel_fn(x1, x2, get)`` (``get='nngp'`` by convention: it is a feature
  kernel), e.g. for :func:`kip._src.krr.predict`.
  """
  learned: LearnedFeatureKernel
  params: Any

  def __call__(self, x1: jax.Array, x2: Optional[jax.Array] = None, get: Any = "nngp"):
    del get  # one kernel

    def phi(x):
      m = self.learned.num_models
      f = jax.lax.map(lambda p: self.learned.features(p, x), self.params)  # (M, n, D)
      return f / jnp.sqrt(jnp.asarray(m, f.dtype))

    p1 = phi(jnp.asarray(x1, jnp.float32))
    p2 = p1 if x2 is None else phi(jnp.asarray(x2, jnp.float32))
    return LearnedFeatureKernel.gram(p1, p2)


_ONLINE_LR = {"frepo": 3e-4, "dc": 0.01}  # each online training's default step size


def learned_features(model: str = "convnet", num_classes: int = 10, *, num_models: int = 10,
                     reset_every: int = 100, learning_rate: Optional[float] = None,
                     batch_size: int = 1000, online: str = "frepo",
                     model_kwargs: Optional[Mapping[str, Any]] = None) -> LearnedFeatureKernel:
  """A FRePo learned-feature kernel: a pool of ``model`` networks trained on the support.

  Args:
    model: a :func:`kip._src.transfer.models.get_model` name (default ``'convnet'``, the DC
      ConvNet-3; FRePo's own network doubles its width per block, see the module docstring).
    num_classes: outputs of the networks (the data set's classes).
    num_models: networks in the pool (FRePo: 10).
    reset_every: online steps before a network is re-initialised (FRePo: 100).
    learning_rate: step size of the online training; ``None``: FRePo's Adam ``3e-4`` for
      ``online='frepo'``, the DC protocol's SGD ``0.01`` for ``online='dc'``.
    batch_size: support rows per online step (FRePo: 1000).
    online: how the pool trains on the support: ``'frepo'`` (FRePo: Adam on the MSE against
      the labels) or ``'dc'`` (the DC protocol's training of the evaluated network: SGD
      momentum 0.9, weight decay 5e-4, cross-entropy on the argmax labels, lr / 10 after
      ``reset_every // 2`` steps; see the module docstring).
    model_kwargs: attributes of the network (e.g. ``{'width': 64}``).

  Returns:
    A :class:`LearnedFeatureKernel`.

  Raises:
    ValueError: a count < 1, a learning rate that is not a positive number, an unknown
      ``online`` training, or an unknown model or model attribute.
  """
  from kip._src.transfer.models import get_model
  num_models = _check_count("num_models", num_models)
  reset_every = _check_count("reset_every", reset_every)
  batch_size = _check_count("batch_size", batch_size)
  num_classes = _check_count("num_classes", num_classes)
  if online not in _ONLINE_LR:
    raise ValueError(f"online={online!r} is not an online training; use one of "
                     f"{sorted(_ONLINE_LR)}.")
  if learning_rate is None:
    learning_rate = _ONLINE_LR[online]
  if not (isinstance(learning_rate, (int, float)) and learning_rate > 0
          and learning_rate < float("inf")):
    raise ValueError(f"learning_rate={learning_rate!r} must be a finite number > 0.")
  model_kwargs = dict(model_kwargs or {})
  net = get_model(model, num_classes, **model_kwargs)
  spec = {"architecture": "learned_features", "model": model, "num_classes": num_classes,
          "num_models": num_models, "reset_every": reset_every,
          "learning_rate": float(learning_rate), "batch_size": batch_size, "online": online,
          "model_kwargs": model_kwargs}
  return LearnedFeatureKernel(net, num_models, reset_every, float(learning_rate), batch_size,
                              online, spec)
