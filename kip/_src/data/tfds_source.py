"""Loading through TensorFlow Datasets (the optional ``kip[tfds]`` extra).

``tensorflow_datasets`` is imported lazily, only when a dataset is actually loaded through it,
because importing TensorFlow takes seconds. Splits are pulled in chunks of
:data:`_CHUNK` examples rather than with ``batch_size=-1``: the latter batches by the split size
recorded in the dataset info, which is missing under ``tfds.testing.mock_data`` (TFDS then
batches by ``sys.maxsize`` and TensorFlow aborts the process).
"""

from __future__ import annotations

import importlib.util
import logging
import os

import numpy as np

from kip._src.data import dataset as dataset_lib

__all__ = ["available", "load_tfds", "INSTALL_HINT"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'kip[tfds]'  (tensorflow-datasets and tensorflow-cpu)"
_CHUNK = 10_000


def available() -> bool:
  """Whether ``tensorflow_datasets`` can be imported (checked without importing it)."""
  return importlib.util.find_spec("tensorflow_datasets") is not None


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise ImportError(f"loading this dataset needs TensorFlow Datasets: {INSTALL_HINT}."
                      ) from err
  return tfds


def _split_to_numpy(tfds, ds, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  xs, ys = [], []
  for x, y in tfds.as_numpy(ds.batch(_CHUNK)):
    xs.append(np.asarray(x))
    ys.append(np.asarray(y))
  if not xs:
    raise ValueError(f"TFDS returned an empty {split!r} split for {name!r}.")
  return np.concatenate(xs), np.concatenate(ys)


def _download_errors(tfds) -> tuple[type[BaseException], ...]:
  """What ``tfds.load`` raises when it cannot reach the network (or the download fails).

  ``requests`` and ``urllib`` errors are ``OSError`` subclasses; TFDS adds its own
  ``DownloadError`` (e.g. an HTTP status other than 200).
  """
  errors: list[type[BaseException]] = [OSError]
  download_error = getattr(getattr(tfds, "download", None), "DownloadError", None)
  if isinstance(download_error, type) and issubclass(download_error, BaseException):
    errors.append(download_error)
  return tuple(errors)


def _one_line(err: BaseException, limit: int = 300) -> str:
  text = " ".join(str(err).split()) or "no details"
  text = text if len(text) <= limit else text[:limit - 3] + "..."
  return f"{type(err).__name__}: {text}"


def load_tfds(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = True,
              hint: str = "") -> dataset_lib.RawSplits:
  """Loads the ``train`` and ``test`` splits of a TFDS image-classification dataset.

  Args:
    name: TFDS name, e.g. ``'mnist'``, ``'cifar10'``, ``'svhn_cropped'``.
    data_dir: TFDS data directory (``None``: TFDS's default, ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``). TFDS downloads and prepares the dataset there if it is not
      already prepared (and ``download`` is true).
    download: let TFDS download a dataset that is not prepared yet.
    hint: appended to the error message when the download fails.

  Returns:
    :class:`RawSplits` with ``(n, H, W, C)`` uint8 images and the label feature's names.

  Raises:
    FileNotFoundError: the dataset is not prepared and could not be downloaded (no network);
      one line, the underlying error chained.
    ImportError: a module TFDS needs for the download is missing.
  """
  tfds = _import_tfds()
  where = os.fspath(data_dir) if data_dir is not None else "TFDS's data dir"
  logger.info("loading %r through TFDS (data_dir=%s)", name, data_dir)
  try:
    (train, test), info = tfds.load(name, split=["train", "test"], as_supervised=True,
                                    with_info=True, download=download,
                                    data_dir=None if data_dir is None else os.fspath(data_dir))
  except ModuleNotFoundError as err:
    raise ImportError(f"TensorFlow Datasets needs the module {err.name!r} to load {name!r}, "
                      f"and it is not installed: {INSTALL_HINT} (or pip install {err.name})."
                      ) from err
  except _download_errors(tfds) as err:
    raise FileNotFoundError(
        f"{name!r} is not prepared in {where} and TensorFlow Datasets could not download it "
        f"(no network?): {_one_line(err)}. On a machine with network, kip.data.load({name!r}) "
        f"prepares it in TFDS's data dir (~/tensorflow_datasets); copy that folder over and "
        f"pass it as data_dir.{hint}"
        ) from err
  x_train, y_train = _split_to_numpy(tfds, train, name, "train")
  x_test, y_test = _split_to_numpy(tfds, test, name, "test")
  names = tuple(str(n) for n in info.features["label"].names)
  return dataset_lib.RawSplits(x_train, y_train, x_test, y_test, names)
