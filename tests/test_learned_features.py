"""The FRePo learned-feature kernel: a pool of networks trained online on the support."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kip
from kip._src.features import readout_input
from kip._src.methods.kip import KIPConfig, KIPPoolState, make_kip, support_labels

SMALL = {"width": 8}  # a ConvNet-3 of 8 channels: compiles and runs in seconds


def _kernel(**kw):
  args = dict(num_models=3, reset_every=4, learning_rate=1e-2, model_kwargs=SMALL)
  args.update(kw)
  return kip.kernels.learned_features("convnet", 10, **args)


def test_features_are_readout_input_and_gram_is_their_product(digits_small):
  lf = _kernel()
  pool = lf.init(jax.random.PRNGKey(0), digits_small.x_train.shape[1:])
  x = jnp.asarray(digits_small.x_train[:6])
  p0 = lf.select(pool, 0)
  h = lf.features(p0, x)
  assert h.shape == (6, 8 * 1 * 1)  # 8x8 grey -> 12 (first conv pads 3) -> 6 -> 3 -> 1
  want = readout_input(lf.model, {"params": p0}, x, train=False)
  np.testing.assert_array_equal(h, want)
  np.testing.assert_allclose(lf.gram(h, h), h @ h.T, rtol=1e-6)
  # the pool's kernel is the mean of its networks' kernels
  hs = [lf.features(lf.select(pool, m), x) for m in range(3)]
  np.testing.assert_allclose(lf.frozen(pool)(x, None), sum(a @ a.T for a in hs) / 3,
                             rtol=1e-5, atol=1e-6)


def test_counts_are_staggered_and_networks_differ(digits_small):
  lf = _kernel(num_models=4, reset_every=100)
  pool = lf.init(jax.random.PRNGKey(0), digits_small.x_train.shape[1:])
  assert pool.count.tolist() == [0, 25, 50, 75]  # FRePo: (max_online_updates // M) * i
  leaves = jax.tree_util.tree_leaves(pool.params)
  assert all(a.shape[0] == 4 for a in leaves)
  assert not np.allclose(leaves[0][0], leaves[0][1])


def test_update_trains_the_chosen_network_and_resets_after_reset_every(digits_small):
  lf = _kernel(num_models=2, reset_every=3)
  x = jnp.asarray(digits_small.x_train[:20])
  y = jnp.asarray(support_labels(digits_small.y_train[:20], 10))
  pool = lf.init(jax.random.PRNGKey(0), x.shape[1:])
  assert pool.count.tolist() == [0, 1]

  @jax.jit
  def _mse(p):
    out = lf.model.apply({"params": p}, x)
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, -1))

  mse = lambda p: float(_mse(p))  # noqa: E731
  before = mse(lf.select(pool, 0))
  untouched = lf.select(pool, 1)
  update = jax.jit(lf.update)  # one compilation for the five calls
  for i in range(4):  # counts 0 -> 4: four online steps, the last one leaves count 4 > 3
    pool = update(pool, jnp.asarray(0), jax.random.PRNGKey(i), x, y)
  assert pool.count.tolist() == [4, 1]
  assert mse(lf.select(pool, 0)) < before  # it trained on the support
  jax.tree_util.tree_map(np.testing.assert_array_equal, lf.select(pool, 1), untouched)
  trained = lf.select(pool, 0)
  pool = update(pool, jnp.asarray(0), jax.random.PRNGKey(9), x, y)  # count 4 > 3: reset
  assert pool.count.tolist() == [0, 1]
  fresh, _ = jax.jit(lf._init_one, static_argnums=1)(jax.random.split(jax.random.PRNGKey(9))[0],
                                                      x.shape[1:])
  jax.tree_util.tree_map(np.testing.assert_array_equal, lf.select(pool, 0), fresh)
  assert not np.allclose(jax.tree_util.tree_leaves(trained)[0],
                         jax.tree_util.tree_leaves(fresh)[0])


def test_online_batch_is_drawn_without_replacement(digits_small):
  """With batch_size < n the step sees b distinct rows (it matches a step on those rows)."""
  lf = _kernel(num_models=1, batch_size=5)
  x = jnp.asarray(digits_small.x_train[:20])
  y = jnp.asarray(support_labels(digits_small.y_train[:20], 10))
  pool = lf.init(jax.random.PRNGKey(0), x.shape[1:])
  key = jax.random.PRNGKey(3)
  got = jax.jit(lf.update)(pool, jnp.asarray(0), key, x, y)  # compiled: op by op is slower
  rows = jax.random.permutation(jax.random.split(key)[1], 20)[:5]
  assert len(set(np.asarray(rows).tolist())) == 5
  want = kip.kernels.LearnedFeatureKernel(lf.model, 1, lf.reset_every, lf.learning_rate, 1000)
  want = jax.jit(want.update)(pool, jnp.asarray(0), key, x[rows], y[rows])
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                         got.params, want.params)


def test_online_dc_takes_the_dc_protocols_sgd_step_on_the_cross_entropy(digits_small):
  """``online='dc'``: theta - lr (grad xent(argmax y) + 5e-4 theta), lr 0.01 then 0.001."""
  lf = _kernel(num_models=1, reset_every=4, learning_rate=None, online="dc")
  assert lf.learning_rate == 0.01 and lf.spec["online"] == "dc"
  assert _kernel(learning_rate=None).learning_rate == 3e-4  # FRePo's Adam stays the default
  x = jnp.asarray(digits_small.x_train[:20])
  y = jnp.asarray(support_labels(digits_small.y_train[:20], 10))  # centred: argmax = class
  pool = lf.init(jax.random.PRNGKey(0), x.shape[1:])
  p0 = lf.select(pool, 0)

  def xent(p):
    logits = lf.model.apply({"params": p}, x, train=True)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(20), digits_small.y_train[:20]])

  update = jax.jit(lf.update)
  pool = update(pool, jnp.asarray(0), jax.random.PRNGKey(1), x, y)
  p1 = lf.select(pool, 0)
  want = jax.tree_util.tree_map(lambda t, g: t - 0.01 * (g + 5e-4 * t), p0, jax.grad(xent)(p0))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         p1, want)
  pool = update(pool, jnp.asarray(0), jax.random.PRNGKey(2), x, y)  # lr 0.01, momentum 0.9
  pool = update(pool, jnp.asarray(0), jax.random.PRNGKey(3), x, y)  # step 2 = 4 // 2: lr 0.001
  p3 = lf.select(pool, 0)
  # the momentum buffer m_2 = 0.9 m_1 + g_2 is rebuilt from the two earlier steps' updates
  m1 = jax.tree_util.tree_map(lambda a, b: (a - b) / 0.01, p0, p1)
  p2 = jax.tree_util.tree_map(lambda a, m, g: a - 0.01 * (0.9 * m + g + 5e-4 * a), p1, m1,
                              jax.grad(xent)(p1))
  m2 = jax.tree_util.tree_map(lambda a, b: (a - b) / 0.01, p1, p2)
  want = jax.tree_util.tree_map(lambda a, m, g: a - 0.001 * (0.9 * m + g + 5e-4 * a), p2, m2,
                                jax.grad(xent)(p2))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
                         p3, want)
  assert kip.kernels.get_kernel(dict(lf.spec)).online == "dc"  # saved sets rebuild it


def test_kip_with_learned_features_learns_and_resumes_bit_identically(digits_small, tmp_path):
  lf = _kernel()
  kw = dict(support_size=10, kernel=lf, get="nngp", steps=12, target_batch_size=100,
            learning_rate=0.01, learn_labels=False, seed=1, progress=False)
  want = kip.distill(digits_small, **kw)
  hist = want.metadata["history"]["loss"]
  assert np.isfinite(hist).all()
  assert want.metadata["kernel"]["architecture"] == "learned_features"
  assert want.images.shape == (10, 8, 8, 1)
  flat = digits_small.x_train.reshape(len(digits_small.x_train), -1)
  for img in want.images.reshape(10, -1):  # every image moved away from its real start
    assert np.abs(flat - img).max(axis=1).min() > 1e-4

  def stop(step, metrics):
    if step == 7:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    kip.distill(digits_small, checkpoint_dir=tmp_path, callback=stop, checkpoint_every=5, **kw)
  got = kip.distill(digits_small, checkpoint_dir=tmp_path, resume=True, **kw)
  np.testing.assert_array_equal(got.images, want.images)  # the pool was checkpointed too
  assert got.metadata["history"]["loss"] == hist


def test_kip_state_holds_the_pool_and_step_trains_one_network(digits_small):
  lf = _kernel(num_models=3, reset_every=50)
  alg = make_kip(KIPConfig(images_per_class=2, get="nngp", target_batch_size=50), lf)
  state = alg.init(jax.random.PRNGKey(0), digits_small)
  assert isinstance(state, KIPPoolState)
  new, metrics = alg.step(state, alg.data(digits_small), jax.random.PRNGKey(1))
  assert np.isfinite(float(metrics["loss"]))
  changed = (new.pool.count - state.pool.count).tolist()
  assert sorted(changed) == [0, 0, 1]  # exactly one network took its online step
  ev = alg.eval_fn(new, digits_small)
  assert 0.0 <= ev["test_accuracy"] <= 1.0


def test_spec_rebuilds_the_kernel():
  lf = _kernel()
  again = kip.kernels.get_kernel(dict(lf.spec))
  assert isinstance(again, kip.kernels.LearnedFeatureKernel)
  assert again.spec == lf.spec and again.model == lf.model


@pytest.mark.parametrize("kwargs,match", [
    ({"num_models": 0}, "num_models=0"),
    ({"reset_every": 0}, "reset_every=0"),
    ({"learning_rate": -1.0}, "learning_rate=-1.0"),
    ({"learning_rate": float("nan")}, "learning_rate=nan"),
    ({"model_kwargs": {"widht": 8}}, "widht"),
    ({"online": "sgd"}, "online='sgd'"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    _kernel(**kwargs)


def test_bad_networks(digits_small):
  with pytest.raises(ValueError, match="batch_stats"):
    kip.kernels.learned_features("convnet", 10, model_kwargs={"width": 8, "norm": "batch"}
                                 ).check(digits_small.x_train.shape[1:], 10)
  with pytest.raises(ValueError, match="num_classes=10"):
    kip.kernels.learned_features("convnet", 3, model_kwargs=SMALL).check((8, 8, 1), 10)
  with pytest.raises(ValueError, match="cannot take images of shape"):
    kip.kernels.learned_features("convnet", 10, model_kwargs={"width": 8, "depth": 6,
                                                              "padding": "same"}
                                 ).check((8, 8, 1), 10)
