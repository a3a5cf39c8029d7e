"""Reader for the IDX files of MNIST and Fashion-MNIST (plain or gzip-compressed).

Format (big-endian): two zero bytes, a dtype byte (``0x08`` = unsigned byte, the only one these
datasets use), a byte giving the number of dimensions ``d``, ``d`` uint32 sizes, then
``prod(sizes)`` bytes of data in C order. Labels files therefore start with the magic number
``0x00000801`` and image files with ``0x00000803``. Every deviation (bad magic, truncated or
oversized payload, corrupt gzip stream) raises ``ValueError`` naming the file and what was
expected; nothing is read past a failed check.
"""

from __future__ import annotations

import gzip
import logging
import os
import pathlib
import zlib

import numpy as np

from kip._src.data import dataset as dataset_lib

__all__ = ["read_idx", "find_idx_file", "read_idx_dir"]

logger = logging.getLogger(__name__)

_UBYTE = 0x08
_MAGIC = {1: 0x00000801, 3: 0x00000803}
_KIND = {1: "labels", 3: "images"}
_REDOWNLOAD = "the file is truncated or corrupt; download it again"


def _read_bytes(path: pathlib.Path) -> bytes:
  with open(path, "rb") as f:
    data = f.read()
  if data[:2] == b"\x1f\x8b":  # gzip magic; decide by content, not by the file name.
    try:
      return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
      raise ValueError(f"{path}: cannot decompress the gzip stream ({err}); {_REDOWNLOAD}."
                       ) from err
  return data


def read_idx(path: str | os.PathLike, *, expected_ndim: int | None = None) -> np.ndarray:
  """Reads one IDX file of unsigned bytes.

  Args:
    path: ``*-idx1-ubyte`` (labels) or ``*-idx3-ubyte`` (images) file, optionally ``.gz``.
    expected_ndim: if given, the number of dimensions the header must declare (1 for labels,
      3 for images).

  Returns:
    uint8 array of the declared shape, e.g. ``(60000, 28, 28)`` or ``(60000,)``.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"IDX file {path} does not exist.")
  data = _read_bytes(path)
  want = (f"magic number 0x{_MAGIC[expected_ndim]:08x} ({_KIND[expected_ndim]})"
          if expected_ndim in _MAGIC else "magic number 0x00000801 (labels) or 0x00000803 "
          "(images)")
  if len(data) < 4:
    raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX header; expected a "
                     f"{want}; {_REDOWNLOAD}.")
  magic = int.from_bytes(data[:4], "big")
  zero, dtype_byte, ndim = data[:2], data[2], data[3]
  if zero != b"\x00\x00" or ndim == 0 or (expected_ndim is not None and ndim != expected_ndim):
    raise ValueError(f"{path}: found magic number 0x{magic:08x}, expected the IDX {want}; "
                     "is this an MNIST-style IDX file?")
  if dtype_byte != _UBYTE:
    raise ValueError(f"{path}: IDX dtype byte is 0x{dtype_byte:02x}; only 0x08 (unsigned "
                     "byte, used by MNIST and Fashion-MNIST) is supported.")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{path}: header declares {ndim} dimensions ({header} header bytes) but "
                     f"the file has only {len(data)} bytes; {_REDOWNLOAD}.")
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  expected = int(np.prod(shape, dtype=np.int64))
  found = len(data) - header
  if found != expected:
    what = "truncated" if found < expected else "longer than its header says"
    raise ValueError(f"{path}: header declares shape {shape}, i.e. {expected} data bytes, but "
                     f"found {found}: the file is {what}; download it again.")
  return np.frombuffer(data, np.uint8, count=expected, offset=header).reshape(shape).copy()


def find_idx_file(directory: str | os.PathLike, prefix: str, kind: str) -> pathlib.Path | None:
  """Finds ``{prefix}-{kind}-idx{1,3}-ubyte[.gz]`` (or the ``.idx`` spelling) in ``directory``.

  Args:
    directory: folder to look in.
    prefix: ``'train'`` or ``'t10k'``.
    kind: ``'images'`` or ``'labels'``.

  Returns:
    The first existing candidate, or ``None``.
  """
  ndim = 3 if kind == "images" else 1
  directory = pathlib.Path(directory)
  for stem in (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"):
    for suffix in ("", ".gz"):
      candidate = directory / (stem + suffix)
      if candidate.is_file():
        return candidate
  return None


def _read_split(directory: pathlib.Path, prefix: str, num_classes: int
                ) -> tuple[np.ndarray, np.ndarray]:
  paths = {}
  for kind in ("images", "labels"):
    paths[kind] = find_idx_file(directory, prefix, kind)
    if paths[kind] is None:
      ndim = 3 if kind == "images" else 1
      raise FileNotFoundError(f"{directory} has no {prefix}-{kind}-idx{ndim}-ubyte[.gz].")
  images = read_idx(paths["images"], expected_ndim=3)
  labels = read_idx(paths["labels"], expected_ndim=1)
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"{paths['images']} holds {images.shape[0]} images but "
                     f"{paths['labels']} holds {labels.shape[0]} labels; the two files must "
                     "come from the same split and release.")
  if labels.size and labels.max() >= num_classes:
    raise ValueError(f"{paths['labels']} has label {int(labels.max())}; expected labels in "
                     f"[0, {num_classes - 1}].")
  return images, labels


def read_idx_dir(directory: str | os.PathLike, class_names: tuple[str, ...]
                 ) -> dataset_lib.RawSplits:
  """Reads the four IDX files of an MNIST-style dataset from one folder.

  Args:
    directory: folder holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
      ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``.
    class_names: the dataset's class names (the files carry none).

  Returns:
    :class:`RawSplits` with ``(n, H, W)`` uint8 images and uint8 labels.
  """
  directory = pathlib.Path(directory)
  x_train, y_train = _read_split(directory, "train", len(class_names))
  x_test, y_test = _read_split(directory, "t10k", len(class_names))
  logger.info("read IDX files from %s: %d train, %d test", directory, x_train.shape[0],
              x_test.shape[0])
  return dataset_lib.RawSplits(x_train, y_train, x_test, y_test, tuple(class_names))
