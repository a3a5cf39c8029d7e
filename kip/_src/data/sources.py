"""Named datasets: where their files are looked up and how they are read.

Contract: :func:`load` maps a dataset name to a preprocessed :class:`Dataset`. Local files are
searched by :func:`resolve_data_dir`, in this order:

1. the ``data_dir`` argument (the folder itself, then its dataset-named subfolders);
2. ``$KIP_DATA_DIR/<subfolder>`` (e.g. ``$KIP_DATA_DIR/fashion_mnist``, or
   ``$KIP_DATA_DIR/cifar-10-batches-py``);
3. system folders installed by Debian packages: ``/usr/share/datasets/fashion-mnist/``
   (``apt-get install dataset-fashion-mnist``).

If no folder holds the files, the dataset is loaded through TensorFlow Datasets when it is
installed (``pip install 'kip[tfds]'``), else :func:`load` raises ``FileNotFoundError`` saying
how to get it. The environment is read in one place only: :func:`load` passes ``os.environ`` to
:func:`resolve_data_dir`, which otherwise takes the mapping as an explicit argument.
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
  """
  title: str
  files: str
  subdirs: tuple[str, ...]
  has_files: Callable[[pathlib.Path], bool] | None
  read: Callable[[pathlib.Path], dataset_lib.RawSplits] | None
  tfds_name: str | None
  apt_package: str | None = None


_IDX_FILES = ("train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
              "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]")

_SOURCES: dict[str, _Source] = {
    "fashion_mnist": _Source(
        "Fashion-MNIST", f"the IDX files {_IDX_FILES}",
        ("fashion_mnist", "fashion-mnist", "FashionMNIST/raw"), _has_idx_files,
        lambda d: idx.read_idx_dir(d, FASHION_MNIST_CLASSES), "fashion_mnist",
        apt_package="dataset-fashion-mnist"),
    "mnist": _Source(
        "MNIST", f"the IDX files {_IDX_FILES}", ("mnist", "MNIST/raw"), _has_idx_files,
        lambda d: idx.read_idx_dir(d, DIGIT_CLASSES), "mnist"),
    "digits": _Source("scikit-learn digits", "none (ships with scikit-learn)", (), None, None,
                      None),
    "cifar10": _Source(
        "CIFAR-10", "the extracted python archive (cifar-10-batches-py: "
        + ", ".join(cifar.CIFAR10_FILES) + ")", ("cifar-10-batches-py", "cifar10"),
        _has_files(cifar.CIFAR10_FILES), cifar.read_cifar10, "cifar10"),
    "cifar100": _Source(
        "CIFAR-100", "the extracted python archive (cifar-100-python: "
        + ", ".join(cifar.CIFAR100_FILES) + ")", ("cifar-100-python", "cifar100"),
        _has_files(cifar.CIFAR100_FILES), cifar.read_cifar100, "cifar100"),
    "svhn_cropped": _Source("SVHN (cropped digits)", "none (TFDS only)", (), None, None,
                            "svhn_cropped"),
}

DATASETS = tuple(_SOURCES)


def _source(name: str) -> _Source:
  if not isinstance(name, str) or name not in _SOURCES:
    raise ValueError(f"unknown dataset {name!r}; known datasets are {DATASETS}. For other "
                     "data, build a Dataset with kip.data.from_arrays.")
  return _SOURCES[name]


def _candidate_dirs(name: str, data_dir: str | os.PathLike | None,
                    environ: Mapping[str, str] | None) -> list[pathlib.Path]:
  source = _source(name)
  candidates = []
  if data_dir is not None:
    base = pathlib.Path(data_dir).expanduser()
    if not base.is_dir():
      raise FileNotFoundError(f"data_dir {os.fspath(data_dir)!r} is not a directory.\n"
                              + _how_to_get(name))
    candidates += [base] + [base / s for s in source.subdirs]
  root = (environ or {}).get(ENV_VAR)
  if root:
    base = pathlib.Path(root).expanduser()
    if not base.is_dir():
      raise FileNotFoundError(f"${ENV_VAR}={root!r} is not a directory; point it at a folder "
                              f"with one subfolder per dataset (e.g. {source.subdirs[:1]}) or "
                              "unset it.")
    candidates += [base / s for s in source.subdirs]
  candidates += [pathlib.Path(d) for d in _SYSTEM_DIRS.get(name, ())]
  return candidates


def resolve_data_dir(name: str, data_dir: str | os.PathLike | None = None,
                     environ: Mapping[str, str] | None = None) -> pathlib.Path | None:
  """Finds the folder holding a local copy of dataset ``name``.

  Search order (first complete copy wins): ``data_dir`` and its subfolders named for the
  dataset (e.g. ``cifar-10-batches-py``); ``environ['KIP_DATA_DIR']/<subfolder>``; system
  folders (``/usr/share/datasets/fashion-mnist/`` from Debian's ``dataset-fashion-mnist``).

  Args:
    name: one of :data:`DATASETS`.
    data_dir: explicit folder; must exist if given.
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


def _how_to_get(name: str) -> str:
  source = _source(name)
  lines = [f"To get {source.title} ({source.files}), do one of:"]
  if source.apt_package:
    system = ", ".join(_SYSTEM_DIRS.get(name, ()))
    lines.append(f"  - apt-get install {source.apt_package}   (Debian; installs into {system})")
  if source.has_files is not None:
    lines.append(f"  - pass data_dir=FOLDER holding them, or set {ENV_VAR}=ROOT with them in "
                 f"ROOT/{source.subdirs[0]}/")
  if source.tfds_name:
    lines.append(f"  - {tfds_source.INSTALL_HINT} to load {source.tfds_name!r} through "
                 "TensorFlow Datasets")
  return "\n".join(lines)


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
  if source.has_files is not None:
    # The single documented point where the library consults the environment.
    found = resolve_data_dir(name, data_dir, os.environ)
    if found is not None:
      return source.read(found)
  if source.tfds_name is not None and tfds_source.available():
    return tfds_source.load_tfds(source.tfds_name, data_dir=data_dir)
  if source.has_files is None:
    raise ImportError(f"{source.title} is only available through TensorFlow Datasets: "
                      f"{tfds_source.INSTALL_HINT}.")
  searched = ", ".join(str(d) for d in _candidate_dirs(name, data_dir, os.environ)) or "nothing"
  raise FileNotFoundError(f"no local copy of {source.title} found (searched: {searched}) and "
                          "TensorFlow Datasets is not installed.\n" + _how_to_get(name))


def load(name: str, *, data_dir: str | os.PathLike | None = None,
         preprocess: str = "standardize", zca_reg: float = 0.1, n_train: int | None = None,
         n_test: int | None = None, seed: dataset_lib.Seed = 0) -> dataset_lib.Dataset:
  """Loads a named dataset, preprocessed with statistics of its full training split.

  Args:
    name: one of :data:`DATASETS`: ``'fashion_mnist'``, ``'mnist'`` (IDX files or TFDS),
      ``'digits'`` (scikit-learn, offline), ``'cifar10'``, ``'cifar100'`` (python pickle
      batches or TFDS), ``'svhn_cropped'`` (TFDS only).
    data_dir: folder with the dataset's files (see :func:`resolve_data_dir` for the search
      order); also passed to TFDS as its data directory when no local copy is found.
    preprocess: ``'none'``, ``'standardize'`` or ``'zca'`` (see :func:`kip.data.fit`).
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
