"""The suite: every method at every IPC, distilled and evaluated under one protocol.

A tier's config file (``benchmarks/configs/{cpu,gpu}.json``) names the data set and, for each
method, the distillation settings (per IPC where they differ) and the evaluation protocol:
kernel ridge regression (KRR) where it applies and a finite network (model, recipe, restarts,
steps or epochs) trained on the distilled set, mean +- std over restarts. Each (method, IPC)
cell is one unit of work:

1. distil through the ``kip.methods`` registry and driver, save the ``DistilledSet`` and its
   PNG grid under ``OUT/distilled/``;
2. evaluate (KRR, finite networks), record wall times and the device;
3. write ``OUT/cells/METHOD_ipcN.json``.

Finished cells are never recomputed (unless their settings changed; a change in evaluation
settings only reruns the changed evaluations, keeping the distilled set, and ``--dry-run``
lists what each cell reuses); a crash or Ctrl-C
mid-cell recomputes only that cell: the distillation resumes from the driver's checkpoint
(bit-identical to an uninterrupted run), a saved distilled set is reused when the crash came
during the evaluation, and finished restart groups are kept. After the cells, ``OUT/table.md``
and ``OUT/suite.json`` hold the Markdown table with the published numbers of ANCHORS.md beside
ours, and ``benchmarks/RESULTS.md`` is rebuilt from every result file under
``benchmarks/results/``.

  python -m benchmarks.run --tier cpu|gpu [--only METHOD ...] [--ipc 1 10 50] [--out DIR]
                           [--max-minutes M] [--config PATH] [--dry-run]
  python -m benchmarks.run --write-results        # only rebuild benchmarks/RESULTS.md

``--max-minutes M`` starts no new cell once M minutes have passed; a cell running at M stops
cleanly (the driver's ``time_budget`` while distilling, with a checkpoint; between restart
groups while evaluating). Run the same command again to continue.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from typing import Any, Mapping, Optional, Sequence

from benchmarks import common
from benchmarks.suite.budget import BudgetSpent
from benchmarks.suite.cells import finished, load_dataset, reusable, run_cell
from benchmarks.suite.config import load_config
from benchmarks.suite.files import SUITE_KIND, jsonable
from benchmarks.suite.plan import all_cells, plan, validate
from benchmarks.suite.results_md import README_MD, write_results_md
from benchmarks.suite.tables import render_table

__all__ = ["run_suite", "write_suite", "default_out", "main"]

logger = logging.getLogger(__name__)


def run_suite(config: Mapping[str, Any], out: str, *, only: Optional[Sequence[str]] = None,
              ipcs: Optional[Sequence[int]] = None, max_minutes: Optional[float] = None,
              progress: bool = False, command: str = "", write_results: bool = True,
              results_dir: str = common.RESULTS_DIR) -> dict[str, Any]:
  """Runs the unfinished cells, then writes ``OUT/table.md``, ``OUT/suite.json`` (and RESULTS.md).

  Args:
    config: a suite config.
    out: the suite folder.
    only: method names to run (default all).
    ipcs: IPC values to run (default the config's ``ipc``).
    max_minutes: wall-clock budget of this invocation (see the module docstring).
    progress: progress bars.
    command: recorded in the cell files.
    write_results: rebuild ``benchmarks/RESULTS.md`` from ``results_dir`` at the end.
    results_dir: the result files RESULTS.md describes.

  Returns:
    The suite summary (``table``, ``caption``, ``computed``, ``stopped``, ``pending``...).

  Raises:
    KeyboardInterrupt: after writing the table of the finished cells (the interrupted cell's
      checkpoint and finished restart groups are kept).
  """
  start = time.time()
  deadline = None if max_minutes is None else start + 60 * max_minutes
  cells = plan(config, only, ipcs)
  for cell in cells:
    validate(cell)
  todo = [c for c in cells if finished(config, c, out) is None]
  logger.info("%s: %d cells, %d finished, %d to run -> %s", config["name"], len(cells),
              len(cells) - len(todo), len(todo), out)
  ds = load_dataset(config) if todo else None
  computed, stopped = [], None
  for i, cell in enumerate(todo):
    # A cell's 'minutes' (config estimate) must fit in what is left, except for the first cell
    # of an invocation, so that every invocation makes progress.
    need = 60 * float(cell.settings.get("minutes", 0))
    if deadline is not None and i > 0 and time.time() + need > deadline:
      stopped = (f"--max-minutes {max_minutes:g}: {cell.name} (about "
                 f"{need / 60:.0f} min) does not fit in what is left")
      break
    logger.info("== %s (%d/%d)", cell.name, i + 1, len(todo))
    try:
      run_cell(config, cell, ds, out, progress=progress, deadline=deadline, command=command)
    except BudgetSpent as e:
      stopped = f"--max-minutes {max_minutes:g} spent inside {cell.name} ({e}; saved)"
      break
    except KeyboardInterrupt:
      logger.warning("interrupted inside %s (its checkpoint and finished restart groups are "
                     "kept); run the same command again to continue.", cell.name)
      write_suite(config, out, command=command)
      raise
    computed.append(cell.name)
  if stopped:
    logger.warning("stopping: %s; run the same command again to continue.", stopped)
  summary = write_suite(config, out, command=command)
  summary.update(computed=computed, stopped=stopped, seconds=time.time() - start)
  if write_results:
    write_results_md(results_dir, readme=README_MD if results_dir == common.RESULTS_DIR
                     else None)
  return summary


def write_suite(config: Mapping[str, Any], out: str, *, command: str = "") -> dict[str, Any]:
  """Table and summary of every finished cell of ``config`` under ``out``."""
  cells = all_cells(config)
  records = [finished(config, c, out) for c in cells]
  default = {c.name for c in plan(config)}
  keep = [i for i, (c, r) in enumerate(zip(cells, records)) if r is not None or c.name in default]
  cells, records = [cells[i] for i in keep], [records[i] for i in keep]
  table, caption = render_table(config, records, cells)
  done = [r for r in records if r]
  summary = {
      "kind": SUITE_KIND, "name": config["name"], "title": config.get("title", config["name"]),
      "config": config, "command": command, "table": table, "caption": caption,
      "cells": [{k: r[k] for k in ("method", "ipc", "grid", "distilled", "seconds",
                                   "finished_utc")}
                | {"device": r["machine"].get("device_label", r["machine"]["device"])}
                for r in done],
      "devices": sorted({r["machine"].get("device_label", r["machine"]["device"])
                         for r in done}),
      "pending": [c.name for c, r in zip(cells, records) if r is None],
      "commands": sorted({c or "?" for r in done for c in r.get("commands") or [r.get("command")]}
                         | {r["reused"].get("command") or "?" for r in done if r.get("reused")}),
      "finished": [min((r["finished_utc"] for r in done), default=None),
                   max((r["finished_utc"] for r in done), default=None)],
      "total_seconds": sum(r["seconds"] for r in done), "machine": common.machine(),
      "written_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(caption + "\n\n" + table + "\n")
  common.write_json(os.path.join(out, "suite.json"), jsonable(summary))
  return summary


def default_out(config: Mapping[str, Any]) -> str:
  """``benchmarks/results/suite_NAME``."""
  return os.path.join(common.RESULTS_DIR, f"suite_{config['name']}")


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
  """``python -m benchmarks.run``; returns the suite summary (``None`` for listings).

  Raises:
    SystemExit: 130 on Ctrl-C (after the table of the finished cells is written).
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tier", choices=["cpu", "gpu"], help="configs/TIER.json")
  p.add_argument("--config", help="a config file instead of --tier")
  p.add_argument("--only", nargs="+", metavar="METHOD", help="run only these methods")
  p.add_argument("--ipc", nargs="+", type=int, help="run only these IPC values")
  p.add_argument("--out", help="results folder (default benchmarks/results/suite_TIER)")
  p.add_argument("--max-minutes", type=float, help="start no new cell after this many minutes")
  p.add_argument("--progress", action="store_true", help="progress bars")
  p.add_argument("--dry-run", action="store_true", help="list the cells and their state")
  p.add_argument("--write-results", action="store_true",
                 help="rebuild benchmarks/RESULTS.md (alone: without running anything)")
  p.add_argument("--no-results-md", action="store_true", help="do not touch RESULTS.md")
  a = p.parse_args(argv)
  common.setup_logging(quiet_kip=True)
  if a.tier is None and a.config is None:
    if a.write_results:
      print(write_results_md(readme=README_MD))
      return None
    p.error("give --tier, --config or --write-results")
  config = load_config(a.tier, a.config)
  out = a.out or default_out(config)
  if a.dry_run:
    for cell in plan(config, a.only, a.ipc):
      validate(cell)
      state = "done" if finished(config, cell, out) else "to run"
      if state != "done":
        reuse = reusable(config, cell, out)
        parts = (["distilled set"] if reuse["distilled"] else []) + [
            f"finite{i}" for i in sorted(reuse["finite"])]
        state += f" (reuses {', '.join(parts)})" if parts else ""
      print(f"{cell.name:20s} {state:7s} {json.dumps(cell.settings, sort_keys=True)}")
    return None
  command = "python -m benchmarks.run " + " ".join(shlex.quote(x) for x in argv)
  # RESULTS.md describes benchmarks/results/; a run written elsewhere (tests) leaves it alone.
  inside = os.path.abspath(out).startswith(os.path.abspath(common.RESULTS_DIR) + os.sep)
  try:
    summary = run_suite(config, out, only=a.only, ipcs=a.ipc, max_minutes=a.max_minutes,
                        progress=a.progress, command=command,
                        write_results=(inside or a.write_results) and not a.no_results_md)
  except KeyboardInterrupt:
    raise SystemExit(130) from None
  print("\n" + summary["caption"] + "\n")
  print(summary["table"])
  print(f"\n{len(summary['computed'])} cells computed in {summary['seconds'] / 60:.1f} min"
        + (f"; stopped: {summary['stopped']}" if summary["stopped"] else "") + f"; -> {out}")
  return summary
