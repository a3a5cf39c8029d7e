"""Shared benchmark plumbing: published numbers, tables, machine description, JSON output."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from typing import Any, Iterable, Sequence

__all__ = ["ANCHORS_FASHION", "anchor", "markdown_table", "machine", "write_json", "RESULTS_DIR"]

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# ../shared/ANCHORS.md, Fashion-MNIST, test accuracy (%) at IPC 1 / 10 / 50. "(?)": secondary
# source, not yet confirmed against the paper.
ANCHORS_FASHION: dict[str, tuple[str, str, str]] = {
    "random": ("51.4 (?)", "73.8 (?)", "82.5 (?)"),
    "herding": ("67.0 (?)", "71.1 (?)", "71.9 (?)"),
    "kcenter": ("66.9 (?)", "54.7 (?)", "68.3 (?)"),
    "dc": ("70.5", "82.3", "83.6"),
    "dsa": ("70.6", "84.6", "88.7"),
    "dm": ("70.7 (?)", "83.5 (?)", "88.1 (?)"),
    "ls_krr": ("65.3", "80.8", "86.9"),
    "ls_transfer": ("61.3", "79.9", "84.9"),
    "kip_krr": ("76.7 (82.9 ?)", "88.8 (91.0 ?)", "91.0 (92.4 ?)"),
    "kip_transfer": ("73.5", "86.8", "88.0"),
    "whole": ("93.5 (?)", "93.5 (?)", "93.5 (?)"),
}
_IPC_COL = {1: 0, 10: 1, 50: 2}


def anchor(method: str, ipc: int) -> str:
  """Published Fashion-MNIST number for ``method`` at ``ipc`` (or '-')."""
  row = ANCHORS_FASHION.get(method)
  if row is None or ipc not in _IPC_COL:
    return "-"
  return row[_IPC_COL[ipc]]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


def machine() -> dict[str, Any]:
  import jax
  return {"device": str(jax.devices()[0]), "platform": jax.default_backend(),
          "cpu_count": os.cpu_count(), "python": platform.python_version(),
          "jax": jax.__version__, "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_json(path: str, obj: Any) -> None:
  from kip._src.io import atomic_write
  with atomic_write(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)


def setup_logging(quiet_kip: bool = False) -> None:
  """INFO logging with timestamps for a benchmark's own logger; jax/absl/matplotlib at WARNING.

  Args:
    quiet_kip: also keep the library's own INFO messages out (for runners with many cells).
  """
  fmt = "%(asctime)s %(name)s %(message)s" if quiet_kip else "%(asctime)s %(message)s"
  logging.basicConfig(level=logging.INFO, format=fmt)
  for noisy in ("jax", "absl", "matplotlib") + (("kip",) if quiet_kip else ()):
    logging.getLogger(noisy).setLevel(logging.WARNING)
