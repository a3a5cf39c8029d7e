"""One cell: distil through the registry and the driver, evaluate, write its files.

A cell writes, under the suite's ``OUT`` folder:

* ``checkpoints/CELL/DIGEST/checkpoint.npz`` while it distils (the driver's checkpoints,
  resumed by the next invocation; ``DIGEST`` is that of the cell's fingerprint, so changed
  settings start afresh); removed once the cell is finished;
* ``distilled/CELL.npz`` and ``.png`` and ``cells/CELL.distilled.json`` once the set is
  distilled (a crash during the evaluation reuses them);
* ``cells/CELL.finiteI.json``: finished restart groups of the cell's I-th finite evaluation
  (``I = 0, 1, ...``);
* ``cells/CELL.json``: the cell record, last.

When a cell's settings change only in how its set is *evaluated* (``krr``, ``finite``), the
unchanged parts are not recomputed: the saved distilled set is kept (its stage file matches on
:func:`distill_part`), and every finite evaluation of the previous record whose settings are
unchanged is carried over (:func:`previous`; KRR, seconds, is recomputed); the new record
lists them under ``reused`` with the command and time of the record they came from. Like a
finished cell, a reused part is trusted to be what the current code would compute; delete
``cells/CELL.json`` to recompute.

Provenance: the stage files record the command that wrote them (the distilled set's, each
restart group's), and the record's ``commands`` lists every command that produced a part of
it: the distillation, each restart group, the parts carried over, and the final call.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any, Mapping, Optional

from benchmarks import common
from benchmarks.suite import evaluation
from benchmarks.suite import methods
from benchmarks.suite.budget import BudgetSpent, seconds_left, spent
from benchmarks.suite.files import CELL_KIND, commands, jsonable, read_json
from benchmarks.suite.plan import Cell, digest, fingerprint

__all__ = ["cell_paths", "finished", "run_cell", "device_label", "load_dataset", "distill_part",
           "previous", "reusable"]

logger = logging.getLogger(__name__)


def cell_paths(out: str, cell: Cell) -> dict[str, str]:
  """The files of ``cell`` under the suite folder ``out`` (see the module docstring)."""
  return {"cell": os.path.join(out, "cells", f"{cell.name}.json"),
          "stage": os.path.join(out, "cells", f"{cell.name}.distilled.json"),
          "finite_stage": os.path.join(out, "cells", f"{cell.name}.finite{{}}.json"),
          "npz": os.path.join(out, "distilled", f"{cell.name}.npz"),
          "png": os.path.join(out, "distilled", f"{cell.name}.png"),
          "checkpoint": os.path.join(out, "checkpoints", cell.name)}


def finished(config: Mapping[str, Any], cell: Cell, out: str) -> Optional[dict]:
  """The cell's result JSON if it exists and was computed with the same settings."""
  rec = read_json(cell_paths(out, cell)["cell"])
  if rec is not None and rec.get("fingerprint") == jsonable(fingerprint(config, cell)):
    return rec
  return None


EVALUATION_KEYS = ("krr", "finite")


def distill_part(fp: Mapping[str, Any]) -> dict[str, Any]:
  """The part of a cell fingerprint that determines its distilled set (all but evaluation)."""
  settings = {k: v for k, v in fp["settings"].items() if k not in EVALUATION_KEYS}
  return {**{k: v for k, v in fp.items() if k not in ("settings", "finite_num_test")},
          "settings": settings}


def previous(config: Mapping[str, Any], cell: Cell, out: str) -> Optional[dict]:
  """The cell's earlier record if it differs from ``config`` only in evaluation settings."""
  rec = read_json(cell_paths(out, cell)["cell"])
  fp = jsonable(fingerprint(config, cell))
  if (rec is None or rec.get("fingerprint") == fp or "fingerprint" not in rec
      or distill_part(rec["fingerprint"]) != distill_part(fp)):
    return None
  return rec


def reusable(config: Mapping[str, Any], cell: Cell, out: str) -> dict[str, Any]:
  """What an unfinished cell can take from its earlier record (:func:`previous`).

  Returns:
    ``{"distilled": bool, "record": rec or None, "finite": {i: result}}``: whether the saved
    distilled set serves these settings, and for the ``i``-th finite evaluation of ``config``
    the earlier result of an evaluation with the same settings (and the same
    ``finite_num_test``). KRR (seconds) is always recomputed. Nothing is reused unless the
    saved distilled set was made with the same distillation settings (it is the set those
    results were measured on).
  """
  rec = previous(config, cell, out)
  fp = jsonable(fingerprint(config, cell))
  saved = _saved_stage(cell_paths(out, cell), fp) is not None
  if not saved:
    rec = None  # the set will be distilled again: nothing else carries over
  reuse: dict[str, Any] = {"distilled": saved, "record": rec, "finite": {}}
  if rec is None:
    return reuse
  old, s = rec["fingerprint"], jsonable(cell.settings)
  if old.get("finite_num_test") == config.get("finite_num_test"):
    before = list(zip(evaluation.evaluations(old["settings"].get("finite")),
                      evaluation.evaluations(rec.get("finite"))))
    for i, opts in enumerate(evaluation.evaluations(s.get("finite"))):
      hit = next((r for o, r in before if o == opts and r), None)
      if hit is not None:
        reuse["finite"][i] = hit
  return reuse


def load_dataset(config: Mapping[str, Any]):
  """The config's data set (``kip.data.load(name, **rest)``)."""
  import kip
  d = dict(config["dataset"])
  name = d.pop("name")
  return kip.data.load(name, **{k: v for k, v in d.items() if v is not None})


def device_label() -> str:
  """``'NVIDIA H100 80GB HBM3'`` on an accelerator, ``'CPU, 2 cores'`` on the CPU."""
  import jax
  d = jax.devices()[0]
  if d.platform == "cpu":
    return f"CPU, {os.cpu_count()} cores"
  return f"{getattr(d, 'device_kind', d.platform)}" + (
      f" x{jax.device_count()}" if jax.device_count() > 1 else "")


def _saved_stage(paths: Mapping[str, str], fp: Any) -> Optional[dict]:
  """The stage file of a saved distilled set made with ``fp``'s distillation settings."""
  stage = read_json(paths["stage"])
  if (stage is not None and "fingerprint" in stage and os.path.exists(paths["npz"])
      and distill_part(stage["fingerprint"]) == distill_part(fp)):
    return stage
  return None


def _distil(cell: Cell, ds, paths: Mapping[str, str], fp: Any, seed: int, progress: bool,
            deadline: Optional[float], command: str):
  """The cell's distilled set, its seconds, machine and command: saved, or distilled now.

  A distillation resumed from the driver's checkpoint records the command that finished it.

  Raises:
    BudgetSpent: the driver stopped on the time budget (its checkpoint is kept).
  """
  from kip import DistilledSet
  stage = _saved_stage(paths, fp)
  if stage is not None:
    logger.info("%s: reusing the distilled set saved before the interruption", cell.name)
    return (DistilledSet.load(paths["npz"]), stage["distill_seconds"], stage["machine"],
            stage.get("command"))
  s = cell.settings
  t = time.time()
  spec = methods.resolve(s["algorithm"], cell.ipc, s.get("distill", {}))
  distilled = methods.distill(spec, ds, key=seed,
                              checkpoint_dir=os.path.join(paths["checkpoint"], digest(fp)),
                              time_budget=seconds_left(deadline), progress=progress)
  meta = distilled.metadata
  if meta.get("stopped_early"):
    raise BudgetSpent(f"distillation, step {meta.get('steps')} of "
                      f"{meta.get('requested_steps')}, checkpointed")
  # The driver's seconds cover every process of a resumed run.
  seconds, machine = float(meta.get("seconds", time.time() - t)), common.machine()
  distilled.save(paths["npz"])
  distilled.grid(paths["png"], class_names=ds.class_names)
  common.write_json(paths["stage"], {"fingerprint": fp, "distill_seconds": seconds,
                                     "machine": machine, "command": command})
  return distilled, seconds, machine, command


def run_cell(config: Mapping[str, Any], cell: Cell, ds, out: str, *, progress: bool = False,
             deadline: Optional[float] = None, command: str = "") -> dict[str, Any]:
  """Distils and evaluates one cell, writing its files; returns the cell record.

  Args:
    config: the suite config.
    cell: the cell.
    ds: the config's data set.
    out: the suite folder.
    progress: progress bars.
    deadline: ``time.time()`` after which the cell stops cleanly (the driver's
      ``time_budget`` while distilling, between restart groups while evaluating).
    command: recorded in the cell JSON.

  Raises:
    BudgetSpent: ``deadline`` passed; what the cell did so far is saved and the next call
      continues it.
  """
  paths = cell_paths(out, cell)
  fp = jsonable(fingerprint(config, cell))
  seed = int(config.get("seed", 0))
  s = cell.settings
  reuse = reusable(config, cell, out)
  distilled, distill_seconds, distill_machine, distill_command = _distil(
      cell, ds, paths, fp, seed, progress, deadline, command)
  reused = []
  rec: dict[str, Any] = {"kind": CELL_KIND, "method": cell.method, "ipc": cell.ipc,
                         "label": s.get("label", cell.method), "fingerprint": fp,
                         "distill_seconds": distill_seconds, "num_images": len(distilled),
                         "distilled": os.path.relpath(paths["npz"], out),
                         "distill_steps": distilled.metadata.get("steps"),
                         "grid": os.path.relpath(paths["png"], out), "krr": None,
                         "finite": None}
  if s.get("krr") is not None:
    rec["krr"] = evaluation.krr(distilled, ds, s["krr"])
    logger.info("%s: KRR %.2f %%", cell.name, 100 * rec["krr"]["accuracy"])
  evals = evaluation.evaluations(s.get("finite"))
  if evals:
    n_test = config.get("finite_num_test")
    ds_finite = ds if not n_test else ds.subset(n_test=int(n_test), seed=seed)
    rec["finite"] = []
    for i, opts in enumerate(evals):
      if i in reuse["finite"]:
        rec["finite"].append(reuse["finite"][i])
        reused.append(f"finite{i}")
        logger.info("%s: %s reused from the record of %s", cell.name,
                    evaluation.column(opts),
                    reuse["record"].get("finished_utc"))
        continue
      if i > 0 and spent(deadline):
        raise BudgetSpent(f"finite evaluation {i + 1} of {len(evals)} not started")
      r = evaluation.finite(distilled, ds_finite, cell.ipc, opts, seed, progress,
                            stage_path=paths["finite_stage"].format(i), fp=fp,
                            deadline=deadline, command=command)
      rec["finite"].append(r)
      logger.info("%s: %s %.2f +- %.2f %% (%d restarts)", cell.name, r["column"],
                  100 * r["mean"], 100 * r["std"], r["restarts"])
  rec["eval_seconds"] = sum(r["seconds"] for r in [rec["krr"], *(rec["finite"] or [])] if r)
  rec["seconds"] = rec["distill_seconds"] + rec["eval_seconds"]
  rec["machine"] = {**common.machine(), "device_label": device_label()}
  rec["distill_machine"] = distill_machine
  rec["command"] = command
  rec["distill_command"] = distill_command
  prev_commands = []
  if reused:  # parts carried over from the earlier record: what, and what produced them
    prev = reuse["record"]
    rec["reused"] = {"parts": reused, "command": prev.get("command"),
                     "finished_utc": prev.get("finished_utc")}
    prev_commands = prev.get("commands") or [prev.get("command")]
  rec["commands"] = commands([distill_command,
                              *[c for r in rec["finite"] or [] for c in r.get("commands", [])],
                              *prev_commands, command])
  rec["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
  common.write_json(paths["cell"], jsonable(rec))
  for i in range(len(evals)):
    if os.path.exists(paths["finite_stage"].format(i)):
      os.remove(paths["finite_stage"].format(i))
  if os.path.isdir(paths["checkpoint"]):
    shutil.rmtree(paths["checkpoint"])
  return rec
