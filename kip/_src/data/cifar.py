"""Readers for the official CIFAR-10 / CIFAR-100 "python version" pickle batches.

The official archives (``cifar-10-batches-py``: ``data_batch_1`` .. ``data_batch_5``,
``test_batch``, ``batches.meta``; ``cifar-100-python``: ``train``, ``test``, ``meta``) are Python
2 pickles of dicts holding a ``data`` uint8 array of shape ``(n, 3072)`` (each row is the red,
then green, then blue 32x32 plane, row-major), a label list and some strings.

Safety: unpickling can run arbitrary code, so these files are read with
:class:`_RestrictedUnpickler`, whose ``find_class`` admits only what such a batch needs to
rebuild a numeric NumPy array (``numpy.core.multiarray._reconstruct`` / ``numpy.ndarray`` /
``numpy.dtype``, the protocol-5 ``_frombuffer`` and ``_codecs.encode`` with latin-1, which
Python 3 uses to pickle bytes at protocol 2). Dicts, lists, strings, bytes and ints need no
globals. Any other global, and any non-numeric dtype (object arrays would unpickle further
objects), raises ``ValueError``. The result is then checked key by key and shape by shape.
"""

from __future__ import annotations

import codecs
import logging
import os
import pathlib
import pickle
from typing import Any

import numpy as np

from kip._src.data import dataset as dataset_lib

try:  # NumPy >= 2
  from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
  from numpy.core.multiarray import _reconstruct as _np_reconstruct

__all__ = ["read_cifar10", "read_cifar100", "unpickle_batch", "CIFAR10_FILES",
           "CIFAR100_FILES"]

logger = logging.getLogger(__name__)

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")
_ROW = 3 * 32 * 32
_NUMERIC_KINDS = "biuf"


def _safe_dtype(obj, align=False, copy=False):
  dtype = np.dtype(obj, align, copy)
  if dtype.kind not in _NUMERIC_KINDS:
    raise pickle.UnpicklingError(f"refusing dtype {dtype} (only numeric arrays are allowed)")
  return dtype


def _safe_reconstruct(subtype, shape, dtype):
  if subtype is not np.ndarray:
    raise pickle.UnpicklingError(f"refusing array subclass {subtype!r}")
  return _np_reconstruct(subtype, shape, _safe_dtype(dtype))


def _safe_frombuffer(buf, dtype, shape, order):
  return np.frombuffer(buf, dtype=_safe_dtype(dtype)).reshape(shape, order=order).copy()


def _latin1_encode(text, encoding="utf-8"):
  if encoding not in ("latin1", "latin-1"):
    raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
  return codecs.encode(text, "latin1")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``."""

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"refusing global {module}.{name}: a CIFAR batch holds only dicts, lists, strings, "
          "ints and numeric numpy arrays") from None


def unpickle_batch(path: str | os.PathLike) -> dict[str, Any]:
  """Loads one CIFAR pickle with the restricted unpickler; bytes keys are decoded to str.

  Args:
    path: a batch or meta file.

  Returns:
    The batch dict, keys as ``str`` (e.g. ``'data'``, ``'labels'``).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"CIFAR batch {path} does not exist.")
  try:
    with open(path, "rb") as f:
      obj = _RestrictedUnpickler(f, encoding="bytes").load()
  # A corrupt pickle can fail with almost any exception type; report them all the same way.
  except Exception as err:  # pylint: disable=broad-except
    raise ValueError(f"{path}: not a readable CIFAR python batch ({type(err).__name__}: "
                     f"{err}); download and extract the python version of the archive again."
                     ) from err
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a pickled dict, found {type(obj).__name__}.")
  return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _get(batch: dict[str, Any], key: str, path: pathlib.Path) -> Any:
  if key not in batch:
    raise ValueError(f"{path}: missing key {key!r}; found keys {sorted(map(str, batch))}.")
  return batch[key]


def _read_batch(path: pathlib.Path, label_key: str, num_classes: int
                ) -> tuple[np.ndarray, np.ndarray]:
  batch = unpickle_batch(path)
  data = _get(batch, "data", path)
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
      or data.shape[1] != _ROW:
    raise ValueError(f"{path}: 'data' must be a uint8 array of shape (n, {_ROW}), found "
                     f"{type(data).__name__} {getattr(data, 'dtype', '')} "
                     f"{getattr(data, 'shape', '')}.")
  try:
    labels = np.asarray(_get(batch, label_key, path), dtype=np.int64)
  except (TypeError, ValueError, OverflowError) as err:
    raise ValueError(f"{path}: {label_key!r} must be a list of ints ({err}).") from err
  if labels.shape != (data.shape[0],):
    raise ValueError(f"{path}: {data.shape[0]} images but {label_key!r} has shape "
                     f"{labels.shape}; expected ({data.shape[0]},).")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{path}: {label_key!r} has values in [{labels.min()}, {labels.max()}]; "
                     f"expected [0, {num_classes - 1}].")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def _read_names(path: pathlib.Path, key: str, num_classes: int) -> tuple[str, ...]:
  names = _get(unpickle_batch(path), key, path)
  if not isinstance(names, (list, tuple)) or len(names) != num_classes or not all(
      isinstance(n, (bytes, str)) for n in names):
    size = len(names) if hasattr(names, "__len__") else "?"
    raise ValueError(f"{path}: {key!r} must be a list of {num_classes} strings, found "
                     f"{type(names).__name__} of length {size}.")
  return tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)


def _check_dir(directory: str | os.PathLike, files: tuple[str, ...]) -> pathlib.Path:
  directory = pathlib.Path(directory)
  missing = [f for f in files if not (directory / f).is_file()]
  if missing:
    raise FileNotFoundError(f"{directory} lacks the CIFAR files {missing}; expected the "
                            f"extracted python archive with {list(files)}.")
  return directory


def read_cifar10(directory: str | os.PathLike) -> dataset_lib.RawSplits:
  """Reads an extracted ``cifar-10-batches-py`` folder.

  Args:
    directory: folder holding ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and
      ``batches.meta``.

  Returns:
    :class:`RawSplits` with ``(n, 32, 32, 3)`` uint8 images (50000 / 10000 for the official
    release) and the 10 ``label_names``.
  """
  directory = _check_dir(directory, CIFAR10_FILES)
  parts = [_read_batch(directory / f"data_batch_{i}", "labels", 10) for i in range(1, 6)]
  x_test, y_test = _read_batch(directory / "test_batch", "labels", 10)
  names = _read_names(directory / "batches.meta", "label_names", 10)
  x_train = np.concatenate([p[0] for p in parts])
  y_train = np.concatenate([p[1] for p in parts])
  logger.info("read CIFAR-10 from %s: %d train, %d test", directory, len(y_train), len(y_test))
  return dataset_lib.RawSplits(x_train, y_train, x_test, y_test, names)


def read_cifar100(directory: str | os.PathLike) -> dataset_lib.RawSplits:
  """Reads an extracted ``cifar-100-python`` folder with the 100 fine labels.

  Args:
    directory: folder holding ``train``, ``test`` and ``meta``.

  Returns:
    :class:`RawSplits` with ``(n, 32, 32, 3)`` uint8 images, ``fine_labels`` and the 100
    ``fine_label_names``.
  """
  directory = _check_dir(directory, CIFAR100_FILES)
  x_train, y_train = _read_batch(directory / "train", "fine_labels", 100)
  x_test, y_test = _read_batch(directory / "test", "fine_labels", 100)
  names = _read_names(directory / "meta", "fine_label_names", 100)
  logger.info("read CIFAR-100 from %s: %d train, %d test", directory, len(y_train), len(y_test))
  return dataset_lib.RawSplits(x_train, y_train, x_test, y_test, names)
