"""Tests for the coreset baselines (random real, herding, k-center, k-means, class mean)."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

import kip.methods
from kip._src.distilled import DistilledSet
from kip.baselines import class_mean, herding, kcenter, kmeans, random_real
from kip.baselines import coresets
from kip.baselines.kmeans import kmeans_fit


@dataclasses.dataclass(frozen=True)
class _Dataset:
  """Stand-in with the fields of ``kip.data.Dataset`` that the baselines read."""
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  class_names: tuple
  preprocessing: object = None

  def one_hot(self, y):
    return np.eye(self.num_classes, dtype=np.float32)[y]


@pytest.fixture(scope="module")
def small():
  """sklearn's 8x8 digits, standardised, 3 classes, 60 training images per class (fast)."""
  d = load_digits()
  x = ((d.images - 8.0) / 8.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  keep = np.concatenate([np.flatnonzero(y == c)[:80] for c in range(3)])
  x, y = x[keep], y[keep]
  tr = np.concatenate([np.flatnonzero(y == c)[:60] for c in range(3)])
  te = np.setdiff1d(np.arange(len(y)), tr)
  return _Dataset("digits", x[tr], y[tr], x[te], y[te], 3, ("0", "1", "2"))


def _imbalanced(small):
  keep = np.concatenate([np.flatnonzero(small.y_train == 0)[:4],
                         np.flatnonzero(small.y_train != 0)])
  return dataclasses.replace(small, x_train=small.x_train[keep], y_train=small.y_train[keep])


SELECTORS = {
    "random": lambda d, m, k: random_real(d, m, k),
    "herding": lambda d, m, k: herding(d, m, k),
    "kcenter": lambda d, m, k: kcenter(d, m, k),
    "kcenter_random_first": lambda d, m, k: kcenter(d, m, k, first="random"),
    "kmeans_nearest": lambda d, m, k: kmeans(d, m, k, mode="nearest"),
}
AVERAGES = {
    "kmeans_centroid": lambda d, m, k: kmeans(d, m, k, mode="centroid"),
    "class_mean": lambda d, m, k: class_mean(d, m, k),
}
ALL = {**SELECTORS, **AVERAGES}


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("ipc", [1, 5])
def test_counts_labels_determinism(small, name, ipc):
  out = ALL[name](small, ipc, jax.random.PRNGKey(3))
  assert isinstance(out, DistilledSet)
  assert out.images.shape == (3 * ipc, 8, 8, 1) and out.images.dtype == np.float32
  assert out.labels.shape == (3 * ipc, 3) and out.labels.dtype == np.float32
  np.testing.assert_array_equal(out.labels, np.eye(3, dtype=np.float32)[np.repeat(np.arange(3), ipc)])
  assert np.bincount(out.hard_labels, minlength=3).tolist() == [ipc] * 3
  assert out.dataset == "digits"
  again = ALL[name](small, ipc, jax.random.PRNGKey(3))
  np.testing.assert_array_equal(out.images, again.images)
  assert out.metadata["config"]["images_per_class"] == ipc


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_selected_images_are_real_and_of_their_class(small, name):
  out = SELECTORS[name](small, 4, 0)
  idx = np.asarray(out.metadata["indices"])
  assert len(np.unique(idx)) == len(idx)
  np.testing.assert_array_equal(out.images, small.x_train[idx])
  np.testing.assert_array_equal(small.y_train[idx], out.hard_labels)


def test_averages_are_class_averages(small):
  out = class_mean(small, 1)
  for c in range(3):
    np.testing.assert_allclose(out.images[c], small.x_train[small.y_train == c].mean(0), atol=1e-6)
  # k-means centroid images average their cluster members, so they lie in the class's hull
  # and are (generically) not training images.
  km = kmeans(small, 3, 1, mode="centroid")
  assert sum(km.metadata["cluster_sizes"][0]) == 60
  assert not any((small.x_train == im).all(axis=(1, 2, 3)).any() for im in km.images)


def test_random_depends_on_key(small):
  a = random_real(small, 5, 0).metadata["indices"]
  b = random_real(small, 5, 1).metadata["indices"]
  assert a != b


def _mean_gap(x, sel):
  return np.linalg.norm(x[sel].reshape(len(sel), -1).mean(0) - x.reshape(len(x), -1).mean(0))


def test_herding_matches_class_mean_better_than_random(small):
  out = herding(small, 5, 0)
  idx = np.asarray(out.metadata["indices"])
  for c in range(3):
    ic = np.flatnonzero(small.y_train == c)
    xc = small.x_train[ic]
    local = np.searchsorted(ic, idx[out.hard_labels == c])
    h = _mean_gap(xc, local)
    rng = np.random.default_rng(c)
    r = np.mean([_mean_gap(xc, rng.choice(len(ic), 5, replace=False)) for _ in range(50)])
    assert h < 0.75 * r
    # Every prefix is the greedy optimum, so the running mean approaches the class mean.
    assert _mean_gap(xc, local[:1]) >= h


def _dists(xs, ys):
  return coresets.sq_distances(xs.reshape(len(xs), -1).astype(np.float64),
                               ys.reshape(len(ys), -1).astype(np.float64)) ** 0.5


def test_kcenter_spreads_and_covers_better_than_random(small):
  out = kcenter(small, 6, 0)
  rng = np.random.default_rng(0)
  for c in range(3):
    xc = small.x_train[small.y_train == c]
    sel = out.images[out.hard_labels == c]
    d = _dists(sel, sel) + np.diag(np.full(6, np.inf))
    cover = _dists(xc, sel).min(1).max()
    rand_spread, rand_cover = [], []
    for _ in range(30):
      r = xc[rng.choice(len(xc), 6, replace=False)]
      rand_spread.append((_dists(r, r) + np.diag(np.full(6, np.inf))).min())
      rand_cover.append(_dists(xc, r).min(1).max())
    assert d.min() > np.mean(rand_spread)  # max-min (dispersion) distance larger than random
    assert cover < np.mean(rand_cover)  # covering radius smaller than random


def test_kmeans_fit_recovers_separated_clusters():
  rng = np.random.default_rng(0)
  centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  phi = np.concatenate([c + 0.1 * rng.normal(size=(30, 2)) for c in centers])
  found, assign = kmeans_fit_(phi, 3)
  assert sorted(np.bincount(assign).tolist()) == [30, 30, 30]
  assert np.abs(np.sort(found, axis=0) - np.sort(centers, axis=0)).max() < 0.1


def kmeans_fit_(phi, k):
  return kmeans_fit(phi, k, coresets.numpy_rng(jax.random.PRNGKey(0)))


def test_kmeans_fit_handles_duplicates():
  phi = np.zeros((5, 3))
  phi[0] = 1.0
  _, assign = kmeans_fit_(phi, 4)
  assert (np.bincount(assign, minlength=4) > 0).all()


def test_callable_and_random_convnet_features(small):
  out = herding(small, 3, 0, features=lambda x: np.asarray(x).reshape(len(x), -1)[:, :10])
  assert len(out) == 9 and out.metadata["config"]["features"] == "<lambda>"
  pytest.importorskip("kip._src.transfer.models")
  out = kcenter(small, 2, 0, features="random_convnet")
  assert len(out) == 6 and out.metadata["config"]["features"] == "random_convnet"


@pytest.mark.parametrize("name", sorted(ALL))
def test_errors(small, name):
  with pytest.raises(ValueError, match=r"4 training images of class 0 \('0'\)"):
    ALL[name](_imbalanced(small), 5, 0)
  with pytest.raises(ValueError, match="images_per_class must be >= 1"):
    ALL[name](small, 0, 0)


def test_option_errors(small):
  with pytest.raises(ValueError, match="features must be"):
    herding(small, 1, 0, features="sift")
  with pytest.raises(ValueError, match="mode must be"):
    kmeans(small, 1, 0, mode="medoid")
  with pytest.raises(ValueError, match="first must be"):
    kcenter(small, 1, 0, first="far")
  with pytest.raises(ValueError, match="needs a key"):
    class_mean(small, 2)
  with pytest.raises(ValueError, match=r"must return shape \(n, d\)"):
    herding(small, 1, 0, features=lambda x: np.zeros(3))
  with pytest.raises(ValueError, match="key must be"):
    random_real(small, 1, "seed")


def test_typed_key_and_metadata_seed(small):
  out = random_real(small, 2, jax.random.key(5))
  assert isinstance(out.metadata["seed"], list)
  assert random_real(small, 2, 5).metadata["seed"] == 5


def test_real_digits_dataset_and_save_roundtrip(digits, tmp_path):
  ds = digits
  for name, fn in sorted(ALL.items()):
    out = fn(ds, 2, 7)
    out.check_compatible(ds)
    assert len(out) == 2 * ds.num_classes and out.preprocessing is ds.preprocessing
    out.save(tmp_path / f"{name}.npz")
    back = DistilledSet.load(tmp_path / f"{name}.npz")
    np.testing.assert_array_equal(back.images, out.images)
    assert back.method == out.method and back.metadata["config"] == out.metadata["config"]


# --------------------------------------------------------------------------- the contract

CONFIGS = {
    "random": coresets.RandomConfig(images_per_class=2),
    "herding": coresets.HerdingConfig(images_per_class=2),
    "kcenter": coresets.KCenterConfig(images_per_class=2, first="random"),
    "kmeans": coresets.KMeansConfig(images_per_class=2, mode="nearest"),
    "class_mean": coresets.ClassMeanConfig(images_per_class=2),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_configs_hash_serialise_and_go_through_the_registry(name):
  cfg = CONFIGS[name]
  assert [f.name for f in dataclasses.fields(cfg)][:2] == ["images_per_class", "steps"]
  assert cfg == dataclasses.replace(cfg) and hash(cfg) == hash(dataclasses.replace(cfg))
  assert json.loads(json.dumps(cfg.to_dict()))["images_per_class"] == 2
  algo = kip.methods.make(name, cfg)
  assert algo.name == name and algo.default_steps == 1 and not algo.watch_loss
  assert kip.methods.make_config(name, 2) == type(cfg)(images_per_class=2)
  with pytest.raises(ValueError, match="steps"):
    dataclasses.replace(cfg, steps=0)


def test_public_functions_are_the_driver_runs(small):
  direct = kip.methods.run(kip.methods.make("kcenter", CONFIGS["kcenter"]), small, key=4,
                           progress=False)
  np.testing.assert_array_equal(direct.images, kcenter(small, 2, 4, first="random").images)
  assert direct.metadata["steps"] == 1 and direct.metadata["seed"] == 4


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_interrupted_and_resumed_run_is_bit_identical(name, digits, tmp_path):
  # A coreset selects at its first step; later steps only count, so any step count gives
  # the same set, and a run interrupted after step 2 resumes to the same result.
  algo = kip.methods.make(name, CONFIGS[name])
  one = kip.methods.run(algo, digits, key=9, progress=False)
  full = kip.methods.run(algo, digits, steps=3, key=9, progress=False)
  np.testing.assert_array_equal(one.images, full.images)

  def stop(step, metrics):
    if step == 2:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    kip.methods.run(algo, digits, steps=3, key=9, checkpoint_dir=tmp_path, callback=stop,
                    progress=False)
  resumed = kip.methods.run(algo, digits, steps=3, key=9, checkpoint_dir=tmp_path,
                            resume=True, progress=False)
  assert resumed.metadata["steps"] == 3 and resumed.metadata["steps_this_run"] == 1
  np.testing.assert_array_equal(resumed.images, full.images)
  np.testing.assert_array_equal(resumed.labels, full.labels)
  assert resumed.metadata.get("indices") == full.metadata.get("indices")
