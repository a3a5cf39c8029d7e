"""Random-feature NNGP kernels (RFAD): Monte-Carlo oracle against the exact engine, gradients,
fixed vs fresh networks, bad input."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip import kernels as kk

SQ2 = math.sqrt(2.0)
N_IMAGES = 6
# Threefry keys take ~6 s to compile per network on a busy 2-core CPU; the Monte-Carlo pools
# use RngBitGenerator keys (same statistics for this purpose, ~1 s to compile).
KEY_IMPL = "unsafe_rbg"

ARCHS = {
    # name: (exact kernel, random-feature builder(width, num_models), pool width)
    "conv3": (lambda: kk.convnet(depth=3, prepend_conv=False),
              lambda w, m: kk.convnet_rf(depth=3, prepend_conv=False, width=w, num_models=m),
              16),
    "conv4": (lambda: kk.convnet(depth=3, prepend_conv=True),
              lambda w, m: kk.convnet_rf(depth=3, prepend_conv=True, width=w, num_models=m),
              16),
    "fc3": (lambda: kk.fc(depth=3),
            lambda w, m: kk.fc_rf(depth=3, width=w, num_models=m), 128),
}


def _key(seed):
  return jax.random.key(seed, impl=KEY_IMPL)


def _x(shape, n, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n,) + shape), jnp.float32)


@functools.lru_cache(maxsize=None)
def _pool(arch, width, pool):
  """Per-network kernels ``(pool, n, n)`` of ``pool`` networks and the exact NNGP ``(n, n)``."""
  exact_fn, rf_fn, _ = ARCHS[arch]
  x = _x((8, 8, 1), N_IMAGES, 0)
  exact = jax.jit(lambda a: exact_fn()(a, None, "nngp"))(x)
  rf = rf_fn(width, pool)
  phi = jax.jit(lambda k, a: rf.features(k, a, stacked=True))(_key(width), x)  # (pool, n, F)
  per_model = pool * jnp.einsum("mif,mjf->mij", phi, phi)  # undo the 1/sqrt(M) scaling
  return np.asarray(per_model), np.asarray(exact)


def _rms_error(per_model, exact, models):
  """RMS over disjoint groups of ``models`` networks of the relative Frobenius error."""
  groups = per_model.reshape(-1, models, *per_model.shape[1:]).mean(1)
  err2 = np.sum((groups - exact) ** 2, axis=(1, 2)) / np.sum(exact ** 2)
  return float(np.sqrt(err2.mean()))


# ----------------------------------------------------------------------------- oracle
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_mean_converges_to_exact_nngp_at_rate(arch):
  width = ARCHS[arch][2]
  per_model, exact = _pool(arch, width, 1024)
  models = [1, 4, 16, 64]
  errs = [_rms_error(per_model, exact, m) for m in models]
  slope = np.polyfit(np.log([width * m for m in models]), np.log(errs), 1)[0]
  ratios = [a / b for a, b in zip(errs, errs[1:])]
  limit = _rms_error(per_model, exact, 1024)
  msg = f"{arch}: width*models={[width * m for m in models]} errors={errs} limit={limit}"
  assert -0.65 < slope < -0.38, msg  # 1/sqrt(width * models)
  assert all(1.5 < r < 2.8 for r in ratios), msg  # 4x width*models halves the error
  assert limit < 0.05, msg  # one estimate at width*models = 16,384 (conv), 131,072 (fc)


def test_error_depends_on_width_times_models():
  per16, exact = _pool("conv3", 16, 1024)
  per64, _ = _pool("conv3", 64, 256)
  for m in (1, 4, 16):  # the same width*models at width 64 and 16
    e64, e16 = _rms_error(per64, exact, m), _rms_error(per16, exact, 4 * m)
    assert 0.65 < e64 / e16 < 1.5, (m, e64, e16)
  ratio = _rms_error(per16, exact, 4) / _rms_error(per64, exact, 4)  # 4x width, same models
  assert 1.5 < ratio < 2.8, ratio


def test_features_match_readout_identity():
  """``Phi Phi^T = mean_m (W^2 <h_m, h_m'> / D + b^2)`` with the read-out's ``W``, ``b``."""
  w_out, b_out = 1.7, 0.3
  body = kk.serial(kk.Conv(8, (3, 3), SQ2, 0.1), kk.Relu(), kk.AvgPool(2, 2), kk.Flatten())
  net = kk.serial(body, kk.Dense(1, w_out, b_out))
  rf = kk.random_features(net, num_models=3)
  x, x2 = _x((6, 6, 2), 4, 1), _x((6, 6, 2), 3, 5)

  @jax.jit
  def run(key):
    _, params = rf.draw(key, x.shape)
    h = jax.vmap(body.apply_fn, in_axes=(0, None))(params[0], x)  # (M, n, D)
    want = jnp.mean(w_out ** 2 * jnp.einsum("mid,mjd->mij", h, h) / h.shape[-1]
                    + b_out ** 2, axis=0)
    phi, stacked = rf.features(key, x), rf.features(key, x, stacked=True)
    return (want, rf(x, key=key), rf.gram(phi, phi), rf.gram(stacked, stacked), phi,
            rf(x, x2, ("nngp",), key=key))

  want, called, gram, gram_stacked, phi, cross = run(_key(2))
  d = 8 * 3 * 3  # Flatten of (3, 3, 8)
  assert phi.shape == (4, 3 * (d + 1))
  for got in (called, gram, gram_stacked):
    np.testing.assert_allclose(got, want, rtol=1e-5)
  assert cross._fields == ("nngp",) and cross.nngp.shape == (4, 3)


@pytest.mark.parametrize("b_std", [0.1, None])
def test_dense_readout_features_equal_the_jacobian(b_std):
  """The written-down derivative of a ``Dense`` read-out (the fast path) equals the general
  Jacobian features, values and gradients w.r.t. the images; other read-outs use the latter."""
  from kip._src.kernels import random_features as R
  rf = kk.convnet_rf(depth=2, prepend_conv=False, width=8, num_models=2, b_std=b_std)
  assert R._dense_readout(rf.layer) is not None
  x = _x((8, 8, 1), 5, 11)

  @jax.jit
  def run(key, a):
    _, params = rf.draw(key, a.shape)
    p0 = jax.tree_util.tree_map(lambda t: t[0], params)
    fast = lambda b: R._dense_readout_features(R._dense_readout(rf.layer), p0, b)  # noqa: E731
    jac = lambda b: R._jacobian_features(rf.layer, p0, b)  # noqa: E731
    loss = lambda feats: lambda b: jnp.sum(jnp.sin(feats(b) @ feats(b).T))  # noqa: E731
    return fast(a), jac(a), jax.grad(loss(fast))(a), jax.grad(loss(jac))(a)

  fast, jac, g_fast, g_jac = run(_key(4), x)
  assert fast.shape == jac.shape == (5, 8 * 2 * 2 + 1)
  np.testing.assert_allclose(fast, jac, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_fast, g_jac, rtol=1e-4, atol=1e-6)
  if b_std is None:
    assert float(jnp.max(jnp.abs(fast[:, -1]))) == 0.0
  # A read-out that is not a tagged Dense (here a bare Relu at the end) takes the Jacobian path.
  assert R._dense_readout(kk.serial(kk.Flatten(), kk.Dense(1), kk.Relu())) is None


def test_same_layer_as_exact_kernel():
  x = _x((8, 8, 1), 3, 3)
  exact = kk.convnet(depth=2, prepend_conv=False, width=8)
  rf = kk.random_features(exact, num_models=2)
  np.testing.assert_allclose(*jax.jit(lambda a: (rf.exact()(a, None, "nngp"),
                                                   exact(a, None, "nngp")))(x), rtol=1e-6)
  built = kk.random_features(lambda w: kk.convnet(depth=2, prepend_conv=False, width=w),
                             width=8, num_models=2)
  a, b = jax.jit(lambda k: (built(x, key=k), rf(x, key=k)))(_key(0))
  np.testing.assert_allclose(a, b, rtol=1e-6)


# ----------------------------------------------------------------------------- gradients
def test_kip_style_gradient_under_jit():
  rf = kk.convnet_rf(depth=2, width=8, num_models=3, batch_size=4)
  whole = rf.replace(batch_size=None)
  x_s, x_t = _x((8, 8, 1), 4, 1), _x((8, 8, 1), 7, 2)
  y_s, y_t = jax.nn.one_hot(jnp.arange(4) % 2, 2), jax.nn.one_hot(jnp.arange(7) % 2, 2)

  def loss(kernel, xs, key):
    phi_s = kernel.features(key, xs)
    phi_t = jax.lax.stop_gradient(kernel.features(key, x_t))
    k_ss, k_ts = kernel.gram(phi_s, phi_s), kernel.gram(phi_t, phi_s)
    k_ss = k_ss + 1e-3 * jnp.trace(k_ss) / 4 * jnp.eye(4)
    return 0.5 * jnp.mean((k_ts @ jnp.linalg.solve(k_ss, y_s) - y_t) ** 2)

  @jax.jit
  def run(key):
    g_chunked = jax.grad(functools.partial(loss, rf))(x_s, key)
    g_whole = jax.grad(functools.partial(loss, whole))(x_s, key)
    g_call = jax.grad(lambda a: jnp.sum(rf(a, x_t, key=key)))(x_s)
    return g_chunked, g_whole, g_call, rf.features(key, x_t), whole.features(key, x_t)

  g, g_whole, g_call, phi_chunked, phi_whole = run(_key(3))
  assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0
  assert bool(jnp.all(jnp.isfinite(g_call))) and float(jnp.abs(g_call).max()) > 0
  # chunked (batch_size=4 on 7 targets) and one-pass features agree, values and gradients
  np.testing.assert_allclose(phi_chunked, phi_whole, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g, g_whole, rtol=1e-4, atol=1e-7)


def test_forward_and_reverse_jacobians_agree():
  """More images than features uses forward mode, fewer uses reverse mode: same features."""
  rf = kk.fc_rf(depth=2, width=3, num_models=2)  # F = 3 + 1 per network
  chunked = rf.replace(batch_size=2)  # 2 images per pass <= F: reverse mode
  x = _x((5,), 8, 4)  # 8 images > F: forward mode

  @jax.jit
  def run(a, key):
    obj = lambda kernel: lambda z: jnp.sum(jnp.sin(kernel(z, key=key)))  # noqa: E731
    return (rf.features(key, a), chunked.features(key, a), jax.grad(obj(rf))(a),
            jax.grad(obj(chunked))(a))

  fwd, rev, g_fwd, g_rev = run(x, _key(6))
  np.testing.assert_allclose(fwd, rev, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_fwd, g_rev, rtol=1e-4, atol=1e-6)
  assert bool(jnp.all(jnp.isfinite(g_fwd)))


# ----------------------------------------------------------------------------- fixed vs fresh
def test_fresh_and_fixed_networks():
  x = _x((16,), 5, 1)
  fresh = kk.fc_rf(depth=1, width=16, num_models=2)
  fixed = kk.fc_rf(depth=1, width=16, num_models=2, fixed_seed=7)

  @jax.jit
  def run(k1, k2):
    return (fresh.features(k1, x), fresh.features(k2, x), fresh.features(k1, x),
            fixed.features(k1, x), fixed.features(k2, x), fixed(x), fixed(x, key=k1))

  a, b, a_again, f1, f2, f_nokey, f_key = run(_key(1), _key(2))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, a_again)
  np.testing.assert_array_equal(f1, f2)
  np.testing.assert_array_equal(f_nokey, f_key)
  with pytest.raises(ValueError, match="key"):
    fresh(x)
  assert fixed.spec["fixed_seed"] == 7 and fresh.spec["fixed_seed"] is None


def test_batched_and_unrolled_networks_agree():
  """``vmap_models``: one batched pass or the networks one by one, same features and grads."""
  x = _x((8, 8, 1), 4, 2)
  k = kk.convnet_rf(depth=1, width=4, num_models=3)
  assert k.uses_vmap() == (jax.devices()[0].platform != "cpu")
  outs = []
  for flag in (True, False):
    kf = k.replace(vmap_models=flag)
    assert kf.uses_vmap() is flag
    loss = lambda a, kf=kf: jnp.sum(kf(a, x, key=_key(3)) ** 2)  # noqa: E731
    outs.append((kf.features(_key(3), x, stacked=True), jax.grad(loss)(x)))
  np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-6)


def test_presets_registered_and_spec_round_trip():
  k = kk.get_kernel("convnet_rf")
  assert isinstance(k, kk.RandomFeatureKernel)
  assert (k.spec["width"], k.spec["num_models"], k.spec["depth"]) == (256, 8, 3)  # RFAD
  assert not k.spec["prepend_conv"]
  small = kk.convnet_rf(depth=2, width=8, num_models=2, fixed_seed=1)
  again = kk.get_kernel(dict(small.spec))
  assert again.spec == small.spec
  x = _x((8, 8, 1), 3, 0)
  np.testing.assert_array_equal(*jax.jit(lambda a: (again(a), small(a)))(x))
  assert isinstance(kk.get_kernel({"architecture": "fc_rf", "width": 8}), kk.RandomFeatureKernel)


# ----------------------------------------------------------------------------- bad input
def test_bad_input():
  x = _x((8, 8, 1), 2, 0)
  with pytest.raises(ValueError, match="width=0"):
    kk.convnet_rf(width=0)
  with pytest.raises(ValueError, match="num_models=0"):
    kk.fc_rf(num_models=0)
  with pytest.raises(ValueError, match="num_models=-2"):
    kk.random_features(kk.fc(2), num_models=-2)
  with pytest.raises(ValueError, match="width=16 given for a layer already built"):
    kk.random_features(kk.fc(2), width=16)
  no_finite = kk.Layer(None, None, kk.Relu().kernel_fn)
  with pytest.raises(ValueError, match="no finite network"):
    kk.random_features(no_finite)
  with pytest.raises(ValueError, match="no finite network"):
    kk.random_features(lambda x1, x2, get: x1 @ x2.T)
  with pytest.raises(ValueError, match=r"cannot take inputs of shape \(8, 8, 1\)"):
    kk.convnet_rf(depth=4, width=4, num_models=1)(x, key=_key(0))
  with pytest.raises(ValueError, match=r"\(n, H, W, C\) images"):
    kk.convnet_rf(depth=2, width=4, num_models=1)(x.reshape(2, -1), key=_key(0))
  with pytest.raises(ValueError, match="get='ntk'"):
    kk.convnet_rf(depth=2, width=4, num_models=1)(x, None, "ntk", key=_key(0))
  with pytest.raises(ValueError, match="get='ntk'"):
    kk.random_features(kk.fc(2), get="ntk")
  headless = kk.serial(kk.Dense(8), kk.Relu())
  with pytest.raises(ValueError, match="Dense\\(1"):
    kk.random_features(headless, flatten_inputs=True)(x, key=_key(0))
  with pytest.raises(ValueError, match="fixed_seed"):
    kk.fc_rf(fixed_seed="seven")
  with pytest.raises(TypeError, match="kee"):  # a misspelt keyword is not swallowed
    kk.convnet_rf(depth=2, width=4, num_models=1)(x, kee=_key(0))
