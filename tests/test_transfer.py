"""Tests for kip.transfer: finite networks, recipes, training and the transfer protocol."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kip import transfer
from kip._src.distilled import DistilledSet
from kip._src.transfer import train as transfer_train
from kip._src.transfer.train import _bytes_per_restart
from kip._src.transfer.train import _group_size
from kip._src.transfer.train import _random_subset

SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]
TINY = {  # smallest settings of every preset, to keep the tests fast
    "convnet": dict(width=8),
    "kip_convnet": dict(width=8),
    "kip_convnet3": dict(width=8),
    "fc": dict(width=16),
    "lenet": {},
    "alexnet": {},
    "resnet": dict(width=4),
}


@dataclasses.dataclass(frozen=True)
class FakeDataset:
  """Stand-in with the attributes of ``kip.data.Dataset`` that the protocol reads."""
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  class_names: tuple[str, ...] = ()
  preprocessing: object = None

  def one_hot(self, y):
    return np.eye(self.num_classes, dtype=np.float32)[np.asarray(y)]


def _separable(n_train=60, n_test=60, k=3, seed=0, name="fake"):
  """Class c lights up its own horizontal band of an 8x8 image, plus noise."""
  rng = np.random.default_rng(seed)

  def make(n):
    y = np.arange(n) % k
    x = 0.3 * rng.normal(size=(n, 8, 8, 1))
    for c in range(k):
      x[y == c, 2 * c:2 * c + 2, :, 0] += 1.5
    return x.astype(np.float32), y.astype(np.int32)

  x_train, y_train = make(n_train)
  x_test, y_test = make(n_test)
  return FakeDataset(name, x_train, y_train, x_test, y_test, k, tuple(map(str, range(k))))


DATA = _separable()
FAST_DC = dict(epochs=20, learning_rate=0.05)
SMALL = dict(model="convnet", model_kwargs=dict(width=4, depth=1), recipe="dc",
             recipe_overrides=FAST_DC, progress=False)


# ---------------------------------------------------------------------------- models
def _numpy_variables(model, x):
  """Variables of the right structure filled from NumPy: builds the model without compiling
  its (slow to compile on CPU) random initialisers; those are exercised by the training tests."""
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda a: (0.1 * rng.normal(size=a.shape)).astype(a.dtype), abstract)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", transfer.MODEL_NAMES)
def test_models_build_and_run_jitted(name, shape):
  model = transfer.get_model(name, 7, **TINY[name])
  x = jax.random.normal(jax.random.PRNGKey(0), (3,) + shape)
  logits = jax.jit(lambda v, x: model.apply(v, x))(_numpy_variables(model, x), x)
  assert logits.shape == (3, 7)
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_presets():
  conv = transfer.get_model("convnet", 10)
  assert (conv.width, conv.depth, conv.norm, conv.pooling) == (128, 3, "instance", "avg")
  kip = transfer.get_model("kip_convnet", 10)
  assert (kip.width, kip.depth, kip.norm, kip.param_init) == (1024, 3, "none", "gaussian")
  assert kip.w_std == pytest.approx(np.sqrt(2)) and kip.b_std == 0.1


def test_kip_convnet_gaussian_init_scale():
  model = transfer.get_model("kip_convnet3", 10, width=64, depth=1)  # conv0 sees the image
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"]
  conv, readout = params["conv0"], params["readout"]  # fan_in 3 * 3 * 3 and 4 * 4 * 64
  assert float(jnp.std(conv["kernel"])) == pytest.approx(np.sqrt(2 / 27), rel=0.1)
  assert float(jnp.std(readout["kernel"])) == pytest.approx(np.sqrt(2 / 1024), rel=0.1)
  assert float(jnp.std(conv["bias"])) == pytest.approx(0.1, rel=0.3)


def test_odd_sizes_and_depth_limit():
  model = transfer.get_model("convnet", 4, width=4, depth=2)  # 7 -> 3 -> 1
  x = jnp.ones((2, 7, 7, 1))
  assert jax.eval_shape(model.init_with_output, jax.random.PRNGKey(0), x)[0].shape == (2, 4)
  deep = transfer.get_model("convnet", 4, width=4, depth=4)  # 8 -> 4 -> 2 -> 1 -> ?
  with pytest.raises(ValueError, match="too deep"):
    jax.eval_shape(deep.init, jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 1)))


def test_model_errors():
  with pytest.raises(ValueError, match="known models.*convnet"):
    transfer.get_model("vgg", 10)
  with pytest.raises(ValueError, match="no attributes"):
    transfer.get_model("lenet", 10, width=3)
  with pytest.raises(ValueError, match="norm"):
    transfer.get_model("convnet", 10, norm="layer")


def test_batch_norm_trains_with_mutable_stats():
  model = transfer.get_model("convnet", 3, width=4, depth=1, norm="batch")
  recipe = transfer.get_recipe("dc", **FAST_DC)
  variables = transfer.train(model, DATA.x_train, DATA.y_train, recipe, jax.random.PRNGKey(0))
  assert set(variables) == {"params", "batch_stats"}
  assert transfer.accuracy(model, variables, DATA.x_test, DATA.y_test) > 0.8


# ---------------------------------------------------------------------------- recipes
def test_recipes():
  kip = transfer.get_recipe("kip")
  assert (kip.loss, kip.batch_size, kip.steps, kip.schedule, kip.weight_decay) == (
      "mse", 100, 5000, "cosine", 1e-3)
  dc = transfer.get_recipe("dc")
  assert (dc.loss, dc.batch_size, dc.epochs, dc.schedule, dc.weight_decay) == (
      "xent", 256, 300, "step_half", 5e-4)
  assert transfer.get_recipe("dc", augment=True).epochs == 1000
  assert transfer.get_recipe("kip", epochs=3).num_steps(250) == 9  # batch 100: 3 per epoch
  assert dc.num_steps(10) == 300  # a set smaller than the batch is one batch per step
  with pytest.raises(ValueError, match="known recipes"):
    transfer.get_recipe("mtt")
  with pytest.raises(ValueError, match="no fields"):
    transfer.get_recipe("dc", lr=0.1)
  with pytest.raises(ValueError, match="loss"):
    transfer.get_recipe("dc", loss="hinge")


def test_step_half_schedule_and_weight_decay():
  recipe = transfer.get_recipe("dc", steps=10, momentum=0.0, weight_decay=0.5, learning_rate=0.1)
  tx = transfer.make_optimizer(recipe, 10)
  params = jnp.ones(())
  state = tx.init(params)
  steps = []
  for _ in range(10):
    update, state = tx.update(jnp.ones(()), state, params)
    steps.append(-float(update))
  # gradient 1 + coupled decay 0.5 * 1 = 1.5, times lr 0.1 then 0.01 from step 5 on
  np.testing.assert_allclose(steps, [0.15] * 5 + [0.015] * 5, rtol=1e-6)


@pytest.mark.parametrize("schedule,momentum", [("step_half", 0.9), ("cosine", 0.0)])
def test_trainer_update_is_make_optimizer_with_run_time_lr_and_decay(schedule, momentum):
  """The trainer's step (lr, wd as arguments) equals ``make_optimizer``'s optax chain, and
  recipes that differ only in lr / wd share one compiled trainer."""
  model = transfer.get_model("fc", 3, width=8, depth=1)
  x, y = DATA.x_train[:16], DATA.one_hot(DATA.y_train[:16])
  recipe = transfer.get_recipe("dc", steps=6, batch_size=8, schedule=schedule,
                               momentum=momentum, weight_decay=0.01, learning_rate=0.2)
  key = jax.random.PRNGKey(3)
  got = transfer.train(model, x, y, recipe, key)
  other = transfer_train._trainer(model, recipe.replace(learning_rate=0.5, weight_decay=0.0),
                                  16, None, False)
  assert transfer_train._trainer(model, recipe, 16, None, False) is other
  # The same run with the optax transformation, batches as the trainer draws them.
  tx = transfer.make_optimizer(recipe, recipe.num_steps(16))
  k_init, k_data = jax.random.split(key)
  params = model.init(k_init, jnp.asarray(x[:1]), train=False)["params"]
  opt_state = tx.init(params)
  targets = jnp.asarray(transfer.training_targets(y, recipe.loss))
  loss = lambda p, xb, yb: transfer_train._loss(  # noqa: E731
      recipe.loss, model.apply({"params": p}, xb, train=True), yb)
  for t in range(recipe.num_steps(16)):
    perm = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(k_data, 0), t // 2), 16)
    idx = perm[(t % 2) * 8:(t % 2) * 8 + 8]
    grads = jax.grad(loss)(params, jnp.asarray(x)[idx], targets[idx])
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  for a, b in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_targets_reference_rule():
  """The KIP notebook: argmax one-hot for cross-entropy, centred one-hot for MSE."""
  learned = np.array([[1.5, -0.2, 0.0], [0.1, 0.3, -1.0]], np.float32)
  np.testing.assert_array_equal(transfer.training_targets(learned, "xent"),
                                [[1, 0, 0], [0, 1, 0]])
  np.testing.assert_array_equal(transfer.training_targets(learned, "mse"), learned)
  one_hot = np.array([[0, 0, 1], [1, 0, 0]], np.float32)
  mixed = np.concatenate([one_hot, learned])  # only plain 0/1 rows are shifted
  np.testing.assert_allclose(transfer.training_targets(mixed, "mse"),
                             np.concatenate([one_hot - 1 / 3, learned]), rtol=1e-6)
  centred = one_hot - 1 / 3  # already centred: unchanged
  np.testing.assert_array_equal(transfer.training_targets(centred, "mse"), centred)
  np.testing.assert_array_equal(transfer.training_targets(np.ones((2, 1)), "mse"), 0.5)
  with pytest.raises(ValueError, match="label_targets='soft'"):
    transfer.training_targets(learned, "mse", "soft")
  with pytest.raises(ValueError, match="label_targets='soft'"):
    transfer.get_recipe("kip", label_targets="soft")


def test_targets_as_given_rule():
  probs = np.array([[0.2, 0.8], [1.0, 0.0]], np.float32)
  np.testing.assert_array_equal(transfer.training_targets(probs, "xent", "as_given"), probs)
  learned = np.array([[1.5, -0.2], [0.1, 0.3]], np.float32)
  t = transfer.training_targets(learned, "xent", "as_given")
  np.testing.assert_allclose(t, np.exp(learned) / np.exp(learned).sum(1, keepdims=True),
                             rtol=1e-6)
  np.testing.assert_array_equal(transfer.training_targets(learned, "mse", "as_given"), learned)
  np.testing.assert_array_equal(transfer.training_targets(probs, "mse", "as_given"), probs)


# ---------------------------------------------------------------------------- train
def _mse(model, variables, x, y):
  return float(jnp.mean((model.apply(variables, x) - y) ** 2))


FIT_MODEL = transfer.get_model("fc", 5, width=128, depth=1)
FIT_RECIPE = transfer.get_recipe("kip", steps=300, learning_rate=0.5, weight_decay=0.0)


def test_train_fits_given_real_valued_labels():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(20, 8, 8, 1)).astype(np.float32)
  y = rng.normal(size=(20, 5)).astype(np.float32)  # arbitrary learned labels, not one-hot
  trained = transfer.train(FIT_MODEL, x, y, FIT_RECIPE, jax.random.PRNGKey(0))
  untrained = jax.jit(FIT_MODEL.init)(jax.random.PRNGKey(0), x)
  before, after = _mse(FIT_MODEL, untrained, x, y), _mse(FIT_MODEL, trained, x, y)
  assert after < 0.05 * before
  assert after < 0.05 * float(np.mean(y ** 2))  # predictions approach the given targets
  with pytest.raises(ValueError, match="diverged"):
    transfer.train(FIT_MODEL, 1e4 * x, 1e4 * y, FIT_RECIPE, jax.random.PRNGKey(0))


def test_train_uses_minibatches_and_augmentation():
  calls = []

  def augment(key, x):
    calls.append(x.shape)  # trace-time record of the batch shape
    return x + 0.01 * jax.random.normal(key, x.shape)

  model = transfer.get_model("fc", 3, width=32, depth=1)
  recipe = transfer.get_recipe("dc", batch_size=16, epochs=20, learning_rate=0.05, augment=True)
  variables = transfer.train(model, DATA.x_train, DATA.one_hot(DATA.y_train), recipe,
                             jax.random.PRNGKey(0), augment_fn=augment)
  assert calls and calls[0] == (16, 8, 8, 1)
  assert transfer.accuracy(model, variables, DATA.x_test, DATA.y_test, batch_size=7) > 0.9


def test_train_errors():
  model = transfer.get_model("fc", 3, width=8, depth=1)
  key = jax.random.PRNGKey(0)
  x, y = DATA.x_train[:10], DATA.one_hot(DATA.y_train[:10])
  with pytest.raises(ValueError, match="augment_fn"):
    transfer.train(model, x, y, transfer.get_recipe("dsa"), key)
  with pytest.raises(ValueError, match="must match"):
    transfer.train(model, x, y[:9], "kip", key)
  with pytest.raises(ValueError, match="NaN"):
    transfer.train(model, np.full_like(x, np.nan), y, "kip", key)


# ---------------------------------------------------------------------------- evaluate
def _support(ipc=2, seed=1):
  idx = np.concatenate([np.flatnonzero(DATA.y_train == c)[:ipc] for c in range(3)])
  return DATA.x_train[idx], DATA.one_hot(DATA.y_train[idx])


def test_evaluate_separable_reproducible_and_restarts_differ():
  result = transfer.evaluate(_support(), DATA, restarts=3, seed=0, **SMALL)
  assert len(result.accuracies) == 3 and result.num_images == 6
  assert result.mean > 0.8  # chance is 1/3
  again = transfer.evaluate(_support(), DATA, restarts=3, seed=0, **SMALL)
  assert again.accuracies == result.accuracies
  assert result.recipe["name"] == "dc" and result.model == "convnet"
  assert "± " in str(result) and "(3 restarts)" in str(result)
  assert result.to_dict()["accuracies"] == list(result.accuracies)

  # restart keys differ: the trained networks differ
  model = transfer.get_model("convnet", 3, **SMALL["model_kwargs"])
  recipe = transfer.get_recipe("dc", **FAST_DC)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  p0, p1 = (transfer.train(model, *_support(), recipe, k)["params"] for k in keys)
  assert not np.allclose(p0["readout"]["kernel"], p1["readout"]["kernel"])


def test_vmapped_and_looped_restarts_agree():
  # 3 restarts in groups of 2 and 1 against one by one: the same keys give the same networks.
  looped = transfer.evaluate(_support(), DATA, restarts=3, seed=4, vmap_restarts=False, **SMALL)
  grouped = transfer.evaluate(_support(), DATA, restarts=3, seed=4, vmap_restarts=2, **SMALL)
  np.testing.assert_allclose(grouped.accuracies, looped.accuracies, atol=1.5 / 60)


def test_restart_grouping():
  model = transfer.get_model("convnet", 3, width=4, depth=1)
  per = _bytes_per_restart(model, (8, 8, 1), 10, data_bytes=123)
  assert per > 3 * 10 * 8 * 8 * 4 * 4 + 123  # at least the conv activations and the data
  assert _group_size(3, 10, model, (8, 8, 1), 10, 0) == 3  # balanced groups: 3, 3, 3, 1
  assert _group_size(4, 10, model, (8, 8, 1), 10, 0) == 4  # 4, 4, 2
  assert _group_size(True, 10, model, (8, 8, 1), 10, 0) == 10
  assert _group_size(False, 10, model, (8, 8, 1), 10, 0) == 1


def test_evaluate_soft_labels_and_distilled_set():
  x, y = _support()
  learned = 2.0 * y - 0.5  # learned labels: xent trains on their argmax
  ds = DistilledSet(images=x, labels=learned, dataset="fake", method="kip")
  result = transfer.evaluate(ds, DATA, restarts=1, **SMALL)
  assert result.mean > 0.8
  int_labels = np.argmax(y, 1).astype(np.int32)  # (n,) integer labels are one-hot encoded
  mse = transfer.evaluate((x, int_labels), DATA, restarts=1, model="fc",
                          model_kwargs=dict(width=32, depth=1), recipe="kip", recipe_overrides=dict(steps=100, learning_rate=0.5),
                          progress=False)
  assert mse.mean > 0.8


def test_evaluate_random_and_full():
  fc = dict(model="fc", model_kwargs=dict(width=32, depth=1), recipe="dc", progress=False)
  rand = transfer.evaluate_random(DATA, 2, restarts=2, recipe_overrides=FAST_DC, **fc)
  assert rand.num_images == 6 and len(rand.accuracies) == 2 and rand.mean > 0.6
  again = transfer.evaluate_random(DATA, 2, restarts=2, recipe_overrides=FAST_DC, **fc)
  assert list(again.accuracies) == list(rand.accuracies)  # seed alone decides (reused rows)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)  # a new class-balanced subset per restart
  a, b = (_random_subset(k, DATA.y_train, 2, 3) for k in keys)
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(DATA.y_train[a], [0, 0, 1, 1, 2, 2])
  full = transfer.evaluate_full(DATA, recipe_overrides=dict(epochs=5, batch_size=16), **fc)
  assert full.num_images == 60 and full.mean > 0.9
  with pytest.raises(ValueError, match="fewer than"):
    transfer.evaluate_random(DATA, 50, restarts=1, **SMALL)


def test_evaluate_errors():
  x, y = _support()
  with pytest.raises(ValueError, match="restarts"):
    transfer.evaluate((x, y), DATA, restarts=0, **SMALL)
  with pytest.raises(ValueError, match="must match"):
    transfer.evaluate((x, y[:-1]), DATA, restarts=1, **SMALL)
  other = DistilledSet(images=x, labels=y, dataset="mnist", method="kip")
  with pytest.raises(ValueError, match="made from 'mnist'"):
    transfer.evaluate(other, DATA, restarts=1, **SMALL)
  with pytest.raises(ValueError, match="NaN"):
    transfer.evaluate((np.full_like(x, np.nan), y), DATA, restarts=1, **SMALL)
  with pytest.raises(ValueError, match="num_classes"):
    transfer.evaluate((x, y), DATA, restarts=1, num_classes=4, **SMALL)
  with pytest.raises(ValueError, match="shape"):
    transfer.evaluate((x[:, :4], y), DATA, restarts=1, **SMALL)
  with pytest.raises(ValueError, match="vmap_restarts"):
    transfer.evaluate((x, y), DATA, restarts=1, vmap_restarts="yes", **SMALL)


# ---------------------------------------------------------------------------- tuning
def test_evaluate_tuned_on_validation_never_the_test_set(monkeypatch):
  """The grid is scored on the end of x_train; the test set is read only for the final run."""
  x, y = _support()
  seen = []
  real = transfer_train._run_protocol

  def spy(**kw):
    seen.append(kw["dataset"].name)
    return real(**kw)

  monkeypatch.setattr(transfer_train, "_run_protocol", spy)
  tune = transfer.Tune(validation_size=30, lr_factors=(0.5, 1.0), weight_decays=(0.0,),
                       ntk_images=10)
  result = transfer.evaluate((x, y), DATA, restarts=2, model="fc",
                             model_kwargs=dict(width=16, depth=1), recipe="kip",
                             recipe_overrides=dict(steps=50), progress=False, tune=tune)
  assert seen == [f"{DATA.name}[validation]"] * 2 + [DATA.name]
  t = result.tuning
  assert t["validation_size"] == 30 and t["lr_rule"] == "ntk" and len(t["grid"]) == 2
  assert t["base_learning_rate"] > 0
  best = max(t["grid"], key=lambda p: p["val_accuracy"])
  assert t["chosen"]["lr_factor"] == best["lr_factor"]
  assert result.recipe["learning_rate"] == pytest.approx(t["chosen"]["learning_rate"])
  assert "tuned on 30 validation images" in str(result)
  assert result.restarts == 2
  # Two factors: whichever wins sits on the grid's edge, and the report says so.
  side = "largest" if t["chosen"]["lr_factor"] == 1.0 else "smallest"
  assert t["grid_edges"] == [f"lr_factor {t['chosen']['lr_factor']:g} is the {side} of 0.5 / 1"]


def test_tuning_grid_edges():
  """A choice at the end of the searched range is flagged; L2 = 0 is a natural lower bound."""
  from kip._src.transfer.tuning import grid_edges
  pts = [{"lr_factor": f, "weight_decay": w} for f in (0.25, 0.5, 1.0) for w in (0.0, 1e-3)]
  assert grid_edges(pts, {"lr_factor": 0.5, "weight_decay": 0.0}) == []
  assert grid_edges(pts, {"lr_factor": 1.0, "weight_decay": 1e-3}) == [
      "lr_factor 1 is the largest of 0.25 / 0.5 / 1",
      "weight_decay 0.001 is the largest of 0 / 0.001"]
  assert grid_edges(pts, {"lr_factor": 0.25, "weight_decay": 0.0}) == [
      "lr_factor 0.25 is the smallest of 0.25 / 0.5 / 1"]
  pts = [{"lr_factor": 1.0, "weight_decay": w} for w in (1e-4, 1e-3)]
  assert grid_edges(pts, {"lr_factor": 1.0, "weight_decay": 1e-4}) == [
      "weight_decay 0.0001 is the smallest of 0.0001 / 0.001"]


def test_tuning_lr_is_the_ntk_rule():
  """lr = factor * 2 m K / lambda_max of the network's empirical NTK on ntk_images images."""
  model = transfer.get_model("fc", 3, width=16, depth=1)
  x = jnp.asarray(DATA.x_train[:10])
  variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
  flat = lambda p: model.apply(p, x, train=False).sum(-1) / np.sqrt(3)  # noqa: E731
  jac = jax.jacobian(flat)(variables)
  j = np.concatenate([np.asarray(a).reshape(10, -1) for a in jax.tree.leaves(jac)], axis=1)
  lam = np.linalg.eigvalsh(j @ j.T).max()
  np.testing.assert_allclose(transfer.ntk_max_eigenvalue(model, variables, x), lam, rtol=1e-3)
  np.testing.assert_allclose(transfer.ntk_learning_rate(model, variables, x),
                             2 * 10 * 3 / lam, rtol=1e-3)


def test_tuning_bad_input():
  x, y = _support()
  with pytest.raises(ValueError, match="tune=None to disable tuning"):
    transfer.evaluate((x, y), DATA, restarts=1, tune=dict(validation_size=10_000), **SMALL)
  with pytest.raises(ValueError, match="lr_factors must be positive"):
    transfer.Tune(lr_factors=(0.0,))
  with pytest.raises(ValueError, match="lr_rule"):
    transfer.Tune(lr_rule="adam")
  with pytest.raises(ValueError, match="tune must be None, True"):
    transfer.evaluate((x, y), DATA, restarts=1, tune="yes", **SMALL)


def test_evaluation_augmentation_by_strategy_name(monkeypatch):
  """augment_fn='dsa' (or any DSA strategy) augments the training batches of any set."""
  x, y = _support()
  assert transfer_train.resolve_augment("dsa") is transfer_train.resolve_augment("dsa")
  out = transfer_train.resolve_augment("crop_flip")(jax.random.PRNGKey(0), jnp.asarray(x))
  assert out.shape == x.shape and not np.allclose(out, x)
  used = []
  real = transfer_train._trainer
  monkeypatch.setattr(transfer_train, "_trainer",
                      lambda *a: used.append(a[3]) or real(*a))
  aug = transfer.evaluate((x, y), DATA, restarts=1, augment_fn="dsa", **SMALL)
  assert used == [transfer_train.resolve_augment("dsa")] and 0 <= aug.mean <= 1
  with pytest.raises(ValueError, match="zoom"):
    transfer.evaluate((x, y), DATA, restarts=1, augment_fn="zoom", **SMALL)
