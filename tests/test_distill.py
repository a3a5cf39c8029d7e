"""KIP and label solve: configuration, steps, checkpoints, devices, DistilledSet, evaluation.

``kip.distill`` (the entry point users know) over the KIP / LS algorithms of
``kip._src.methods.kip`` and the driver. Everything runs on the conftest's class-balanced
200/100 subset of scikit-learn's 8x8 digits with the one-hidden-layer FC kernel; each
``kip.distill`` call compiles one step, so runs are shared through module fixtures where a test
only reads them.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kip
from kip import krr
from kip._src import checkpoint as ckpt
from kip._src import io as kio
from kip._src.methods import kip as M
from kip._src.sampling import ClassTable

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The reference run: checkpointing runs below must reproduce it bit for bit.
REF = dict(support_size=10, learn_labels=True, steps=20, learning_rate=0.02,
           target_batch_size=100, seed=0, checkpoint_every=5, progress=False)


@pytest.fixture(scope="module")
def ds(digits_small):
  """The conftest's 200 / 100 digits subset, under a short name."""
  return digits_small


@pytest.fixture(scope="module")
def kf():
  return kip.kernels.fc(1)


@pytest.fixture(scope="module")
def reference(ds, kf, tmp_path_factory):
  """``(DistilledSet, checkpoint_dir)`` of an uninterrupted 20-step run."""
  d = tmp_path_factory.mktemp("reference")
  return kip.distill(ds, kernel=kf, checkpoint_dir=d, eval_every=10, eval_size=100, **REF), d


@pytest.fixture(scope="module")
def ls_set(ds, kf):
  return kip.distill(ds, 10, kernel=kf, mode="ls", progress=False)


def _one_hot_rows(labels):
  labels = np.asarray(labels)
  return bool(np.all((labels == 0) | (labels == 1)) and np.all(labels.sum(1) == 1))


def _centred_rows(labels, k=10):
  """Rows ``one_hot - 1/K`` (the reference's label encoding, KIP's default)."""
  return _one_hot_rows(np.asarray(labels) + np.float32(1.0 / k))


def _init(ds, ipc=1, labels="centred"):
  """The support a run with ``seed=0`` starts from (``init_key = split(PRNGKey(0))[0]``)."""
  return M.init_support(jax.random.split(jax.random.PRNGKey(0))[0], ds, ipc, labels)


def _with_step(monkeypatch, step):
  """``kip.distill`` builds the real KIP algorithm with ``step`` in place of its own."""
  real = M.make_kip
  monkeypatch.setattr(M, "make_kip", lambda *a, **k: real(*a, **k)._replace(step=step))


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("size,suggested", [(15, "10 or 20"), (5, "10 or 20"), (25, "20 or 30")])
def test_support_size_must_divide_by_classes(ds, size, suggested):
  with pytest.raises(ValueError, match=rf"support_size={size}.*multiple of 10 \(e\.g\. "
                                       rf"{suggested}\)"):
    kip.distill(ds, size, kernel="fc", steps=0, progress=False)


def test_support_size_and_images_per_class_disagree(ds):
  with pytest.raises(ValueError, match="support_size=20 disagrees with images_per_class=3"):
    kip.distill(ds, 20, images_per_class=3, steps=0, progress=False)
  with pytest.raises(ValueError, match="images_per_class=0"):
    M.resolve_images_per_class(10, None, 0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(get="both"), "get='both'"),
    (dict(mode="dc"), "mode='dc'"),
    (dict(augment="rotate"), "augment='rotate'"),
    (dict(learn_labels=False, learn_images=False), "nothing to learn"),
    (dict(learning_rate=0.0), r"learning_rate=0.0 must be a finite number > 0"),
    (dict(learning_rate=-0.1), r"learning_rate=-0.1 must be a finite number > 0"),
    (dict(learning_rate=float("nan")), r"learning_rate=nan must be a finite number > 0"),
    (dict(target_batch_size=0), r"target_batch_size=0 must be an integer >= 1"),
    (dict(labels="soft"), r"labels='soft'; use one of \('centred', 'one_hot'\)"),
    (dict(target_sampling="iid"), r"target_sampling='iid'; use one of"),
    (dict(loss="hinge"), r"loss='hinge'; use 'mse' or 'platt'"),
])
def test_config_errors(ds, kwargs, match):
  with pytest.raises(ValueError, match=match):
    kip.distill(ds, 10, steps=0, progress=False, **kwargs)


@pytest.mark.parametrize("ipc,labels", [(1, "centred"), (3, "one_hot")])
def test_init_is_class_balanced_real_images(ds, kf, ipc, labels):
  """``steps=0`` returns the initial support: ``ipc`` real training images of every class."""
  out = kip.distill(ds, None, images_per_class=ipc, kernel=kf, steps=0, seed=ipc,
                    labels=labels, progress=False)
  assert len(out) == 10 * ipc and out.method == "kip"
  assert (_centred_rows if labels == "centred" else _one_hot_rows)(out.labels)
  np.testing.assert_array_equal(np.bincount(out.hard_labels, minlength=10), [ipc] * 10)
  assert np.all(np.diff(out.hard_labels) >= 0)  # sorted by class
  flat_train = ds.x_train.reshape(len(ds.x_train), -1)
  rows = []
  for img, c in zip(out.images.reshape(len(out), -1), out.hard_labels):
    match = np.flatnonzero(np.all(flat_train == img, axis=1))
    assert match.size and ds.y_train[match[0]] == c
    rows.append(match[0])
  assert len(set(rows)) == len(rows)


def test_init_depends_on_seed(ds):
  a, ya = M.init_support(jax.random.PRNGKey(0), ds, 3)
  b, _ = M.init_support(jax.random.PRNGKey(1), ds, 3)
  assert not np.array_equal(a, b)
  _, yc = M.init_support(jax.random.PRNGKey(0), ds, 3, labels="centred")
  assert _one_hot_rows(ya)  # init_support's own default
  np.testing.assert_allclose(yc, np.asarray(ya) - 0.1, atol=1e-7)
  with pytest.raises(ValueError, match="fewer than images_per_class=50"):
    M.init_support(jax.random.PRNGKey(0), ds, 50)


def test_init_from_a_given_set(ds, kf, tmp_path):
  """``init=``: the run starts from the set's images and its labels' argmax, re-encoded."""
  start = kip.baselines.random_real(ds, 2, 5).replace(
      labels=np.eye(10, dtype=np.float32)[np.repeat(np.arange(10), 2)] * 3.0)  # "learned"
  out = kip.distill(ds, kernel=kf, steps=0, init=start, progress=False)  # size from init
  assert len(out) == 20
  np.testing.assert_array_equal(out.images, start.images)
  np.testing.assert_allclose(out.labels, np.eye(10)[start.hard_labels] - 0.1, atol=1e-7)
  assert out.metadata["init"] == {"method": "random", "images": 20,
                                  "sha1": M.describe_init(start)["sha1"]}
  pair = kip.distill(ds, kernel=kf, steps=0, init=(start.images, start.hard_labels),
                     labels="one_hot", progress=False)
  np.testing.assert_array_equal(pair.images, start.images)
  np.testing.assert_array_equal(pair.labels, np.eye(10)[start.hard_labels])
  assert pair.metadata["init"]["method"] == "arrays"
  run = dict(REF, support_size=20, steps=3, checkpoint_every=0)
  moved = kip.distill(ds, kernel=kf, init=start, checkpoint_dir=tmp_path, **run)
  assert np.isfinite(moved.metadata["history"]["loss"]).all()
  assert not np.array_equal(moved.images, start.images)
  other = kip.baselines.random_real(ds, 2, 6)
  with pytest.raises(ValueError, match="written by a different run: .*spec.init"):
    kip.distill(ds, kernel=kf, init=other, checkpoint_dir=tmp_path, resume=True, **run)
  again = kip.distill(ds, kernel=kf, init=start, checkpoint_dir=tmp_path, resume=True, **run)
  np.testing.assert_array_equal(again.images, moved.images)


@pytest.mark.parametrize("make,kwargs,match", [
    (lambda s: s, dict(support_size=10), "init holds 20 images but the support has 10"),
    (lambda s: (s.images[:, :4], s.hard_labels), {}, "init images have shape"),
    (lambda s: (s.images, s.hard_labels + 1), {}, "outside 0..9"),
    (lambda s: (s.images, s.hard_labels.astype(np.float32)), {}, "give (20,) class indices"),
    (lambda s: (np.where(np.arange(20)[:, None, None, None] == 3, np.nan, s.images),
                s.hard_labels), {}, "NaN"),
    (lambda s: s.images, {}, "must be a kip.DistilledSet or an (images, labels) pair"),
    (lambda s: s.replace(dataset="mnist"), {}, "made from 'mnist'"),
    (lambda s: s, dict(mode="ls"), "kip.label_solve"),
])
def test_init_errors(ds, kf, make, kwargs, match):
  start = kip.baselines.random_real(ds, 2, 0)
  kwargs = {"support_size": 20, **kwargs}
  with pytest.raises(ValueError, match=re.escape(match)):
    kip.distill(ds, kernel=kf, steps=0, init=make(start), progress=False, **kwargs)


def test_init_refuses_other_preprocessing(ds, kf):
  raw = kip.data.load("digits", preprocess="none")
  start = kip.baselines.random_real(raw, 1, 0)
  assert start.preprocessing.kind != ds.preprocessing.kind
  with pytest.raises(ValueError, match="load the data with preprocess="):
    kip.distill(ds, kernel=kf, steps=0, init=start, progress=False)


# ----------------------------------------------------------------------------- KIP
def test_reference_run_learns(ds, reference):
  out, _ = reference
  init, init_labels = _init(ds)
  assert _centred_rows(init_labels)  # the reference default
  loss = out.metadata["history"]["loss"]
  assert len(loss) == 20 and np.all(np.isfinite(loss))
  assert np.mean(loss[-5:]) < 0.9 * np.mean(loss[:5])
  assert not np.array_equal(out.images, init)
  assert not _centred_rows(out.labels)  # learn_labels=True moved them
  assert np.abs(out.labels - np.asarray(init_labels)).max() > 1e-3


def test_metadata(ds, kf, reference):
  out, _ = reference
  meta = out.metadata
  assert meta["kernel"] == dict(kf.spec)
  assert meta["config"] == M.KIPConfig(
      images_per_class=1, learn_labels=True, steps=20, learning_rate=0.02,
      target_batch_size=100).to_dict()
  assert meta["config"]["labels"] == "centred"
  assert meta["config"]["target_sampling"] == "without_replacement"
  assert meta["seed"] == 0 and meta["steps"] == 20 and meta["optimizer"] == "adam"
  assert meta["method"] == "kip" and meta["stopped_early"] is False
  assert meta["fingerprint"]["data"]["train_shape"] == [200, 8, 8, 1]
  assert meta["class_names"] == list(ds.class_names)
  assert meta["preprocessing"] == "standardize"
  assert {"kip", "jax", "jaxlib", "optax", "numpy"} <= set(meta["versions"])
  assert meta["versions"]["jax"] == jax.__version__
  evals = meta["history"]["eval"]
  assert [s for s, _ in evals] == [10, 20]
  assert all(set(e) == {"test_accuracy"} and 0.0 <= e["test_accuracy"] <= 1.0
             for _, e in evals)
  json.dumps(meta)  # serialisable as is


def test_fixed_labels_with_flip_crop(ds, kf):
  """learn_labels=False keeps the labels (one-hot here); flip_crop augmentation runs.

  Also the previous defaults (labels='one_hot', target_sampling='with_replacement') in one
  compile.
  """
  out = kip.distill(ds, 10, learn_labels=False, kernel=kf, steps=3, target_batch_size=50,
                    augment="flip_crop", labels="one_hot", target_sampling="with_replacement",
                    progress=False)
  init, labels = _init(ds, labels="one_hot")
  np.testing.assert_array_equal(out.labels, labels)
  assert _one_hot_rows(out.labels)
  assert not np.array_equal(out.images, init) and np.isfinite(out.images).all()
  assert out.metadata["config"]["augment"] == "flip_crop"
  assert out.metadata["config"]["learn_labels"] is False
  assert len(out.metadata["history"]["loss"]) == 3


def test_nan_loss_raises(ds, kf, monkeypatch, tmp_path):
  """A non-finite loss stops the run with advice; the last finite state stays checkpointed."""
  @jax.jit
  def step(state, data, key):
    loss = jnp.where(state.count >= 2, jnp.nan, 1.0)
    return state._replace(count=state.count + 1), {"loss": loss}

  _with_step(monkeypatch, step)
  with pytest.raises(FloatingPointError, match=r"^kip: the loss became nan at step 3 \(last "
                     r"finite 1.0\); lower the learning rate \(now 0.01\) or raise reg"):
    kip.distill(ds, 10, kernel=kf, steps=5, checkpoint_dir=tmp_path, checkpoint_every=1,
                progress=False)
  assert _ckpt_meta(tmp_path / "checkpoint.npz")["count"] == 2


@pytest.mark.parametrize("labels", ["one_hot", "centred"])
def test_kip_step_under_jit(ds, kf, labels):
  """One jitted SGD step against the closed-form KIP loss and its label gradient (NumPy).

  With :math:`R = (K_{ss} + \\lambda I)^{-1}` and residual :math:`E = K_{ts} R y_s - Y_t`, the
  loss is :math:`\\lVert E\\rVert^2 / 2m` and :math:`\\partial/\\partial y_s = R K_{st} E / m`.
  NNGP keeps the float32 kernels reproducible between the step and the reference. The targets
  are encoded like the support labels (``one_hot - 1/K`` for ``'centred'``).
  """
  lr, reg = 0.5, 1e-3
  cfg = M.KIPConfig(images_per_class=1, target_batch_size=20, reg=reg, get="nngp",
                    labels=labels)
  alg = M.make_kip(cfg, kf, optimizer=optax.sgd(lr))
  state = alg.init(jax.random.PRNGKey(0), ds)
  xs, ys = state.params["images"], state.params["labels"]
  np.testing.assert_array_equal(ys, M.init_support(jax.random.PRNGKey(0), ds, 1, labels)[1])
  data = alg.data(ds)
  assert isinstance(data, ClassTable)
  key = jax.random.PRNGKey(7)
  new, metrics = jax.jit(alg.step)(state, data, key)
  assert int(new.count) == 1 and set(metrics) == {"loss", "target_accuracy", "grad_norm"}

  x_t, y_t = data.sample(jax.random.split(key)[0], 20)  # the batch the step drew
  np.testing.assert_array_equal(np.bincount(np.argmax(y_t, 1), minlength=10), [2] * 10)
  assert _centred_rows(y_t) if labels == "centred" else _one_hot_rows(y_t)
  k = krr.kernel_matrix(kf, xs, jnp.concatenate([xs, x_t]), "nngp").astype(np.float64)
  k_ss, k_st = k[:, :10], k[:, 10:]
  r = np.linalg.inv(k_ss + reg * np.trace(k_ss) / 10 * np.eye(10))
  err = k_st.T @ r @ np.asarray(ys, np.float64) - np.asarray(y_t)
  assert float(metrics["loss"]) == pytest.approx(0.5 * np.mean(np.sum(err ** 2, 1)), rel=1e-4)
  assert float(metrics["target_accuracy"]) == pytest.approx(
      np.mean(np.argmax(err + np.asarray(y_t), 1) == np.argmax(np.asarray(y_t), 1)))
  grad_labels = r @ k_st @ err / 20
  np.testing.assert_allclose((ys - new.params["labels"]) / lr, grad_labels, rtol=1e-3,
                             atol=1e-3 * np.abs(grad_labels).max())
  # The image gradient (through the kernel) makes up the rest of the reported norm.
  grad_images = (xs - new.params["images"]) / lr
  assert float(jnp.abs(grad_images).max()) > 0
  assert float(metrics["grad_norm"]) == pytest.approx(
      np.sqrt(np.sum(grad_labels ** 2) + float(jnp.sum(grad_images ** 2))), rel=1e-3)


def test_target_sampling_without_replacement(ds):
  """The reference sampler: every class's targets in a batch are distinct images."""
  table = ClassTable.from_dataset(ds)
  for seed in range(3):
    rows = np.asarray(table.sample_indices(jax.random.PRNGKey(seed), 100))
    assert rows.shape == (100,)
    for c in range(10):
      of_c = rows[c * 10:(c + 1) * 10]
      assert len(set(of_c.tolist())) == 10 and np.all(ds.y_train[of_c] == c)
  # with replacement (the earlier sampler), a batch of 100 per class repeats images
  rows = np.asarray(table.sample_indices(jax.random.PRNGKey(0), 1000, replace=True))
  assert np.all(ds.y_train[rows.reshape(10, 100)] == np.arange(10)[:, None])
  assert len(set(rows[:100].tolist())) < 100


# ----------------------------------------------------------------------------- label solve
def test_ls_mode(ds, kf, ls_set):
  assert ls_set.method == "ls"
  assert ls_set.metadata["steps"] == 1 and ls_set.metadata["kernel"] == dict(kf.spec)
  assert ls_set.metadata["config"]["labels"] == "centred"
  init, _ = _init(ds)
  np.testing.assert_array_equal(ls_set.images, init)
  np.testing.assert_allclose(ls_set.labels, kip.label_solve(ds, init, kf, labels="centred"),
                             rtol=1e-5, atol=1e-6)
  one_hot = kip.label_solve(ds, init, kf)  # label_solve's own default: 0/1 targets
  assert not np.allclose(one_hot, ls_set.labels, atol=1e-2)


def test_ls_labels_minimise_training_mse(ds, kf, ls_set):
  """LS is least squares on the training set: its labels beat the initial ones (and
  perturbations) on the centred training targets it was solved for."""
  y_train = M.support_labels(ds.y_train, 10, "centred")
  # KRR is linear in the support labels: predicting with identity labels gives K_ts R.
  k_ts_r = krr.predict(kf, jnp.asarray(ls_set.images), jnp.eye(10), jnp.asarray(ds.x_train),
                       1e-6)

  def train_mse(labels):
    return krr.mse(k_ts_r @ jnp.asarray(labels), y_train)

  initial = _init(ds)[1]
  assert not np.allclose(ls_set.labels, initial, atol=1e-2)
  best = train_mse(ls_set.labels)
  assert best < 0.95 * train_mse(initial)
  rng = np.random.default_rng(0)
  for _ in range(3):
    assert best < train_mse(ls_set.labels + 0.05 * rng.normal(size=ls_set.labels.shape))


def test_label_solve_matches_lstsq(ds, kf, ls_set):
  """Closed form: y_s = (K_ss + lambda I) argmin_z ||K_ts z - Y_t|| (mu is negligible)."""
  xs = jnp.asarray(ls_set.images)
  k_st = np.asarray(jax.jit(lambda a, b: kf(a, b, "ntk"))(xs, jnp.asarray(ds.x_train)),
                    np.float64)
  k_ss = np.asarray(kf(xs, None, "ntk"), np.float64)
  targets = M.support_labels(ds.y_train, 10, "centred").astype(np.float64)
  z = np.linalg.lstsq(k_st.T, targets, rcond=None)[0]
  want = (k_ss + 1e-6 * np.trace(k_ss) / 10 * np.eye(10)) @ z
  np.testing.assert_allclose(ls_set.labels, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


@pytest.fixture(scope="module")
def ls_subset_labels(ds, kf, ls_set):
  return kip.label_solve(ds, ls_set.images, kf, num_targets=60, batch_size=10_000,
                         labels="centred")


@pytest.mark.parametrize("batch_size", [7, 30])
def test_label_solve_streaming(ds, kf, ls_set, ls_subset_labels, batch_size):
  xs = jnp.asarray(ls_set.images)
  whole = ls_subset_labels
  streamed = kip.label_solve(ds, xs, kf, num_targets=60, batch_size=batch_size,
                             labels="centred")
  assert streamed.shape == (10, 10) and streamed.dtype == np.float32
  # Kernel blocks of other shapes round differently; G = K_st K_ts squares the conditioning.
  np.testing.assert_allclose(streamed, whole, rtol=1e-3, atol=1e-3 * np.abs(whole).max())
  # A different target subset gives different labels (num_targets is honoured).
  assert not np.allclose(whole, ls_set.labels, atol=1e-2)


def test_label_solve_bad_support_shape(ds):
  with pytest.raises(ValueError, match=r"support_images must be \(n, 8, 8, 1\)"):
    kip.label_solve(ds, np.zeros((10, 8, 8)), "fc")


# ----------------------------------------------------------------------------- checkpoints
def _ckpt_meta(path):
  return kio.load_npz(path, kind="checkpoint")[1]


def test_interrupted_run_resumes_bit_identical(ds, kf, reference, tmp_path):
  """Interrupted at step 7 (between the checkpoints at 5 and 10), resumed, compared."""
  want, _ = reference

  def interrupt(step, metrics):
    assert np.isfinite(metrics["loss"])
    if step == 7:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    kip.distill(ds, kernel=kf, checkpoint_dir=tmp_path, callback=interrupt, **REF)
  meta = _ckpt_meta(tmp_path / "checkpoint.npz")  # saved on interruption, not at step 5
  assert meta["count"] == 7 and len(meta["history"]["loss"]) == 7
  assert _ckpt_meta(tmp_path / "checkpoint.prev.npz")["count"] == 5

  seen = []
  got = kip.distill(ds, kernel=kf, checkpoint_dir=tmp_path, resume=True,
                    callback=lambda step, m: seen.append(step), **REF)
  assert seen == list(range(8, 21))  # continued, not restarted
  assert np.array_equal(got.images, want.images)
  assert np.array_equal(got.labels, want.labels)
  assert got.metadata["history"]["loss"] == want.metadata["history"]["loss"]
  assert got.metadata["steps_this_run"] == 13
  assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "checkpoint.prev.npz"]  # no temp


def _counting_step(state, data, key):
  """Stands in for KIP's step where only the driver loop is under test (nothing to compile)."""
  return state._replace(count=state.count + 1), {"loss": 1.0}


@pytest.mark.parametrize("every,saved_at", [(0, [5]), (2, [2, 4, 5]), (5, [5])])
def test_checkpoint_every(ds, kf, monkeypatch, tmp_path, every, saved_at):
  saves, real_save = [], ckpt.save
  monkeypatch.setattr(ckpt, "save", lambda path, tree, meta: (saves.append(meta["count"]),
                                                               real_save(path, tree, meta)))
  _with_step(monkeypatch, _counting_step)
  kip.distill(ds, 10, kernel=kf, steps=5, checkpoint_dir=tmp_path, checkpoint_every=every,
              progress=False)
  assert saves == saved_at
  with pytest.raises(ValueError, match="checkpoint_every=-1 must be >= 0"):
    kip.distill(ds, 10, kernel=kf, steps=5, checkpoint_dir=tmp_path, checkpoint_every=-1,
                overwrite=True)


def test_reference_checkpoint_written_atomically(reference):
  _, d = reference
  assert sorted(os.listdir(d)) == ["checkpoint.npz", "checkpoint.prev.npz"]
  meta = _ckpt_meta(d / "checkpoint.npz")
  assert meta["count"] == 20 and meta["steps"] == 20
  assert meta["fingerprint"]["seed"] == 0 and meta["fingerprint"]["data"]["name"] == "digits"
  assert meta["fingerprint"]["method"] == "kip"
  assert _ckpt_meta(d / "checkpoint.prev.npz")["count"] == 15


@pytest.mark.parametrize("change,field", [
    (dict(seed=1), "seed"), (dict(learning_rate=0.5), "spec.config.learning_rate"),
    (dict(get="nngp"), "spec.config.get"),
    (dict(target_batch_size=50), "spec.config.target_batch_size"),
    (dict(support_size=20), "spec.config.images_per_class"),
    (dict(learn_labels=False), "spec.config.learn_labels"),
    (dict(labels="one_hot"), "spec.config.labels"),
    (dict(kernel=kip.kernels.fc(2)), "spec.kernel.depth"),
])
def test_resume_with_other_run_raises(ds, kf, reference, tmp_path, change, field):
  _, d = reference
  shutil.copy(d / "checkpoint.npz", tmp_path / "checkpoint.npz")
  kwargs = {**REF, "kernel": kf, **change}
  with pytest.raises(ValueError, match=rf"written by a different run: .*{field}: checkpoint "):
    kip.distill(ds, checkpoint_dir=tmp_path, resume=True, **kwargs)


def test_existing_checkpoint_needs_resume_or_overwrite(ds, kf, reference, tmp_path):
  """Forgetting resume=True must not overwrite progress (issue: a 4,000-step checkpoint lost)."""
  _, d = reference
  shutil.copy(d / "checkpoint.npz", tmp_path / "checkpoint.npz")
  before = (tmp_path / "checkpoint.npz").read_bytes()
  with pytest.raises(FileExistsError, match="resume=True .* overwrite=True"):
    kip.distill(ds, kernel=kf, checkpoint_dir=tmp_path, **REF)
  assert (tmp_path / "checkpoint.npz").read_bytes() == before
  out = kip.distill(ds, 10, kernel=kf, steps=0, checkpoint_dir=tmp_path, overwrite=True,
                    progress=False)
  assert out.metadata["steps"] == 0
  assert _ckpt_meta(tmp_path / "checkpoint.npz")["count"] == 0


def _corrupt(path, source, kind):
  data = source.read_bytes()
  if kind == "truncated":
    path.write_bytes(data[: len(data) // 2])
  elif kind == "garbage":
    path.write_bytes(b"not a zip file at all" * 10)
  elif kind == "empty":
    path.write_bytes(b"")
  elif kind == "plain_npz":
    np.savez(path, leaf_00000=np.zeros(3))  # a valid .npz, but not one kip wrote


@pytest.mark.parametrize("kind,match", [
    ("truncated", "truncated or corrupt"), ("garbage", "truncated or corrupt"),
    ("empty", "truncated or corrupt"), ("plain_npz", "no kip metadata"),
])
def test_corrupt_checkpoint_raises(ds, kf, reference, tmp_path, kind, match):
  """The only checkpoint is unreadable (no previous one to fall back to)."""
  _, d = reference
  _corrupt(tmp_path / "checkpoint.npz", d / "checkpoint.npz", kind)
  with pytest.raises(ValueError, match=rf"^no readable checkpoint: .*{match}"):
    kip.distill(ds, kernel=kf, checkpoint_dir=tmp_path, resume=True, **REF)


def test_foreign_file_as_checkpoint(ds, kf, reference, tmp_path):
  reference[0].save(tmp_path / "checkpoint.npz")
  with pytest.raises(ValueError, match="holds a 'distilled_set', expected a 'checkpoint'"):
    kip.distill(ds, kernel=kf, checkpoint_dir=tmp_path, resume=True, **REF)


def _kip_state(params, opt, count=0):
  return M.KIPState(params, {}, opt.init(params), jnp.asarray(count, jnp.int32))


def test_checkpoint_restore_roundtrip(tmp_path):
  opt = optax.adam(0.1)
  params = {"images": jnp.arange(6.0).reshape(2, 3), "labels": jnp.eye(2)}
  state = _kip_state(params, opt, 7)
  ckpt.save(tmp_path / "c.npz", state, {"note": "x"})
  template = _kip_state({k: jnp.zeros_like(v) for k, v in params.items()}, opt)
  restored, meta = ckpt.restore(tmp_path / "c.npz", template)
  assert meta["note"] == "x" and int(restored.count) == 7
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="leaf 0 is float32.* but this run needs"):
    ckpt.restore(tmp_path / "c.npz", _kip_state({"images": jnp.zeros((3, 3)),
                                                 "labels": jnp.eye(2)}, opt))


def test_atomic_write_keeps_old_file_on_error(tmp_path):
  path = tmp_path / "f.bin"
  with kio.atomic_write(path) as f:
    f.write(b"old")
  with pytest.raises(RuntimeError):
    with kio.atomic_write(path) as f:
      f.write(b"partial new cont")
      raise RuntimeError("crash mid-write")
  assert path.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["f.bin"]


def test_resume_without_checkpoint_starts_fresh(ds, kf, tmp_path):
  out = kip.distill(ds, 10, kernel=kf, steps=0, checkpoint_dir=tmp_path, resume=True,
                    progress=False)
  assert len(out) == 10 and (tmp_path / "checkpoint.npz").exists()


# ----------------------------------------------------------------------------- devices
_MULTI_DEVICE = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    import kip
    from kip._src.methods import kip as M
    from kip._src.sampling import ClassTable

    assert len(jax.devices()) == 4, jax.devices()
    ds = kip.data.load("digits", n_train=100, n_test=50)
    one = jax.devices()[:1]
    xs, ys = M.init_support(jax.random.PRNGKey(0), ds, 1, "centred")
    data = ClassTable.from_dataset(ds)
    xt, yt = data.sample(jax.random.PRNGKey(1), 30)  # 10 + 30 columns: 10 per device
    params = {"images": xs, "labels": ys}

    # The default kernel really splits the columns over the 4 devices; devices=[one] does not.
    cols = jnp.concatenate([xs, xt])
    shards = kip.kernels.fc(1)(xs, cols, "nngp").addressable_shards
    assert sorted(sh.device.id for sh in shards) == [0, 1, 2, 3]
    assert all(sh.data.shape == (10, 10) for sh in shards), [sh.data.shape for sh in shards]
    assert len(kip.kernels.fc(1, devices=one)(xs, cols, "nngp").sharding.device_set) == 1

    # The 1e-5 check uses the NNGP: the NTK's diagonal (cosine 1, where arccos has infinite
    # slope) only reproduces to ~1e-4 between differently fused programs, even on one device.
    # The NTK (the default) is covered by the kip.distill comparison below.
    cfg = M.KIPConfig(images_per_class=1, target_batch_size=30, get="nngp")
    key = jax.random.PRNGKey(2)
    out = []
    for kf in (kip.kernels.fc(1), kip.kernels.fc(1, devices=one)):
      loss = M.make_loss(kf, cfg)
      out.append(jax.jit(jax.value_and_grad(lambda p: loss(p, {}, xt, yt, key)[0]))(params))
    (v4, g4), (v1, g1) = out
    assert abs(float(v4 - v1)) <= 1e-5 * abs(float(v1)), (float(v4), float(v1))
    for k in g1:
      rel = float(jnp.linalg.norm(g4[k] - g1[k]) / jnp.linalg.norm(g1[k]))
      assert rel <= 1e-5, (k, rel)

    runs = [kip.distill(ds, 10, kernel=kf, steps=3, target_batch_size=30, progress=False)
            for kf in (kip.kernels.fc(1), kip.kernels.fc(1, devices=one))]
    init, _ = M.init_support(jax.random.split(jax.random.PRNGKey(0))[0], ds, 1)
    assert not np.allclose(runs[0].images, init, atol=1e-3)
    np.testing.assert_allclose(runs[0].images, runs[1].images, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(runs[0].labels, runs[1].labels, rtol=1e-4, atol=1e-4)
    print("OK")
""")


def test_sharded_kernel_matches_single_device():
  # Both sides are compiled with the same flags; LLVM optimisation off halves compile time.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4"
             " --xla_backend_optimization_level=0")
  out = subprocess.run([sys.executable, "-c", _MULTI_DEVICE], env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# ----------------------------------------------------------------------------- DistilledSet
def test_save_load_roundtrip(reference, tmp_path):
  want, _ = reference
  path = tmp_path / "set.npz"
  want.save(path)
  assert sorted(os.listdir(tmp_path)) == ["set.npz", "set.npz.json"]
  got = kip.DistilledSet.load(path)
  np.testing.assert_array_equal(got.images, want.images)
  np.testing.assert_array_equal(got.labels, want.labels)
  assert (got.dataset, got.method) == ("digits", "kip")
  for k, v in want.preprocessing.to_arrays().items():
    np.testing.assert_array_equal(got.preprocessing.to_arrays()[k], v)
  assert got.metadata == json.loads(json.dumps(want.metadata))
  with np.load(path, allow_pickle=False) as z:  # nothing needs pickle
    assert {"images", "labels", "preprocessing/channel_mean"} <= set(z.files)
    assert all(z[k].dtype != object for k in z.files)
  side = json.loads((tmp_path / "set.npz.json").read_text())
  assert side["num_images"] == 10 and side["image_shape"] == [8, 8, 1]
  assert side["num_classes"] == 10 and side["method"] == "kip"
  assert side["metadata"]["kernel"]["architecture"] == "fc"


def test_save_load_without_preprocessing(tmp_path):
  s = kip.DistilledSet(images=np.zeros((2, 3, 3, 1)), labels=np.eye(2), dataset="toy",
                       method="random", metadata={"a": np.float32(1.5), "b": (1, 2)})
  s.save(tmp_path / "s.npz")
  got = kip.DistilledSet.load(tmp_path / "s.npz")
  assert got.preprocessing is None and got.metadata == {"a": 1.5, "b": [1, 2]}


@pytest.mark.parametrize("kind,error,match", [
    ("missing", FileNotFoundError, "does not exist"),
    ("truncated", ValueError, "truncated or corrupt"),
    ("garbage", ValueError, "truncated or corrupt"),
    ("plain_npz", ValueError, "no kip metadata"),
    ("checkpoint", ValueError, "holds a 'checkpoint', expected a 'distilled_set'"),
])
def test_load_errors(reference, tmp_path, kind, error, match):
  want, ckpt_dir = reference
  path = tmp_path / "set.npz"
  if kind == "checkpoint":
    shutil.copy(ckpt_dir / "checkpoint.npz", path)
  elif kind != "missing":
    want.save(tmp_path / "good.npz")
    _corrupt(path, tmp_path / "good.npz", kind)
  with pytest.raises(error, match=match):
    kip.DistilledSet.load(path)


def test_invalid_sets_rejected():
  with pytest.raises(ValueError, match="images must be"):
    kip.DistilledSet(images=np.zeros((2, 3, 3)), labels=np.eye(2), dataset="d", method="m")
  with pytest.raises(ValueError, match="labels must be"):
    kip.DistilledSet(images=np.zeros((2, 3, 3, 1)), labels=np.arange(2), dataset="d",
                     method="m")
  with pytest.raises(ValueError, match="NaN or inf"):
    kip.DistilledSet(images=np.full((2, 3, 3, 1), np.nan), labels=np.eye(2), dataset="d",
                     method="m")


def _other(ds, which):
  rng = np.random.default_rng(0)
  if which == "name":
    return dataclasses.replace(ds, name="mnist")
  if which == "shape":
    x = rng.integers(0, 256, size=(20, 4, 4, 1), dtype=np.uint8)
    return kip.data.from_arrays("digits", x, np.arange(20) % 10, x, np.arange(20) % 10)
  x = rng.integers(0, 256, size=(6, 8, 8, 1), dtype=np.uint8)
  return kip.data.from_arrays("digits", x, np.arange(6) % 3, x, np.arange(6) % 3)


@pytest.mark.parametrize("which,match", [
    ("name", "made from 'digits', not 'mnist'"), ("shape", "image shape"),
    ("classes", "10 label columns but the data set has 3"),
])
def test_check_compatible(ds, reference, which, match):
  reference[0].check_compatible(ds)
  with pytest.raises(ValueError, match=match):
    reference[0].check_compatible(_other(ds, which))


@pytest.mark.parametrize("prep", ["standardize", "zca_centered"])
def test_to_display_recovers_pixels(prep):
  """Unmodified real images map back to their raw pixels."""
  data = kip.data.load("digits", preprocess=prep, n_train=30, n_test=10)
  raw = kip.data.load("digits", preprocess="none", n_train=30, n_test=10)
  s = kip.DistilledSet(images=data.x_train[:10], labels=data.one_hot(data.y_train[:10]),
                       dataset="digits", method="random", preprocessing=data.preprocessing)
  assert not np.allclose(s.images, raw.x_train[:10], atol=0.1)
  np.testing.assert_allclose(s.to_display(), raw.x_train[:10], atol=1e-4 if "zca" in prep
                             else 1e-6)


def test_to_display_range(reference):
  out, _ = reference
  disp = out.to_display()
  assert disp.shape == out.images.shape and disp.dtype == np.float32
  assert disp.min() >= 0.0 and disp.max() <= 1.0
  bare = out.replace(preprocessing=None).to_display()  # min-max per image
  np.testing.assert_allclose(bare.min(axis=(1, 2, 3)), 0.0, atol=1e-6)
  np.testing.assert_allclose(bare.max(axis=(1, 2, 3)), 1.0, atol=1e-6)


def test_grid_writes_png(reference, tmp_path):
  out, _ = reference
  path = tmp_path / "sub" / "grid.png"
  out.grid(path, class_names=[f"c{i}" for i in range(10)], max_images=7)
  assert path.read_bytes()[:8] == PNG_MAGIC
  assert os.listdir(path.parent) == ["grid.png"]


# ----------------------------------------------------------------------------- evaluation
def test_kernel_accuracy_uses_recorded_kernel_and_reg(ds, kf, ls_set):
  spec2 = dict(kip.kernels.fc(2).spec)
  meta = {**ls_set.metadata, "kernel": spec2, "config": {**ls_set.metadata["config"],
                                                          "reg": 1e-2}}
  s = ls_set.replace(metadata=meta)
  xs, ys, xt = (jnp.asarray(a) for a in (s.images, s.labels, ds.x_test))
  want = krr.predict(kip.kernels.fc(2), xs, ys, xt, 1e-2)
  got = kip.evaluate.kernel_predictions(s, ds)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert not np.allclose(got, krr.predict(kf, xs, ys, xt, 1e-2), rtol=1e-3, atol=1e-4)
  assert kip.evaluate.kernel_accuracy(s, ds) == krr.accuracy(want, ds.y_test)


@pytest.mark.parametrize("meta", [{}, {"kernel": {"architecture": "user kernel_fn"}},
                                  {"kernel": "fc"}])
def test_kernel_accuracy_needs_rebuildable_kernel(ds, kf, ls_set, meta):
  s = ls_set.replace(metadata=meta)
  with pytest.raises(ValueError, match="no rebuildable kernel"):
    kip.evaluate.kernel_accuracy(s, ds)
  assert 0.0 <= kip.evaluate.kernel_accuracy(s, ds, kernel=kf, num_test=20) <= 1.0


def test_kernel_accuracy_checks_dataset(ds, ls_set):
  with pytest.raises(ValueError, match="not 'mnist'"):
    kip.evaluate.kernel_accuracy(ls_set, dataclasses.replace(ds, name="mnist"))
