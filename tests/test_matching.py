"""Tests for DC / DSA / DM (kip.baselines.dc, .dsa, .dm) on 8x8 digits.

Tiny networks (ConvNet width 8, depth 2) and a handful of steps; each config object is shared
by the tests that use it, and equal configs share one compiled step, so every step compiles
once per config.
"""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kip.methods
from kip._src import matching
from kip._src.sampling import ClassTable
from kip._src.transfer.models import get_model
from kip.baselines import augment as aug
from kip.baselines import dc, dm, dsa

SMALL = {"width": 8, "depth": 2}
IPC = 2
# Compile time dominates these tests. DC runs one outer loop (no inner network training); DSA
# runs two, which covers the augmented inner-loop training the two share.
DC_CFG = dc.DCConfig(images_per_class=IPC, steps=3, model_kwargs=SMALL, batch_real=32,
                     outer_loop=1, inner_loop=1)
# DSA and DM use two augmentation groups (every group is tested in test_augment.py) and DSA no
# normalisation: both make the compiled graphs smaller.
DSA_CFG = dsa.DSAConfig(images_per_class=IPC, steps=3, model_kwargs={**SMALL, "norm": "none"},
                        batch_real=32, outer_loop=2, inner_loop=1, strategy="crop_rotate")
DM_CFG = dm.DMConfig(images_per_class=IPC, steps=3, model_kwargs=SMALL, batch_real=32,
                     strategy="flip_scale")
METHODS = {"dc": (dc.make_dc, DC_CFG, dc.distill_dc),
           "dsa": (dsa.make_dsa, DSA_CFG, dsa.distill_dsa),
           "dm": (dm.make_dm, DM_CFG, dm.distill_dm)}
BN = {**SMALL, "norm": "batch"}
# Batch norm (frozen real statistics for DC's matching, train mode in its inner loop; joint
# train-mode batches for DM): two outer loops so that DC's inner loop trains a BN network.
BN_METHODS = {"dc_bn": (dc.make_dc, dataclasses.replace(DC_CFG, model_kwargs=BN, outer_loop=2),
                        dc.distill_dc),
              "dm_bn": (dm.make_dm, dataclasses.replace(DM_CFG, model_kwargs=BN), dm.distill_dm)}


@pytest.fixture(scope="module")
def table(digits):
  return ClassTable.from_dataset(digits)


# --------------------------------------------------------------------------- the DC distance

_dist = jax.jit(dc.distance_wb)


def test_distance_wb_zero_symmetric_positive():
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)  # conv kernel (kh, kw, in, out)
  b = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
  assert abs(float(_dist(a, a))) < 1e-4
  d_ab, d_ba = float(_dist(a, b)), float(_dist(b, a))
  assert d_ab > 0 and d_ab == pytest.approx(d_ba, rel=1e-6)
  # Opposite gradients: 1 - (-1) = 2 per output node; scale invariant per node.
  assert float(_dist(a, -a)) == pytest.approx(2 * 5, rel=1e-4)
  assert float(_dist(a, a * jnp.arange(1.0, 6.0))) == pytest.approx(0, abs=1e-4)
  # Biases / norm parameters (1-D) are ignored, as in the reference.
  assert float(dc.distance_wb(a[0, 0, 0], b[0, 0, 0])) == 0.0


def test_distance_wb_rows_are_output_nodes():
  # Dense kernel (in, out): node j is column j. Matching column directions -> zero distance.
  a = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)), jnp.float32)
  per_column_scale = a * jnp.array([1.0, 2.0, 3.0, 0.5])
  assert float(_dist(a, per_column_scale)) == pytest.approx(0, abs=1e-4)
  per_row_scale = a * jnp.arange(1.0, 7.0)[:, None]
  assert float(_dist(a, per_row_scale)) > 1e-3


def test_match_loss_over_pytrees_and_zero_gradient_is_finite():
  g = {"conv": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.ones(2)},
       "dense": {"kernel": jnp.eye(3)}}
  loss = jax.jit(dc.match_loss)
  assert float(loss(g, g)) == pytest.approx(0, abs=1e-4)
  zero = jax.tree_util.tree_map(jnp.zeros_like, g)
  assert float(loss(zero, g)) == pytest.approx(2 + 3)  # cos = 0 for each node
  grad = jax.jit(jax.grad(dc.match_loss))(zero, g)  # torch-like zero-norm gradient
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(grad))


# --------------------------------------------------------------------------- configs

def test_paper_loops_and_config_validation():
  assert dc.get_loops(1) == (1, 1) and dc.get_loops(10) == (10, 50)
  assert dc.get_loops(50) == (50, 10)
  assert dc.DCConfig(images_per_class=10).loops() == (10, 50)
  assert dc.DCConfig(images_per_class=7, outer_loop=3, inner_loop=2).loops() == (3, 2)
  with pytest.raises(ValueError, match="outer_loop"):
    dc.DCConfig(images_per_class=7)
  with pytest.raises(ValueError, match="init"):
    dc.DCConfig(init="zeros")
  with pytest.raises(ValueError, match="images_per_class must be >= 1"):
    dc.DCConfig(images_per_class=0)
  with pytest.raises(ValueError, match="unknown DSA"):
    dsa.DSAConfig(strategy="crop_blur")
  assert dsa.DSAConfig().strategy == aug.DEFAULT_STRATEGY
  assert isinstance(dsa.DSAConfig(), dc.DCConfig)
  assert [f.name for f in dataclasses.fields(dm.DMConfig)][:2] == ["images_per_class", "steps"]
  assert dict(DC_CFG.model_kwargs) == SMALL
  assert dm.DMConfig().image_lr == 1.0 and dm.DMConfig().steps == 20000
  assert dc.DCConfig().steps == 1000 and dc.DCConfig().image_lr == 0.1
  # The reference main.py (DC and DSA): SGD momentum 0.5 for the images and for the network,
  # lr_net 0.01, batch_real = batch_train = 256.
  ref = dict(image_momentum=0.5, net_momentum=0.5, net_lr=0.01, batch_real=256, batch_train=256)
  for cls in (dc.DCConfig, dsa.DSAConfig):
    assert {k: getattr(cls(), k) for k in ref} == ref


@pytest.mark.parametrize("cls", [dc.DCConfig, dsa.DSAConfig, dm.DMConfig])
def test_equal_configs_are_equal_hash_equal_and_serialise(cls):
  # Regression: DCConfig(image_optimizer=optax.adam(.1)) compared unequal to an identical
  # config (so the step recompiled) and its metadata stored a memory-address repr.
  a = cls(images_per_class=1, model_kwargs={"width": [8, 8]}, image_optimizer="adam",
          image_lr=0.1)
  b = cls(images_per_class=1, model_kwargs={"width": [8, 8]}, image_optimizer="adam",
          image_lr=0.1)
  assert a == b and hash(a) == hash(b)
  text = json.dumps(a.to_dict())
  assert "0x" not in text and json.loads(text)["model_kwargs"] == {"width": [8, 8]}
  with pytest.raises(ValueError, match="factory"):
    cls(image_optimizer=optax.adam(0.1))
  with pytest.raises(ValueError, match="image_optimizer"):
    cls(image_optimizer="rmsprop")


def test_equal_configs_share_one_compiled_step(digits, table):
  algo = dc.make_dc(DC_CFG)
  again = dc.make_dc(dataclasses.replace(DC_CFG))
  longer = dc.make_dc(dataclasses.replace(DC_CFG, steps=50))  # steps do not enter the step
  assert again.step is algo.step and longer.step is algo.step
  state = algo.init(jax.random.PRNGKey(0), digits)
  for a, k in ((algo, 1), (again, 2), (longer, 3)):
    state, _ = a.step(state, table, jax.random.PRNGKey(k))
  assert algo.step._cache_size() == 1
  assert dc.make_dc(dataclasses.replace(DC_CFG, image_lr=0.05)).step is not algo.step
  text = json.dumps(algo.spec)
  assert "0x" not in text and algo.spec["image_optimizer"] == "sgd"


def test_optimizers_by_name_and_user_components():
  # Default: PyTorch SGD with momentum 0.5 (v <- 0.5 v + g; x <- x - lr v).
  opt = matching.make_optimizer("sgd", 0.1, 0.5)
  x, g = jnp.zeros(2), jnp.ones(2)
  state = opt.init(x)
  u1, state = opt.update(g, state, x)
  u2, state = opt.update(g, state, x)
  np.testing.assert_allclose(u1, -0.1 * g, rtol=1e-6)
  np.testing.assert_allclose(u2, -0.1 * 1.5 * g, rtol=1e-6)
  with pytest.raises(ValueError, match="not known"):
    matching.make_optimizer("lbfgs", 0.1)
  user = dm.make_dm(DM_CFG, image_optimizer=optax.adam(1e-3))
  assert user.spec["image_optimizer"] == "user" and not user.watch_loss
  assert user.default_steps == 3 and "image_lr" in user.hint


# --------------------------------------------------------------------------- plumbing

def test_sample_class_batches(digits, table):
  counts = np.bincount(digits.y_train)
  x, m = matching.sample_class_batches(jax.random.PRNGKey(0), table, 32)
  assert x.shape == (10, 32, 8, 8, 1) and m.shape == (10, 32) and float(m.min()) == 1.0
  x = np.asarray(x)
  for c in (0, 7):  # drawn from the right class, without replacement
    members = digits.x_train[digits.y_train == c].reshape(counts[c], -1)
    rows = x[c].reshape(32, -1)
    hits = [np.flatnonzero((members == r).all(axis=1)) for r in rows]
    assert all(len(h) >= 1 for h in hits)
    assert len({int(h[0]) for h in hits}) == 32
  # Larger than the biggest class: every image once, padding masked out.
  x, m = matching.sample_class_batches(jax.random.PRNGKey(1), table, 1000)
  np.testing.assert_array_equal(np.asarray(m).sum(axis=1), counts)


def test_init_images_real_and_noise(digits, table):
  x = matching.init_images(jax.random.PRNGKey(0), table, 3, "real")
  assert x.shape == (30, 8, 8, 1)
  members = digits.x_train[digits.y_train == 4].reshape(-1, 64)
  for r in np.asarray(x[12:15]).reshape(3, -1):  # class-major: rows 12..14 are class 4
    assert (members == r).all(axis=1).any()
  z = matching.init_images(jax.random.PRNGKey(0), table, 3, "noise")
  assert z.shape == (30, 8, 8, 1) and abs(float(z.std()) - 1) < 0.2
  with pytest.raises(ValueError, match="smallest class"):
    matching.init_images(jax.random.PRNGKey(0), table, 500, "real")


def test_embed_is_readout_input():
  model = get_model("convnet", 10, **SMALL)

  @jax.jit
  def run(key, x):
    params = model.init(key, x)["params"]
    e = dm.embed(model, params, x)
    return e, e @ params["readout"]["kernel"] + params["readout"]["bias"], \
        model.apply({"params": params}, x)

  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 8, 8, 1)), jnp.float32)
  e, manual, logits = run(jax.random.PRNGKey(1), x)
  assert e.ndim == 2 and e.shape[0] == 5 and e.shape[1] % 8 == 0  # width x spatial
  np.testing.assert_allclose(manual, logits, rtol=1e-5, atol=1e-5)


def _bn_net(x):
  model = get_model("convnet", 10, **BN)
  params, stats = matching.init_network(model, jax.random.PRNGKey(1), x.shape[1:])
  return model, params, stats


def test_batch_norm_train_mode_masks_padding_and_eval_mode_uses_running_statistics():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 8, 8, 1)), jnp.float32)
  model, params, stats = _bn_net(x)
  assert set(stats) and matching.init_network(get_model("convnet", 10, **SMALL),
                                              jax.random.PRNGKey(1), (8, 8, 1))[1] == {}
  padded = jnp.concatenate([x[:4], 100.0 + x[4:]])  # two junk rows, masked out
  mask = jnp.array([1.0, 1, 1, 1, 0, 0])
  out, new = matching.apply_network(model, params, stats, padded, train=True, mask=mask)
  want, want_stats = matching.apply_network(model, params, stats, x[:4], train=True)
  np.testing.assert_allclose(out[:4], want, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), new,
               want_stats)
  # Eval mode: each row on its own (the batch does not matter), statistics unchanged.
  ev, same = matching.apply_network(model, params, new, x, train=False)
  ev1, _ = matching.apply_network(model, params, new, x[:1], train=False)
  np.testing.assert_allclose(ev[:1], ev1, rtol=1e-5, atol=1e-6)
  assert same is new
  # DM's embedding honours the same mask.
  e = dm.embed(model, params, padded, stats, mask)
  np.testing.assert_allclose(e[:4], dm.embed(model, params, x[:4], stats), rtol=1e-4,
                             atol=1e-5)


def test_freeze_batch_stats_is_the_references_momentum_step(digits, table):
  # Reference: net.train(); net(16 real images per class) -> running mean 0.9 * 0 + 0.1 * the
  # batch mean of the first norm layer's input (PyTorch momentum 0.1), then eval mode.
  model, params, stats = _bn_net(jnp.zeros((1, 8, 8, 1)))
  key = jax.random.PRNGKey(5)
  frozen = matching.freeze_batch_stats(model, params, stats, key, table)
  x, m = matching.sample_class_batches(key, table, matching.BN_IMAGES_PER_CLASS)
  assert x.shape[1] == 16 and float(m.min()) == 1.0
  seen = []

  def capture(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      seen.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    model.apply({"params": params, "batch_stats": stats}, x.reshape(160, 8, 8, 1), train=True,
                mutable=["batch_stats"])
  first = sorted(frozen)[0]
  h = seen[0]
  np.testing.assert_allclose(frozen[first]["mean"], 0.1 * h.mean((0, 1, 2)), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(frozen[first]["var"], 0.9 + 0.1 * h.var((0, 1, 2)), rtol=1e-4)
  assert matching.freeze_batch_stats(model, params, {}, key, table) == {}


def test_mean_embedding_loss_respects_mask():
  er = jnp.array([[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]])
  es = jnp.array([[2.0, 1.0], [2.0, 1.0]])
  mu = dm.masked_mean(er, jnp.array([1.0, 1.0, 0.0]))
  np.testing.assert_allclose(mu, [2.0, 1.0])
  assert float(dm.mean_embedding_loss(mu, es)) == 0.0
  assert float(dm.mean_embedding_loss(dm.masked_mean(er, jnp.ones(3)), es)) > 0


# --------------------------------------------------------------------------- steps and runs

@pytest.mark.parametrize("method", ["dc", "dsa", "dm", "dc_bn", "dm_bn"])
def test_jitted_steps_reduce_matching_loss(method, digits, table):
  # With the step key held fixed the network, real batches and augmentations are fixed, so the
  # steps are plain descent on one matching objective and its value must go down.
  make, cfg, _ = {**METHODS, **BN_METHODS}[method]
  algo = make(cfg)
  state = algo.init(jax.random.PRNGKey(0), digits)
  x0 = state.images
  losses = []
  for _ in range(4):
    state, metrics = algo.step(state, table, jax.random.PRNGKey(7))
    losses.append(float(metrics["loss"]))
  assert all(np.isfinite(losses))
  assert losses[-1] < losses[0], losses
  assert int(state.count) == 4 and state.images.shape == x0.shape
  assert float(jnp.abs(state.images - x0).max()) > 0


@pytest.mark.parametrize("method", ["dc", "dsa", "dm"])
def test_distill_returns_balanced_one_hot_set_deterministically(method, digits, tmp_path):
  _, cfg, distill = METHODS[method]
  out = distill(digits, IPC, cfg, key=3, progress=False)
  assert out.method == method and out.dataset == "digits"
  assert out.images.shape == (10 * IPC, 8, 8, 1) and out.images.dtype == np.float32
  assert out.labels.shape == (10 * IPC, 10)
  np.testing.assert_array_equal(out.hard_labels, np.repeat(np.arange(10), IPC))
  np.testing.assert_array_equal(out.labels.sum(axis=1), 1.0)
  assert out.preprocessing is digits.preprocessing
  meta = out.metadata
  assert meta["seed"] == 3 and meta["steps"] == cfg.steps
  assert len(meta["history"]["loss"]) == cfg.steps
  assert meta["config"]["model_kwargs"] == dict(cfg.model_kwargs)
  assert meta["config"]["images_per_class"] == IPC
  out.save(tmp_path / "set.npz")  # metadata is JSON-serialisable
  loaded = type(out).load(tmp_path / "set.npz")
  np.testing.assert_array_equal(loaded.images, out.images)
  assert "0x" not in json.dumps(loaded.metadata["config"])
  again = distill(digits, IPC, cfg, key=3, progress=False)
  np.testing.assert_array_equal(out.images, again.images)
  other = distill(digits, IPC, cfg, key=4, progress=False)
  assert not np.array_equal(out.images, other.images)


@pytest.mark.parametrize("method", ["dc", "dsa", "dm"])
def test_interrupted_and_resumed_run_is_bit_identical(method, digits, tmp_path):
  make, cfg, _ = METHODS[method]
  algo = kip.methods.make(method, cfg)
  assert algo.step is make(cfg).step
  full = kip.methods.run(algo, digits, key=5, progress=False)

  def stop(step, metrics):
    if step == 2:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    kip.methods.run(algo, digits, key=5, checkpoint_dir=tmp_path, callback=stop,
                    progress=False)
  resumed = kip.methods.run(algo, digits, key=5, checkpoint_dir=tmp_path, resume=True,
                            progress=False)
  assert resumed.metadata["steps"] == 3 and resumed.metadata["steps_this_run"] == 1
  np.testing.assert_array_equal(resumed.images, full.images)
  assert resumed.metadata["history"]["loss"] == full.metadata["history"]["loss"]


def test_distill_rejects_mismatched_methods(digits):
  with pytest.raises(ValueError, match="distill_dsa"):
    dc.distill_dc(digits, IPC, DSA_CFG, key=0, progress=False)
  with pytest.raises(ValueError, match="strategy"):
    dsa.distill_dsa(digits, IPC, dataclasses.replace(DSA_CFG, strategy="none"), key=0,
                    progress=False)
  with pytest.raises(ValueError, match="images_per_class"):
    dm.distill_dm(digits, 0, DM_CFG, key=0, progress=False)

