"""Unrolled gradient descent on a synthetic set: the inner loop of DD and of DD poisoning.

Dataset Distillation (Wang, Zhu, Torralba, Efros, "Dataset Distillation", arXiv:1811.10959,
2018) and its data-poisoning variant train a network on a few synthetic images for
:math:`T = s \\cdot E` gradient steps and back-propagate a loss on real data through all of
them. The pieces both share live here:

* **The inner loop** (:func:`unrolled_sgd`): with :math:`s` synthetic batches
  :math:`(\\tilde x_j, \\tilde y_j)`, :math:`j = 0, \\dots, s-1`, and the cyclic schedule
  :math:`i(k) = k \\bmod s` (:func:`cyclic_schedule`),

  .. math::
      \\theta_{k+1} = \\theta_k - \\eta_k\\, \\nabla_\\theta\\,
          \\ell\\big(\\tilde x_{i(k)}, \\tilde y_{i(k)}; \\theta_k\\big),
      \\qquad k = 0, \\dots, T-1,

  with :math:`\\ell` the softmax cross-entropy (:func:`kip._src.losses.softmax_cross_entropy`).
  The reference's ``distill_steps`` is :math:`s`, ``distill_epochs`` is :math:`E`, and
  ``distilled_images_per_class_per_step`` is the number of images of each class in one batch
  (SsnL/dataset-distillation ``train_distilled_image.py``: ``get_steps`` cycles
  ``zip(self.data, self.labels)`` ``distill_epochs`` times). :math:`s = 1` uses every image in
  every step. The loop is a ``jax.lax.scan``; with ``remat`` its body is ``jax.checkpoint``-ed,
  so the backward pass stores only the :math:`T` parameter vectors.
* **Step sizes** (:func:`step_sizes`, :func:`raw_step_sizes`): one learned
  :math:`\\eta_k > 0` per inner step, :math:`\\eta_k = \\operatorname{softplus}(\\rho_k)` (the
  reference's ``F.softplus(self.raw_distill_lrs)``, initialised by "undoing the softplus":
  :math:`\\rho = \\log(e^{\\eta_0} - 1)`, :math:`\\eta_0` = ``distill_lr`` = 0.02), or
  :math:`e^{\\rho_k}`.
* **Image layout** (:func:`arrange_classes`): synthetic images are stored batch by batch, and
  class by class inside a batch, as the reference's ``self.data`` list of per-step tensors.
* **Networks** (:func:`build_network`, :func:`init_params`): a ``kip.transfer`` preset that
  is stateless (a pure ``apply(variables, x)`` to differentiate through) and accepts the data's
  image shape, initialised either as the reference (``'xavier'``: every convolution and dense
  kernel :math:`W \\sim \\mathcal N(0, 2 / (f_\\mathrm{in} + f_\\mathrm{out}))`, every bias 0,
  normalisation scales 1: ``networks/utils.py`` ``init_weights`` with ``--init xavier
  --init_param 1``) or with the network's own initialiser (``'pytorch'``: PyTorch's default
  uniform for this library's presets).
* **The outer update** (:func:`outer_optimizer`, :func:`outer_learning_rate`): Adam with
  :math:`\\beta_1 = 0.5, \\beta_2 = 0.999` and the learning rate multiplied by
  ``decay_factor`` every ``decay_epochs`` epochs of real data (reference:
  ``optim.Adam(self.params, lr=state.lr, betas=(0.5, 0.999))`` and
  ``optim.lr_scheduler.StepLR(step_size=decay_epochs, gamma=decay_factor)``, stepped once per
  epoch).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kip._src import losses

__all__ = ["PARAMETERIZATIONS", "INIT_SCHEMES", "ApplyFn", "step_sizes", "raw_step_sizes",
           "cyclic_schedule", "arrange_classes", "batch_major", "unrolled_sgd",
           "build_network", "check_network", "init_params", "xavier_normal", "apply_fn",
           "outer_optimizer", "outer_learning_rate", "steps_per_epoch", "reference_steps"]

PARAMETERIZATIONS = ("softplus", "exp")
INIT_SCHEMES = ("xavier", "pytorch")

ApplyFn = Callable[[Any, jax.Array], jax.Array]


# ----------------------------------------------------------------------------- step sizes
def step_sizes(raw: jax.Array, parameterization: str = "softplus") -> jax.Array:
  """Positive step sizes :math:`\\eta = \\operatorname{softplus}(\\rho)` or :math:`e^{\\rho}`.

  Args:
    raw: ``(T,)`` unconstrained parameters :math:`\\rho`.
    parameterization: ``'softplus'`` (the reference) or ``'exp'``.

  Returns:
    ``(T,)`` step sizes.
  """
  _check_parameterization(parameterization)
  return jax.nn.softplus(raw) if parameterization == "softplus" else jnp.exp(raw)


def raw_step_sizes(step_size: float, num_steps: int, parameterization: str = "softplus"
                   ) -> jax.Array:
  """``(num_steps,)`` parameters :math:`\\rho` whose :func:`step_sizes` all equal ``step_size``.

  :math:`\\rho = \\log(e^{\\eta} - 1)` for softplus (the reference's ``expm1_().log_()``),
  :math:`\\log \\eta` for exp.

  Raises:
    ValueError: ``step_size`` not positive and finite.
  """
  _check_parameterization(parameterization)
  if not (np.isfinite(step_size) and step_size > 0):
    raise ValueError(f"step size {step_size!r} must be a positive finite number.")
  raw = float(np.log(np.expm1(step_size))) if parameterization == "softplus" \
      else float(np.log(step_size))
  return jnp.full((int(num_steps),), raw, jnp.float32)


def _check_parameterization(parameterization: str) -> None:
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(f"step-size parameterization {parameterization!r} is not known; use one "
                     f"of {PARAMETERIZATIONS}.")


# ----------------------------------------------------------------------------- layout
def cyclic_schedule(num_inner_steps: int, num_batches: int) -> np.ndarray:
  """The batch of every inner step, :math:`i(k) = k \\bmod s`: ``(T,)`` int32."""
  return (np.arange(int(num_inner_steps)) % int(num_batches)).astype(np.int32)


def arrange_classes(images_per_class: int, num_classes: int, num_batches: int) -> np.ndarray:
  """Class of every synthetic image, batch-major: ``(K * ipc,)`` int32.

  Batch ``j`` holds ``ipc / s`` images of every class, class by class, so the layout with
  ``s = 1`` is plain class-major (``ipc`` images of class 0, then of class 1, ...).

  Args:
    images_per_class: ``ipc``, synthetic images of each class in all.
    num_classes: ``K``.
    num_batches: ``s``, the number of synthetic batches the inner steps cycle through.

  Raises:
    ValueError: ``s > ipc`` (a batch would hold no image of a class) or ``ipc`` not a
      multiple of ``s``; the message names both and the values that would work.
  """
  ipc, s = int(images_per_class), int(num_batches)
  if s < 1 or ipc < 1:
    raise ValueError(f"images_per_class={ipc} and distill_steps={s} must both be >= 1.")
  if s > ipc:
    raise ValueError(
        f"the cyclic schedule has distill_steps={s} synthetic batches but only "
        f"images_per_class={ipc} images per class, so a batch would hold no image of a class; "
        f"use distill_steps <= {ipc} (e.g. distill_steps={ipc}: one image per class per step) "
        f"or images_per_class >= {s}.")
  if ipc % s:
    lower = max(d for d in range(1, s + 1) if ipc % d == 0)
    raise ValueError(
        f"images_per_class={ipc} is not a multiple of distill_steps={s}: every synthetic batch "
        f"holds the same number of images per class; use images_per_class={s * (ipc // s)} "
        f"or {s * (ipc // s + 1)}, or distill_steps={lower}.")
  return np.tile(np.repeat(np.arange(num_classes), ipc // s), s).astype(np.int32)


def batch_major(class_major: np.ndarray, num_classes: int, num_batches: int) -> np.ndarray:
  """Reorders ``(K * ipc, ...)`` class-major rows into the batch-major layout of
  :func:`arrange_classes`."""
  x = np.asarray(class_major)
  per = x.shape[0] // (num_classes * num_batches)
  x = x.reshape((num_classes, num_batches, per) + x.shape[1:])
  return np.swapaxes(x, 0, 1).reshape((-1,) + x.shape[3:])


# ----------------------------------------------------------------------------- inner loop
def unrolled_sgd(apply: ApplyFn, params0: Any, images: jax.Array, labels: jax.Array,
                 lrs: jax.Array, *, num_batches: int = 1, remat: bool = True) -> Any:
  """:math:`T` = ``len(lrs)`` gradient steps on the synthetic set, cycling through its batches.

  .. math::
      \\theta_{k+1} = \\theta_k - \\eta_k \\nabla_\\theta
          \\ell(\\tilde x_{k \\bmod s}, \\tilde y_{k \\bmod s}; \\theta_k)

  Differentiable with respect to ``params0``, ``images``, ``labels`` (soft) and ``lrs``
  (second order, through :math:`\\nabla_\\theta \\ell`).

  Args:
    apply: ``apply(params, x) -> logits``.
    params0: :math:`\\theta_0` (any pytree).
    images: ``(n, H, W, C)``: ``s`` consecutive batches of ``n / s`` images.
    labels: ``(n,)`` int classes or ``(n, K)`` target distributions, in the same order.
    lrs: ``(T,)`` step sizes :math:`\\eta_k`.
    num_batches: ``s`` (1: every image in every step).
    remat: ``jax.checkpoint`` each step (memory :math:`O(T |\\theta|)`; recomputes the
      activations on the backward pass).

  Returns:
    :math:`\\theta_T`, with the structure of ``params0``.

  Raises:
    ValueError: ``n`` not a multiple of ``s``, or labels not matching the images.
  """
  n, s = images.shape[0], int(num_batches)
  if s < 1 or n % s:
    raise ValueError(f"{n} synthetic images do not split into num_batches={s} equal batches.")
  if labels.shape[0] != n:
    raise ValueError(f"{labels.shape[0]} labels for {n} synthetic images; they must match.")
  xs_img = images.reshape((s, n // s) + images.shape[1:])
  xs_lab = labels.reshape((s, n // s) + labels.shape[1:])

  def body(params, xs):
    lr, i = xs
    x, y = xs_img[i], xs_lab[i]
    grads = jax.grad(lambda p: losses.softmax_cross_entropy(apply(p, x), y))(params)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), None

  if remat:
    body = jax.checkpoint(body, prevent_cse=False)
  schedule = jnp.asarray(cyclic_schedule(lrs.shape[0], s))
  params, _ = jax.lax.scan(body, params0, (lrs, schedule))
  return params


# ----------------------------------------------------------------------------- networks
def build_network(name: str, kwargs: Sequence[tuple[str, Any]], num_classes: int,
                  image_shape: Sequence[int]) -> nn.Module:
  """The ``kip.transfer`` preset ``name`` with ``kwargs``, checked by :func:`check_network`."""
  from kip._src.transfer.models import get_model
  model = get_model(name, num_classes, **dict(kwargs))
  check_network(model, name, image_shape, num_classes)
  return model


def check_network(model: nn.Module, name: str, image_shape: Sequence[int],
                  num_classes: int) -> None:
  """Checks (abstractly, no FLOPs) that ``model`` is stateless and accepts ``image_shape``.

  Raises:
    ValueError: the network carries state besides ``'params'`` (batch norm), fails on or
      collapses (a zero-sized layer) images of ``image_shape``, or does not return
      ``num_classes`` logits.
  """
  shape = tuple(int(d) for d in image_shape)
  dummy = jnp.zeros((1,) + shape, jnp.float32)
  try:
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy, train=False))
    out = jax.eval_shape(lambda v: model.apply(v, dummy, train=False), variables)
  except (TypeError, ValueError, ZeroDivisionError) as e:
    raise ValueError(f"architecture {name!r} cannot take the data's image shape {shape}: {e}. "
                     f"Choose a network for {shape} images (e.g. 'fc'), or change its geometry "
                     "in the model kwargs (fewer pooled blocks, padding='same').") from e
  extra = sorted(set(variables) - {"params"})
  if extra:
    raise ValueError(f"architecture {name!r} carries state {extra} (batch normalisation?); DD "
                     "back-propagates through a pure apply(params, x): use norm='instance' or "
                     "norm='none' in its model kwargs.")
  empty = [jax.tree_util.keystr(p) for p, leaf in
           jax.tree_util.tree_flatten_with_path(variables)[0] if 0 in leaf.shape]
  if empty:
    raise ValueError(f"architecture {name!r} cannot take the data's image shape {shape}: its "
                     f"parameters {empty} have size 0 (the pooling shrinks the image to "
                     "nothing). Use fewer pooled blocks (depth), padding='same', or a network "
                     f"for {shape} images such as 'fc'.")
  if tuple(out.shape) != (1, num_classes):
    raise ValueError(f"architecture {name!r} returns logits of shape {tuple(out.shape)} for one "
                     f"image; expected (1, {num_classes}).")


def apply_fn(model: nn.Module) -> ApplyFn:
  """``lambda variables, x: model.apply(variables, x, train=False)``."""
  return lambda variables, x: model.apply(variables, x, train=False)


def xavier_normal(shapes: Any, key: jax.Array, gain: float = 1.0) -> Any:
  """Draws a variables tree of the given shapes as the DD reference initialises networks.

  Every leaf called ``kernel`` (dense ``(in, out)``, convolution ``(kh, kw, in, out)``) gets
  :math:`\\mathcal N(0, \\text{gain}^2 \\cdot 2 / (f_\\mathrm{in} + f_\\mathrm{out}))` with
  :math:`f_\\mathrm{in} = kh \\cdot kw \\cdot \\text{in}`,
  :math:`f_\\mathrm{out} = kh \\cdot kw \\cdot \\text{out}` (``torch.nn.init.xavier_normal_``);
  every ``bias`` is 0 and every normalisation ``scale`` is 1 (reference ``init_weights``).

  Args:
    shapes: a pytree of ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of ``model.init``).
    key: PRNG key (threefry or RBG).
    gain: the xavier gain (reference ``--init_param 1``).

  Raises:
    ValueError: a leaf that is none of ``kernel`` / ``bias`` / ``scale``.
  """
  leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
  keys = jax.random.split(key, max(len(leaves), 1))
  out = []
  for i, (path, leaf) in enumerate(leaves):
    name = getattr(path[-1], "key", str(path[-1]))
    if name == "kernel":
      receptive = int(np.prod(leaf.shape[:-2])) if len(leaf.shape) > 2 else 1
      fan_in, fan_out = receptive * leaf.shape[-2], receptive * leaf.shape[-1]
      std = gain * math.sqrt(2.0 / (fan_in + fan_out))
      out.append(std * jax.random.normal(keys[i], leaf.shape, leaf.dtype))
    elif name == "bias":
      out.append(jnp.zeros(leaf.shape, leaf.dtype))
    elif name == "scale":
      out.append(jnp.ones(leaf.shape, leaf.dtype))
    else:
      raise ValueError(f"xavier initialisation does not know the parameter "
                       f"{jax.tree_util.keystr(path)}; use init_scheme='pytorch'.")
  return jax.tree_util.tree_unflatten(tree, out)


def init_params(model: nn.Module, key: jax.Array, image_shape: Sequence[int],
                scheme: str = "xavier") -> Any:
  """Fresh variables ``{'params': ...}`` of ``model`` for ``(H, W, C)`` images.

  Args:
    model: a stateless Flax module.
    key: PRNG key (threefry or RBG; jittable).
    image_shape: ``(H, W, C)``.
    scheme: ``'xavier'`` (:func:`xavier_normal`, the DD reference) or ``'pytorch'``
      (``model.init``: the network's own initialiser, PyTorch's default uniform for this
      library's presets unless their ``param_init`` says otherwise).

  Raises:
    ValueError: an unknown scheme.
  """
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  if scheme == "pytorch":
    return model.init(key, dummy, train=False)
  if scheme != "xavier":
    raise ValueError(f"init_scheme={scheme!r} is not known; use one of {INIT_SCHEMES}.")
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy, train=False))
  return xavier_normal(shapes, key)


# ----------------------------------------------------------------------------- outer update
def outer_optimizer() -> optax.GradientTransformation:
  """Adam's direction with :math:`\\beta = (0.5, 0.999)`, :math:`\\epsilon = 10^{-8}`
  (reference ``optim.Adam(..., betas=(0.5, 0.999))``); the learning rate is applied by the
  caller with :func:`outer_learning_rate`."""
  return optax.scale_by_adam(b1=0.5, b2=0.999, eps=1e-8)


def steps_per_epoch(num_train: int, batch_size: int) -> int:
  """Outer steps in one epoch of real data: :math:`\\lceil N / B \\rceil` (the reference's
  ``DataLoader`` keeps the last, smaller batch)."""
  return max(1, math.ceil(int(num_train) / max(1, min(int(batch_size), int(num_train)))))


def reference_steps(num_train: int, batch_size: int = 1024, epochs: int = 400) -> int:
  """The reference run length: ``epochs`` passes of ``ceil(N / batch_size)`` outer steps
  (400 x 59 = 23,600 on MNIST's or Fashion-MNIST's 60,000 images)."""
  return int(epochs) * steps_per_epoch(num_train, batch_size)


def outer_learning_rate(learning_rate: float, count: jax.Array, epoch_steps: int,
                        decay_epochs: Optional[int], decay_factor: float) -> jax.Array:
  """The step-decayed learning rate of outer step ``count`` (0-based).

  .. math:: \\alpha_t = \\alpha_0 \\cdot \\gamma^{\\lfloor t / (D \\cdot S) \\rfloor}

  with :math:`D` = ``decay_epochs`` and :math:`S` = ``epoch_steps`` (``StepLR`` stepped at
  the start of every epoch, as the reference under PyTorch 1.0, whose ``requirements.txt`` it
  names). ``decay_epochs=None`` keeps :math:`\\alpha_0`.
  """
  if decay_epochs is None:
    return jnp.asarray(learning_rate, jnp.float32)
  epoch = count // int(epoch_steps)
  return learning_rate * jnp.asarray(decay_factor, jnp.float32) ** (epoch // int(decay_epochs))
