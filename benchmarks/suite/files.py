"""The suite's files: record kinds, JSON reading and JSON-ready values, relative links."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

__all__ = ["SUITE_KIND", "CELL_KIND", "read_json", "jsonable", "rel", "commands"]

SUITE_KIND = "benchmark_suite"
CELL_KIND = "benchmark_cell"


def read_json(path: str) -> Optional[dict]:
  """The JSON at ``path``, or ``None`` if it is missing or unreadable (a half-written file)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def jsonable(obj: Any) -> Any:
  """``obj`` as plain JSON values (arrays as lists, anything else unknown as its repr)."""
  return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist")
                               else repr(o)))


def commands(items) -> list:
  """The commands in ``items`` without empty ones and repeats, in first-seen order."""
  return list(dict.fromkeys(c for c in items if c))


def rel(path: str, start: str) -> str:
  """``path`` relative to ``start``, with ``/`` separators (for Markdown links)."""
  return os.path.relpath(path, start).replace(os.sep, "/")
