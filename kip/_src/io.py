"""Atomic file writes and version-checked ``.npz`` containers (no pickle).

Every file the library writes goes through :func:`atomic_write`: the bytes land in a
temporary file in the same directory, are flushed and ``fsync``-ed, and are moved over the
destination with :func:`os.replace`, which is atomic on POSIX. A crash mid-write therefore
leaves either the old file or the new one, never a truncated mix.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from typing import Any, Iterator, Mapping

import numpy as np

__all__ = ["atomic_write", "save_npz", "load_npz", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_META_KEY = "__metadata_json__"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
  """Opens a temporary file that replaces ``path`` atomically when the block exits cleanly.

  Args:
    path: destination file; its directory is created if missing.
    mode: ``'wb'`` or ``'w'``.

  Yields:
    A file object. If the block raises, the destination is left untouched.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
             metadata: Mapping[str, Any], *, kind: str) -> None:
  """Writes ``arrays`` and JSON ``metadata`` into one ``.npz`` atomically.

  Args:
    path: destination ``.npz`` path.
    arrays: name -> array; object arrays are refused (they would need pickle).
    metadata: JSON-serialisable mapping, stored as a UTF-8 string array.
    kind: the container's kind (e.g. ``'distilled_set'``, ``'kip_checkpoint'``), checked on load.
  """
  payload = {}
  for name, value in arrays.items():
    value = np.asarray(value)
    if value.dtype == object:
      raise ValueError(f"array {name!r} has dtype object; only numeric arrays can be saved.")
    payload[name] = value
  meta = dict(metadata)
  meta["format_version"] = FORMAT_VERSION
  meta["kind"] = kind
  payload[_META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), np.uint8)
  buf = io.BytesIO()
  np.savez(buf, **payload)
  with atomic_write(path, "wb") as f:
    f.write(buf.getvalue())


def load_npz(path: str | os.PathLike, *, kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads a container written by :func:`save_npz`, checking its kind and version.

  Args:
    path: the ``.npz`` file.
    kind: the expected kind.

  Returns:
    ``(arrays, metadata)``.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: the file is not such a container, is corrupt, or has another kind/version.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path!r} does not exist.")
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError, OSError...
    raise ValueError(f"{path!r} is not a readable .npz file ({type(e).__name__}: {e}); "
                     "it may be truncated or corrupt.") from e
  if _META_KEY not in arrays:
    raise ValueError(f"{path!r} has no kip metadata; it was not written by kip.")
  try:
    meta = json.loads(arrays.pop(_META_KEY).tobytes().decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path!r} has corrupt metadata: {e}") from e
  if meta.get("kind") != kind:
    raise ValueError(f"{path!r} holds a {meta.get('kind')!r}, expected a {kind!r}.")
  version = meta.get("format_version")
  if version != FORMAT_VERSION:
    raise ValueError(f"{path!r} has format version {version!r}; this kip reads version "
                     f"{FORMAT_VERSION}. Re-create it with this kip version.")
  return arrays, meta
