"""The convolution with a patch-product filter derivative (kip/_src/transfer/conv.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip._src.transfer import conv
from kip._src.transfer import models

DN = ("NHWC", "HWIO", "NHWC")
# (input shape, kernel shape, strides, padding)
CASES = [
    ((3, 7, 7, 1), (3, 3, 1, 5), (1, 1), ((3, 3), (3, 3))),   # DC's first layer on grey images
    ((2, 6, 5, 4), (3, 3, 4, 3), (1, 1), "SAME"),
    ((2, 9, 8, 3), (3, 3, 3, 2), (2, 2), ((1, 0), (0, 2))),   # stride 2, asymmetric padding
    ((2, 8, 8, 2), (5, 5, 2, 3), (1, 1), "VALID"),
    ((2, 6, 6, 3), (1, 1, 3, 4), (2, 1), "SAME"),
]


def _inputs(x_shape, w_shape, dtype=jnp.float64):
  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  return (jax.random.normal(kx, x_shape, dtype), jax.random.normal(kw, w_shape, dtype))


def _fn(impl, strides, padding):
  return lambda x, w: conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN,
                                                impl=impl)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_values_and_both_gradients_match_xla(case):
  x_shape, w_shape, strides, padding = CASES[case]
  with jax.enable_x64(True):
    x, w = _inputs(x_shape, w_shape)
    ref, ours = _fn("xla", strides, padding), _fn("patches", strides, padding)
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-12, atol=1e-12)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(x, w)
    g_ours = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, w)
    for a, b in zip(g_ours, g_ref):
      np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)
    # Forward mode (the empirical NTK's jax.jvp) and a second derivative through the parameter
    # gradient (DC / DSA's gradient matching).
    tx, tw = _inputs(x_shape, w_shape)
    np.testing.assert_allclose(jax.jvp(ours, (x, w), (tx, tw))[1],
                               jax.jvp(ref, (x, w), (tx, tw))[1], rtol=1e-11, atol=1e-11)
    match = lambda f: lambda x: jnp.sum(jnp.square(jax.grad(loss(f), argnums=1)(x, w)))  # noqa
    np.testing.assert_allclose(jax.grad(match(ours))(x), jax.grad(match(ref))(x),
                               rtol=1e-10, atol=1e-10)


def test_offsetwise_product_above_the_patch_budget(monkeypatch):
  x_shape, w_shape, strides, padding = CASES[2]
  with jax.enable_x64(True):
    x, w = _inputs(x_shape, w_shape)
    full = jax.grad(lambda w: jnp.sum(jnp.sin(_fn("patches", strides, padding)(x, w))))(w)
    monkeypatch.setattr(conv, "_PATCH_BYTES", 0)
    pads = conv._explicit_padding(padding, x_shape[1:3], w_shape[:2], strides)
    np.testing.assert_allclose(conv.patch_product(x, w, strides, pads),
                               _fn("xla", strides, padding)(x, w), rtol=1e-12, atol=1e-12)
    offsetwise = jax.grad(lambda w: jnp.sum(jnp.sin(_fn("patches", strides, padding)(x, w))))(w)
    np.testing.assert_allclose(offsetwise, full, rtol=1e-12, atol=1e-12)


def _uses_rule(impl, x_shape, w_shape, **kwargs):
  x, w = jnp.zeros(x_shape), jnp.zeros(w_shape)
  f = lambda x, w: conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN,  # noqa
                                             impl=impl, **kwargs)
  return "custom_jvp_call" in str(jax.make_jaxpr(f)(x, w))


def test_auto_takes_the_rule_for_small_kernels_on_cpu_only(monkeypatch):
  assert _uses_rule("auto", (2, 8, 8, 1), (3, 3, 1, 4))
  assert not _uses_rule("auto", (2, 8, 8, 1), (5, 5, 1, 4))    # 5x5: XLA's rule (measured)
  assert not _uses_rule("xla", (2, 8, 8, 1), (3, 3, 1, 4))
  assert not _uses_rule("auto", (2, 8, 8, 1), (3, 3, 1, 4), rhs_dilation=(2, 2))
  monkeypatch.setattr(conv, "_PATCH_BYTES", 100)                # patch matrix over budget
  assert not _uses_rule("auto", (2, 8, 8, 1), (3, 3, 1, 4))
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(conv, "_PATCH_BYTES", 2**30)
  assert not _uses_rule("auto", (2, 8, 8, 1), (3, 3, 1, 4))
  assert _uses_rule("patches", (2, 8, 8, 1), (3, 3, 1, 4))


def test_bad_impl_and_unsupported_convolutions_are_errors():
  with pytest.raises(ValueError, match="impl='fast' is not"):
    _uses_rule("fast", (2, 8, 8, 1), (3, 3, 1, 4))
  with pytest.raises(ValueError, match="without dilation"):
    _uses_rule("patches", (2, 8, 8, 1), (3, 3, 1, 4), rhs_dilation=(2, 2))


def test_flax_dimension_numbers_take_the_rule():
  """Flax's nn.Conv passes a ConvDimensionNumbers object, not the 'NHWC' strings."""
  layer = nn.Conv(4, (3, 3), conv_general_dilated=conv.conv_general_dilated)
  x = jnp.ones((2, 8, 8, 1))
  params = layer.init(jax.random.PRNGKey(0), x)
  assert "custom_jvp_call" in str(jax.make_jaxpr(layer.apply)(params, x))


def test_convnet_gradients_equal_with_either_rule(monkeypatch):
  net = models.get_model("convnet", 10, width=8)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
  y = jax.nn.one_hot(jnp.arange(4), 10)
  params = net.init(jax.random.PRNGKey(0), x[:1])

  def grads():
    loss = lambda p: jnp.mean(jnp.sum(jnp.square(net.apply(p, x) - y), -1))  # noqa: E731
    return jax.grad(loss)(params)

  monkeypatch.setattr(models, "_CONV_IMPL", "xla")
  ref = grads()
  monkeypatch.setattr(models, "_CONV_IMPL", "auto")
  for a, b in zip(jax.tree.leaves(grads()), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_instance_norm_is_flax_group_norm_with_one_group_per_channel():
  x = 3.0 + jax.random.normal(jax.random.PRNGKey(2), (3, 5, 4, 6))
  ours, ref = models.InstanceNorm(), nn.GroupNorm(num_groups=6, epsilon=1e-5)
  p_ours, p_ref = ours.init(jax.random.PRNGKey(0), x), ref.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, p_ours) == jax.tree.map(jnp.shape, p_ref)
  p = {"params": {"scale": jnp.linspace(0.5, 2.0, 6), "bias": jnp.linspace(-1.0, 1.0, 6)}}
  np.testing.assert_allclose(ours.apply(p, x), ref.apply(p, x), rtol=1e-5, atol=1e-5)
  g_ours = jax.grad(lambda x: jnp.sum(jnp.sin(ours.apply(p, x))))(x)
  g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(ref.apply(p, x))))(x)
  np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-5)
