"""Tests for Dataset Distillation (kip.baselines.dd) and DD data poisoning."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kip import data
from kip._src.distilled import DistilledSet
from kip.baselines import dd
from kip.baselines import poisoning
from kip._src.transfer.models import get_model

FC = {"width": 32, "depth": 1}


@pytest.fixture(scope="module")
def digits():
  """scikit-learn's 8x8 digits through kip.data (1437 train / 360 test, standardised)."""
  return data.load("digits")


@pytest.fixture(scope="module")
def fixed_run(digits):
  cfg = dd.DDConfig(model="fc", model_kwargs=FC, steps=5, epochs=2, init="fixed", num_steps=30,
                    batch_size=128, learning_rate=0.05)
  return dd.distill_dd(digits, 1, cfg, jax.random.PRNGKey(0), progress=False)


def test_distill_dd_fixed_reduces_outer_loss(fixed_run):
  h = np.asarray(fixed_run.metadata["loss_history"])
  assert len(h) == 30 and np.isfinite(h).all()
  assert h[-5:].mean() < 0.85 * h[:3].mean()
  assert fixed_run.images.shape == (10, 8, 8, 1) and fixed_run.method == "dd"
  np.testing.assert_array_equal(fixed_run.labels, np.eye(10, dtype=np.float32))
  meta = fixed_run.metadata
  assert len(meta["step_sizes"]) == 10 and min(meta["step_sizes"]) > 0
  assert meta["init"] == "fixed" and len(meta["init_key"]) == 2


def test_evaluate_dd_fixed_beats_untrained_init(fixed_run, digits, tmp_path):
  res = dd.evaluate_dd(fixed_run, digits, 0, restarts=3)
  assert res.init == "fixed" and len(res.accuracies) == 1 and res.std == 0.0
  assert res.init_accuracy < 0.3
  assert res.mean > res.init_accuracy + 0.4
  # The schedule and the fixed θ0 key survive a save / load round trip.
  fixed_run.save(tmp_path / "dd.npz")
  again = dd.evaluate_dd(DistilledSet.load(tmp_path / "dd.npz"), digits, 0)
  assert again.mean == res.mean and again.init_accuracy == res.init_accuracy


def test_split_steps_arrangement(digits):
  cfg = dd.DDConfig(model="fc", model_kwargs=FC, steps=3, epochs=2, split_steps=True,
                    image_init="real")
  state = dd.init(0, digits, cfg, images_per_class=3)
  assert state.images.shape == (30, 8, 8, 1) and state.raw_lrs.shape == (6,)
  # Group-major: each of the 3 inner steps sees one image of every class.
  np.testing.assert_array_equal(np.argmax(state.labels, 1), np.tile(np.arange(10), 3))
  # 'real' initialisation copies training images of the right class.
  for img, c in zip(np.asarray(state.images), np.argmax(state.labels, 1)):
    match = np.flatnonzero((digits.x_train == img).all(axis=(1, 2, 3)))
    assert len(match) and (digits.y_train[match] == c).all()


def test_random_init_20_checkpointed_steps_under_jit(digits):
  cfg = dd.DDConfig(model="fc", model_kwargs=FC, steps=20, epochs=1, init="random",
                    inits_per_step=2, image_init="real")
  state = dd.init(0, digits, cfg, images_per_class=1, optimizer=optax.adam(0.05))
  assert state.init_params is None and state.raw_lrs.shape == (20,)
  batch = (jnp.asarray(digits.x_train[:100]), jnp.asarray(digits.y_train[:100]))
  compiled = dd.step._cache_size()
  s = state
  for t in range(3):
    s, m = dd.step(s, batch, jax.random.PRNGKey(t))
    assert np.isfinite(float(m["loss"])) and float(m["lr_mean"]) > 0
  assert int(s.count) == 3 and not np.allclose(s.images, state.images)
  assert dd.step._cache_size() == compiled + 1  # one compilation for repeated steps


def test_checkpointed_scan_is_exact_and_bounded():
  """20 unrolled steps: remat gives the same gradient with less temporary memory."""
  model = get_model("fc", 10, **FC)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  apply_fn = lambda p, x: model.apply(p, x)
  rng = np.random.default_rng(0)
  x_syn = jnp.asarray(rng.normal(size=(10, 8, 8, 1)), jnp.float32)
  y_syn = jnp.eye(10)
  x_real = jnp.asarray(rng.normal(size=(64, 8, 8, 1)), jnp.float32)
  y_real = jnp.arange(64) % 10
  lrs = jnp.full((20,), 0.05)

  def make(remat):
    def loss(x):
      theta = dd.unrolled_sgd(apply_fn, params, x, y_syn, lrs, steps=20, split_steps=False,
                              remat=remat)
      return optax.softmax_cross_entropy_with_integer_labels(apply_fn(theta, x_real),
                                                             y_real).mean()
    return jax.jit(jax.grad(loss)).lower(x_syn).compile()

  with_remat, without = make(True), make(False)
  np.testing.assert_allclose(with_remat(x_syn), without(x_syn), rtol=1e-4, atol=1e-6)
  mem_r, mem_n = with_remat.memory_analysis(), without.memory_analysis()
  if mem_r is not None and mem_n is not None:
    assert mem_r.temp_size_in_bytes < mem_n.temp_size_in_bytes


def test_dd_errors(digits, fixed_run):
  with pytest.raises(ValueError, match="batch_stats"):
    dd.init(0, digits, dd.DDConfig(model="convnet", model_kwargs={"norm": "batch", "width": 4,
                                                                  "depth": 1}))
  with pytest.raises(ValueError, match="multiple of steps"):
    dd.init(0, digits, dd.DDConfig(model="fc", model_kwargs=FC, steps=3, split_steps=True), 2)
  with pytest.raises(ValueError, match="init must be one of"):
    dd.DDConfig(init="zero")
  with pytest.raises(ValueError, match="steps must be a positive int"):
    dd.DDConfig(steps=0)
  with pytest.raises(ValueError, match="lacks DD metadata"):
    dd.evaluate_dd(fixed_run.replace(metadata={}), digits, 0)
  with pytest.raises(ValueError, match="fixed-init evaluation needs the distillation model"):
    dd.evaluate_dd(fixed_run, digits, 0, model="lenet")


def _quick_pretrain(digits):
  """A fast stand-in for kip.transfer.train: full-batch Adam, compiled once."""
  model = get_model("fc", 10, **FC)
  x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
  opt = optax.adam(0.01)

  @jax.jit
  def fit_from(params):
    def body(_, carry):
      p, s = carry
      g = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(
          model.apply(q, x), y).mean())(p)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s
    return jax.lax.fori_loop(0, 150, body, (params, opt.init(params)))[0]

  # Eager init reuses the per-op compilations of the other tests (threefry compiles slowly).
  return lambda key: fit_from(model.init(key, x[:1]))


def test_poisoning_sends_attacked_class_to_target(digits):
  fit = _quick_pretrain(digits)
  cfg = poisoning.PoisonConfig(model="fc", model_kwargs=FC, num_pretrained=2, num_steps=25,
                               batch_size=200, learning_rate=0.05, lr_init=0.05)
  out = poisoning.poison(digits, 3, 8, 5, cfg, 0, pretrained_params_fn=fit, progress=False)
  assert out.images.shape == (5, 8, 8, 1) and out.method == "dd_poison"
  assert (out.hard_labels == 8).all()
  rep = poisoning.poison_report(out, digits, 123, num_networks=2, pretrained_params_fn=fit)
  assert rep.before.attacked_accuracy > 0.6
  assert rep.after.attacked_to_target > rep.before.attacked_to_target + 0.2
  assert rep.after.other_accuracy > 0.6
  with pytest.raises(ValueError, match="must differ"):
    poisoning.poison(digits, 3, 3, 5, cfg, 0, pretrained_params_fn=fit)


def test_fixed_init_key_is_recoverable_for_typed_keys(digits):
  cfg = dd.DDConfig(model="fc", model_kwargs=FC, init="fixed", num_steps=0)
  key = jax.random.key(3)
  out = dd.distill_dd(digits, 1, cfg, key, progress=False)
  assert out.metadata["init_key_impl"] == "threefry2x32"
  state = dd.init(jax.random.split(key)[0], digits, cfg)
  rebuilt = get_model("fc", 10, **FC).init(dd._theta_key(out.metadata), digits.x_train[:1])
  jax.tree.map(np.testing.assert_array_equal, rebuilt, state.init_params)
