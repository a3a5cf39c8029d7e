"""The :class:`Dataset` container, raw-array validation and class-balanced subsets.

Contract: a :class:`Dataset` holds *preprocessed* float32 NHWC images and int32 labels for a
train and a test split, together with the :class:`~kip.data.Preprocessing` fitted on the
training split that produced them. It validates itself on construction, so code downstream of
:func:`kip.data.load` / :func:`from_arrays` may assume finite images and in-range labels.
Randomness (subsets) comes only from an explicit ``seed`` (int or JAX PRNG key).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, NamedTuple, Sequence

import numpy as np
from numpy.typing import ArrayLike

from kip._src.data import preprocess as preprocess_lib

__all__ = ["Dataset", "RawSplits", "from_arrays", "class_balanced_indices", "as_raw_images",
           "as_labels"]

logger = logging.getLogger(__name__)

Seed = Any  # int | jax.Array (a PRNG key) | np.random.SeedSequence


class RawSplits(NamedTuple):
  """Unprocessed arrays as a reader returns them.

  Attributes:
    x_train: ``(n, H, W[, C])`` uint8 in 0..255 or float in ``[0, 1]``.
    y_train: ``(n,)`` integer labels.
    x_test: ``(m, H, W[, C])`` like ``x_train``.
    y_test: ``(m,)`` integer labels.
    class_names: one name per class.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: tuple[str, ...]


def _seed_sequence(seed: Seed) -> np.random.SeedSequence:
  """Turns an int, a JAX PRNG key or a SeedSequence into a NumPy SeedSequence."""
  if isinstance(seed, np.random.SeedSequence):
    return seed
  if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
    if seed < 0:
      raise ValueError(f"seed must be a non-negative int or a JAX PRNG key, got {seed}.")
    return np.random.SeedSequence(int(seed))
  try:
    import jax  # pylint: disable=g-import-not-at-top
    data = np.asarray(jax.random.key_data(seed)) if jax.dtypes.issubdtype(
        getattr(seed, "dtype", None), jax.dtypes.prng_key) else np.asarray(seed)
  except Exception as err:  # anything that is not key-like
    raise ValueError(f"seed must be a non-negative int or a JAX PRNG key, got {seed!r}.") from err
  if data.ndim == 0 and np.issubdtype(data.dtype, np.integer) and data >= 0:
    return np.random.SeedSequence(int(data))
  if data.dtype != np.uint32 or data.ndim != 1:
    raise ValueError(f"seed must be a non-negative int or a JAX PRNG key, got an array of "
                     f"dtype {data.dtype} and shape {data.shape}.")
  return np.random.SeedSequence(data.tolist())


def class_balanced_indices(labels: ArrayLike, n: int, *, num_classes: int,
                           seed: Seed = 0) -> np.ndarray:
  """Draws ``n`` indices with (as near as possible) equal counts per class, without replacement.

  Each class gets ``n // num_classes`` indices; the ``n % num_classes`` left over go one each to
  classes chosen at random. Deterministic for a given ``seed``.

  Args:
    labels: ``(N,)`` integer labels in ``[0, num_classes)``.
    n: how many indices, ``1 <= n <= N``.
    num_classes: number of classes.
    seed: int or JAX PRNG key.

  Returns:
    ``(n,)`` int64 indices into ``labels``, sorted ascending.
  """
  labels = as_labels(labels, "labels", num_classes)
  n_int = int(n)
  if n_int != n or not 1 <= n_int <= labels.shape[0]:
    raise ValueError(f"n must be an int in [1, {labels.shape[0]}], got {n!r}.")
  rng = np.random.default_rng(_seed_sequence(seed))
  quota = np.full(num_classes, n_int // num_classes)
  quota[rng.permutation(num_classes)[:n_int % num_classes]] += 1
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if members.shape[0] < quota[c]:
      raise ValueError(f"class {c} has only {members.shape[0]} examples but a balanced subset "
                       f"of {n_int} needs {quota[c]}; ask for at most "
                       f"{int(np.bincount(labels, minlength=num_classes).min()) * num_classes}.")
    chosen.append(rng.choice(members, size=quota[c], replace=False))
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def as_labels(y: ArrayLike, what: str, num_classes: int | None = None) -> np.ndarray:
  """Validates ``(n,)`` integer labels (in ``[0, num_classes)`` if given); returns int32."""
  y = np.asarray(y)
  if y.ndim != 1:
    raise ValueError(f"{what} must be a 1-D array of class indices, got shape {y.shape}.")
  if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{what} must have an integer dtype, got {y.dtype}; cast class indices "
                     "to int32.")
  if y.size:
    lo, hi = int(y.min()), int(y.max())
    upper = num_classes if num_classes is not None else np.iinfo(np.int32).max
    if lo < 0 or hi >= upper:
      raise ValueError(f"{what} has values in [{lo}, {hi}], outside the accepted range "
                       f"[0, {upper - 1}].")
  return y.astype(np.int32)


def as_raw_images(x: ArrayLike, what: str) -> np.ndarray:
  """Validates raw images and returns them as float32 NHWC pixels in ``[0, 1]``.

  Args:
    x: ``(n, H, W)`` or ``(n, H, W, C)``; uint8 in 0..255 (divided by 255) or float in
      ``[0, 1]``.
    what: the argument's name, for error messages.

  Returns:
    ``(n, H, W, C)`` float32.
  """
  x = np.asarray(x)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise ValueError(f"{what} must be (n, H, W) or (n, H, W, C), got shape {x.shape}.")
  if x.dtype == np.uint8:
    return x.astype(np.float32) / np.float32(255.0)
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{what} must be uint8 (0..255) or float (in [0, 1]), got dtype "
                     f"{x.dtype}.")
  x = x.astype(np.float32)
  finite = np.isfinite(x)
  if not finite.all():
    raise ValueError(f"{what} contains {int(np.sum(~finite))} NaN or infinite values; only "
                     "finite pixels are accepted.")
  if x.size and (x.min() < 0.0 or x.max() > 1.0):
    raise ValueError(f"float {what} must lie in [0, 1], got values in [{x.min():g}, "
                     f"{x.max():g}]; pass uint8 pixels or divide by the maximum (e.g. 255).")
  return x


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A preprocessed image-classification dataset with a train and a test split.

  Attributes:
    name: dataset name, e.g. ``'fashion_mnist'``.
    x_train: ``(n, H, W, C)`` float32 preprocessed training images.
    y_train: ``(n,)`` int32 labels in ``[0, num_classes)``.
    x_test: ``(m, H, W, C)`` float32 test images, preprocessed with the preprocessing fitted on
      the training split.
    y_test: ``(m,)`` int32 labels.
    num_classes: number of classes ``K``.
    class_names: ``K`` names, index-aligned with the labels.
    preprocessing: the fitted :class:`~kip.data.Preprocessing`; ``preprocessing.invert``
      recovers raw pixels.
  """

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  preprocessing: preprocess_lib.Preprocessing

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"name must be a non-empty str, got {self.name!r}.")
    if isinstance(self.num_classes, bool) or not isinstance(self.num_classes,
                                                            (int, np.integer)) \
        or self.num_classes < 1:
      raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}.")
    object.__setattr__(self, "num_classes", int(self.num_classes))
    names = tuple(self.class_names)
    if len(names) != self.num_classes or not all(isinstance(s, str) for s in names):
      raise ValueError(f"class_names must be {self.num_classes} strings (one per class), got "
                       f"{len(names)}: {names[:12]!r}.")
    object.__setattr__(self, "class_names", names)
    if not isinstance(self.preprocessing, preprocess_lib.Preprocessing):
      raise ValueError("preprocessing must be a kip.data.Preprocessing, got "
                       f"{type(self.preprocessing).__name__}.")
    for split in ("train", "test"):
      x = getattr(self, f"x_{split}")
      if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype != np.float32:
        raise ValueError(f"x_{split} must be a 4-D NHWC float32 numpy array, got "
                         f"{type(x).__name__} {getattr(x, 'dtype', '')} of shape "
                         f"{getattr(x, 'shape', '?')}; build datasets from raw arrays with "
                         "kip.data.from_arrays.")
      if x.shape[1:] != self.preprocessing.image_shape:
        raise ValueError(f"x_{split} has image shape {x.shape[1:]} but the preprocessing was "
                         f"fitted on {self.preprocessing.image_shape}.")
      finite = np.isfinite(x)
      if not finite.all():
        raise ValueError(f"x_{split} contains {int(np.sum(~finite))} NaN or infinite values; "
                         "only finite images are accepted.")
      y = as_labels(getattr(self, f"y_{split}"), f"y_{split}", self.num_classes)
      if y.shape[0] != x.shape[0]:
        raise ValueError(f"x_{split} has {x.shape[0]} images but y_{split} has {y.shape[0]} "
                         "labels; they must match.")
      object.__setattr__(self, f"y_{split}", y)

  def __repr__(self) -> str:
    return (f"Dataset(name={self.name!r}, x_train={self.x_train.shape}, "
            f"x_test={self.x_test.shape}, num_classes={self.num_classes}, "
            f"preprocessing={self.preprocessing.kind!r})")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """``(H, W, C)``."""
    return tuple(self.x_train.shape[1:])

  def one_hot(self, y: ArrayLike) -> np.ndarray:
    """One-hot encodes labels: ``(n,)`` int in ``[0, K)`` -> ``(n, K)`` float32."""
    y = as_labels(y, "y", self.num_classes)
    return np.eye(self.num_classes, dtype=np.float32)[y]

  def subset(self, n_train: int | None = None, n_test: int | None = None, *,
             seed: Seed = 0) -> Dataset:
    """Returns a class-balanced, deterministic subset (see :func:`class_balanced_indices`).

    The preprocessing is kept as it is (fitted on the full training split).

    Args:
      n_train: training examples to keep; ``None`` keeps the split whole.
      n_test: test examples to keep; ``None`` keeps the split whole.
      seed: int or JAX PRNG key; train and test draws use independent child streams.

    Returns:
      A new :class:`Dataset`.
    """
    ss_train, ss_test = _seed_sequence(seed).spawn(2)
    x_train, y_train, x_test, y_test = self.x_train, self.y_train, self.x_test, self.y_test
    if n_train is not None:
      idx = class_balanced_indices(y_train, n_train, num_classes=self.num_classes,
                                   seed=ss_train)
      x_train, y_train = x_train[idx], y_train[idx]
    if n_test is not None:
      idx = class_balanced_indices(y_test, n_test, num_classes=self.num_classes, seed=ss_test)
      x_test, y_test = x_test[idx], y_test[idx]
    return dataclasses.replace(self, x_train=x_train, y_train=y_train, x_test=x_test,
                               y_test=y_test)


def from_arrays(name: str, x_train: ArrayLike, y_train: ArrayLike, x_test: ArrayLike,
                y_test: ArrayLike, *, num_classes: int | None = None,
                class_names: Sequence[str] | None = None, preprocess: str = "standardize",
                zca_reg: float = 0.1) -> Dataset:
  """Builds a :class:`Dataset` from raw arrays, fitting the preprocessing on ``x_train`` only.

  Args:
    name: dataset name.
    x_train: ``(n, H, W)`` or ``(n, H, W, C)``; uint8 in 0..255 or float in ``[0, 1]``.
    y_train: ``(n,)`` integer labels.
    x_test: ``(m, H, W[, C])`` with the same image shape as ``x_train``.
    y_test: ``(m,)`` integer labels.
    num_classes: defaults to ``len(class_names)``, else ``1 + max label`` over both splits.
    class_names: defaults to ``('0', '1', ...)``.
    preprocess: ``'none'``, ``'standardize'``, ``'zca'`` (the KIP reference recipe) or
      ``'zca_centered'`` (see :func:`kip.data.fit`).
    zca_reg: ZCA regularisation strength (KIP uses 0.1).

  Returns:
    The validated :class:`Dataset`.
  """
  preprocess_lib.check_kind(preprocess)
  xr_train = as_raw_images(x_train, "x_train")
  xr_test = as_raw_images(x_test, "x_test")
  if xr_train.shape[1:] != xr_test.shape[1:]:
    raise ValueError(f"x_train images are {xr_train.shape[1:]} but x_test images are "
                     f"{xr_test.shape[1:]}; both splits need the same (H, W, C).")
  y_train = as_labels(y_train, "y_train")
  y_test = as_labels(y_test, "y_test")
  if num_classes is None:
    if class_names is not None:
      num_classes = len(tuple(class_names))
    else:
      num_classes = 1 + max([int(y.max()) for y in (y_train, y_test) if y.size] or [0])
  if class_names is None:
    class_names = tuple(str(i) for i in range(num_classes))
  # Checked here as well as in Dataset so that bad labels fail before the (slow) ZCA fit.
  for split, x, y in (("train", xr_train, y_train), ("test", xr_test, y_test)):
    as_labels(y, f"y_{split}", num_classes)
    if x.shape[0] != y.shape[0]:
      raise ValueError(f"x_{split} has {x.shape[0]} images but y_{split} has {y.shape[0]} "
                       "labels; they must match.")
  prep = preprocess_lib.fit(preprocess, xr_train, zca_reg=zca_reg)
  logger.info("%s: %d train / %d test images of shape %s, preprocessing %r", name,
              xr_train.shape[0], xr_test.shape[0], xr_train.shape[1:], preprocess)
  return Dataset(name=name, x_train=prep.apply(xr_train), y_train=y_train,
                 x_test=prep.apply(xr_test), y_test=y_test, num_classes=num_classes,
                 class_names=tuple(class_names), preprocessing=prep)
