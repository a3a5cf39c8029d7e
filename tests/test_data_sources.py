"""Where data comes from: explicit folders, the environment, system folders and TFDS.

An explicit ``data_dir`` means that folder (and its dataset-named subfolders) only: without the
files it is an error that lists what was looked for, never a silent fall back to
``$KIP_DATA_DIR`` or Debian's copy. The folder used is logged, at WARNING when it is not the one
asked for. TFDS without network fails with one line about the download. All files here are
tiny fakes written into ``tmp_path``; nothing touches the network.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import pathlib
import types

import numpy as np
import pytest

from kip import data
from kip._src.data import sources
from kip._src.data import tfds_source

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
SOURCES_LOGGER = "kip._src.data.sources"


def _write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big")
                                                        for d in array.shape)
  path.write_bytes(gzip.compress(header + array.tobytes()))


def _write_copy(directory: pathlib.Path, n: int = 20, skip: tuple[str, ...] = (),
                fill: int = 0) -> pathlib.Path:
  """A fake MNIST-style copy (``n`` train and test images, pixels ``fill``), minus ``skip``."""
  directory.mkdir(parents=True, exist_ok=True)
  labels = (np.arange(n) % 10).astype(np.uint8)
  for prefix in ("train", "t10k"):
    if f"{prefix}-images-idx3-ubyte" not in skip:
      _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), fill))
    if f"{prefix}-labels-idx1-ubyte" not in skip:
      _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return directory


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
  """Complete Fashion-MNIST copies in a fake Debian folder and under ``$KIP_DATA_DIR``.

  Pixels are 7 (system) and 9 (environment), so a test can tell which copy was read.
  """
  system = _write_copy(tmp_path / "system" / "fashion-mnist", fill=7)
  monkeypatch.setitem(sources._SYSTEM_DIRS, "fashion_mnist", (str(system),))
  env_root = tmp_path / "env"
  _write_copy(env_root / "fashion_mnist", fill=9)
  monkeypatch.setenv(data.ENV_VAR, str(env_root))
  return system, env_root


def _pixel(ds) -> int:
  return int(round(float(ds.x_train.max()) * 255))


# ----------------------------------------------------------------------------- explicit folder
@pytest.mark.parametrize("tfds_installed", [False, True])
def test_empty_data_dir_is_an_error_not_a_fallback(tmp_path, elsewhere, monkeypatch,
                                                    tfds_installed):
  """The issue's case: an empty --data-dir silently loaded Debian's Fashion-MNIST."""
  monkeypatch.setattr(tfds_source, "available", lambda: tfds_installed)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError) as err:
    data.load("fashion_mnist", data_dir=empty, preprocess="none")
  message = str(err.value)
  assert "\n" not in message
  assert f"no local copy of Fashion-MNIST found in data_dir '{empty}'" in message
  assert "$KIP_DATA_DIR and system folders are not searched" in message
  for name in IDX_NAMES:  # the files expected
    assert name in message
  # every folder searched, and what each holds
  assert f"{empty}: none of the files" in message
  for sub in ("fashion_mnist", "fashion-mnist", "FashionMNIST/raw"):
    assert f"{empty / sub}: no such folder" in message
  assert str(elsewhere[0]) not in message.split("To get")[0]  # Debian's copy was not used
  assert ("not a TensorFlow Datasets data dir either" in message) == tfds_installed
  assert "apt-get install dataset-fashion-mnist" in message


def test_partial_copy_names_the_missing_file(tmp_path, elsewhere):
  """3 of the 4 files: the message says which are there and which one is missing."""
  partial = _write_copy(tmp_path / "partial", skip=("t10k-labels-idx1-ubyte",))
  with pytest.raises(FileNotFoundError) as err:
    data.load("fashion_mnist", data_dir=partial)
  message = str(err.value)
  assert (f"{partial}: 3 of 4 files (has train-images-idx3-ubyte.gz, "
          "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz; missing "
          "t10k-labels-idx1-ubyte[.gz])") in message


def test_files_in_a_wrong_subfolder(tmp_path, elsewhere):
  """Files one level too deep (not a dataset-named subfolder) are reported as not found."""
  _write_copy(tmp_path / "data" / "downloads" / "fmnist")
  with pytest.raises(FileNotFoundError, match="none of the files"):
    data.load("fashion_mnist", data_dir=tmp_path / "data")


def test_cifar_data_dir_lists_the_batches(tmp_path):
  (tmp_path / "cifar-10-batches-py").mkdir()
  (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
  with pytest.raises(FileNotFoundError) as err:
    data.load("cifar10", data_dir=tmp_path)
  message = str(err.value)
  assert f"{tmp_path / 'cifar-10-batches-py'}: 1 of 7 files (has data_batch_1; missing " \
         "data_batch_2" in message
  assert "test_batch" in message and "batches.meta" in message


def test_data_dir_itself_is_info_subfolder_is_warning(tmp_path, elsewhere, caplog):
  root = tmp_path / "mine"
  _write_copy(root / "fashion_mnist", fill=3)
  with caplog.at_level(logging.INFO, logger=SOURCES_LOGGER):
    ds = data.load("fashion_mnist", data_dir=root, preprocess="none")
  assert _pixel(ds) == 3  # this copy, not the environment's or the system's
  [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert warning.getMessage() == (f"data_dir {root} has no Fashion-MNIST files itself; using "
                                  f"its subfolder {root / 'fashion_mnist'}")
  caplog.clear()
  with caplog.at_level(logging.INFO, logger=SOURCES_LOGGER):
    data.load("fashion_mnist", data_dir=root / "fashion_mnist", preprocess="none")
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  assert f"reading Fashion-MNIST from {root / 'fashion_mnist'}" in caplog.text


def test_explicit_data_dir_that_is_not_a_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a directory") as err:
    data.load("mnist", data_dir=tmp_path / "nope")
  assert "\n" not in str(err.value) and "KIP_DATA_DIR" in str(err.value)


# ----------------------------------------------------------------------------- nothing asked
def test_environment_copy_is_info(elsewhere, caplog):
  with caplog.at_level(logging.INFO, logger=SOURCES_LOGGER):
    ds = data.load("fashion_mnist", preprocess="none")
  assert _pixel(ds) == 9
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_system_folder_is_info_when_nothing_was_asked(elsewhere, monkeypatch, caplog):
  monkeypatch.delenv(data.ENV_VAR)
  with caplog.at_level(logging.INFO, logger=SOURCES_LOGGER):
    ds = data.load("fashion_mnist", preprocess="none")
  assert _pixel(ds) == 7
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  assert f"reading Fashion-MNIST from {elsewhere[0]}" in caplog.text


def test_system_folder_is_warning_when_the_environment_lacks_it(elsewhere, tmp_path,
                                                                 monkeypatch, caplog):
  other = tmp_path / "other_root"
  other.mkdir()
  monkeypatch.setenv(data.ENV_VAR, str(other))
  with caplog.at_level(logging.INFO, logger=SOURCES_LOGGER):
    ds = data.load("fashion_mnist", preprocess="none")
  assert _pixel(ds) == 7
  [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert f"${data.ENV_VAR}={other} holds no Fashion-MNIST copy" in warning.getMessage()
  assert f"using {elsewhere[0]}" in warning.getMessage()


def test_resolve_data_dir_explicit_only(tmp_path, elsewhere):
  empty = tmp_path / "empty"
  empty.mkdir()
  environ = {data.ENV_VAR: str(elsewhere[1])}
  assert data.resolve_data_dir("fashion_mnist", empty, environ) is None
  assert data.resolve_data_dir("fashion_mnist", None, environ) == elsewhere[1] / "fashion_mnist"
  assert data.resolve_data_dir("fashion_mnist") == elsewhere[0]


# ----------------------------------------------------------------------------- TFDS
def _fake_tfds(load):
  """A stand-in ``tensorflow_datasets`` module (no TensorFlow import) with ``load``."""
  class DownloadError(Exception):
    pass
  return types.SimpleNamespace(load=load, download=types.SimpleNamespace(
      DownloadError=DownloadError))


def _offline(*args, **kwargs):
  requests = pytest.importorskip("requests")
  raise requests.exceptions.ConnectionError(
      "HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries exceeded "
      "with url: /cvdf-datasets/mnist/train-images-idx3-ubyte.gz (Caused by\nNameResolution"
      "Error(\"Failed to resolve 'storage.googleapis.com'\"))")


def test_tfds_without_network_real_module(monkeypatch, tmp_path):
  """``kip.data.load('mnist')`` offline: one line about the download, not a traceback."""
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(tfds, "load", _offline)
  monkeypatch.setenv(data.ENV_VAR, str(tmp_path))  # no local MNIST anywhere
  with pytest.raises(FileNotFoundError) as err:
    data.load("mnist")
  message = str(err.value)
  assert "\n" not in message
  assert message.startswith("'mnist' is not prepared in TFDS's data dir and TensorFlow "
                            "Datasets could not download it (no network?): ConnectionError: ")
  assert "Or put the IDX files" in message
  assert isinstance(err.value.__cause__, OSError)


def test_tfds_download_offline_through_real_tfds_load(monkeypatch, tmp_path):
  """The whole TFDS path (builder, download manager) with its HTTP opener failing at once.

  A real offline attempt retries for minutes before raising the same ConnectionError.
  """
  pytest.importorskip("tensorflow_datasets")
  from tensorflow_datasets.core.download import downloader
  if not hasattr(downloader, "_open_with_requests"):
    pytest.skip("this TFDS version opens URLs differently")

  def offline(url, **kwargs):
    _offline()
    yield  # a generator, like the context manager it replaces

  monkeypatch.setattr(downloader, "_open_with_requests", contextlib.contextmanager(offline))
  monkeypatch.setattr(downloader, "_open_with_urllib", contextlib.contextmanager(offline))
  with pytest.raises(FileNotFoundError) as err:
    tfds_source.load_tfds("mnist", data_dir=tmp_path)
  message = str(err.value)
  assert "\n" not in message
  assert message.startswith(f"'mnist' is not prepared in {tmp_path} and TensorFlow Datasets "
                            "could not download it (no network?): ConnectionError: ")


@pytest.mark.parametrize("kind", ["connection", "download_error"])
def test_tfds_download_errors_become_one_line(monkeypatch, tmp_path, kind):
  fake = None

  def load(*args, **kwargs):
    if kind == "connection":
      _offline()
    raise fake.download.DownloadError("Failed to get url https://x. HTTP code: 503.")

  fake = _fake_tfds(load)
  monkeypatch.setattr(tfds_source, "_import_tfds", lambda: fake)
  with pytest.raises(FileNotFoundError, match="could not download it") as err:
    tfds_source.load_tfds("cifar10", data_dir=tmp_path)
  assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_tfds_missing_module_is_an_install_hint(monkeypatch):
  """TFDS's download path imports importlib_resources (now in the tfds extra)."""
  def load(*args, **kwargs):
    raise ModuleNotFoundError("No module named 'importlib_resources'",
                              name="importlib_resources")

  monkeypatch.setattr(tfds_source, "_import_tfds", lambda: _fake_tfds(load))
  with pytest.raises(ImportError, match=r"needs the module 'importlib_resources' to load "
                     r"'mnist'.*pip install 'kip\[tfds\]'") as err:
    tfds_source.load_tfds("mnist")
  assert not isinstance(err.value, ModuleNotFoundError)


def test_tfds_extra_includes_importlib_resources():
  import tomllib
  pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
  extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["tfds"]
  assert any(e.startswith("importlib_resources") or e.startswith("importlib-resources")
             for e in extras)


def test_explicit_tfds_data_dir_is_used(tmp_path, monkeypatch):
  """A data_dir holding a prepared TFDS copy is read through TFDS, without downloading."""
  prepared = tmp_path / "mnist" / "3.0.1"
  prepared.mkdir(parents=True)
  (prepared / "dataset_info.json").write_text("{}")
  calls = []

  def load_tfds(name, *, data_dir=None, download=True, hint=""):
    calls.append((name, data_dir, download))
    x = np.zeros((10, 28, 28, 1), np.uint8)
    return data.RawSplits(x, np.arange(10), x, np.arange(10), tuple("0123456789"))

  monkeypatch.setattr(tfds_source, "available", lambda: True)
  monkeypatch.setattr(tfds_source, "load_tfds", load_tfds)
  ds = data.load("mnist", data_dir=tmp_path, preprocess="none")
  assert ds.x_train.shape == (10, 28, 28, 1)
  assert calls == [("mnist", tmp_path, False)]
  # without the prepared copy the same folder is an error, and TFDS is not asked
  (prepared / "dataset_info.json").unlink()
  with pytest.raises(FileNotFoundError, match="not a TensorFlow Datasets data dir either"):
    data.load("mnist", data_dir=tmp_path)
  assert len(calls) == 1


def test_tfds_only_dataset_takes_data_dir_as_tfds_dir(tmp_path, monkeypatch):
  calls = []

  def load_tfds(name, *, data_dir=None, download=True, hint=""):
    calls.append((name, data_dir, download))
    x = np.zeros((10, 32, 32, 3), np.uint8)
    return data.RawSplits(x, np.arange(10), x, np.arange(10), tuple("0123456789"))

  monkeypatch.setattr(tfds_source, "available", lambda: True)
  monkeypatch.setattr(tfds_source, "load_tfds", load_tfds)
  data.load("svhn_cropped", data_dir=tmp_path, preprocess="none")
  assert calls == [("svhn_cropped", tmp_path, True)]

