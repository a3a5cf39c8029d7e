"""Checkpoints of stateful optimisation loops (KIP, DC, DD, ...): any pytree, atomically.

A checkpoint stores the pytree's leaves as arrays in one ``.npz`` (no pickle) with JSON metadata;
restoring needs a *template* pytree of the same structure (e.g. a freshly initialised state),
which is how optax states are rebuilt without serialising their classes.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from kip._src import io as kio

__all__ = ["save", "restore", "exists"]

_KIND = "checkpoint"


def save(path: str | os.PathLike, tree: Any, metadata: Mapping[str, Any]) -> None:
  """Writes ``tree``'s leaves and ``metadata`` to ``path`` atomically."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  arrays = {f"leaf_{i:05d}": np.asarray(jax.device_get(x)) for i, x in enumerate(leaves)}
  meta = dict(metadata)
  meta["treedef"] = str(treedef)
  meta["num_leaves"] = len(leaves)
  kio.save_npz(path, arrays, meta, kind=_KIND)


def exists(path: str | os.PathLike) -> bool:
  return os.path.exists(os.fspath(path))


def restore(path: str | os.PathLike, template: Any) -> tuple[Any, dict[str, Any]]:
  """Reads a checkpoint into the structure of ``template``.

  Raises:
    ValueError: the file is corrupt, or its structure, shapes or dtypes differ from the
      template's (a checkpoint of another configuration).
  """
  arrays, meta = kio.load_npz(path, kind=_KIND)
  leaves, treedef = jax.tree_util.tree_flatten(template)
  if meta.get("num_leaves") != len(leaves) or meta.get("treedef") != str(treedef):
    raise ValueError(f"checkpoint {os.fspath(path)!r} holds a different state structure than "
                     "this run (another method, optimizer or option); use another directory "
                     "or start without resume.")
  restored = []
  for i, ref in enumerate(leaves):
    a = arrays[f"leaf_{i:05d}"]
    ref = np.asarray(ref)
    if a.shape != ref.shape or a.dtype != ref.dtype:
      raise ValueError(f"checkpoint {os.fspath(path)!r} leaf {i} is {a.dtype}{list(a.shape)} "
                       f"but this run needs {ref.dtype}{list(ref.shape)} (different support "
                       "size, data set or precision?).")
    restored.append(a)
  return jax.tree_util.tree_unflatten(treedef, restored), meta
