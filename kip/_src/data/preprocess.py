"""Image preprocessing fitted on a training split: none, per-channel standardization, ZCA.

Contract: *raw* images are float pixels in ``[0, 1]`` laid out NHWC. A :class:`Preprocessing`
is fitted once, on the training split only, by :func:`fit`; the same object is then applied
unchanged to every split (train, test, distilled support) with :meth:`Preprocessing.apply`, and
:meth:`Preprocessing.invert` maps processed images back to raw pixels (to look at a distilled
set). The fitted statistics are plain NumPy arrays, so :meth:`Preprocessing.to_arrays` /
:meth:`Preprocessing.from_arrays` round-trip it through an ``.npz`` without pickle.

``'zca'`` is the regularised ZCA of the reference code of the KIP ConvNet work (Nguyen, Novak,
Xiao, Lee, "Dataset Distillation with Infinitely Wide Convolutional Networks", NeurIPS 2021),
read from its public ``get_preprocess_op(x_train, layer_norm=True, zca_reg=0.1)`` /
``_get_whitening_transform``: per-channel standardisation, then every image normalised to zero
mean and unit norm ("layer norm"), then whitening by the *uncentred* second moment of the
normalised training images with ridge ``zca_reg * tr(C) / D``, and its rank control (when fewer
images than features are fitted, directions beyond the ``n``-th largest are left unscaled).
``'zca_centered'`` is the textbook variant this library used before: no per-image
normalisation, whitening by the centred covariance (training mean subtracted).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Mapping

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["KINDS", "Preprocessing", "fit"]

logger = logging.getLogger(__name__)

KINDS = ("none", "standardize", "zca", "zca_centered")
ZCA_KINDS = ("zca", "zca_centered")

_ARRAY_KEYS = ("kind", "image_shape", "channel_mean", "channel_std", "zca_reg", "zca_mean",
               "zca_eigvecs", "zca_eigvals")
# Written since the reference recipe became 'zca'; a file without it holds the centred variant.
_RANK_KEY = "zca_rank"


def check_kind(kind: str) -> str:
  """Returns ``kind`` if it names a preprocessing, else raises ``ValueError`` listing them."""
  if not isinstance(kind, str) or kind not in KINDS:
    raise ValueError(f"unknown preprocess kind {kind!r}; expected one of {KINDS}.")
  return kind


def _check_images(x: ArrayLike, what: str, image_shape: tuple[int, ...] | None = None
                  ) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"{what} must be a 4-D NHWC array, got shape {x.shape}.")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{what} must be floating point (raw pixels in [0, 1]), got dtype "
                     f"{x.dtype}; divide uint8 images by 255 first.")
  if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
    raise ValueError(f"{what} has image shape {tuple(x.shape[1:])}, but this preprocessing "
                     f"was fitted on images of shape {tuple(image_shape)}.")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{what} contains {int(np.sum(~np.isfinite(x)))} NaN or infinite values; "
                     "only finite pixels are accepted.")
  return x


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessing:
  r"""A fitted, invertible image preprocessing.

  With per-channel training mean :math:`\mu_c` and standard deviation :math:`\sigma_c`, every
  kind first computes :math:`\tilde x = (x - \mu_c) / \sigma_c` (``'none'`` uses
  :math:`\mu_c = 0, \sigma_c = 1`). The ZCA kinds then flatten :math:`\tilde x` to
  :math:`D = HWC` features and apply regularised ZCA whitening. ``'zca'`` (the KIP reference
  recipe) first normalises each image, :math:`\hat x = (\tilde x - \langle \tilde x \rangle)
  / \lVert \tilde x - \langle \tilde x \rangle \rVert` (mean over its ``D`` features), and uses
  :math:`m = 0`, i.e. the uncentred second moment :math:`C = \hat X^\top \hat X / n`;
  ``'zca_centered'`` uses :math:`\hat x = \tilde x` and the training mean :math:`m`:

  .. math::
    z = (\hat x - m) W, \qquad
    W = U \operatorname{diag}\big((s + \lambda \bar s)^{-1/2}\big) U^\top, \qquad
    \bar s = \tfrac{1}{D} \textstyle\sum_i s_i = \operatorname{tr}(C) / D,

  where :math:`C = (\hat X - m)^\top (\hat X - m) / n = U \operatorname{diag}(s) U^\top` and
  :math:`\lambda` = ``zca_reg``. With ``zca_rank`` :math:`r < D` (``'zca'`` fitted on
  :math:`n < D` images: :math:`r = n`), the factor of the :math:`D - r` smallest directions is 1
  instead, as in the reference. On the training set the output covariance is
  :math:`W C W = U \operatorname{diag}(s / (s + \lambda \bar s)) U^\top`, i.e. whitened except
  along low-variance directions, which are damped rather than amplified. The inverse is
  :math:`\tilde x = z W^{-1} + m` with :math:`W^{-1} = U \operatorname{diag}((s + \lambda
  \bar s)^{1/2}) U^\top`, then :math:`x = \tilde x \sigma_c + \mu_c`. The per-image
  normalisation of ``'zca'`` discards each image's mean and contrast, so its ``invert`` returns
  :math:`\sqrt D\, \hat x` unstandardised: the image up to its own brightness and contrast
  (enough to look at a distilled set).

  Attributes:
    kind: ``'none'``, ``'standardize'``, ``'zca'`` or ``'zca_centered'``.
    image_shape: ``(H, W, C)`` of the images it was fitted on.
    channel_mean: ``(C,)`` float32, :math:`\mu_c` (zeros for ``'none'``).
    channel_std: ``(C,)`` float32, :math:`\sigma_c` (ones for ``'none'``; a constant channel
      gets 1 so that the map stays invertible).
    zca_reg: :math:`\lambda`; 0.0 unless ``kind == 'zca'``.
    zca_mean: ``(D,)`` float32, :math:`m`; shape ``(0,)`` unless ``kind == 'zca'``.
    zca_eigvecs: ``(D, D)`` float32, :math:`U` (eigenvectors as columns); ``(0, 0)`` unless
      ``kind == 'zca'``.
    zca_eigvals: ``(D,)`` float64, :math:`s` clipped at 0; ``(0,)`` unless ``kind == 'zca'``.
    zca_rank: :math:`r`, the number of largest directions that are whitened (``D``: all; 0
      unless a ZCA kind). The ZCA fields are filled for both ZCA kinds.
  """

  kind: str
  image_shape: tuple[int, int, int]
  channel_mean: np.ndarray
  channel_std: np.ndarray
  zca_reg: float = 0.0
  zca_mean: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.float32))
  zca_eigvecs: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros((0, 0), np.float32))
  zca_eigvals: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.float64))
  zca_rank: int = -1

  @property
  def is_zca(self) -> bool:
    return self.kind in ZCA_KINDS

  def __post_init__(self):
    check_kind(self.kind)
    shape = tuple(int(d) for d in self.image_shape)
    if len(shape) != 3 or min(shape) < 1:
      raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {shape}.")
    object.__setattr__(self, "image_shape", shape)
    channels = shape[2]
    for field in ("channel_mean", "channel_std"):
      value = np.asarray(getattr(self, field), np.float32)
      if value.shape != (channels,) or not np.all(np.isfinite(value)):
        raise ValueError(f"{field} must be a finite ({channels},) array, got {value.shape}.")
      object.__setattr__(self, field, value)
    if np.any(self.channel_std <= 0):
      raise ValueError(f"channel_std must be positive, got {self.channel_std}.")
    d = int(np.prod(shape)) if self.is_zca else 0
    rank = d if int(self.zca_rank) < 0 else int(self.zca_rank)
    if not 0 <= rank <= d or (self.is_zca and rank < 1):
      raise ValueError(f"zca_rank must be in [1, {d}] for kind {self.kind!r}, got {rank}.")
    object.__setattr__(self, "zca_rank", rank)
    object.__setattr__(self, "zca_mean", np.asarray(self.zca_mean, np.float32))
    object.__setattr__(self, "zca_eigvecs", np.asarray(self.zca_eigvecs, np.float32))
    object.__setattr__(self, "zca_eigvals", np.asarray(self.zca_eigvals, np.float64))
    object.__setattr__(self, "zca_reg", float(self.zca_reg))
    expected = {"zca_mean": (d,), "zca_eigvecs": (d, d), "zca_eigvals": (d,)}
    for field, want in expected.items():
      if getattr(self, field).shape != want:
        raise ValueError(f"{field} must have shape {want} for kind {self.kind!r} and image "
                         f"shape {shape}, got {getattr(self, field).shape}.")
    if self.is_zca:
      if not self.zca_reg > 0:
        raise ValueError(f"zca_reg must be > 0 for kind {self.kind!r}, got {self.zca_reg}.")
      if np.any(self.zca_eigvals < 0) or not self.zca_eigvals.mean() > 0:
        raise ValueError("zca_eigvals must be non-negative with a positive mean.")

  @functools.cached_property
  def _zca_scales(self) -> np.ndarray:
    """``(D,)`` float64, :math:`(s + \\lambda \\bar s)^{1/2}`; 1 beyond the ``zca_rank`` largest."""
    s = self.zca_eigvals
    scales = np.sqrt(s + self.zca_reg * s.mean())
    if self.zca_rank < s.size:
      scales[np.argsort(s)[:s.size - self.zca_rank]] = 1.0
    return scales

  @functools.cached_property
  def whitening_matrix(self) -> np.ndarray:
    """``(D, D)`` float32, :math:`W` (only for ``kind == 'zca'``)."""
    u = self.zca_eigvecs.astype(np.float64)
    return ((u / self._zca_scales) @ u.T).astype(np.float32)

  @functools.cached_property
  def unwhitening_matrix(self) -> np.ndarray:
    """``(D, D)`` float32, :math:`W^{-1}` (only for ``kind == 'zca'``)."""
    u = self.zca_eigvecs.astype(np.float64)
    return ((u * self._zca_scales) @ u.T).astype(np.float32)

  def apply(self, raw: ArrayLike) -> np.ndarray:
    """Maps raw images to processed ones.

    Args:
      raw: ``(n, H, W, C)`` float pixels (nominally in ``[0, 1]``), ``(H, W, C)`` as fitted.

    Returns:
      ``(n, H, W, C)`` float32 processed images.
    """
    x = _check_images(raw, "raw images", self.image_shape).astype(np.float32)
    x = (x - self.channel_mean) / self.channel_std
    if self.is_zca:
      flat = x.reshape(x.shape[0], -1)
      flat = _normalize_images(flat) if self.kind == "zca" else flat - self.zca_mean
      x = (flat @ self.whitening_matrix).reshape(x.shape)
    return x.astype(np.float32, copy=False)

  def invert(self, processed: ArrayLike) -> np.ndarray:
    """Maps processed images back to raw pixels: ``invert(apply(x)) == x`` up to float error.

    For ``'zca'`` only up to each image's brightness and contrast (see the class docstring).

    Args:
      processed: ``(n, H, W, C)`` float processed images.

    Returns:
      ``(n, H, W, C)`` float32 raw pixels (not clipped to ``[0, 1]``).
    """
    x = _check_images(processed, "processed images", self.image_shape).astype(np.float32)
    if self.is_zca:
      flat = x.reshape(x.shape[0], -1) @ self.unwhitening_matrix
      if self.kind == "zca":
        flat = flat * np.float32(np.sqrt(flat.shape[1]))
      x = (flat + self.zca_mean).reshape(x.shape)
    return (x * self.channel_std + self.channel_mean).astype(np.float32, copy=False)

  def to_arrays(self) -> dict[str, np.ndarray]:
    """Returns the fitted state as numeric / string arrays, loadable without pickle.

    Returns:
      A dict with keys ``kind`` (0-d str), ``image_shape`` ``(3,)`` int64, ``channel_mean``
      ``(C,)``, ``channel_std`` ``(C,)``, ``zca_reg`` (0-d float64), ``zca_mean`` ``(D,)``,
      ``zca_eigvecs`` ``(D, D)``, ``zca_eigvals`` ``(D,)`` (the last three empty unless a ZCA
      kind) and ``zca_rank`` (0-d int64). Prefix the keys yourself when storing it beside other arrays.
    """
    return {
        "kind": np.asarray(self.kind),
        "image_shape": np.asarray(self.image_shape, np.int64),
        "channel_mean": self.channel_mean.copy(),
        "channel_std": self.channel_std.copy(),
        "zca_reg": np.asarray(self.zca_reg, np.float64),
        "zca_mean": self.zca_mean.copy(),
        "zca_eigvecs": self.zca_eigvecs.copy(),
        "zca_eigvals": self.zca_eigvals.copy(),
        _RANK_KEY: np.asarray(self.zca_rank, np.int64),
    }

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, ArrayLike]) -> Preprocessing:
    """Rebuilds a :class:`Preprocessing` from the output of :meth:`to_arrays`.

    Args:
      arrays: mapping with the keys written by :meth:`to_arrays` (extra keys are ignored).

    Returns:
      The equivalent :class:`Preprocessing`.
    """
    missing = [k for k in _ARRAY_KEYS if k not in arrays]
    if missing:
      raise ValueError(f"preprocessing arrays lack keys {missing}; expected {_ARRAY_KEYS} as "
                       "written by Preprocessing.to_arrays().")
    kind = np.asarray(arrays["kind"])
    if kind.shape != () or kind.dtype.kind not in "US":
      raise ValueError(f"'kind' must be a 0-d string array, got dtype {kind.dtype} shape "
                       f"{kind.shape}.")
    kind_str = kind.item()
    if isinstance(kind_str, bytes):
      kind_str = kind_str.decode("utf-8")
    rank = -1
    if _RANK_KEY in arrays:
      rank = int(np.asarray(arrays[_RANK_KEY]))
    elif kind_str == "zca":  # written before 'zca' became the reference recipe
      logger.info("preprocessing arrays without %r: reading kind 'zca' as 'zca_centered', the "
                  "recipe they were written with", _RANK_KEY)
      kind_str = "zca_centered"
    return cls(
        kind=kind_str,
        image_shape=tuple(int(v) for v in np.asarray(arrays["image_shape"]).ravel()),
        channel_mean=np.asarray(arrays["channel_mean"]),
        channel_std=np.asarray(arrays["channel_std"]),
        zca_reg=float(np.asarray(arrays["zca_reg"])),
        zca_mean=np.asarray(arrays["zca_mean"]),
        zca_eigvecs=np.asarray(arrays["zca_eigvecs"]),
        zca_eigvals=np.asarray(arrays["zca_eigvals"]),
        zca_rank=rank,
    )


def _normalize_images(flat: np.ndarray) -> np.ndarray:
  """Each row to zero mean and unit norm (the reference's ``layer_norm=True``).

  A constant row (norm 0 after centring) stays zero rather than becoming NaN.
  """
  flat = flat - flat.mean(axis=1, keepdims=True)
  norms = np.linalg.norm(flat, axis=1, keepdims=True)
  return flat / np.where(norms > 0, norms, 1.0).astype(flat.dtype)


def fit(kind: str, x_train_raw: ArrayLike, zca_reg: float = 0.1) -> Preprocessing:
  r"""Fits a preprocessing on raw training images (see :class:`Preprocessing` for formulas).

  Args:
    kind: ``'none'``, ``'standardize'`` (per-channel :math:`(x - \mu_c) / \sigma_c`),
      ``'zca'`` (standardize, normalise each image, whiten by the uncentred second moment: the
      KIP reference recipe) or ``'zca_centered'`` (standardize, whiten by the covariance).
    x_train_raw: ``(n, H, W, C)`` float raw training pixels in ``[0, 1]``. Only the training
      split: test statistics must not leak into the preprocessing.
    zca_reg: :math:`\lambda > 0`, the ZCA regularisation relative to the mean eigenvalue (KIP
      uses 0.1). Ignored unless ``kind == 'zca'``.

  Returns:
    The fitted :class:`Preprocessing`.
  """
  check_kind(kind)
  x = _check_images(x_train_raw, "x_train_raw")
  n = x.shape[0]
  if n < 2 and kind != "none":
    raise ValueError(f"fitting {kind!r} needs at least 2 training images, got {n}.")
  image_shape = tuple(x.shape[1:])
  channels = image_shape[2]
  if kind == "none":
    return Preprocessing("none", image_shape, np.zeros(channels), np.ones(channels))
  mean = x.mean(axis=(0, 1, 2), dtype=np.float64)
  std = x.std(axis=(0, 1, 2), dtype=np.float64)
  if np.any(std == 0):
    logger.warning("channels %s are constant on the training set; leaving them unscaled.",
                   np.flatnonzero(std == 0).tolist())
    std = np.where(std == 0, 1.0, std)
  if kind == "standardize":
    return Preprocessing("standardize", image_shape, mean, std)

  zca_reg = float(zca_reg)
  if not zca_reg > 0:
    raise ValueError(f"zca_reg must be > 0 (KIP uses 0.1), got {zca_reg}: without it, "
                     "directions of zero training variance would be scaled by 1/0.")
  flat = ((x - mean.astype(np.float32)) / std.astype(np.float32)).reshape(n, -1)
  if kind == "zca":
    flat = _normalize_images(flat)
    zca_mean = np.zeros(flat.shape[1])
    rank = min(n, flat.shape[1])
  else:
    zca_mean = flat.mean(axis=0, dtype=np.float64)
    rank = flat.shape[1]
  centered = flat - zca_mean.astype(np.float32)
  # float32 GEMM keeps fitting on 60k x 784 to about a second; eigh runs in float64.
  cov = (centered.T @ centered).astype(np.float64) / n
  eigvals, eigvecs = np.linalg.eigh(cov)
  eigvals = np.clip(eigvals, 0.0, None)
  if not eigvals.mean() > 0:
    raise ValueError("x_train_raw has zero variance; ZCA needs images that differ.")
  logger.info("fitted %s (reg %g, ridge %.3g) on %d images of %d features", kind, zca_reg,
              zca_reg * eigvals.mean(), n, flat.shape[1])
  return Preprocessing(kind, image_shape, mean, std, zca_reg=zca_reg, zca_mean=zca_mean,
                       zca_eigvecs=eigvecs, zca_eigvals=eigvals, zca_rank=rank)
