"""Tests for kip.data: IDX / CIFAR readers, TFDS path, preprocessing, Dataset validation."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pathlib
import pickle
import struct

import numpy as np
import pytest

from kip import data
from kip._src.data import cifar
from kip._src.data import sources

FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------- file writers


def write_idx(path: pathlib.Path, array: np.ndarray, *, gz: bool = False) -> pathlib.Path:
  """Writes ``array`` (uint8) in the IDX format: 0, 0, 0x08, ndim, big-endian sizes, data."""
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  payload = header + array.tobytes()
  if gz:
    path = path.with_name(path.name + ".gz")
    payload = gzip.compress(payload)
  path.write_bytes(payload)
  return path


def write_idx_dataset(directory: pathlib.Path, n_train: int, n_test: int, *, gz: bool,
                      seed: int = 0, num_classes: int = 10) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % num_classes).astype(np.uint8)
    write_idx(directory / f"{prefix}-images-idx3-ubyte", images, gz=gz)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    arrays[prefix] = (images, labels)
  return arrays


class _Py2Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Writes bytes as Python 2 ``str`` opcodes (SHORT_BINSTRING / BINSTRING), as cPickle did."""

  def save_bytes(self, obj):
    if len(obj) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
    self.memoize(obj)

  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access
  dispatch[bytes] = save_bytes


def dump_cifar(path: pathlib.Path, obj, protocol: int | None = None) -> None:
  """Pickles ``obj``; by default like the official Python 2 archive (protocol 2, Py2 strings,
  arrays rebuilt through ``numpy.core.multiarray._reconstruct``)."""
  if protocol is None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    payload = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"_codecs" not in payload
  else:
    payload = pickle.dumps(obj, protocol=protocol)
  path.write_bytes(payload)


def cifar_images(rng, n: int) -> np.ndarray:
  """``(n, 32, 32, 3)`` uint8 images; returned in NHWC for comparison."""
  return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def to_cifar_rows(images: np.ndarray) -> np.ndarray:
  """NHWC -> the official (n, 3072) rows: R plane, G plane, B plane, each row-major."""
  return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def write_cifar10(directory: pathlib.Path, per_batch: int = 10, n_test: int = 10, seed: int = 0):
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  xs, ys = [], []
  for i in range(1, 6):
    x = cifar_images(rng, per_batch)
    y = [int(v) for v in rng.integers(0, 10, per_batch)]
    dump_cifar(directory / f"data_batch_{i}", {
        b"batch_label": f"training batch {i} of 5".encode(), b"labels": y,
        b"data": to_cifar_rows(x), b"filenames": [b"f.png"] * per_batch})
    xs.append(x)
    ys += y
  x_test = cifar_images(rng, n_test)
  y_test = [int(v) for v in rng.integers(0, 10, n_test)]
  dump_cifar(directory / "test_batch", {b"batch_label": b"testing batch 1 of 1",
                                        b"labels": y_test, b"data": to_cifar_rows(x_test)})
  names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
           b"ship", b"truck"]
  dump_cifar(directory / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 10000,
                                          b"num_vis": 3072})
  return np.concatenate(xs), np.array(ys), x_test, np.array(y_test)


def write_cifar100(directory: pathlib.Path, n_train: int = 200, n_test: int = 100, seed: int = 0,
                   protocol: int = 4):
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  out = []
  for split, n in (("train", n_train), ("test", n_test)):
    x = cifar_images(rng, n)
    y = [int(v) for v in np.arange(n) % 100]
    dump_cifar(directory / split, {b"data": to_cifar_rows(x), b"fine_labels": y,
                                   b"coarse_labels": [v // 5 for v in y]}, protocol=protocol)
    out += [x, np.array(y)]
  dump_cifar(directory / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                                  b"coarse_label_names": [b"x"] * 20}, protocol=protocol)
  return out


def correlated_images(n: int, shape=(4, 4, 3), seed: int = 0) -> np.ndarray:
  """Raw images in [0, 1] with strongly correlated pixels."""
  rng = np.random.default_rng(seed)
  d = int(np.prod(shape))
  z = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * rng.uniform(0.05, 1.0, size=d)
  z = (z - z.min()) / (z.max() - z.min())
  return z.reshape((n,) + shape).astype(np.float32)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
  monkeypatch.delenv(data.ENV_VAR, raising=False)


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
  images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
  labels = np.array([0, 9, 3, 3, 1], np.uint8)
  np.testing.assert_array_equal(data.read_idx(write_idx(tmp_path / "im", images, gz=gz)),
                                images)
  got = data.read_idx(write_idx(tmp_path / "lb", labels, gz=gz), expected_ndim=1)
  np.testing.assert_array_equal(got, labels)
  assert got.dtype == np.uint8


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated(tmp_path, gz):
  path = write_idx(tmp_path / "im", np.zeros((4, 28, 28), np.uint8))
  path.write_bytes(path.read_bytes()[:-100])
  if gz:
    path.write_bytes(gzip.compress(path.read_bytes()))
  with pytest.raises(ValueError, match=r"3136 data bytes, but found 3036.*truncated") as err:
    data.read_idx(path)
  assert str(path) in str(err.value)


def test_read_idx_truncated_gzip_stream(tmp_path):
  path = write_idx(tmp_path / "im", np.ones((4, 28, 28), np.uint8), gz=True)
  path.write_bytes(path.read_bytes()[:-20])
  with pytest.raises(ValueError, match="cannot decompress.*download it again"):
    data.read_idx(path)


def test_read_idx_bad_header(tmp_path):
  path = tmp_path / "bad"
  path.write_bytes(b"PK\x03\x04" + bytes(100))
  with pytest.raises(ValueError, match=r"found magic number 0x504b0304, expected .*0x00000801"):
    data.read_idx(path)
  path.write_bytes(bytes([0, 0, 0x0D, 1]) + (3).to_bytes(4, "big") + bytes(12))
  with pytest.raises(ValueError, match="dtype byte is 0x0d; only 0x08"):
    data.read_idx(path)
  labels = write_idx(tmp_path / "lb", np.zeros(3, np.uint8))
  with pytest.raises(ValueError, match=r"expected the IDX magic number 0x00000803 \(images\)"):
    data.read_idx(labels, expected_ndim=3)
  path.write_bytes(labels.read_bytes() + b"\x00")
  with pytest.raises(ValueError, match="longer than its header says"):
    data.read_idx(path)
  with pytest.raises(FileNotFoundError):
    data.read_idx(tmp_path / "missing")


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_dataset(tmp_path, gz):
  written = write_idx_dataset(tmp_path / "mnist", 40, 20, gz=gz)
  ds = data.load("mnist", data_dir=tmp_path, preprocess="none")  # found in the subfolder
  assert ds.x_train.shape == (40, 28, 28, 1) and ds.x_test.shape == (20, 28, 28, 1)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  np.testing.assert_allclose(ds.x_train[..., 0], written["train"][0] / 255.0, atol=1e-7)
  np.testing.assert_array_equal(ds.y_test, written["t10k"][1])
  assert ds.class_names == tuple(str(i) for i in range(10))


def test_fashion_mnist_from_data_dir_and_env(tmp_path):
  write_idx_dataset(tmp_path / "fashion_mnist", 20, 10, gz=True)
  found = data.resolve_data_dir("fashion_mnist", environ={data.ENV_VAR: str(tmp_path)})
  assert found == tmp_path / "fashion_mnist"
  assert data.resolve_data_dir("fashion_mnist", tmp_path / "fashion_mnist") == found
  ds = data.load("fashion_mnist", data_dir=found, n_train=10, n_test=10)
  assert ds.class_names[0] == "T-shirt/top" and ds.class_names[-1] == "Ankle boot"
  assert np.bincount(ds.y_train).tolist() == [1] * 10


def test_idx_count_mismatch(tmp_path):
  write_idx_dataset(tmp_path, 10, 10, gz=False)
  write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(9, np.uint8))
  with pytest.raises(ValueError, match="holds 10 images but .* holds 9 labels"):
    data.load("mnist", data_dir=tmp_path)


def test_idx_label_out_of_range(tmp_path):
  write_idx_dataset(tmp_path, 10, 10, gz=False)
  write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(10, 10, np.uint8))
  with pytest.raises(ValueError, match=r"has label 10; expected labels in \[0, 9\]"):
    data.load("mnist", data_dir=tmp_path)


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_official_format(tmp_path):
  x_train, y_train, x_test, y_test = write_cifar10(tmp_path / "cifar-10-batches-py")
  ds = data.load("cifar10", data_dir=tmp_path, preprocess="none")
  assert ds.x_train.shape == (50, 32, 32, 3) and ds.x_test.shape == (10, 32, 32, 3)
  # 'none' keeps pixels: checks the channel-first row layout is turned into NHWC correctly.
  np.testing.assert_allclose(ds.x_train, x_train / 255.0, atol=1e-7)
  np.testing.assert_allclose(ds.x_test, x_test / 255.0, atol=1e-7)
  np.testing.assert_array_equal(ds.y_train, y_train)
  np.testing.assert_array_equal(ds.y_test, y_test)
  assert ds.class_names[:2] == ("airplane", "automobile") and ds.num_classes == 10


def test_cifar100_fine_labels(tmp_path):
  x_train, y_train, x_test, y_test = write_cifar100(tmp_path)
  ds = data.load("cifar100", data_dir=tmp_path, preprocess="standardize", n_train=100,
                 n_test=100, seed=1)
  assert ds.num_classes == 100 and ds.class_names[99] == "c99"
  assert ds.x_train.shape == (100, 32, 32, 3)
  assert np.bincount(ds.y_train, minlength=100).tolist() == [1] * 100
  np.testing.assert_array_equal(ds.y_test, y_test)
  np.testing.assert_allclose(ds.preprocessing.invert(ds.x_test), x_test / 255.0, atol=1e-5)


@pytest.mark.parametrize("protocol", [None, 2, 5])
def test_cifar_pickle_protocols(tmp_path, protocol):
  # None: Python 2 layout; 2: Python 3 at protocol 2 (bytes via _codecs.encode); 5: _frombuffer.
  rows = to_cifar_rows(cifar_images(np.random.default_rng(0), 3))
  dump_cifar(tmp_path / "b", {b"data": rows, "labels": [1, 2, 3]}, protocol=protocol)
  got = cifar.unpickle_batch(tmp_path / "b")
  assert set(got) == {"data", "labels"}
  np.testing.assert_array_equal(got["data"], rows)
  assert got["data"].dtype == np.uint8


class _Evil:

  def __reduce__(self):
    return (os.system, ("echo pwned",))


def test_cifar_restricted_unpickler(tmp_path):
  path = tmp_path / "data_batch_1"
  path.write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
  with pytest.raises(ValueError, match=r"refusing global (posix|os)\.system"):
    cifar.unpickle_batch(path)
  path.write_bytes(pickle.dumps({b"data": np.array([1, 2], dtype=object)}, protocol=2))
  with pytest.raises(ValueError, match="refusing dtype object"):
    cifar.unpickle_batch(path)


def test_cifar_bad_batches(tmp_path):
  write_cifar10(tmp_path)
  rows = to_cifar_rows(cifar_images(np.random.default_rng(0), 4))
  dump_cifar(tmp_path / "data_batch_3", {b"data": rows})
  with pytest.raises(ValueError,
                     match=r"data_batch_3: missing key 'labels'; found keys \['data'\]"):
    data.load("cifar10", data_dir=tmp_path)
  dump_cifar(tmp_path / "data_batch_3", {b"data": rows[:, :1024], b"labels": [0] * 4})
  with pytest.raises(ValueError, match=r"uint8 array of shape \(n, 3072\)"):
    data.load("cifar10", data_dir=tmp_path)
  dump_cifar(tmp_path / "data_batch_3", {b"data": rows, b"labels": [0] * 3})
  with pytest.raises(ValueError, match=r"4 images but 'labels' has shape \(3,\)"):
    data.load("cifar10", data_dir=tmp_path)
  (tmp_path / "data_batch_3").write_bytes(b"\x80\x02}q\x00")  # truncated pickle
  with pytest.raises(ValueError, match="not a readable CIFAR python batch"):
    data.load("cifar10", data_dir=tmp_path)
  (tmp_path / "data_batch_3").unlink()
  with pytest.raises(FileNotFoundError, match=r"lacks the CIFAR files \['data_batch_3'\]"):
    data.read_cifar10(tmp_path)


# ----------------------------------------------------------------------------- TFDS


def test_tfds_mock():
  tfds = pytest.importorskip("tensorflow_datasets")
  # Nothing local for these names, so load() must fall through to TFDS.
  for name, shape in (("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3)),
                      ("svhn_cropped", (32, 32, 3))):
    assert data.resolve_data_dir(name) is None
    with tfds.testing.mock_data(num_examples=20):
      ds = data.load(name, preprocess="standardize")
    assert ds.x_train.shape == (20,) + shape and ds.x_test.shape == (20,) + shape
    assert ds.num_classes == 10 and len(ds.class_names) == 10
    assert ds.y_train.dtype == np.int32 and ds.y_train.max() < 10


def test_tfds_missing_message(monkeypatch):
  monkeypatch.setattr(sources.tfds_source, "available", lambda: False)
  with pytest.raises(ImportError, match=r"pip install 'kip\[tfds\]'"):
    data.load("svhn_cropped")


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def fashion():
  if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
    pytest.skip("Debian's dataset-fashion-mnist is not installed")
  return data.load("fashion_mnist")


def test_real_fashion_mnist(fashion):
  assert fashion.x_train.shape == (60000, 28, 28, 1)
  assert fashion.x_test.shape == (10000, 28, 28, 1)
  assert fashion.y_train.min() == 0 and fashion.y_train.max() == 9
  assert np.bincount(fashion.y_train).tolist() == [6000] * 10
  assert np.bincount(fashion.y_test).tolist() == [1000] * 10
  assert fashion.class_names[0] == "T-shirt/top"
  np.testing.assert_allclose(fashion.x_train.mean(), 0.0, atol=1e-4)
  np.testing.assert_allclose(fashion.x_train.std(), 1.0, atol=1e-4)
  # Train-only statistics: the test split is close to, but not exactly, standardized.
  assert 0 < abs(float(fashion.x_test.mean())) < 0.05
  raw = fashion.preprocessing.invert(fashion.x_train[:10])
  assert raw.min() > -1e-5 and raw.max() < 1 + 1e-5


def test_real_fashion_subset_matches(fashion):
  sub = fashion.subset(100, 50, seed=3)
  assert np.bincount(sub.y_train).tolist() == [10] * 10
  assert np.bincount(sub.y_test).tolist() == [5] * 10
  assert sub.preprocessing is fashion.preprocessing


def test_digits():
  a = data.load("digits")
  assert a.x_train.shape == (1437, 8, 8, 1) and a.x_test.shape == (360, 8, 8, 1)
  assert a.num_classes == 10
  b = data.load("digits")
  np.testing.assert_array_equal(a.x_train, b.x_train)
  np.testing.assert_array_equal(a.y_test, b.y_test)
  counts = np.bincount(a.y_test)
  assert counts.min() >= 35 and counts.max() <= 37  # stratified
  raw = a.preprocessing.invert(a.x_train)
  assert raw.min() > -1e-5 and raw.max() < 1 + 1e-5


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("kind", data.PREPROCESS_KINDS)
def test_preprocessing_round_trip(kind, tmp_path):
  x = correlated_images(300)
  prep = data.fit(kind, x[:200], zca_reg=0.1)
  y = prep.apply(x)
  assert y.dtype == np.float32 and y.shape == x.shape
  back = prep.invert(y)
  if kind == "zca":  # the per-image normalisation keeps each standardised image up to a + b x
    def standardized(a):
      return ((a - prep.channel_mean) / prep.channel_std).reshape(300, -1)
    for b, t in zip(standardized(back), standardized(x)):
      np.testing.assert_allclose(np.corrcoef(b, t)[0, 1], 1.0, atol=1e-5)
  else:
    np.testing.assert_allclose(back, x, atol=2e-5)
  arrays = prep.to_arrays()
  np.savez(tmp_path / "p.npz", **arrays)
  with np.load(tmp_path / "p.npz", allow_pickle=False) as f:
    again = data.Preprocessing.from_arrays(dict(f))
  assert again.kind == kind and again.image_shape == prep.image_shape
  np.testing.assert_array_equal(again.apply(x), y)


def test_standardize_fitted_on_train_only():
  x = correlated_images(300)
  train, test = x[:200], x[200:] * 0.5
  prep = data.fit("standardize", train)
  np.testing.assert_allclose(prep.channel_mean, train.mean(axis=(0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(prep.channel_std, train.std(axis=(0, 1, 2)), rtol=1e-5)
  z = prep.apply(train)
  np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
  assert np.all(np.abs(prep.apply(test).mean(axis=(0, 1, 2))) > 0.1)


@pytest.mark.parametrize("zca_reg", [1e-3, 0.1])
def test_zca_whitens_train(zca_reg):
  x = correlated_images(500)
  prep = data.fit("zca_centered", x[:400], zca_reg=zca_reg)
  z = prep.apply(x[:400]).reshape(400, -1).astype(np.float64)
  np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
  cov = z.T @ z / 400
  s, u = prep.zca_eigvals, prep.zca_eigvecs.astype(np.float64)
  expected = (u * (s / (s + zca_reg * s.mean()))) @ u.T  # W C W
  np.testing.assert_allclose(cov, expected, atol=2e-4)
  eig = np.linalg.eigvalsh(cov)
  assert eig.max() < 1 + 1e-4  # shrinks every direction, never amplifies beyond white
  # Nearly white when the regulariser is small and the spectrum well conditioned.
  iid = np.random.default_rng(1).uniform(size=(2000, 2, 2, 3)).astype(np.float32)
  w = data.fit("zca_centered", iid, zca_reg=1e-3).apply(iid).reshape(2000, -1)
  np.testing.assert_allclose(w.T @ w / 2000, np.eye(12), atol=5e-3)
  # Symmetric (ZCA, not PCA): W = W^T.
  np.testing.assert_allclose(prep.whitening_matrix, prep.whitening_matrix.T, atol=1e-4)


def _reference_zca(x_train, x, zca_reg):
  """NumPy transcription of the KIP reference ``get_preprocess_op(layer_norm=True)``."""
  mean, std = np.mean(x_train, axis=(0, 1, 2)), np.std(x_train, axis=(0, 1, 2))

  def layer_norm(a):
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    a = a - np.mean(a, axis=1)[:, np.newaxis]
    return a / np.linalg.norm(a, axis=1)[:, np.newaxis]

  xt = layer_norm((x_train - mean) / std)
  n = xt.shape[0]
  cov = 1.0 / n * xt.T.dot(xt)
  reg_amount = zca_reg * np.trace(cov) / cov.shape[0]
  u, s, _ = np.linalg.svd(cov + reg_amount * np.eye(cov.shape[0]))
  inv_sqrt = s ** (-1 / 2)
  if n < xt.shape[1]:  # the reference's rank control
    inv_sqrt[n:] = 1.0
  w = np.einsum("ij,j,kj->ik", u, inv_sqrt, u)
  return (layer_norm((x - mean) / std) @ w).reshape(x.shape)


@pytest.mark.parametrize("n_fit", [200, 20])  # more and fewer images than the 48 features
def test_zca_is_the_kip_reference_recipe(n_fit):
  x = correlated_images(300)
  prep = data.fit("zca", x[:n_fit], zca_reg=0.1)
  np.testing.assert_allclose(prep.apply(x), _reference_zca(x[:n_fit], x, 0.1), atol=2e-4,
                             rtol=1e-4)
  assert prep.zca_rank == min(n_fit, 48)
  np.testing.assert_array_equal(prep.zca_mean, 0.0)  # uncentred second moment


def test_zca_reads_files_written_before_the_reference_recipe(tmp_path):
  """A saved 'zca' without zca_rank was fitted with the centred recipe and is read as such."""
  x = correlated_images(100)
  prep = data.fit("zca_centered", x, zca_reg=0.1)
  arrays = prep.to_arrays()
  arrays["kind"] = np.asarray("zca")
  del arrays["zca_rank"]
  again = data.Preprocessing.from_arrays(arrays)
  assert again.kind == "zca_centered"
  np.testing.assert_array_equal(again.apply(x), prep.apply(x))


def test_zca_constant_image_stays_finite():
  x = correlated_images(50)
  prep = data.fit("zca", x)
  out = prep.apply(np.full((1,) + x.shape[1:], 0.5, np.float32))
  assert np.all(np.isfinite(out))


def test_zca_dataset_uses_train_statistics():
  x = correlated_images(300)
  y = np.arange(300) % 3
  ds = data.from_arrays("toy", x[:200], y[:200], x[200:], y[200:], preprocess="zca_centered")
  flat = ((x[:200] - ds.preprocessing.channel_mean) / ds.preprocessing.channel_std)
  np.testing.assert_allclose(ds.preprocessing.zca_mean, flat.reshape(200, -1).mean(0),
                             atol=1e-5)
  np.testing.assert_allclose(ds.x_train.reshape(200, -1).mean(0), 0.0, atol=1e-4)
  assert ds.num_classes == 3 and ds.class_names == ("0", "1", "2")


def test_preprocessing_errors():
  x = correlated_images(10)
  with pytest.raises(ValueError, match=r"unknown preprocess kind 'pca'; expected one of"):
    data.fit("pca", x)
  with pytest.raises(ValueError, match="zca_reg must be > 0"):
    data.fit("zca", x, zca_reg=0.0)
  prep = data.fit("standardize", x)
  with pytest.raises(ValueError, match=r"image shape \(4, 4, 1\).*fitted on .*\(4, 4, 3\)"):
    prep.apply(np.zeros((2, 4, 4, 1), np.float32))
  bad = x.copy()
  bad[0, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match="1 NaN or infinite"):
    prep.apply(bad)
  with pytest.raises(ValueError, match="lack keys"):
    data.Preprocessing.from_arrays({"kind": np.asarray("zca")})


# ----------------------------------------------------------------------------- Dataset


def toy(n_train=60, n_test=30, **kwargs):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (n_train + n_test, 5, 5), dtype=np.uint8)
  y = np.arange(n_train + n_test) % 3
  return data.from_arrays("toy", x[:n_train], y[:n_train], x[n_train:], y[n_train:], **kwargs)


def test_from_arrays_layouts():
  ds = toy(class_names=["a", "b", "c"])
  assert ds.image_shape == (5, 5, 1) and ds.class_names == ("a", "b", "c")
  one_hot = ds.one_hot(ds.y_train[:4])
  np.testing.assert_array_equal(one_hot, np.eye(3, dtype=np.float32)[[0, 1, 2, 0]])
  assert one_hot.dtype == np.float32
  with pytest.raises(dataclasses.FrozenInstanceError):
    ds.name = "other"
  assert "toy" in repr(ds) and "(60, 5, 5, 1)" in repr(ds)


def test_subset_balanced_and_deterministic():
  import jax  # pylint: disable=g-import-not-at-top
  ds = toy(n_train=90, n_test=60)
  a = ds.subset(10, 7, seed=0)
  b = ds.subset(10, 7, seed=0)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert sorted(np.bincount(a.y_train).tolist()) == [3, 3, 4]
  assert sorted(np.bincount(a.y_test).tolist()) == [2, 2, 3]
  assert not np.array_equal(ds.subset(10, seed=1).x_train, a.x_train)
  k1 = ds.subset(9, seed=jax.random.key(5))
  k2 = ds.subset(9, seed=jax.random.PRNGKey(5))
  np.testing.assert_array_equal(k1.x_train, k2.x_train)
  assert np.bincount(k1.y_train).tolist() == [3, 3, 3]
  with pytest.raises(ValueError,
                     match=r"class 0 has only 30 examples .* needs 45; ask for at most 60"):
    data.class_balanced_indices(np.r_[np.zeros(30), np.ones(60)].astype(int), 90, num_classes=2)
  with pytest.raises(ValueError, match=r"n must be an int in \[1, 90\]"):
    ds.subset(91)


@pytest.mark.parametrize("case, match", [
    ("nan", "NaN or infinite"),
    ("range", r"float x_train must lie in \[0, 1\].*divide by the maximum"),
    ("ndim", r"must be \(n, H, W\) or \(n, H, W, C\), got shape \(6, 5\)"),
    ("labels", r"y_test has values in \[0, 5\], outside the accepted range \[0, 2\]"),
    ("negative", r"y_train has values in \[-1, 2\]"),
    ("float_labels", "must have an integer dtype, got float64"),
    ("length", "x_train has 6 images but y_train has 5 labels"),
    ("shape", r"x_train images are \(5, 5, 1\) but x_test images are \(4, 4, 1\)"),
])
def test_from_arrays_errors(case, match):
  x = np.full((6, 5, 5), 0.5, np.float32)
  y = np.array([0, 1, 2, 0, 1, 2])
  args = dict(x_train=x, y_train=y, x_test=x, y_test=y)
  if case == "nan":
    args["x_test"] = x.copy()
    args["x_test"][1, 2, 3] = np.nan
  elif case == "range":
    args["x_train"] = x * 255
  elif case == "ndim":
    args["x_train"] = x[:, :, 0]
  elif case == "labels":
    args["y_test"] = np.array([0, 1, 2, 0, 1, 5])
  elif case == "negative":
    args["y_train"] = y - 1 + (y > 0)
  elif case == "float_labels":
    args["y_train"] = y.astype(float)
  elif case == "length":
    args["y_train"] = y[:5]
  elif case == "shape":
    args["x_test"] = x[:, :4, :4]
  kwargs = {"num_classes": 3} if case == "labels" else {}
  with pytest.raises(ValueError, match=match):
    data.from_arrays("toy", **args, **kwargs)


def test_dataset_validation():
  ds = toy()
  with pytest.raises(ValueError, match="4-D NHWC float32"):
    dataclasses.replace(ds, x_train=ds.x_train.astype(np.float64))
  bad = ds.x_test.copy()
  bad[0, 0, 0, 0] = np.inf
  with pytest.raises(ValueError, match="x_test contains 1 NaN or infinite"):
    dataclasses.replace(ds, x_test=bad)
  with pytest.raises(ValueError, match="class_names must be 3 strings"):
    dataclasses.replace(ds, class_names=("a", "b"))
  with pytest.raises(ValueError, match=r"y_train has values in \[0, 2\], outside .* \[0, 1\]"):
    dataclasses.replace(ds, num_classes=2, class_names=("a", "b"))


def test_unknown_name_and_missing_dir(tmp_path):
  with pytest.raises(ValueError, match=r"unknown dataset 'fashion'; known datasets are "
                     r"\('fashion_mnist', 'mnist', 'digits'"):
    data.load("fashion")
  with pytest.raises(ValueError, match="unknown preprocess kind 'whiten'"):
    data.load("digits", preprocess="whiten")
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
    data.load("fashion_mnist", data_dir=tmp_path / "nope")
  assert "is not a directory" in str(err.value) and "KIP_DATA_DIR" in str(err.value)


def test_nothing_found_message(tmp_path, monkeypatch):
  monkeypatch.setitem(sources._SYSTEM_DIRS, "fashion_mnist", (str(tmp_path / "absent"),))
  monkeypatch.setattr(sources.tfds_source, "available", lambda: False)
  with pytest.raises(FileNotFoundError) as err:
    data.load("fashion_mnist", data_dir=tmp_path)
  message = str(err.value)
  assert "no local copy of Fashion-MNIST found" in message and str(tmp_path) in message
  assert "apt-get install dataset-fashion-mnist" in message
  assert "pip install 'kip[tfds]'" in message and "train-images-idx3-ubyte" in message
  monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match=r"\$KIP_DATA_DIR=.* is not a directory"):
    data.load("cifar10")
