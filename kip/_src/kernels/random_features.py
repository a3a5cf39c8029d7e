"""Random-feature NNGP kernels from the finite networks that the layer triples define.

A layer (:mod:`kip._src.kernels.layers`) carries its finite network (``init_fn``, ``apply_fn``)
next to its infinite-width kernel (``kernel_fn``). This module estimates the NNGP of the *same*
triple from a few random draws of that finite network, as in RFAD, so the exact kernel and its
estimate cannot disagree on architecture or parameterisation.

The network must end in its read-out, an affine layer with standard normal parameters
:math:`\\theta_r` (``Dense(1, W_std, b_std)``):
:math:`f(x) = \\frac{W_{std}}{\\sqrt{D}} \\langle h(x), w \\rangle + b_{std} b` with
``D``-dimensional penultimate activations :math:`h(x)` and :math:`w, b \\sim N(0, 1)`. The
read-out is integrated out exactly ("head removed"): given the rest of the network,

.. math::
   \\mathbb{E}_{\\theta_r}[f(x) f(x')] = \\phi(x) \\cdot \\phi(x'),\\qquad
   \\phi(x) = \\frac{\\partial f(x)}{\\partial \\theta_r}
     = \\Big(\\frac{W_{std}}{\\sqrt{D}} h(x),\\; b_{std}\\Big),

so :math:`\\phi(x)\\cdot\\phi(x') = \\frac{W_{std}^2}{D} \\langle h(x), h(x') \\rangle +
b_{std}^2`, the affine rule of :func:`~kip._src.kernels.layers.Dense` applied to the empirical
penultimate covariance. ``M`` networks drawn with ``init_fn`` give

.. math::
   \\Phi(x) = \\frac{1}{\\sqrt{M}} \\big(\\phi_1(x), \\dots, \\phi_M(x)\\big),\\qquad
   \\hat K(x, x') = \\Phi(x) \\cdot \\Phi(x') = \\frac{1}{M} \\sum_m \\phi_m(x) \\cdot \\phi_m(x'),

whose mean over draws is the finite-width NNGP, equal to the infinite-width NNGP of
``kernel_fn`` up to :math:`O(1/\\text{width})`; its standard deviation falls like
:math:`1/\\sqrt{\\text{width} \\cdot M}` (``tests/test_random_features.py`` checks the rate and
the limit against the exact engine). :math:`\\phi` is the Jacobian of the network's outputs with
respect to the read-out parameters only: no derivative through the rest of the network, and no
knowledge of the read-out's ``W_std`` / ``b_std`` (``apply_fn`` applies them). For the usual
``serial(..., Dense(1, W_std, b_std))`` the Jacobian is written down instead, from the ``Dense``
layer's recorded ``W_std`` / ``b_std`` and one forward pass of the layers before it (same
features; it skips an ``n x n`` basis product per network).

Reference:
  Loo, Hasani, Amini, Rus, "Efficient Dataset Distillation using Random Feature
  Approximation" (RFAD), NeurIPS 2022.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from kip._src.kernels import engine
from kip._src.kernels import layers as L

__all__ = ["RandomFeatureKernel", "random_features"]

Get = Union[str, Sequence[str]]


def _readout_path(params: Any) -> tuple[int, ...]:
  """Index path to the read-out's parameters inside ``serial``'s nested parameter tuples.

  ``serial`` keeps one entry per layer, so the read-out is the last entry, descending into
  nested ``serial`` s; a bare ``Dense`` (a linear model) is its own read-out.
  """
  path, p = [], params
  while isinstance(p, (tuple, list)) and p and isinstance(p[-1], (tuple, list)):
    path.append(len(p) - 1)
    p = p[-1]
  return tuple(path)


def _get_at(params, path):
  for i in path:
    params = params[i]
  return params


def _set_at(params, path, value):
  if not path:
    return value
  i = path[0]
  items = list(params)
  items[i] = _set_at(items[i], path[1:], value)
  return type(params)(items)


def _dense_readout(layer: L.Layer):
  """``(body_layers, W_std, b_std)`` if ``layer`` is a ``serial`` ending in a tagged ``Dense``
  read-out, else ``None``."""
  layers = getattr(layer.kernel_fn, "layers", None)
  if not layers:
    return None
  hp = getattr(layers[-1].kernel_fn, "hparams", {})
  if hp.get("kind") != "dense":
    return None
  return tuple(layers[:-1]), hp["W_std"], hp["b_std"]


def _dense_readout_features(readout, params, x: jax.Array) -> jax.Array:
  """Features of a ``Dense`` read-out on ``D`` units :math:`h(x)` from the layers before it.

  The read-out :math:`f = \\frac{W_{std}}{\\sqrt{D}} h w + b_{std} b` is linear in
  :math:`(w, b)`, so :math:`\\partial f / \\partial (w, b) = (W_{std} h / \\sqrt{D}, b_{std})`
  (``0`` for the bias without one), in the order of ``ravel_pytree((w, b))``. One forward pass,
  no ``n x n`` or ``F x F`` basis product.
  """
  body, w_std, b_std = readout
  h = L.serial(*body).apply_fn(tuple(params[:-1]), x) if body else x
  if h.ndim != 2:
    raise ValueError(f"the read-out Dense gets inputs of shape {h.shape[1:]}; a random-feature "
                     "NNGP needs one vector per image: put Flatten() or GlobalAvgPool() before "
                     "it.")
  bias = jnp.full((h.shape[0], 1), 0.0 if b_std is None else b_std, h.dtype)
  return jnp.concatenate([w_std / jnp.sqrt(jnp.asarray(h.shape[1], h.dtype)) * h, bias], axis=1)


def _jacobian_features(layer: L.Layer, params, x: jax.Array) -> jax.Array:
  """Features as the Jacobian of the outputs w.r.t. the read-out's parameters (any read-out).

  One batched forward pass, then the read-out's linear map applied to a basis: reverse mode
  (``n`` cotangents, ``O(n^2 F)``) for fewer images than features, forward mode (``F``
  tangents, ``O(n F^2)``) otherwise. Neither differentiates through the rest of the network.
  (A per-image ``vmap(grad)`` measured 1.8x the forward pass on the CPU: ``vmap`` turns
  ``AvgPool``'s ``reduce_window`` into a slower 5-D one.)
  """
  path = _readout_path(params)
  flat, unravel = ravel_pytree(_get_at(params, path))

  def f(theta):
    return layer.apply_fn(_set_at(params, path, unravel(theta)), x)[:, 0]

  n, num = x.shape[0], flat.shape[0]
  if n <= num:
    _, vjp_fn = jax.vjp(f, flat)
    return jax.vmap(lambda c: vjp_fn(c)[0])(jnp.eye(n, dtype=flat.dtype))
  _, lin = jax.linearize(f, flat)
  return jax.vmap(lin)(jnp.eye(num, dtype=flat.dtype)).T


@dataclasses.dataclass(frozen=True, eq=False)
class RandomFeatureKernel:
  """Random-feature NNGP estimate :math:`\\hat K = \\Phi \\Phi^\\top` of a layer's finite networks.

  Follows the neural-tangents signature ``kernel_fn(x1, x2, get)`` plus a ``key`` that draws
  the networks, and exposes the features themselves so KIP can reuse one draw for ``K_ss`` and
  ``K_ts`` and skip the targets' backward pass::

    phi_s = kernel.features(key, x_s)                         # (n_s, F), differentiable
    phi_t = jax.lax.stop_gradient(kernel.features(key, x_t))  # (n_t, F)
    k_ss, k_ts = kernel.gram(phi_s, phi_s), kernel.gram(phi_t, phi_s)

  Attributes:
    layer: the whole network, read-out included (``serial(..., Flatten(), Dense(1, W, b))``).
    num_models: ``M``, networks drawn per key.
    spec: JSON-serialisable description, for provenance (``DistilledSet`` metadata).
    flatten_inputs: feed ``(n, H*W*C)`` vectors (fully connected networks) instead of images.
    fixed_seed: ``None`` (default, as RFAD): fresh networks from every call's ``key``. An int:
      the same ``M`` networks, drawn from ``PRNGKey(fixed_seed)``, on every call; ``key`` is
      then ignored and may be omitted.
    batch_size: images per forward pass (``lax.map`` over chunks, rematerialised under
      ``grad``); ``None`` runs all images at once.
    vmap_models: ``True``: the ``M`` networks run as one ``vmap``-batched forward pass;
      ``False``: one after the other (a ``lax.map`` loop, compiled once). ``None``
      (default): one after the other on CPU devices, where XLA runs a ``vmap`` over
      convolution weights as a slow batched convolution (ConvNet-3, width 64, ``M = 4``, 256
      images at 28x28: 1.35 s batched vs 0.26 s looped on 2 cores), batched elsewhere.
  """
  layer: L.Layer
  num_models: int = 1
  spec: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  flatten_inputs: bool = False
  fixed_seed: Optional[int] = None
  batch_size: Optional[int] = None
  vmap_models: Optional[bool] = None

  def replace(self, **changes) -> "RandomFeatureKernel":
    return dataclasses.replace(self, **changes)

  # ------------------------------------------------------------------ networks
  def _key(self, key: Optional[jax.Array]) -> jax.Array:
    if self.fixed_seed is not None:
      return jax.random.PRNGKey(self.fixed_seed)
    if key is None:
      raise ValueError("this random-feature kernel draws fresh networks from a key: pass "
                       "key=jax.random.PRNGKey(...) (or build it with fixed_seed=<int> to "
                       "hold the networks fixed).")
    return key

  def _prepare(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(jnp.float32)
    if self.flatten_inputs:
      if x.ndim < 2:
        raise ValueError(f"inputs must be (n, ...) with a batch axis; got shape {x.shape}.")
      return x.reshape(x.shape[0], -1)
    if x.ndim != 4:
      raise ValueError(f"this network takes (n, H, W, C) images; got shape {x.shape}. Pass "
                       "a batch of NHWC images (or flatten_inputs=True for a fully connected "
                       "network).")
    return x

  def draw(self, key: Optional[jax.Array], input_shape: Sequence[int]):
    """Draws the ``M`` networks' parameters with ``layer.init_fn``.

    Args:
      key: PRNG key (ignored with ``fixed_seed``).
      input_shape: ``(n, H, W, C)`` (or ``(n, D)``) of the inputs the networks will take.

    Returns:
      ``(output_shape, params)``: ``params`` is ``init_fn``'s pytree with a leading model axis
      ``M`` on every leaf.

    Raises:
      ValueError: the network cannot take this input shape, or does not end in a read-out.
    """
    keys = jax.random.split(self._key(key), self.num_models)
    shape = tuple(int(s) for s in input_shape)
    out = {}

    def one(k):
      out_shape, params = self.layer.init_fn(k, shape)
      out["shape"] = tuple(out_shape)
      return params

    try:
      params = jax.vmap(one)(keys)
    except (ValueError, TypeError) as err:
      raise ValueError(f"the network cannot take inputs of shape {shape[1:]}: {err} Use "
                       "larger images, or a shallower network (fewer pooling layers).") from err
    out_shape = out["shape"]
    if len(out_shape) != 2 or out_shape[-1] != 1:
      raise ValueError(f"the network's output has shape {out_shape}; a random-feature NNGP "
                       "needs (n, 1): end the network with Flatten() or GlobalAvgPool() and a "
                       "Dense(1, W_std, b_std) read-out.")
    readout = _get_at(params, _readout_path(params))
    if not jax.tree_util.tree_leaves(readout):
      raise ValueError("the network's last layer has no parameters; it must end in its "
                       "affine read-out, Dense(1, W_std, b_std), whose standard normal "
                       "parameters are integrated out.")
    return out_shape, params

  def uses_vmap(self) -> bool:
    """Whether the networks run as one ``vmap``-batched pass (see ``vmap_models``)."""
    if self.vmap_models is not None:
      return bool(self.vmap_models)
    return jax.devices()[0].platform != "cpu"

  # ------------------------------------------------------------------ features
  def _features_one(self, params, x):
    """``(n, F)`` unscaled features of one network: ``d f(x_i) / d theta_r`` per image.

    When the network is a ``serial`` whose last layer is a ``Dense`` read-out (the presets), the
    derivative is written down: :math:`\\phi(x) = (W_{std} h(x) / \\sqrt{D}, b_{std})` from one
    forward pass of the layers before it (:func:`_dense_readout_features`). Otherwise it is the
    Jacobian of the network's output with respect to the read-out's parameters
    (:func:`_jacobian_features`); both give the same features to float rounding.
    """
    readout = _dense_readout(self.layer)
    if readout is not None:
      return _dense_readout_features(readout, params, x)
    return _jacobian_features(self.layer, params, x)

  def features(self, key: Optional[jax.Array], x: jax.Array, *,
               stacked: bool = False) -> jax.Array:
    r"""Random features :math:`\Phi(x)` with :math:`\Phi(x_1) \Phi(x_2)^\top \approx K(x_1, x_2)`.

    Works under ``jit`` and ``grad``; the ``M`` networks run batched or one after the other
    (``vmap_models``), with the same result. Two calls with the same ``key`` use the same
    networks.

    Args:
      key: PRNG key the networks are drawn from (ignored with ``fixed_seed``).
      x: ``(n, H, W, C)`` images (``(n, ...)`` for a fully connected network).
      stacked: return the models on a leading axis instead of concatenated.

    Returns:
      ``(n, M * F)``, or ``(M, n, F)`` with ``stacked=True``; ``F = D + 1`` for a
      ``Dense(1)`` read-out on ``D`` penultimate units. Scaled by :math:`1/\sqrt{M}` either way,
      so :func:`gram` of either form is the estimate.
    """
    x = self._prepare(x)
    _, params = self.draw(key, x.shape)
    n = x.shape[0]
    scale = 1.0 / jnp.sqrt(jnp.asarray(self.num_models, x.dtype))

    def chunk(xc):  # (M, b, F)
      if self.uses_vmap():
        return jax.vmap(self._features_one, in_axes=(0, None))(params, xc)
      return lax.map(lambda p: self._features_one(p, xc), params)  # one loop body, M passes

    b = self.batch_size
    if b is None or n <= b:
      phi = chunk(x)
    else:
      xb = engine._pad_rows(x, b).reshape((-1, b) + x.shape[1:])
      phi = lax.map(jax.checkpoint(chunk), xb)  # (nb, M, b, F)
      phi = jnp.moveaxis(phi, 0, 1).reshape(self.num_models, -1, phi.shape[-1])[:, :n]
    phi = phi * scale
    if stacked:
      return phi
    return jnp.moveaxis(phi, 0, 1).reshape(n, -1)

  @staticmethod
  def gram(phi1: jax.Array, phi2: jax.Array) -> jax.Array:
    """:math:`\\hat K = \\Phi_1 \\Phi_2^\\top`: ``(n1, n2)`` from ``(n, F)`` or ``(M, n, F)``."""
    if phi1.ndim == 3:
      return jnp.einsum("mif,mjf->ij", phi1, phi2)
    return phi1 @ phi2.T

  def __call__(self, x1: jax.Array, x2: Optional[jax.Array] = None, get: Get = "nngp", *,
               key: Optional[jax.Array] = None):
    """The NNGP estimate between ``x1`` and ``x2`` from the networks drawn from ``key``.

    Args:
      x1: ``(n1, H, W, C)`` images (``(n1, ...)`` for a fully connected network).
      x2: ``(n2, ...)`` of the same trailing shape; ``None`` means ``x1``.
      get: ``'nngp'`` or ``('nngp',)`` (the NTK is not estimated).
      key: PRNG key drawing the networks; required unless ``fixed_seed`` is set.

    Returns:
      An ``(n1, n2)`` array for a string ``get``; a namedtuple with an ``nngp`` field for a
      tuple.
    """
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names or any(g != "nngp" for g in names):
      raise ValueError(f"get={get!r}: a random-feature kernel estimates the NNGP only; use "
                       "get='nngp' (for the NTK use the exact kernel, e.g. "
                       "kip.kernels.convnet).")
    phi1 = self.features(key, x1)
    if x2 is None:
      k = self.gram(phi1, phi1)
    else:
      if jnp.shape(x1)[1:] != jnp.shape(x2)[1:]:
        raise ValueError(f"x1 and x2 must share their trailing shape; got {jnp.shape(x1)} and "
                         f"{jnp.shape(x2)}.")
      k = self.gram(phi1, self.features(key, x2))
    if isinstance(get, str):
      return k
    return engine._namedtuple(names)(k)

  def exact(self, **kwargs) -> engine.KernelFn:
    """The exact infinite-width kernel of the same layer (``kernel_function(layer)``)."""
    return engine.kernel_function(self.layer, spec=self.spec.get("exact"),
                                  flatten_inputs=self.flatten_inputs, **kwargs)


def _check_count(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name}={value!r} must be an integer >= 1.")
  return value


def random_features(layer: Union[L.Layer, engine.KernelFn, Callable[[int], Any]], *,
                    width: Optional[int] = None, num_models: int = 1, get: str = "nngp",
                    fixed_seed: Optional[int] = None, batch_size: Optional[int] = None,
                    flatten_inputs: Optional[bool] = None,
                    spec: Optional[Mapping[str, Any]] = None,
                    vmap_models: Optional[bool] = None) -> RandomFeatureKernel:
  r"""A random-feature NNGP estimate from the finite networks of ``layer`` (RFAD).

  .. math::
     \hat K(x, x') = \frac{1}{M} \sum_{m=1}^{M} \Big(\frac{W_{std}^2}{D}
       \langle h_m(x), h_m(x') \rangle + b_{std}^2\Big),

  ``h_m`` the penultimate activations (read-out removed) of network ``m`` drawn with
  ``layer.init_fn`` and evaluated with ``layer.apply_fn``; ``W_std``, ``b_std`` are the
  read-out's. Its expectation is the NNGP of ``kernel_function(layer)`` up to
  :math:`O(1/\text{width})`, with standard deviation :math:`O(1/\sqrt{\text{width}\,M})`.

  Args:
    layer: the whole network with its ``Dense(1)`` read-out: a :class:`~kip.kernels.Layer`
      (e.g. ``serial(Conv(256), Relu(), AvgPool(2, stride=2), Flatten(), Dense(1, W, b))``),
      an exact :class:`~kip.kernels.KernelFn` (its ``layer``, ``flatten_inputs`` and ``spec`` are
      used: ``random_features(kip.kernels.convnet(width=256))``), or a builder
      ``width -> Layer | KernelFn``.
    width: the width to build ``layer`` at, only when ``layer`` is a builder (a built layer
      already holds its width).
    num_models: ``M``, networks per key (>= 1).
    get: ``'nngp'`` (the only kernel estimated).
    fixed_seed: ``None``: fresh networks from each call's key (RFAD); an int: hold them fixed.
    batch_size: images per forward pass (``None``: all at once).
    flatten_inputs: flatten images to vectors first; default: the ``KernelFn``'s, else
      ``False``.
    spec: provenance dict; default ``{'architecture': 'random_features', 'exact': <the exact
      kernel's spec>, 'num_models': M, 'fixed_seed': ...}``.
    vmap_models: batch the ``M`` networks with ``vmap`` (``True``), run them one after the
      other (``False``), or ``None``: one after the other on CPU (see
      :class:`RandomFeatureKernel`).

  Returns:
    A :class:`RandomFeatureKernel`.

  Raises:
    ValueError: ``width`` or ``num_models`` < 1, ``get`` other than ``'nngp'``, or a layer with
      no finite network (no ``init_fn`` / ``apply_fn``).
  """
  num_models = _check_count("num_models", num_models)
  if get != "nngp":
    raise ValueError(f"get={get!r}: random features estimate the NNGP only; use get='nngp' "
                     "(for the NTK use the exact kernel).")
  built = isinstance(layer, (L.Layer, engine.KernelFn))
  if width is not None:
    width = _check_count("width", width)
    if built:
      raise ValueError(f"width={width} given for a layer already built with its width; pass a "
                       "builder (width -> layer), or build the layer at that width (e.g. "
                       "kip.kernels.convnet(width=...)) and omit width=.")
    layer = layer(width) if callable(layer) else layer
  exact_spec = None
  if isinstance(layer, engine.KernelFn):
    exact_spec = dict(layer.spec)
    if flatten_inputs is None:
      flatten_inputs = layer.flatten_inputs
    layer = layer.layer
  init_fn = getattr(layer, "init_fn", None)
  apply_fn = getattr(layer, "apply_fn", None)
  if not callable(init_fn) or not callable(apply_fn):
    raise ValueError(f"layer={layer!r} has no finite network (init_fn / apply_fn); random "
                     "features need one: pass a kip.kernels layer (serial(...)), a KernelFn "
                     "such as kip.kernels.convnet(...), or a builder width -> layer together "
                     "with width=<int>.")
  if fixed_seed is not None and (isinstance(fixed_seed, bool) or not isinstance(fixed_seed,
                                                                               int)):
    raise ValueError(f"fixed_seed={fixed_seed!r} must be an int or None.")
  if batch_size is not None:
    batch_size = _check_count("batch_size", batch_size)
  if spec is None:
    spec = {"architecture": "random_features", "exact": exact_spec or {"architecture":
                                                                       "custom"},
            "num_models": num_models, "fixed_seed": fixed_seed}
    if width is not None:
      spec["width"] = width
  return RandomFeatureKernel(layer=layer, num_models=num_models, spec=dict(spec),
                             flatten_inputs=bool(flatten_inputs), fixed_seed=fixed_seed,
                             batch_size=batch_size,
                             vmap_models=None if vmap_models is None else bool(vmap_models))
