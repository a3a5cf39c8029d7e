"""Tests for DD data poisoning (kip.baselines.poisoning on kip._src.methods.poisoning)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kip._src import driver
from kip._src import losses
from kip._src import unroll
from kip._src.transfer.models import get_model
from kip.baselines import poisoning
from kip.transfer import TransferResult

FC = {"width": 32, "depth": 1}


@functools.lru_cache(maxsize=2)
def _quick_pretrain(ds):
  """A fast stand-in for the transfer trainer: full-batch Adam, compiled once."""
  model = get_model("fc", 10, **FC)
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  opt = optax.adam(0.01)

  @jax.jit
  def fit(key):
    params = model.init(key, x[:1])

    def body(_, carry):
      p, s = carry
      g = jax.grad(lambda q: losses.softmax_cross_entropy(model.apply(q, x), y))(p)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s
    return jax.lax.fori_loop(0, 150, body, (params, opt.init(params)))[0]

  return fit


def _config(**kw):
  base = dict(model="fc", model_kwargs=FC, pool_size=4, nets_per_step=2, steps=25,
              batch_size=200, learning_rate=0.05, lr_init=0.05, decay_epochs=None)
  base.update(kw)
  return poisoning.PoisonConfig(**base)


@pytest.fixture(scope="module")
def attack(digits):
  fit = _quick_pretrain(digits)
  out = poisoning.poison(digits, 3, 8, 10, _config(), 0, pretrained_params_fn=fit,
                         progress=False)
  return out, fit


def test_reference_defaults():
  c = poisoning.PoisonConfig()
  assert (c.images_per_class, c.labelling, c.image_init, c.distill_epochs) == (
      1, "own", "noise", 3)
  assert (c.pool_size, c.nets_per_step, c.learning_rate, c.batch_size) == (2000, 4, 0.02, 1024)
  assert (c.attacked_class, c.target_class, c.decay_epochs, c.decay_factor) == (0, 1, 40, 0.5)
  assert c.steps == unroll.reference_steps(60_000)
  assert poisoning.PoisonConfig(images_per_class=10).num_inner_steps == 30


def test_poisoning_sends_attacked_class_to_target(attack, digits):
  out, fit = attack
  assert out.images.shape == (10, 8, 8, 1) and out.method == "dd_poison"
  # One image per class with its own label (the relabelling is in the outer loss only).
  np.testing.assert_array_equal(out.hard_labels, np.arange(10))
  assert len(out.metadata["pretrain_keys"]) == 4
  rep = poisoning.poison_report(out, digits, 123, num_networks=2, pretrained_params_fn=fit)
  assert isinstance(rep, TransferResult) and rep.restarts == 2
  assert rep.before.attacked_accuracy > 0.6
  assert rep.after.attacked_to_target > rep.before.attacked_to_target + 0.2
  assert rep.after.other_accuracy > 0.6
  assert rep.mean == pytest.approx(np.mean(rep.accuracies))
  # The pool's keys are refused for evaluation.
  with pytest.raises(ValueError, match="reuse a key of the attack's pool"):
    poisoning.poison_report(out, digits, jax.random.PRNGKey(0), pretrained_params_fn=fit)


def test_relabelling_only_in_the_outer_loss(digits):
  """The step's loss is the cross-entropy with K -> T of the pool network after the inner
  steps on the images with their own labels."""
  fit = _quick_pretrain(digits)
  cfg = _config(pool_size=1, nets_per_step=1, attacked_class=3, target_class=8)
  algorithm = poisoning.make_poison(cfg, pretrained_params_fn=fit)
  data = algorithm.data(digits)
  state = algorithm.init(jax.random.PRNGKey(1), digits)
  key = jax.random.PRNGKey(2)
  _, m = algorithm.step(state, data, key)
  theta0 = jax.tree.map(lambda a: a[0], data.pool)
  apply = unroll.apply_fn(get_model("fc", 10, **FC))
  lrs = unroll.step_sizes(state.raw_lrs)
  theta = unroll.unrolled_sgd(apply, theta0, state.images, jnp.arange(10), lrs, remat=False)
  rows = np.asarray(jax.random.permutation(jax.random.split(key)[0], data.x.shape[0]))[:200]
  y = np.where(digits.y_train[rows] == 3, 8, digits.y_train[rows])
  want = losses.softmax_cross_entropy(apply(theta, data.x[rows]), jnp.asarray(y))
  assert float(m["loss"]) == pytest.approx(float(want), rel=1e-5)


def test_target_labelling_is_the_earlier_attack(digits):
  cfg = _config(labelling="target", image_init="attacked", attacked_class=3, target_class=8,
                steps=2)
  out = poisoning.poison(digits, 3, 8, 10, cfg, 0, pretrained_params_fn=_quick_pretrain(digits),
                         progress=False)
  assert (out.hard_labels == 8).all()


def test_config_hashable_with_list_kwargs():
  """Regression: model_kwargs={'width': [8, 8]} used to make the config unhashable."""
  a = poisoning.PoisonConfig(model_kwargs={"width": [8, 8]})
  b = poisoning.PoisonConfig(model_kwargs={"width": (8, 8)})
  assert a == b and hash(a) == hash(b)
  assert a.to_dict()["model_kwargs"] == {"width": [8, 8]}
  # Equal configs share one compiled step.
  assert poisoning.make_poison(a).step is poisoning.make_poison(b).step


def test_bad_input(digits):
  with pytest.raises(ValueError, match="must differ"):
    poisoning.PoisonConfig(attacked_class=3, target_class=3)
  with pytest.raises(ValueError, match="nets_per_step=5 exceeds pool_size=4"):
    poisoning.PoisonConfig(pool_size=4, nets_per_step=5)
  with pytest.raises(ValueError, match="num_images=5 must be a positive multiple of the 10"):
    poisoning.poison(digits, 3, 8, 5, _config(), 0)
  with pytest.raises(ValueError, match="target_class=12 is not a class"):
    poisoning.make_poison(_config(target_class=12)).init(jax.random.PRNGKey(0), digits)
  with pytest.raises(ValueError, match="distill_steps=2 synthetic batches"):
    poisoning.PoisonConfig(distill_steps=2)


def test_interrupted_and_resumed_run_is_bit_identical(digits, tmp_path):
  fit = _quick_pretrain(digits)
  cfg = _config(steps=4, attacked_class=3, target_class=8)
  make = lambda: poisoning.make_poison(cfg, pretrained_params_fn=fit)
  want = driver.run(make(), digits, key=3, progress=False)

  def interrupt(step, metrics):
    if step == 2:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    driver.run(make(), digits, key=3, checkpoint_dir=tmp_path, checkpoint_every=0,
               progress=False, callback=interrupt)
  got = driver.run(make(), digits, key=3, checkpoint_dir=tmp_path, resume=True, progress=False)
  assert got.metadata["steps_this_run"] == 2
  np.testing.assert_array_equal(got.images, want.images)
  assert got.metadata["step_sizes"] == want.metadata["step_sizes"]
  assert got.metadata["history"]["loss"] == want.metadata["history"]["loss"]
