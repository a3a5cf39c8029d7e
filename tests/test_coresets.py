"""Tests for the coreset baselines (random real, herding, k-center, k-means, class mean)."""

import dataclasses

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from kip._src.distilled import DistilledSet
from kip.baselines import class_mean, herding, kcenter, kmeans, random_real
from kip.baselines import coresets


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
def digits():
  """sklearn's 8x8 digits, standardised, 3 classes, 60 training images per class (fast)."""
  d = load_digits()
  x = ((d.images - 8.0) / 8.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  keep = np.concatenate([np.flatnonzero(y == c)[:80] for c in range(3)])
  x, y = x[keep], y[keep]
  tr = np.concatenate([np.flatnonzero(y == c)[:60] for c in range(3)])
  te = np.setdiff1d(np.arange(len(y)), tr)
  return _Dataset("digits", x[tr], y[tr], x[te], y[te], 3, ("0", "1", "2"))


def _imbalanced(digits):
  keep = np.concatenate([np.flatnonzero(digits.y_train == 0)[:4],
                         np.flatnonzero(digits.y_train != 0)])
  return dataclasses.replace(digits, x_train=digits.x_train[keep], y_train=digits.y_train[keep])


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
def test_counts_labels_determinism(digits, name, ipc):
  out = ALL[name](digits, ipc, jax.random.PRNGKey(3))
  assert isinstance(out, DistilledSet)
  assert out.images.shape == (3 * ipc, 8, 8, 1) and out.images.dtype == np.float32
  assert out.labels.shape == (3 * ipc, 3) and out.labels.dtype == np.float32
  np.testing.assert_array_equal(out.labels, np.eye(3, dtype=np.float32)[np.repeat(np.arange(3), ipc)])
  assert np.bincount(out.hard_labels, minlength=3).tolist() == [ipc] * 3
  assert out.dataset == "digits"
  again = ALL[name](digits, ipc, jax.random.PRNGKey(3))
  np.testing.assert_array_equal(out.images, again.images)
  assert out.metadata["config"]["images_per_class"] == ipc


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_selected_images_are_real_and_of_their_class(digits, name):
  out = SELECTORS[name](digits, 4, 0)
  idx = np.asarray(out.metadata["indices"])
  assert len(np.unique(idx)) == len(idx)
  np.testing.assert_array_equal(out.images, digits.x_train[idx])
  np.testing.assert_array_equal(digits.y_train[idx], out.hard_labels)


def test_averages_are_class_averages(digits):
  out = class_mean(digits, 1)
  for c in range(3):
    np.testing.assert_allclose(out.images[c], digits.x_train[digits.y_train == c].mean(0), atol=1e-6)
  # k-means centroid images average their cluster members, so they lie in the class's hull
  # and are (generically) not training images.
  km = kmeans(digits, 3, 1, mode="centroid")
  assert sum(km.metadata["cluster_sizes"][0]) == 60
  assert not any((digits.x_train == im).all(axis=(1, 2, 3)).any() for im in km.images)


def test_random_depends_on_key(digits):
  a = random_real(digits, 5, 0).metadata["indices"]
  b = random_real(digits, 5, 1).metadata["indices"]
  assert a != b


def _mean_gap(x, sel):
  return np.linalg.norm(x[sel].reshape(len(sel), -1).mean(0) - x.reshape(len(x), -1).mean(0))


def test_herding_matches_class_mean_better_than_random(digits):
  out = herding(digits, 5, 0)
  idx = np.asarray(out.metadata["indices"])
  for c in range(3):
    ic = np.flatnonzero(digits.y_train == c)
    xc = digits.x_train[ic]
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


def test_kcenter_spreads_and_covers_better_than_random(digits):
  out = kcenter(digits, 6, 0)
  rng = np.random.default_rng(0)
  for c in range(3):
    xc = digits.x_train[digits.y_train == c]
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
  from kip.baselines.kmeans import kmeans_fit
  return kmeans_fit(phi, k, coresets.numpy_rng(jax.random.PRNGKey(0)))


def test_kmeans_fit_handles_duplicates():
  phi = np.zeros((5, 3))
  phi[0] = 1.0
  _, assign = kmeans_fit_(phi, 4)
  assert (np.bincount(assign, minlength=4) > 0).all()


def test_callable_and_random_convnet_features(digits):
  out = herding(digits, 3, 0, features=lambda x: np.asarray(x).reshape(len(x), -1)[:, :10])
  assert len(out) == 9 and out.metadata["config"]["features"] == "<lambda>"
  pytest.importorskip("kip._src.transfer.models")
  out = kcenter(digits, 2, 0, features="random_convnet")
  assert len(out) == 6 and out.metadata["config"]["features"] == "random_convnet"


@pytest.mark.parametrize("name", sorted(ALL))
def test_errors(digits, name):
  with pytest.raises(ValueError, match=r"4 training images of class 0 \('0'\)"):
    ALL[name](_imbalanced(digits), 5, 0)
  with pytest.raises(ValueError, match="images_per_class must be >= 1"):
    ALL[name](digits, 0, 0)


def test_option_errors(digits):
  with pytest.raises(ValueError, match="features must be"):
    herding(digits, 1, 0, features="sift")
  with pytest.raises(ValueError, match="mode must be"):
    kmeans(digits, 1, 0, mode="medoid")
  with pytest.raises(ValueError, match="first must be"):
    kcenter(digits, 1, 0, first="far")
  with pytest.raises(ValueError, match="needs a key"):
    class_mean(digits, 2)
  with pytest.raises(ValueError, match=r"must return shape \(n, d\)"):
    herding(digits, 1, 0, features=lambda x: np.zeros(3))
  with pytest.raises(ValueError, match="key must be"):
    random_real(digits, 1, "seed")


def test_typed_key_and_metadata_seed(digits):
  out = random_real(digits, 2, jax.random.key(5))
  assert isinstance(out.metadata["seed"], list)
  assert random_real(digits, 2, 5).metadata["seed"] == 5


def test_real_digits_dataset_and_save_roundtrip(tmp_path):
  from kip import data
  ds = data.load("digits")
  for name, fn in sorted(ALL.items()):
    out = fn(ds, 2, 7)
    out.check_compatible(ds)
    assert len(out) == 2 * ds.num_classes and out.preprocessing is ds.preprocessing
    out.save(tmp_path / f"{name}.npz")
    back = DistilledSet.load(tmp_path / f"{name}.npz")
    np.testing.assert_array_equal(back.images, out.images)
    assert back.method == out.method and back.metadata["config"] == out.metadata["config"]
