"""Tests for Dataset Distillation (kip.baselines.dd on kip._src.methods.dd / kip._src.unroll)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kip import methods
from kip._src import driver
from kip._src import unroll
from kip._src.distilled import DistilledSet
from kip._src.transfer.models import get_model
from kip.baselines import dd
from kip.transfer import TransferResult

FC = {"width": 32, "depth": 1}


@pytest.fixture(scope="module")
def fixed_run(digits):
  cfg = dd.DDConfig(steps=30, model="fc", model_kwargs=FC, init="fixed", batching="all",
                    distill_steps=5, distill_epochs=2, batch_size=128, learning_rate=0.05,
                    decay_epochs=None)
  return dd.distill_dd(digits, 1, cfg, jax.random.PRNGKey(0), progress=False)


# ----------------------------------------------------------------------------- ported behaviour
def test_distill_dd_fixed_reduces_outer_loss(fixed_run):
  h = np.asarray(fixed_run.metadata["history"]["loss"])
  assert len(h) == 30 and np.isfinite(h).all()
  assert h[-5:].mean() < 0.85 * h[:3].mean()
  assert fixed_run.images.shape == (10, 8, 8, 1) and fixed_run.method == "dd"
  np.testing.assert_array_equal(fixed_run.labels, np.eye(10, dtype=np.float32))
  meta = fixed_run.metadata
  assert len(meta["step_sizes"]) == 10 and min(meta["step_sizes"]) > 0
  assert meta["init"] == "fixed" and len(meta["init_key"]) == 2
  assert meta["num_batches"] == 1 and meta["models"] == [["fc", FC]]


def test_evaluate_dd_fixed_beats_untrained_init(fixed_run, digits, tmp_path):
  res = dd.evaluate_dd(fixed_run, digits, 0, restarts=3)
  assert isinstance(res, TransferResult)
  assert res.init == "fixed" and len(res.accuracies) == 1 and res.std == 0.0
  assert res.init_accuracy < 0.3
  assert res.mean > res.init_accuracy + 0.4
  # The schedule and the fixed θ0 key survive a save / load round trip.
  fixed_run.save(tmp_path / "dd.npz")
  again = dd.evaluate_dd(DistilledSet.load(tmp_path / "dd.npz"), digits, 0)
  assert again.mean == res.mean and again.init_accuracy == res.init_accuracy


def test_real_image_init_is_batch_major_and_real(digits):
  cfg = dd.DDConfig(images_per_class=3, model="fc", model_kwargs=FC, image_init="real",
                    distill_epochs=2)
  state = dd.make_dd(cfg).init(jax.random.PRNGKey(0), digits)
  assert state.images.shape == (30, 8, 8, 1) and state.raw_lrs.shape == (6,)
  classes = unroll.arrange_classes(3, 10, 3)
  # Batch-major: each of the 3 inner steps sees one image of every class.
  np.testing.assert_array_equal(classes, np.tile(np.arange(10), 3))
  for img, c in zip(np.asarray(state.images), classes):
    match = np.flatnonzero((digits.x_train == img).all(axis=(1, 2, 3)))
    assert len(match) and (digits.y_train[match] == c).all()


def test_step_is_jitted_once_and_updates(digits):
  cfg = dd.DDConfig(images_per_class=2, steps=3, model="fc", model_kwargs=FC,
                    inits_per_step=2, image_init="real", batch_size=100)
  algorithm = dd.make_dd(cfg)
  state = algorithm.init(jax.random.PRNGKey(0), digits)
  data = algorithm.data(digits)
  s = state
  for t in range(3):
    s, m = algorithm.step(s, data, jax.random.PRNGKey(t))
    assert np.isfinite(float(m["loss"])) and float(m["lr_mean"]) > 0
  assert int(s.count) == 3 and not np.allclose(s.images, state.images)
  assert algorithm.step._cache_size() == 1
  # Equal configs share the compiled step.
  assert dd.make_dd(dd.DDConfig(**{**cfg.__dict__, "steps": 7})).step is algorithm.step


def test_checkpointed_scan_is_exact_and_bounded():
  """20 unrolled steps: remat gives the same gradient with less temporary memory."""
  model = get_model("fc", 10, **FC)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  apply = unroll.apply_fn(model)
  rng = np.random.default_rng(0)
  x_syn = jnp.asarray(rng.normal(size=(10, 8, 8, 1)), jnp.float32)
  y_syn = jnp.arange(10)
  x_real = jnp.asarray(rng.normal(size=(64, 8, 8, 1)), jnp.float32)
  y_real = jnp.arange(64) % 10
  lrs = jnp.full((20,), 0.05)

  def make(remat):
    def loss(x):
      theta = unroll.unrolled_sgd(apply, params, x, y_syn, lrs, num_batches=1, remat=remat)
      return optax.softmax_cross_entropy_with_integer_labels(apply(theta, x_real),
                                                             y_real).mean()
    return jax.jit(jax.grad(loss)).lower(x_syn).compile()

  with_remat, without = make(True), make(False)
  np.testing.assert_allclose(with_remat(x_syn), without(x_syn), rtol=1e-4, atol=1e-6)
  mem_r, mem_n = with_remat.memory_analysis(), without.memory_analysis()
  if mem_r is not None and mem_n is not None:
    assert mem_r.temp_size_in_bytes < mem_n.temp_size_in_bytes


# ----------------------------------------------------------------------------- reference defaults
def test_reference_defaults():
  c = dd.DDConfig()
  assert (c.images_per_class, c.model, c.init, c.init_scheme, c.batching) == (
      1, "lenet", "random", "xavier", "cyclic")
  assert (c.lr_init, c.lr_param, c.learning_rate, c.batch_size) == (0.02, "softplus", 0.01, 1024)
  assert (c.decay_epochs, c.decay_factor, c.distill_epochs) == (40, 0.5, 3)
  # 400 epochs of ceil(60000 / 1024) = 59 batches.
  assert c.steps == unroll.reference_steps(60_000) == 23_600
  ten = dd.DDConfig(images_per_class=10)
  assert (ten.num_batches, ten.num_inner_steps) == (10, 30)  # 10 steps x 3 epochs, 1 img/class
  legacy = dd.DDConfig(images_per_class=10, batching="all")
  assert (legacy.num_batches, legacy.num_inner_steps) == (1, 30)


def test_softplus_step_sizes_start_at_lr_init():
  raw = unroll.raw_step_sizes(0.02, 6)
  # The reference "undoes the softplus": raw = log(expm1(0.02)).
  np.testing.assert_allclose(raw, np.log(np.expm1(0.02)), rtol=1e-6)
  np.testing.assert_allclose(unroll.step_sizes(raw, "softplus"), 0.02, rtol=1e-5)
  np.testing.assert_allclose(unroll.step_sizes(unroll.raw_step_sizes(0.3, 2, "exp"), "exp"), 0.3,
                             rtol=1e-6)


@pytest.mark.parametrize("num_batches", [1, 3])
def test_cyclic_inner_loop_matches_numpy(num_batches):
  """Linear softmax model: step k uses batch k mod s (s = 1: every image every step)."""
  rng = np.random.default_rng(1)
  k, d, ipc, t = 3, 4, 3, 7
  x = rng.normal(size=(k * ipc, 1, 1, d)).astype(np.float32)
  y = unroll.arrange_classes(ipc, k, num_batches)
  w0 = rng.normal(size=(d, k)).astype(np.float32) * 0.1
  lrs = np.linspace(0.1, 0.4, t).astype(np.float32)
  apply = lambda p, xx: xx.reshape(xx.shape[0], -1) @ p["w"]
  got = unroll.unrolled_sgd(apply, {"w": jnp.asarray(w0)}, jnp.asarray(x), jnp.asarray(y),
                            jnp.asarray(lrs), num_batches=num_batches, remat=False)["w"]
  w = w0.astype(np.float64)
  xb = x.reshape(num_batches, -1, d)
  yb = y.reshape(num_batches, -1)
  for step in range(t):
    xs, ys = xb[step % num_batches], yb[step % num_batches]
    z = xs @ w
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(ys)), ys] -= 1.0
    w = w - lrs[step] * xs.T @ p / len(ys)
  np.testing.assert_allclose(np.asarray(got), w, rtol=1e-4, atol=1e-6)


def test_arrangement_gives_each_batch_every_class():
  np.testing.assert_array_equal(unroll.arrange_classes(4, 3, 2),
                                [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2])
  x = np.arange(12)  # class-major: class c owns 4c .. 4c + 3
  np.testing.assert_array_equal(unroll.batch_major(x, 3, 2), [0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11])


def test_xavier_init_as_reference_and_pytorch_option():
  key = jax.random.PRNGKey(0)
  lenet = get_model("lenet", 10)
  v = unroll.init_params(lenet, key, (28, 28, 1), "xavier")["params"]
  for layer in v.values():
    np.testing.assert_array_equal(layer["bias"], 0.0)
  # conv0 (5, 5, 1, 6): fan_in 25, fan_out 150; dense0 (400, 120).
  for name, fan_in, fan_out in (("conv0", 25, 150), ("dense0", 400, 120)):
    std = float(np.std(v[name]["kernel"]))
    assert abs(std / math.sqrt(2 / (fan_in + fan_out)) - 1) < 0.1, (name, std)
  torch = unroll.init_params(lenet, key, (28, 28, 1), "pytorch")["params"]
  assert np.abs(torch["dense0"]["bias"]).max() > 0
  assert np.abs(torch["dense0"]["kernel"]).max() <= 1 / math.sqrt(400) + 1e-7


def test_lr_halved_every_decay_epochs_in_the_step(digits_small):
  # 200 training images at batch 128: 2 steps per epoch; decay every epoch for the test.
  cfg = dd.DDConfig(steps=5, model="fc", model_kwargs={"width": 8, "depth": 0},
                    batch_size=128, decay_epochs=1, learning_rate=0.01)
  got = []
  driver.run(dd.make_dd(cfg), digits_small, key=0, progress=False,
             callback=lambda i, m: got.append(m["outer_lr"]))
  np.testing.assert_allclose(got, [0.01, 0.01, 0.005, 0.005, 0.0025], rtol=1e-6)
  const = dd.DDConfig(steps=3, model="fc", model_kwargs={"width": 8, "depth": 0},
                      batch_size=128, decay_epochs=None)
  got = []
  driver.run(dd.make_dd(const), digits_small, key=0, progress=False,
             callback=lambda i, m: got.append(m["outer_lr"]))
  np.testing.assert_allclose(got, [0.01] * 3, rtol=1e-6)
  assert float(unroll.outer_learning_rate(0.01, jnp.asarray(23_599), 59, 40, 0.5)) == \
      pytest.approx(0.01 * 0.5 ** 9)


# ----------------------------------------------------------------------------- architectures
def test_distillation_over_a_set_of_architectures(digits_small):
  archs = (("fc", {"width": 16, "depth": 1}), ("fc", {"width": 8, "depth": 0}))
  cfg = dd.DDConfig(steps=3, models=archs, batch_size=64)
  assert cfg.networks == (("fc", (("depth", 1), ("width", 16))),
                          ("fc", (("depth", 0), ("width", 8))))
  out = dd.distill_dd(digits_small, 1, cfg, 0, progress=False)
  assert np.isfinite(out.metadata["history"]["loss"]).all()
  assert out.metadata["models"] == [["fc", {"depth": 1, "width": 16}],
                                    ["fc", {"depth": 0, "width": 8}]]
  # The outer loss is the mean over the architectures: the set's loss equals the mean of the
  # single-architecture losses from the same θ0 (init='fixed'), images and real batch.
  fixed = dict(init="fixed", batch_size=64)
  key = jax.random.PRNGKey(5)
  both = dd.make_dd(dd.DDConfig(models=archs, **fixed))
  state = both.init(key, digits_small)
  _, m = both.step(state, both.data(digits_small), jax.random.PRNGKey(6))
  singles = []
  for a, arch in enumerate(archs):
    one = dd.make_dd(dd.DDConfig(models=(arch,), **fixed))
    s1 = one.init(key, digits_small)._replace(init_params=(state.init_params[a],))
    singles.append(float(one.step(s1, one.data(digits_small), jax.random.PRNGKey(6))[1]["loss"]))
  assert float(m["loss"]) == pytest.approx(np.mean(singles), rel=1e-5)


def test_step_strategies(fixed_run, digits):
  raw = dd.evaluate_dd(fixed_run, digits, 1, restarts=2, init="random")
  same = dd.evaluate_dd(fixed_run, digits, 1, restarts=2, init="random",
                        step_strategy="rescaled")
  assert same.step_scale == 1.0 and same.accuracies == raw.accuracies
  other = {"width": 64, "depth": 2}
  resc = dd.evaluate_dd(fixed_run, digits, 1, restarts=2, init="random", model="fc",
                        model_kwargs=other, step_strategy="rescaled", ntk_networks=2)
  assert np.isfinite(resc.step_scale) and resc.step_scale > 0 and resc.step_scale != 1.0
  np.testing.assert_allclose(resc.step_sizes,
                             np.asarray(fixed_run.metadata["step_sizes"]) * resc.step_scale,
                             rtol=1e-5)
  grid = (0.5, 1.0, 2.0)
  tuned = dd.evaluate_dd(fixed_run, digits, 1, restarts=2, init="random", model="fc",
                         model_kwargs=other, step_strategy="tuned", tune_grid=grid,
                         validation_size=200, tune_restarts=1)
  base = float(np.mean(fixed_run.metadata["step_sizes"]))
  assert any(tuned.step_scale == pytest.approx(base * g) for g in grid)
  assert len(set(tuned.step_sizes)) == 1 and tuned.recipe["step_strategy"] == "tuned"
  assert tuned.to_dict()["step_strategy"] == "tuned"
  with pytest.raises(ValueError, match="step_strategy"):
    dd.evaluate_dd(fixed_run, digits, 1, step_strategy="best")


# ----------------------------------------------------------------------------- bad input
def test_bad_input_names_value_and_fix(digits, fixed_run):
  with pytest.raises(ValueError, match=r"models=\(\) names no architecture"):
    dd.DDConfig(models=())
  # ConvNet-4 on 8x8 images: 12 -> 6 -> 3 -> 1 -> 0 after the pools.
  deep = dd.DDConfig(model="convnet", model_kwargs={"depth": 4, "width": 4, "norm": "none"})
  with pytest.raises(ValueError, match=r"cannot take the data's image shape \(8, 8, 1\)"):
    dd.make_dd(deep).init(jax.random.PRNGKey(0), digits)
  with pytest.raises(ValueError, match="compression=1000 leaves 1.4 synthetic images"):
    dd.images_per_class_for(digits, 1000)
  assert dd.images_per_class_for(digits, 3) == 47  # 1437 / (3 * 10)
  with pytest.raises(ValueError, match=r"distill_steps=3 synthetic batches but only "
                                       r"images_per_class=2.*use distill_steps <= 2"):
    dd.DDConfig(images_per_class=2, distill_steps=3)
  with pytest.raises(ValueError, match="images_per_class=5 is not a multiple of distill_steps=2"):
    dd.DDConfig(images_per_class=5, distill_steps=2)
  with pytest.raises(ValueError, match="batch_stats"):
    dd.make_dd(dd.DDConfig(model="convnet", model_kwargs={"norm": "batch", "width": 4,
                                                          "depth": 1})).init(
                                                              jax.random.PRNGKey(0), digits)
  with pytest.raises(ValueError, match="init="):
    dd.DDConfig(init="zero")
  with pytest.raises(ValueError, match="steps must be an int >= 0"):
    dd.DDConfig(steps=-1)
  with pytest.raises(ValueError, match="lacks DD metadata"):
    dd.evaluate_dd(fixed_run.replace(metadata={}), digits, 0)
  with pytest.raises(ValueError, match="fixed-init evaluation needs an architecture"):
    dd.evaluate_dd(fixed_run, digits, 0, model="lenet")


def test_config_is_hashable_with_list_kwargs():
  a = dd.DDConfig(model_kwargs={"width": [8, 8]}, models=(("fc", {"width": [4]}),))
  b = dd.DDConfig(model_kwargs={"width": (8, 8)}, models=(("fc", (("width", (4,)),)),))
  assert a == b and hash(a) == hash(b)
  assert a.to_dict()["model_kwargs"] == {"width": [8, 8]}


# ----------------------------------------------------------------------------- driver
def test_registry_builds_dd():
  algorithm = methods.make("dd", images_per_class=1)
  assert algorithm.name == "dd" and algorithm.default_steps == 23_600


def test_interrupted_and_resumed_run_is_bit_identical(digits, tmp_path):
  cfg = dd.DDConfig(images_per_class=2, steps=4, model="fc", model_kwargs=FC, batch_size=128)
  want = driver.run(dd.make_dd(cfg), digits, key=3, progress=False)

  def interrupt(step, metrics):
    if step == 2:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    driver.run(dd.make_dd(cfg), digits, key=3, checkpoint_dir=tmp_path, checkpoint_every=0,
               progress=False, callback=interrupt)
  got = driver.run(dd.make_dd(cfg), digits, key=3, checkpoint_dir=tmp_path, resume=True,
                   progress=False)
  assert got.metadata["steps_this_run"] == 2
  np.testing.assert_array_equal(got.images, want.images)
  assert got.metadata["step_sizes"] == want.metadata["step_sizes"]
  assert got.metadata["history"]["loss"] == want.metadata["history"]["loss"]
