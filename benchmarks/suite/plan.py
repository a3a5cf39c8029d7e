"""The cells of a suite: (method, IPC) units, their settings, checks and fingerprints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping, Optional, Sequence

from benchmarks.suite import methods
from benchmarks.suite.config import all_ipcs, merge
from benchmarks.suite.evaluation import evaluations

__all__ = ["Cell", "cell_settings", "plan", "all_cells", "validate", "fingerprint", "digest",
           "PRESENTATION"]

# Settings that do not change a cell's result.
PRESENTATION = ("label", "anchor", "minutes")


@dataclasses.dataclass(frozen=True)
class Cell:
  """One (method, IPC) unit: ``settings`` are the method's config merged with its IPC entry."""
  method: str
  ipc: int
  settings: Mapping[str, Any]

  @property
  def name(self) -> str:
    return f"{self.method}_ipc{self.ipc}"


def cell_settings(config: Mapping[str, Any], method: str, ipc: int) -> dict[str, Any]:
  """The method's settings with its ``per_ipc[ipc]`` entry merged in."""
  m = config["methods"][method]
  base = {k: v for k, v in m.items() if k not in ("per_ipc", "ipc")}
  return merge(base, m.get("per_ipc", {}).get(str(ipc), {}))


def plan(config: Mapping[str, Any], only: Optional[Sequence[str]] = None,
         ipcs: Optional[Sequence[int]] = None) -> list[Cell]:
  """The cells to run, in table order.

  Args:
    config: a suite config.
    only: method names (default: all of the config's methods).
    ipcs: IPC values; each method runs those of them that its own ``ipc`` list (default the
      config's ``ipc``) holds. Default: the config's ``ipc`` (the tier's default run).

  Raises:
    ValueError: a name in ``only`` that the config does not have.
  """
  names = list(config["methods"])
  if only:
    unknown = sorted(set(only) - set(names))
    if unknown:
      raise ValueError(f"--only {unknown}: not in the {config['name']!r} config, which has "
                       f"{names}.")
    names = [n for n in names if n in only]
  wanted = [int(i) for i in (ipcs if ipcs else config["ipc"])]
  cells = []
  for name in names:
    for ipc in all_ipcs(config, config["methods"][name]):
      if ipc in wanted:
        cells.append(Cell(name, ipc, cell_settings(config, name, ipc)))
  return cells


def all_cells(config: Mapping[str, Any]) -> list[Cell]:
  """Every cell the config defines (each method at every IPC of its list)."""
  ipcs = sorted({i for m in config["methods"].values() for i in all_ipcs(config, m)})
  return plan(config, ipcs=ipcs)


def validate(cell: Cell, num_classes: int = 10) -> None:
  """Builds the configs a cell will use, so that typos fail before any compute.

  The ``distill`` options go through :func:`benchmarks.suite.methods.resolve` (the method's
  config dataclass via the registry), the KRR kernel through ``kip.kernels.get_kernel`` and
  each finite evaluation through ``kip.transfer``'s recipe and model presets and ``Tune``.

  Raises:
    ValueError / TypeError naming the cell and the bad setting.
  """
  from kip import kernels, transfer
  s = cell.settings
  try:
    methods.resolve(s["algorithm"], cell.ipc, s.get("distill", {}))
    if s.get("krr") is not None and s["krr"].get("kernel") is not None:
      kernels.get_kernel(s["krr"]["kernel"])
    for f in evaluations(s.get("finite")):
      if f.get("protocol", "transfer") == "transfer":
        transfer.get_recipe(f.get("recipe", "dc"), **(f.get("recipe_overrides") or {}))
        transfer.get_model(f.get("model", "convnet"), num_classes, **(f.get("model_kwargs") or {}))
        if f.get("recipe") == "dsa" and not f.get("augment"):
          raise ValueError("recipe 'dsa' trains with augmentation; set finite.augment")
        if f.get("tune") is not None:
          if isinstance(f["tune"], dict):
            transfer.Tune(**f["tune"])  # a bad field or value fails here
          elif not isinstance(f["tune"], bool):
            raise ValueError(f"finite.tune={f['tune']!r}: give true, false or a dict of "
                             "kip.transfer.Tune fields")
          if f.get("fresh_subsets"):
            raise ValueError("finite.tune with fresh_subsets: a new random subset per network "
                             "is not tuned (kip.transfer.evaluate_random); drop one of them")
          if int(f.get("restarts_per_call") or f.get("restarts", 1)) < int(f.get("restarts", 1)):
            raise ValueError("finite.tune with restarts_per_call: every restart group would "
                             "repeat the search; drop restarts_per_call")
      elif s["algorithm"] != "dd":
        raise ValueError("finite.protocol 'dd' needs a DD set (algorithm 'dd')")
  except (TypeError, ValueError) as e:
    raise type(e)(f"benchmark cell {cell.name}: {e}") from e


def fingerprint(config: Mapping[str, Any], cell: Cell) -> dict[str, Any]:
  """Everything that determines a cell's result; a finished cell is reused only if it matches."""
  settings = {k: v for k, v in cell.settings.items() if k not in PRESENTATION}
  return {"dataset": config["dataset"], "seed": config.get("seed", 0), "method": cell.method,
          "ipc": cell.ipc, "settings": settings,
          "finite_num_test": config.get("finite_num_test")}


def digest(obj: Any) -> str:
  """A short SHA-1 of ``obj``'s sorted JSON (names a cell's checkpoint folder)."""
  return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]
