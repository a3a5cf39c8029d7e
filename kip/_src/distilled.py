"""The result of a distillation: support images, their labels and where they came from."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import numpy as np

from kip._src import io as kio

__all__ = ["DistilledSet", "library_versions"]

logger = logging.getLogger(__name__)
_KIND = "distilled_set"


def library_versions() -> dict[str, str]:
  """Versions of kip, jax, jaxlib, optax and flax, for provenance metadata."""
  import importlib.metadata as md
  out = {}
  for pkg in ("kip", "jax", "jaxlib", "optax", "flax", "numpy"):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      out[pkg] = "not installed"
  return out


@dataclasses.dataclass(frozen=True)
class DistilledSet:
  """A distilled (synthetic or selected) support set.

  Attributes:
    images: ``(n, H, W, C)`` float32 images in the data set's *preprocessed* space.
    labels: ``(n, num_classes)`` float32 labels: one-hot, learned, or label-solved; used as
      given (regression or soft targets), never argmaxed away by the library.
    dataset: name of the data set it was distilled from (``Dataset.name``).
    method: ``'kip'``, ``'ls'``, ``'random'``, ``'dc'``, ...
    preprocessing: the fitted ``kip.data.Preprocessing`` of that data set (maps images back to
      pixels), or ``None``.
    metadata: JSON-serialisable provenance: kernel spec, seed, steps, loss history, versions.
  """
  images: np.ndarray
  labels: np.ndarray
  dataset: str
  method: str
  preprocessing: Any = None
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    images = np.asarray(self.images, np.float32)
    labels = np.asarray(self.labels, np.float32)
    if images.ndim != 4:
      raise ValueError(f"images must be (n, H, W, C); got shape {images.shape}.")
    if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
      raise ValueError(f"labels must be (n, num_classes) with n = {images.shape[0]}; got shape "
                       f"{labels.shape}. Convert integer labels with jax.nn.one_hot.")
    if not (np.isfinite(images).all() and np.isfinite(labels).all()):
      raise ValueError("images or labels contain NaN or inf; the distillation diverged "
                       "(lower the learning rate or raise reg).")
    object.__setattr__(self, "images", images)
    object.__setattr__(self, "labels", labels)
    object.__setattr__(self, "metadata", dict(self.metadata))

  @property
  def num_classes(self) -> int:
    return int(self.labels.shape[1])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(s) for s in self.images.shape[1:])

  def __len__(self) -> int:
    return int(self.images.shape[0])

  @property
  def hard_labels(self) -> np.ndarray:
    """``(n,)`` int32 argmax of the labels, for display and class-wise statistics only."""
    return np.argmax(self.labels, axis=1).astype(np.int32)

  def replace(self, **changes) -> "DistilledSet":
    return dataclasses.replace(self, **changes)

  def check_compatible(self, dataset) -> None:
    """Raises ``ValueError`` unless ``dataset`` (a ``kip.data.Dataset``) matches this set."""
    if dataset.name != self.dataset:
      raise ValueError(f"this distilled set was made from {self.dataset!r}, not {dataset.name!r}; "
                       f"load {self.dataset!r} to evaluate it.")
    if tuple(dataset.x_train.shape[1:]) != self.image_shape:
      raise ValueError(f"image shape {self.image_shape} does not match the data set's "
                       f"{tuple(dataset.x_train.shape[1:])} (different preprocessing or crop?).")
    if dataset.num_classes != self.num_classes:
      raise ValueError(f"{self.num_classes} label columns but the data set has "
                       f"{dataset.num_classes} classes.")

  # ---------------------------------------------------------------- persistence
  def save(self, path: str | os.PathLike) -> None:
    """Writes ``path`` (``.npz`` with JSON metadata inside, no pickle) and ``path.json`` beside it."""
    arrays = {"images": self.images, "labels": self.labels}
    prep_kind = None
    if self.preprocessing is not None:
      prep_kind = "preprocessing"
      for k, v in self.preprocessing.to_arrays().items():
        arrays[f"preprocessing/{k}"] = np.asarray(v)
    meta = {"dataset": self.dataset, "method": self.method, "preprocessing": prep_kind,
            "metadata": _jsonable(self.metadata)}
    kio.save_npz(path, arrays, meta, kind=_KIND)
    import json
    with kio.atomic_write(os.fspath(path) + ".json", "w") as f:
      json.dump({**meta, "num_images": len(self), "image_shape": list(self.image_shape),
                 "num_classes": self.num_classes}, f, indent=2, sort_keys=True)
    logger.info("saved %d %s images to %s", len(self), self.method, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "DistilledSet":
    """Reads a set written by :meth:`save`; corrupt or foreign files raise ``ValueError``."""
    arrays, meta = kio.load_npz(path, kind=_KIND)
    missing = {"images", "labels"} - set(arrays)
    if missing:
      raise ValueError(f"{os.fspath(path)!r} lacks arrays {sorted(missing)}.")
    prep = None
    if meta.get("preprocessing"):
      from kip._src.data.preprocess import Preprocessing
      prep = Preprocessing.from_arrays(
          {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("preprocessing/")})
    return cls(images=arrays["images"], labels=arrays["labels"], dataset=meta["dataset"],
               method=meta["method"], preprocessing=prep, metadata=meta.get("metadata", {}))

  # ---------------------------------------------------------------- display
  def to_display(self) -> np.ndarray:
    """Images mapped back to pixel space, clipped to [0, 1]: ``(n, H, W, C)`` float32."""
    x = self.images if self.preprocessing is None else self.preprocessing.invert(self.images)
    x = np.asarray(x, np.float32)
    if self.preprocessing is None:  # no inverse known: min-max scale per image for viewing
      lo = x.min(axis=(1, 2, 3), keepdims=True)
      hi = x.max(axis=(1, 2, 3), keepdims=True)
      x = (x - lo) / np.maximum(hi - lo, 1e-12)
    return np.clip(x, 0.0, 1.0)

  def grid(self, path: str | os.PathLike, *, class_names=None, max_images: int = 100,
           ncols: int | None = None) -> None:
    """Writes a PNG grid of the images titled with their argmax labels (sorted by class)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(self.hard_labels, kind="stable")[:max_images]
    x = self.to_display()[order]
    y = self.hard_labels[order]
    n = len(order)
    ncols = ncols or min(n, max(self.num_classes, int(np.ceil(np.sqrt(n)))))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 * ncols, 1.35 * nrows), squeeze=False)
    for ax in axes.ravel():
      ax.axis("off")
    for i in range(n):
      ax = axes.ravel()[i]
      img = x[i]
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else img,
                cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
      name = class_names[y[i]] if class_names is not None else str(y[i])
      ax.set_title(name, fontsize=7)
    fig.suptitle(f"{self.dataset}: {self.method}, {n} images", fontsize=9)
    fig.tight_layout()
    with kio.atomic_write(path, "wb") as f:
      fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _jsonable(obj):
  if isinstance(obj, Mapping):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, (np.floating, np.integer)):
    return obj.item()
  if isinstance(obj, (str, int, float, bool)) or obj is None:
    return obj
  return repr(obj)
