"""Native kernel engine: Monte-Carlo agreement, gradients, blocking, sharding, memory."""

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip import kernels as kk

SQ2 = math.sqrt(2.0)


def _x(shape, n, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n,) + shape), jnp.float32)


def _rel_fro(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# ----------------------------------------------------------------------------- Monte Carlo
def _mc_nngp(layer, x, n_nets, key):
  """Empirical output covariance of random finite networks: mean over nets and outputs."""
  init_fn, apply_fn, _ = layer

  def one(k):
    _, params = init_fn(k, x.shape)
    y = apply_fn(params, x)  # (n, out)
    return y @ y.T / y.shape[1]

  return jnp.mean(jax.lax.map(one, jax.random.split(key, n_nets)), axis=0)


def _mc_ntk(layer, x, n_nets, key):
  """Empirical NTK sum_p J_p J_p^T of scalar-output finite networks, averaged over nets."""
  init_fn, apply_fn, _ = layer

  def one(k):
    _, params = init_fn(k, x.shape)
    jac = jax.jacobian(lambda p: apply_fn(p, x)[:, 0])(params)
    leaves = [j.reshape(x.shape[0], -1) for j in jax.tree_util.tree_leaves(jac)]
    return sum(j @ j.T for j in leaves)

  return jnp.mean(jax.lax.map(one, jax.random.split(key, n_nets)), axis=0)


def _conv_layer(width, readout_width, depth=2):
  layers = []
  for _ in range(depth):
    layers += [kk.Conv(width, (3, 3), SQ2, 0.1), kk.Relu(), kk.AvgPool(2, 2)]
  return kk.serial(*layers, kk.Flatten(), kk.Dense(readout_width, SQ2, 0.1))


@pytest.mark.parametrize("arch", ["fc", "conv"])
def test_nngp_matches_wide_networks(arch):
  x = _x((8, 8, 1), 5, 0)
  if arch == "fc":
    layer = kk.serial(kk.Flatten(), kk.Dense(1024, SQ2, 0.1), kk.Relu(),
                      kk.Dense(1024, SQ2, 0.1), kk.Relu(), kk.Dense(512, SQ2, 0.1))
  else:
    layer = _conv_layer(256, 512)
  exact = kk.kernel_function(layer)(x, None, "nngp")
  mc = _mc_nngp(layer, x, 40, jax.random.PRNGKey(1))
  assert _rel_fro(mc, exact) < 0.05


@pytest.mark.parametrize("arch", ["fc", "conv"])
def test_ntk_matches_wide_networks(arch):
  x = _x((8, 8, 1), 4, 2)
  if arch == "fc":
    layer = kk.serial(kk.Flatten(), kk.Dense(1024, SQ2, 0.1), kk.Relu(),
                      kk.Dense(1, SQ2, 0.1))
    n_nets = 30
  else:
    layer = _conv_layer(128, 1)
    n_nets = 20
  exact = kk.kernel_function(layer)(x, None, "ntk")
  mc = _mc_ntk(layer, x, n_nets, jax.random.PRNGKey(3))
  assert _rel_fro(mc, exact) < 0.06


def test_flatten_first_equals_fc_preset():
  x1, x2 = _x((5, 5, 2), 3, 0), _x((5, 5, 2), 4, 1)
  a = kk.fc(2, 1.5, 0.2)(x1, x2, ("nngp", "ntk"))
  layer = kk.serial(kk.Flatten(), kk.Dense(1, 1.5, 0.2), kk.Relu(), kk.Dense(1, 1.5, 0.2),
                    kk.Relu(), kk.Dense(1, 1.5, 0.2))
  b = kk.kernel_function(layer)(x1, x2, ("nngp", "ntk"))
  np.testing.assert_allclose(a.nngp, b.nngp, rtol=1e-5)
  np.testing.assert_allclose(a.ntk, b.ntk, rtol=1e-5)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("kernel", ["fc", "convnet"])
@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_gradient_finite_where_inputs_coincide(kernel, get):
  shape = (8, 8, 1)
  kf = kk.fc(2) if kernel == "fc" else kk.convnet(2)
  x = _x(shape, 3, 0)
  x2 = jnp.concatenate([x, _x(shape, 2, 1)])  # x1 rows appear in x2: c = 1 exactly

  g_same = jax.jit(jax.grad(lambda a: jnp.sum(kf(a, None, get))))(x)
  g_cross = jax.jit(jax.grad(lambda a: jnp.sum(kf(a, x2, get))))(x)
  assert bool(jnp.all(jnp.isfinite(g_same))) and bool(jnp.all(jnp.isfinite(g_cross)))
  assert float(jnp.abs(g_cross).max()) > 0


def test_gradient_matches_finite_differences():
  kf = kk.convnet(2)
  x1, x2 = _x((8, 8, 1), 2, 0), _x((8, 8, 1), 3, 1)
  x1 = x1.astype(jnp.float32)
  f = jax.jit(lambda a: jnp.sum(kf(a, x2, "ntk") ** 2))
  g = jax.jit(jax.grad(f))(x1)
  d = jnp.asarray(np.random.default_rng(5).normal(size=x1.shape), jnp.float32)
  eps = 1e-2
  fd = (f(x1 + eps * d) - f(x1 - eps * d)) / (2 * eps)
  assert abs(float(fd) - float(jnp.vdot(g, d))) < 2e-2 * abs(float(fd))


# ----------------------------------------------------------------------------- blocking
def test_blocked_equals_unblocked_values_and_gradients():
  x1, x2 = _x((8, 8, 1), 7, 0), _x((8, 8, 1), 5, 1)
  big = kk.convnet(1)
  # A budget of 9 pairs (whatever the path's bytes per pair): 7 x 5 pairs in ragged 2 x 2 blocks.
  small = big.replace(memory_budget=9 * big.bytes_per_pair((8, 8, 1)))
  assert small.block_shape(7, 5, (8, 8, 1)) == (2, 2)
  a, b = big(x1, x2, ("nngp", "ntk")), small(x1, x2, ("nngp", "ntk"))
  np.testing.assert_allclose(a.ntk, b.ntk, rtol=1e-5)
  np.testing.assert_allclose(a.nngp, b.nngp, rtol=1e-5)
  ga = jax.jit(jax.grad(lambda z: jnp.sum(big(z, x2, "ntk"))))(x1)
  gb = jax.jit(jax.grad(lambda z: jnp.sum(small(z, x2, "ntk"))))(x1)
  np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-6)


def test_block_shape_respects_budget():
  for n1, n2, bpp, budget in [(100, 2000, 10 ** 6, 10 ** 8), (7, 5, 10, 10 ** 9),
                              (1, 60000, 100, 10 ** 6)]:
    b1, b2 = kk.block_shape(n1, n2, bpp, budget)
    assert 1 <= b1 <= n1 and 1 <= b2 <= n2
    assert (b1 * b2 + b1 + b2) * bpp <= budget
  with pytest.raises(ValueError, match="memory_budget"):
    kk.block_shape(10, 10, 10 ** 9, 10 ** 6)


def test_block_memory_within_budget():
  """XLA's own accounting of the gradient's temporaries stays within the budget (28x28)."""
  budget = 512 * 2 ** 20
  kf = kk.convnet(3, memory_budget=budget)
  x1, x2 = _x((28, 28, 1), 6, 0), _x((28, 28, 1), 12, 1)
  assert kf.block_shape(6, 12, (28, 28, 1)) != (6, 12)
  grad = jax.jit(jax.grad(lambda a, b: jnp.sum(kf(a, b, "ntk"))))
  mem = grad.lower(x1, x2).compile().memory_analysis()
  if mem is None:
    pytest.skip("this backend reports no memory analysis")
  assert mem.temp_size_in_bytes <= budget


def test_sharded_over_four_devices_matches_one_device():
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from kip import kernels as kk
      assert len(jax.devices()) == 4, jax.devices()
      rng = np.random.default_rng(0)
      x1 = jnp.asarray(rng.normal(size=(3, 6, 6, 1)), jnp.float32)
      x2 = jnp.asarray(rng.normal(size=(10, 6, 6, 1)), jnp.float32)
      many = kk.convnet(1)
      one = kk.convnet(1, devices=jax.devices()[:1])
      a, b = many(x1, x2, "ntk"), one(x1, x2, "ntk")
      np.testing.assert_allclose(a, b, rtol=1e-5)
      ga = jax.jit(jax.grad(lambda z: jnp.sum(many(z, x2, "ntk"))))(x1)
      gb = jax.jit(jax.grad(lambda z: jnp.sum(one(z, x2, "ntk"))))(x1)
      np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-6)
      print("OK")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# ----------------------------------------------------------------------------- API and errors
def test_get_forms_and_symmetry():
  kf = kk.convnet(1)
  x = _x((6, 6, 3), 4, 0)
  both = kf(x, None, ("ntk", "nngp"))
  assert both._fields == ("ntk", "nngp")
  np.testing.assert_allclose(both.ntk, kf(x, x, "ntk"), rtol=1e-6)
  np.testing.assert_allclose(both.ntk, both.ntk.T, rtol=1e-5)
  assert bool(jnp.all(jnp.linalg.eigvalsh(both.nngp) > -1e-5))


def test_errors():
  kf = kk.convnet(3)
  with pytest.raises(ValueError, match="get="):
    kf(_x((8, 8, 1), 2, 0), None, "bogus")
  with pytest.raises(ValueError, match="trailing shape"):
    kf(_x((8, 8, 1), 2, 0), _x((9, 9, 1), 2, 0), "ntk")
  with pytest.raises(TypeError, match="gett"):  # a misspelt keyword is not swallowed
    kf(_x((8, 8, 1), 2, 0), None, gett="ntk")
  with pytest.raises(ValueError, match="too deep"):
    kk.convnet(4)(_x((8, 8, 1), 2, 0), None, "ntk")
  with pytest.raises(ValueError, match="odd"):
    kk.Conv(1, (2, 2))
  with pytest.raises(ValueError, match="Flatten"):
    kk.kernel_function(kk.serial(kk.Conv(1), kk.Relu()))(_x((4, 4, 1), 2, 0), None, "ntk")
  with pytest.raises(ValueError, match="kernel="):
    kk.get_kernel("resnet")


def test_avgpool_stride_defaults_to_one_as_neural_tangents():
  x = _x((7, 7, 1), 2, 0)
  shape = lambda layer: layer.init_fn(jax.random.PRNGKey(0), x.shape)[0]  # noqa: E731
  assert shape(kk.AvgPool(2)) == (2, 6, 6, 1)  # stax.AvgPool((2, 2)): strides (1, 1)
  assert shape(kk.AvgPool(2, stride=2)) == (2, 3, 3, 1)
  k = kk.kernel_function(kk.serial(kk.Conv(1), kk.Relu(), kk.AvgPool(2), kk.Flatten(),
                                   kk.Dense(1)))(x, None, "nngp")
  assert k.shape == (2, 2) and bool(jnp.all(jnp.isfinite(k)))
  for bad in (0, None, 1.5):
    with pytest.raises(ValueError, match="stride="):
      kk.AvgPool(2, stride=bad)


def test_get_kernel_rebuilds_from_spec():
  kf = kk.convnet(2, 1.7, 0.3)
  again = kk.get_kernel(dict(kf.spec))
  x = _x((8, 8, 1), 3, 0)
  np.testing.assert_allclose(kf(x, None, "ntk"), again(x, None, "ntk"), rtol=1e-6)
