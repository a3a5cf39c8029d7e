"""Named datasets: where their files are looked up and how they are read.

Contract: :func:`load` maps a dataset name to a preprocessed :class:`Dataset`. Local files are
searched by :func:`resolve_data_dir`:

1. with an explicit ``data_dir`` argument, there only: the folder itself, then its
   dataset-named subfolders. A ``data_dir`` without the files is an error listing what was
   looked for (nothing else is searched), unless it holds a prepared TensorFlow Datasets copy
   (``data_dir/<tfds name>/<version>/``) and TFDS is installed;
2. without one, ``$KIP_DATA_DIR/<subfolder>`` (e.g. ``$KIP_DATA_DIR/fashion_mnist``, or
   ``$KIP_DATA_DIR/cifar-10-batches-py``), then system folders installed by Debian packages:
   ``/usr/share/datasets/fashion-mnist/`` (``apt-get install dataset-fashion-mnist``).

The folder used is logged: at INFO when it is the one asked for (or, with nothing asked, the
first in the search order), at WARNING when it is not (a subfolder of ``data_dir``, or a system
folder although ``$KIP_DATA_DIR`` is set). If no folder holds the files and nothing was asked,
the dataset is loaded through TensorFlow Datasets when it is installed (``pip install
'kip[tfds]'``; TFDS-only datasets also take ``data_dir`` as TFDS's data directory), else
:func:`load` raises ``FileNotFoundError`` saying how to get it. The environment is read in one
place only: :func:`load` passes ``os.environ`` to :func:`resolve_data_dir`, which otherwise
takes the mapping as an explicit argument.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
from typing import Callable, Mapping

import numpy as np

from kip._src.data import cifar
from kip._src.data import dataset as dataset_lib
from kip._src.data import idx
from kip._src.data import preprocess as preprocess_lib
from kip._src.data import tfds_source

__all__ = ["DATASETS", "ENV_VAR", "load", "resolve_data_dir", "load_digits"]

logger = logging.getLogger(__name__)

ENV_VAR = "KIP_DATA_DIR"

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(i) for i in range(10))

# Folders that system packages install into; module-level so tests can point them elsewhere.
_SYSTEM_DIRS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
}


def _has_idx_files(directory: pathlib.Path) -> bool:
  return all(idx.find_idx_file(directory, prefix, kind) is not None
             for prefix in ("train", "t10k") for kind in ("images", "labels"))


def _has_files(names: tuple[str, ...]) -> Callable[[pathlib.Path], bool]:
  return lambda directory: all((directory / n).is_file() for n in names)


def _idx_status(directory: pathlib.Path) -> list[tuple[str, str | None]]:
  out = []
  for prefix in ("train", "t10k"):
    for kind, ndim in (("images", 3), ("labels", 1)):
      found = idx.find_idx_file(directory, prefix, kind)
      out.append((f"{prefix}-{kind}-idx{ndim}-ubyte[.gz]", None if found is None else found.name))
  return out


def _files_status(names: tuple[str, ...]) -> Callable[[pathlib.Path], list]:
  return lambda directory: [(n, n if (directory / n).is_file() else None) for n in names]


@dataclasses.dataclass(frozen=True)
class _Source:
  """How one named dataset is found and read.

  Attributes:
    title: human-readable name for messages.
    files: description of the expected local files, for messages.
    subdirs: dataset-named subfolders searched under ``data_dir`` and ``$KIP_DATA_DIR``.
    has_files: whether a folder holds a complete local copy.
    read: folder -> raw splits; ``None`` if there is no local format.
    tfds_name: TFDS name, or ``None`` if TFDS does not provide it.
    apt_package: Debian package providing the files, if any.
    status: folder -> ``[(expected file, name found or None), ...]``, for messages.
  """
  title: str
  files: str
  subdirs: tuple[str, ...]
  has_files: Callable[[pathlib.Path], bool] | None
  read: Callable[[pathlib.Path], dataset_lib.RawSplits] | None
  tfds_name: str | None
  apt_package: str | None = None
  status: Callable[[pathlib.Path], list[tuple[str, str | None]]] | None = None


_IDX_FILES = ("train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
              "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]")

_SOURCES: dict[str, _Source] = {
    "fashion_mnist": _Source(
        "Fashion-MNIST", f"the IDX files {_IDX_FILES}",
        ("fashion_mnist", "fashion-mnist", "FashionMNIST/raw"), _has_idx_files,
        lambda d: idx.read_idx_dir(d, FASHION_MNIST_CLASSES), "fashion_mnist",
        apt_package="dataset-fashion-mnist", status=_idx_status),
    "mnist": _Source(
        "MNIST", f"the IDX files {_IDX_FILES}", ("mnist", "MNIST/raw"), _has_idx_files,
        lambda d: idx.read_idx_dir(d, DIGIT_CLASSES), "mnist", status=_idx_status),
    "digits": _Source("scikit-learn digits", "none (ships with scikit-learn)", (), None, None,
                      None),
    "cifar10": _Source(
        "CIFAR-10", "the extracted python archive (cifar-10-batches-py: "
        + ", ".join(cifar.CIFAR10_FILES) + ")", ("cifar-10-batches-py", "cifar10"),
        _has_files(cifar.CIFAR10_FILES), cifar.read_cifar10, "cifar10",
        status=_files_status(cifar.CIFAR10_FILES)),
    "cifar100": _Source(
        "CIFAR-100", "the extracted python archive (cifar-100-python: "
        + ", ".join(cifar.CIFAR100_FILES) + ")", ("cifar-100-python", "cifar100"),
        _has_files(cifar.CIFAR100_FILES), cifar.read_cifar100, "cifar100",
        status=_files_status(cifar.CIFAR100_FILES)),
    "svhn_cropped": _Source("SVHN (cropped digits)", "none (TFDS only)", (), None, None,
                            "svhn_cropped"),
}

DATASETS = tuple(_SOURCES)


def _source(name: str) -> _Source:
  if not isinstance(name, str) or name not in _SOURCES:
    raise ValueError(f"unknown dataset {name!r}; known datasets are {DATASETS}. For other "
                     "data, build a Dataset with kip.data.from_arrays.")
  return _SOURCES[name]


def _explicit_dirs(name: str, data_dir: str | os.PathLike) -> list[pathlib.Path]:
  """``data_dir`` and its dataset-named subfolders (the only places an explicit one means)."""
  base = pathlib.Path(data_dir).expanduser()
  if not base.is_dir():
    raise FileNotFoundError(f"data_dir {os.fspath(data_dir)!r} is not a directory. "
                            + _how_to_get(name))
  return [base] + [base / s for s in _source(name).subdirs]


def _env_dirs(name: str, environ: Mapping[str, str] | None) -> list[pathlib.Path]:
  source = _source(name)
  root = (environ or {}).get(ENV_VAR)
  if not root:
    return []
  base = pathlib.Path(root).expanduser()
  if not base.is_dir():
    raise FileNotFoundError(f"${ENV_VAR}={root!r} is not a directory; point it at a folder "
                            f"with one subfolder per dataset (e.g. {source.subdirs[:1]}) or "
                            "unset it.")
  return [base / s for s in source.subdirs]


def _candidate_dirs(name: str, data_dir: str | os.PathLike | None,
                    environ: Mapping[str, str] | None) -> list[pathlib.Path]:
  if data_dir is not None:
    return _explicit_dirs(name, data_dir)
  return _env_dirs(name, environ) + [pathlib.Path(d) for d in _SYSTEM_DIRS.get(name, ())]


def resolve_data_dir(name: str, data_dir: str | os.PathLike | None = None,
                     environ: Mapping[str, str] | None = None) -> pathlib.Path | None:
  """Finds the folder holding a local copy of dataset ``name``.

  Search order (first complete copy wins): with ``data_dir``, only ``data_dir`` and its
  subfolders named for the dataset (e.g. ``cifar-10-batches-py``); without it,
  ``environ['KIP_DATA_DIR']/<subfolder>``, then system folders
  (``/usr/share/datasets/fashion-mnist/`` from Debian's ``dataset-fashion-mnist``).

  Args:
    name: one of :data:`DATASETS`.
    data_dir: explicit folder; must exist if given, and then nothing else is searched.
    environ: environment mapping to read ``KIP_DATA_DIR`` from; ``None`` skips it. Library
      code passes it explicitly: only :func:`load` hands over ``os.environ``.

  Returns:
    The folder, or ``None`` if no local copy exists (or ``name`` has no local format).
  """
  source = _source(name)
  if source.has_files is None:
    return None
  for directory in _candidate_dirs(name, data_dir, environ):
    if directory.is_dir() and source.has_files(directory):
      return directory
  return None


def _how_to_get(name: str, files: bool = True) -> str:
  """One line: the ways to get dataset ``name`` (``files``: name the expected files)."""
  source = _source(name)
  ways = []
  if source.apt_package:
    system = ", ".join(_SYSTEM_DIRS.get(name, ()))
    ways.append(f"apt-get install {source.apt_package} (Debian; installs into {system})")
  if source.has_files is not None:
    ways.append(f"pass data_dir=FOLDER holding them, or set {ENV_VAR}=ROOT with them in "
                f"ROOT/{source.subdirs[0]}/")
  if source.tfds_name and tfds_source.available():
    ways.append(f"call without data_dir to load {source.tfds_name!r} through TensorFlow "
                "Datasets (it downloads it once)")
  elif source.tfds_name:
    ways.append(f"{tfds_source.INSTALL_HINT} to load {source.tfds_name!r} through "
                "TensorFlow Datasets")
  if len(ways) > 1:
    ways[-1] = "or " + ways[-1]
  what = f"{source.title} ({source.files})" if files else source.title
  return f"To get {what}, do one of: " + "; ".join(ways) + "."


def _folder_report(name: str, directory: pathlib.Path) -> str:
  """``'FOLDER: no such folder'``, ``'FOLDER: none of the files'`` or which files it has."""
  status = _source(name).status
  if not directory.is_dir():
    return f"{directory}: no such folder"
  if status is None:
    return f"{directory}: no usable files"
  rows = status(directory)
  have = [found for _, found in rows if found is not None]
  missing = [want for want, found in rows if found is None]
  if not have:
    return f"{directory}: none of the files"
  return (f"{directory}: {len(have)} of {len(rows)} files (has {', '.join(have)}; missing "
          f"{', '.join(missing)})")


def _tfds_copy(name: str, data_dir: pathlib.Path) -> pathlib.Path | None:
  """``data_dir/<tfds name>`` if it holds a prepared TFDS copy (a ``dataset_info.json``)."""
  tfds_name = _source(name).tfds_name
  if tfds_name is None:
    return None
  folder = data_dir / tfds_name
  if folder.is_dir() and next(folder.glob("**/dataset_info.json"), None) is not None:
    return folder
  return None


def _not_in_data_dir(name: str, data_dir: str | os.PathLike, tfds: bool) -> FileNotFoundError:
  source = _source(name)
  base = pathlib.Path(data_dir).expanduser()
  looked = "; ".join(_folder_report(name, d) for d in _explicit_dirs(name, data_dir))
  tfds_part = ""
  if tfds and source.tfds_name is not None:
    tfds_part = (f" It is not a TensorFlow Datasets data dir either (no prepared "
                 f"{base / source.tfds_name}/<version>/).")
  return FileNotFoundError(
      f"no local copy of {source.title} found in data_dir {os.fspath(data_dir)!r} "
      f"(with data_dir given, ${ENV_VAR} and system folders are not searched): expected "
      f"{source.files}; looked in {looked}.{tfds_part} " + _how_to_get(name, files=False))


def load_digits() -> dataset_lib.RawSplits:
  """scikit-learn's 8x8 handwritten digits, split 1437 train / 360 test (stratified, fixed).

  Pixels 0..16 are divided by 16. The split is ``train_test_split(test_size=360,
  stratify=y, random_state=0)``, indices sorted, so it never changes between calls.

  Returns:
    :class:`RawSplits` with ``(n, 8, 8, 1)`` float32 images in ``[0, 1]``.
  """
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  digits = sk_datasets.load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  train, test = model_selection.train_test_split(np.arange(y.shape[0]), test_size=360,
                                                 stratify=y, random_state=0)
  train, test = np.sort(train), np.sort(test)
  return dataset_lib.RawSplits(x[train], y[train], x[test], y[test], DIGIT_CLASSES)


def _read_raw(name: str, data_dir: str | os.PathLike | None) -> dataset_lib.RawSplits:
  source = _source(name)
  if name == "digits":
    if data_dir is not None:
      logger.warning("digits ships with scikit-learn; ignoring data_dir=%s", data_dir)
    return load_digits()
  use_tfds = source.tfds_name is not None and tfds_source.available()
  local_hint = ("" if source.has_files is None else
                f" Or put {source.files} in a folder and pass it as data_dir.")
  if data_dir is not None:
    base = pathlib.Path(data_dir).expanduser()
    if source.has_files is None:  # TFDS only: data_dir can only be TFDS's data directory
      _explicit_dirs(name, data_dir)
    else:
      found = resolve_data_dir(name, data_dir)
      if found is not None:
        if found == base:
          logger.info("reading %s from %s", source.title, found)
        else:
          logger.warning("data_dir %s has no %s files itself; using its subfolder %s",
                         base, source.title, found)
        return source.read(found)
      if not use_tfds or _tfds_copy(name, base) is None:
        raise _not_in_data_dir(name, data_dir, use_tfds)
      logger.info("reading %s from the TensorFlow Datasets copy in %s", source.title,
                  _tfds_copy(name, base))
      return tfds_source.load_tfds(source.tfds_name, data_dir=base, download=False)
  elif source.has_files is not None:
    # The single documented point where the library consults the environment.
    found = resolve_data_dir(name, None, os.environ)
    if found is not None:
      env_dirs = _env_dirs(name, os.environ)
      if env_dirs and found not in env_dirs:
        logger.warning("$%s=%s holds no %s copy (looked in %s); using %s", ENV_VAR,
                       os.environ[ENV_VAR], source.title, ", ".join(map(str, env_dirs)), found)
      else:
        logger.info("reading %s from %s", source.title, found)
      return source.read(found)
  if use_tfds:
    return tfds_source.load_tfds(source.tfds_name, data_dir=data_dir, hint=local_hint)
  if source.has_files is None:
    raise ImportError(f"{source.title} is only available through TensorFlow Datasets: "
                      f"{tfds_source.INSTALL_HINT}.")
  searched = ", ".join(str(d) for d in _candidate_dirs(name, data_dir, os.environ)) or "nothing"
  raise FileNotFoundError(f"no local copy of {source.title} found (searched: {searched}) and "
                          "TensorFlow Datasets is not installed. " + _how_to_get(name))


def load(name: str, *, data_dir: str | os.PathLike | None = None,
         preprocess: str = "standardize", zca_reg: float = 0.1, n_train: int | None = None,
         n_test: int | None = None, seed: dataset_lib.Seed = 0) -> dataset_lib.Dataset:
  """Loads a named dataset, preprocessed with statistics of its full training split.

  Args:
    name: one of :data:`DATASETS`: ``'fashion_mnist'``, ``'mnist'`` (IDX files or TFDS),
      ``'digits'`` (scikit-learn, offline), ``'cifar10'``, ``'cifar100'`` (python pickle
      batches or TFDS), ``'svhn_cropped'`` (TFDS only).
    data_dir: folder with the dataset's files (see :func:`resolve_data_dir`); if it lacks
      them, ``FileNotFoundError`` lists what was looked for, unless it holds a prepared TFDS
      copy. For TFDS-only datasets (``'svhn_cropped'``) it is TFDS's data directory.
    preprocess: ``'none'``, ``'standardize'``, ``'zca'`` (the KIP reference recipe) or
      ``'zca_centered'`` (see :func:`kip.data.fit`).
    zca_reg: ZCA regularisation strength (KIP uses 0.1).
    n_train: if given, a class-balanced subset of this many training examples.
    n_test: if given, a class-balanced subset of this many test examples.
    seed: int or JAX PRNG key for the subsets.

  Returns:
    The :class:`Dataset`. The preprocessing is fitted on the whole training split before any
    subset is drawn, so subsets of different sizes share the same preprocessing.
  """
  _source(name)
  preprocess_lib.check_kind(preprocess)
  start = time.perf_counter()
  raw = _read_raw(name, data_dir)
  ds = dataset_lib.from_arrays(name, raw.x_train, raw.y_train, raw.x_test, raw.y_test,
                               num_classes=len(raw.class_names), class_names=raw.class_names,
                               preprocess=preprocess, zca_reg=zca_reg)
  if n_train is not None or n_test is not None:
    ds = ds.subset(n_train, n_test, seed=seed)
  logger.info("loaded %r in %.1f s", ds, time.perf_counter() - start)
  return ds
