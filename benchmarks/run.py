"""The benchmark suite: every method at every IPC, distilled and evaluated under one protocol.

A tier's config file (``benchmarks/configs/{cpu,gpu}.json``) names the data set and, for each
method, the distillation settings (per IPC where they differ) and the evaluation protocol:
kernel ridge regression (KRR) where it applies and a finite network (model, recipe, restarts,
steps or epochs) trained on the distilled set, mean +- std over restarts. Each (method, IPC)
cell is one unit of work:

1. distil, save the ``DistilledSet`` and its PNG grid under ``OUT/distilled/``;
2. evaluate (KRR, finite networks), record wall times and the device;
3. write ``OUT/cells/METHOD_ipcN.json``.

Finished cells are never recomputed (unless their settings changed); a crash mid-cell
recomputes only that cell, reusing its saved distilled set when the crash came during the
evaluation, and KIP resumes from its checkpoint. After the cells, ``OUT/table.md`` and
``OUT/suite.json`` hold the Markdown table with the published numbers of ANCHORS.md beside
ours, and ``benchmarks/RESULTS.md`` is rebuilt from every result file under
``benchmarks/results/``.

  python -m benchmarks.run --tier cpu|gpu [--only METHOD ...] [--ipc 1 10 50] [--out DIR]
                           [--max-minutes M] [--config PATH] [--dry-run]
  python -m benchmarks.run --write-results        # only rebuild benchmarks/RESULTS.md

``--max-minutes M`` starts no new cell once M minutes have passed (KIP cells also checkpoint
and stop at M); run the same command again to continue.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import glob
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from benchmarks import common

logger = logging.getLogger("benchmarks.run")

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIG_DIR = os.path.join(BENCH_DIR, "configs")
RESULTS_MD = os.path.join(BENCH_DIR, "RESULTS.md")
SUITE_KIND = "benchmark_suite"
CELL_KIND = "benchmark_cell"
# Methods of the suite, in table order. 'kmeans' is accepted in configs as well.
METHODS = ("kip_fc", "kip_convnet", "ls", "dc", "dsa", "dm", "dd", "random", "herding",
           "kcenter", "class_mean")


# ------------------------------------------------------------------------------ configuration
def load_config(tier: Optional[str] = None, path: Optional[str] = None) -> dict[str, Any]:
  """Reads ``configs/{tier}.json`` or ``path``; raises ``FileNotFoundError`` / ``ValueError``."""
  if path is None:
    if tier is None:
      raise ValueError("give a tier ('cpu', 'gpu') or a config path.")
    path = os.path.join(CONFIG_DIR, f"{tier}.json")
  if not os.path.exists(path):
    known = sorted(os.path.splitext(f)[0] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))
    raise FileNotFoundError(f"no benchmark config {path!r}; tiers: {known}.")
  with open(path) as f:
    config = json.load(f)
  check_config(config)
  return config


def check_config(config: Mapping[str, Any]) -> None:
  """Raises ``ValueError`` naming the first bad entry of a suite config."""
  for key in ("name", "dataset", "ipc", "methods"):
    if key not in config:
      raise ValueError(f"benchmark config lacks {key!r}.")
  for name, m in config["methods"].items():
    algo = m.get("algorithm")
    if algo not in DISTILLERS:
      raise ValueError(f"method {name!r}: algorithm={algo!r}; expected one of "
                       f"{sorted(DISTILLERS)}.")
    finite = m.get("finite")
    if finite is not None and finite.get("protocol", "transfer") not in ("transfer", "dd"):
      raise ValueError(f"method {name!r}: finite.protocol={finite.get('protocol')!r}; expected "
                       "'transfer' or 'dd'.")
    bad = set(m.get("per_ipc", {})) - {str(i) for i in _all_ipcs(config, m)}
    if bad:
      logger.debug("method %s has per_ipc entries %s outside its IPC list", name, sorted(bad))


def _all_ipcs(config, method_cfg) -> list[int]:
  return [int(i) for i in method_cfg.get("ipc", config["ipc"])]


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
  """Recursive dict update (``over`` wins; ``None`` in ``over`` replaces, too)."""
  out = copy.deepcopy(dict(base))
  for k, v in over.items():
    if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
      out[k] = _merge(out[k], v)
    else:
      out[k] = copy.deepcopy(v)
  return out


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
  m = config["methods"][method]
  base = {k: v for k, v in m.items() if k not in ("per_ipc", "ipc")}
  return _merge(base, m.get("per_ipc", {}).get(str(ipc), {}))


def plan(config: Mapping[str, Any], only: Optional[Sequence[str]] = None,
         ipcs: Optional[Sequence[int]] = None) -> list[Cell]:
  """The cells to run, in table order.

  Args:
    config: a suite config.
    only: method names (default: all of the config's methods).
    ipcs: IPC values; each method runs those of them that its own ``ipc`` list (default the
      config's ``ipc``) holds. Default: the config's ``ipc`` (the tier's default run).
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
    for ipc in _all_ipcs(config, config["methods"][name]):
      if ipc in wanted:
        cells.append(Cell(name, ipc, cell_settings(config, name, ipc)))
  return cells


def all_cells(config: Mapping[str, Any]) -> list[Cell]:
  """Every cell the config defines (each method at every IPC of its list)."""
  ipcs = sorted({i for m in config["methods"].values() for i in _all_ipcs(config, m)})
  return plan(config, ipcs=ipcs)


def validate(cell: Cell, num_classes: int = 10) -> None:
  """Builds the library objects a cell will use, so typos fail before any compute.

  Raises:
    ValueError / TypeError naming the cell and the bad setting.
  """
  import inspect

  import kip
  from kip import baselines, transfer
  s = cell.settings
  d = dict(s.get("distill", {}))
  try:
    algo = s["algorithm"]
    if algo in ("kip", "ls"):
      kip.kernels.get_kernel(d.pop("kernel", "fc"))
      if algo == "ls" and int(d.pop("num_targets", 1)) < 1:
        raise ValueError("num_targets must be >= 1")
      inspect.signature(kip.distill).bind(None, images_per_class=cell.ipc, **d)
    elif algo in ("dc", "dsa", "dm", "dd"):
      getattr(baselines, {"dc": "DCConfig", "dsa": "DSAConfig", "dm": "DMConfig",
                          "dd": "DDConfig"}[algo])(**d)
    else:
      fn = getattr(baselines, "random_real" if algo == "random" else algo)
      inspect.signature(fn).bind(None, cell.ipc, 0, **d)
    if s.get("krr") is not None and s["krr"].get("kernel") is not None:
      kip.kernels.get_kernel(s["krr"]["kernel"])
    f = s.get("finite")
    if f is not None:
      if f.get("protocol", "transfer") == "transfer":
        transfer.get_recipe(f.get("recipe", "dc"), **(f.get("recipe_overrides") or {}))
        transfer.get_model(f.get("model", "convnet"), num_classes, **(f.get("model_kwargs") or {}))
        if f.get("recipe") == "dsa" and not f.get("augment"):
          raise ValueError("recipe 'dsa' trains with augmentation; set finite.augment")
      elif algo != "dd":
        raise ValueError("finite.protocol 'dd' needs a DD set (algorithm 'dd')")
  except (TypeError, ValueError) as e:
    raise type(e)(f"benchmark cell {cell.name}: {e}") from e


_PRESENTATION = ("label", "anchor", "minutes")  # settings that do not change a cell's result


def fingerprint(config: Mapping[str, Any], cell: Cell) -> dict[str, Any]:
  """Everything that determines a cell's result; a finished cell is reused only if it matches."""
  settings = {k: v for k, v in cell.settings.items() if k not in _PRESENTATION}
  return {"dataset": config["dataset"], "seed": config.get("seed", 0), "method": cell.method,
          "ipc": cell.ipc, "settings": settings,
          "finite_num_test": config.get("finite_num_test")}


def _digest(obj: Any) -> str:
  return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------ distillation
def _distill_kip(ds, ipc, opts, seed, ctx):
  import kip
  opts = dict(opts)
  kernel = kip.kernels.get_kernel(opts.pop("kernel", "fc"))
  mode = opts.pop("mode", "kip")
  return kip.distill(ds, images_per_class=ipc, kernel=kernel, mode=mode, seed=seed,
                     progress=ctx.get("progress", False), checkpoint_dir=ctx.get("checkpoint_dir"),
                     resume=ctx.get("checkpoint_dir") is not None,
                     checkpoint_every=opts.pop("checkpoint_every", 100),
                     callback=ctx.get("callback"), **opts)


def _distill_ls(ds, ipc, opts, seed, ctx):
  """LS through ``kip.distill(mode='ls')``; with ``num_targets``, ``kip.label_solve`` on a
  class-balanced subset of the training set for the same class-balanced real images."""
  opts = dict(opts)
  num_targets = opts.pop("num_targets", None)
  if num_targets is None:
    return _distill_kip(ds, ipc, {**opts, "mode": "ls"}, seed, {**ctx, "checkpoint_dir": None,
                                                                 "callback": None})
  import kip
  kernel = kip.kernels.get_kernel(opts.pop("kernel", "fc"))
  start = kip.distill(ds, images_per_class=ipc, kernel=kernel, steps=0, seed=seed,
                      progress=False, **opts)  # the real images LS labels (KIP's start)
  t = time.time()
  labels = kip.label_solve(ds, start.images, kernel, start.metadata["config"]["reg"],
                           get=start.metadata["config"]["get"], num_targets=int(num_targets),
                           seed=seed, progress=ctx.get("progress", False))
  meta = dict(start.metadata)
  meta["config"] = {**meta["config"], "mode": "ls", "steps": 0}
  meta.update(num_targets=int(num_targets), seconds=time.time() - t)
  return start.replace(labels=labels, method="ls", metadata=meta)


def _matching(fn_name: str, config_name: str) -> Callable:
  def distill(ds, ipc, opts, seed, ctx):
    from kip import baselines
    config = getattr(baselines, config_name)(**opts)
    return getattr(baselines, fn_name)(ds, ipc, config, key=seed,
                                       progress=ctx.get("progress", False))
  return distill


def _distill_dd(ds, ipc, opts, seed, ctx):
  from kip import baselines
  return baselines.distill_dd(ds, ipc, baselines.DDConfig(**opts), seed,
                              progress=ctx.get("progress", False))


def _coreset(fn_name: str) -> Callable:
  def distill(ds, ipc, opts, seed, ctx):
    from kip import baselines
    return getattr(baselines, fn_name)(ds, ipc, seed, **opts)
  return distill


DISTILLERS: dict[str, Callable] = {
    "kip": _distill_kip, "ls": _distill_ls,
    "dc": _matching("distill_dc", "DCConfig"), "dsa": _matching("distill_dsa", "DSAConfig"),
    "dm": _matching("distill_dm", "DMConfig"), "dd": _distill_dd,
    "random": _coreset("random_real"), "herding": _coreset("herding"),
    "kcenter": _coreset("kcenter"), "kmeans": _coreset("kmeans"),
    "class_mean": _coreset("class_mean"),
}


class _Deadline:
  """KIP callback that stops the run at a wall-clock deadline.

  ``kip.distill`` writes its checkpoint when interrupted by ``KeyboardInterrupt``, so this is
  what the callback raises; :func:`run_suite` tells it apart from a real Ctrl-C.
  """

  def __init__(self, deadline: Optional[float]):
    self.deadline = deadline
    self.fired = False

  def __call__(self, step, metrics):
    if self.deadline is not None and time.time() > self.deadline:
      self.fired = True
      raise KeyboardInterrupt(f"time budget spent at KIP step {step}")


# ------------------------------------------------------------------------------ evaluation
def _krr(distilled, ds, opts) -> dict[str, Any]:
  import kip
  t = time.time()
  acc = kip.evaluate.kernel_accuracy(distilled, ds, kernel=opts.get("kernel"),
                                     reg=opts.get("reg"), get=opts.get("get"),
                                     num_test=opts.get("num_test"))
  kernel = opts.get("kernel") or distilled.metadata.get("kernel")
  return {"accuracy": float(acc), "seconds": time.time() - t, "kernel": kernel,
          "get": opts.get("get") or distilled.metadata.get("config", {}).get("get", "ntk")}


def _finite(distilled, ds, ipc, opts, seed, progress, *, stage_path=None, fp=None,
            deadline=None) -> dict[str, Any]:
  """Finite networks trained on the set: mean +- std over restarts.

  With ``restarts_per_call = k`` the restarts run in groups of ``k`` (group ``g`` seeded with
  ``seed + g``), each group's accuracies saved to ``stage_path`` as it finishes, so that a run
  cut short (a 10-minute GPU chunk, ``--max-minutes``) continues at the next group.
  """
  import kip
  restarts = int(opts.get("restarts", 1))
  if opts.get("protocol", "transfer") == "dd":
    t = time.time()
    r = kip.baselines.evaluate_dd(distilled, ds, key=seed, restarts=restarts,
                                  model=opts.get("model"), init=opts.get("init"))
    return {"protocol": "dd", "mean": r.mean, "std": r.std, "accuracies": list(r.accuracies),
            "restarts": len(r.accuracies), "model": r.model, "recipe": "dd learned steps",
            "init": r.init, "init_accuracy": r.init_accuracy, "seconds": time.time() - t}
  augment = opts.get("augment")
  augment_fn = None
  if augment:
    from kip.baselines import augment as aug
    augment_fn = aug.augment_fn() if augment is True else aug.augment_fn(augment)
  per_call = int(opts.get("restarts_per_call") or restarts)
  groups = [min(per_call, restarts - lo) for lo in range(0, restarts, per_call)]
  stage = _read_json(stage_path) if stage_path else None
  done = stage["groups"] if stage and stage.get("fingerprint") == fp else []
  first = len(done)
  for g in range(first, len(groups)):
    if g > first and deadline is not None and time.time() > deadline:
      raise BudgetSpent(f"finite evaluation, after restart group {g} of {len(groups)}")
    kwargs = dict(model=opts.get("model", "convnet"), recipe=opts.get("recipe", "dc"),
                  restarts=groups[g], seed=seed + g, augment_fn=augment_fn,
                  model_kwargs=opts.get("model_kwargs"),
                  recipe_overrides=opts.get("recipe_overrides"), progress=progress)
    if opts.get("fresh_subsets"):  # the published random baseline: a new subset per network
      r = kip.transfer.evaluate_random(ds, ipc, **kwargs)
    else:
      r = kip.transfer.evaluate(distilled, ds, **kwargs)
    done.append(r.to_dict())
    if stage_path and len(groups) > 1:
      common.write_json(stage_path, {"fingerprint": fp, "groups": done})
  accs = np.concatenate([np.asarray(d["accuracies"], float) for d in done])
  out = {k: v for k, v in done[0].items() if k not in ("accuracies", "mean", "std", "seconds",
                                                        "seed")}
  out.update(protocol="transfer", accuracies=accs.tolist(), mean=float(accs.mean()),
             std=float(accs.std()), restarts=int(accs.size), seeds=[d["seed"] for d in done],
             augment=augment or None, fresh_subsets=bool(opts.get("fresh_subsets")),
             seconds=float(sum(d["seconds"] for d in done)))
  return out


# ------------------------------------------------------------------------------ one cell
def _paths(out: str, cell: Cell) -> dict[str, str]:
  return {"cell": os.path.join(out, "cells", f"{cell.name}.json"),
          "stage": os.path.join(out, "cells", f"{cell.name}.distilled.json"),
          "finite_stage": os.path.join(out, "cells", f"{cell.name}.finite.json"),
          "npz": os.path.join(out, "distilled", f"{cell.name}.npz"),
          "png": os.path.join(out, "distilled", f"{cell.name}.png"),
          "checkpoint": os.path.join(out, "checkpoints", cell.name)}


def _read_json(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def finished(config, cell: Cell, out: str) -> Optional[dict]:
  """The cell's result JSON if it exists and was computed with the same settings."""
  rec = _read_json(_paths(out, cell)["cell"])
  if rec is not None and rec.get("fingerprint") == _jsonable(fingerprint(config, cell)):
    return rec
  return None


def run_cell(config, cell: Cell, ds, out: str, *, progress: bool = False,
             deadline: Optional[float] = None, command: str = "") -> dict[str, Any]:
  """Distils and evaluates one cell, writing its files; returns the cell record."""
  from kip import DistilledSet
  paths = _paths(out, cell)
  fp = _jsonable(fingerprint(config, cell))
  seed = int(config.get("seed", 0))
  s = cell.settings
  stage = _read_json(paths["stage"])
  if stage is not None and stage.get("fingerprint") == fp and os.path.exists(paths["npz"]):
    distilled = DistilledSet.load(paths["npz"])
    distill_seconds, distill_machine = stage["distill_seconds"], stage["machine"]
    logger.info("%s: reusing the distilled set saved before the interruption", cell.name)
  else:
    ckpt = os.path.join(paths["checkpoint"], _digest(fp))
    stopper = _Deadline(deadline)
    ctx = {"progress": progress, "checkpoint_dir": ckpt if s["algorithm"] == "kip" else None,
           "callback": stopper}
    t = time.time()
    try:
      distilled = DISTILLERS[s["algorithm"]](ds, cell.ipc, s.get("distill", {}), seed, ctx)
    except KeyboardInterrupt:
      if stopper.fired:
        raise BudgetSpent("KIP distillation, checkpointed") from None
      raise
    distill_seconds, distill_machine = time.time() - t, common.machine()
    distilled.save(paths["npz"])
    distilled.grid(paths["png"], class_names=ds.class_names)
    common.write_json(paths["stage"], {"fingerprint": fp, "distill_seconds": distill_seconds,
                                       "machine": distill_machine})
  rec: dict[str, Any] = {"kind": CELL_KIND, "method": cell.method, "ipc": cell.ipc,
                         "label": s.get("label", cell.method), "fingerprint": fp,
                         "distill_seconds": distill_seconds, "num_images": len(distilled),
                         "distilled": os.path.relpath(paths["npz"], out),
                         "distill_steps": distilled.metadata.get("steps"),
                         "grid": os.path.relpath(paths["png"], out), "krr": None,
                         "finite": None}
  if s.get("krr") is not None:
    rec["krr"] = _krr(distilled, ds, s["krr"])
    logger.info("%s: KRR %.2f %%", cell.name, 100 * rec["krr"]["accuracy"])
  if s.get("finite") is not None:
    n_test = config.get("finite_num_test")
    ds_finite = ds if not n_test else ds.subset(n_test=int(n_test), seed=seed)
    rec["finite"] = _finite(distilled, ds_finite, cell.ipc, s["finite"], seed, progress,
                            stage_path=paths["finite_stage"], fp=fp, deadline=deadline)
    logger.info("%s: finite %.2f +- %.2f %% (%d restarts)", cell.name,
                100 * rec["finite"]["mean"], 100 * rec["finite"]["std"],
                rec["finite"]["restarts"])
  rec["eval_seconds"] = sum(r["seconds"] for r in (rec["krr"], rec["finite"]) if r)
  rec["seconds"] = rec["distill_seconds"] + rec["eval_seconds"]
  rec["machine"] = {**common.machine(), "device_label": device_label()}
  rec["distill_machine"] = distill_machine
  rec["command"] = command
  rec["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
  common.write_json(paths["cell"], _jsonable(rec))
  if os.path.exists(paths["finite_stage"]):
    os.remove(paths["finite_stage"])
  if os.path.isdir(paths["checkpoint"]):
    shutil.rmtree(paths["checkpoint"])
  return rec


def device_label() -> str:
  """``'NVIDIA H100 80GB HBM3'`` on an accelerator, ``'CPU, 2 cores'`` on the CPU."""
  import jax
  d = jax.devices()[0]
  if d.platform == "cpu":
    return f"CPU, {os.cpu_count()} cores"
  return f"{getattr(d, 'device_kind', d.platform)}" + (
      f" x{jax.device_count()}" if jax.device_count() > 1 else "")


class BudgetSpent(Exception):
  """The ``--max-minutes`` budget ran out inside a (checkpointed) cell."""


def _jsonable(obj):
  return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist")
                               else repr(o)))


# ------------------------------------------------------------------------------ tables
def _pct(x: Optional[float]) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def _protocol(finite: Mapping[str, Any]) -> str:
  """Short description of a finite-network protocol, e.g. ``fc/kip 1000 steps x3``."""
  if finite.get("protocol") == "dd":
    return f"{finite.get('model') or 'distillation model'}, DD learned steps"
  ro = finite.get("recipe_overrides") or {}
  length = (f"{ro['steps']} steps" if "steps" in ro else f"{ro['epochs']} ep" if "epochs" in ro
            else "preset length")
  mk = finite.get("model_kwargs")
  model = finite.get("model", "convnet") + (
      "(" + ",".join(f"{k}={v}" for k, v in mk.items()) + ")" if mk else "")
  extra = ", aug" if finite.get("augment") else ""
  extra += ", new subset per net" if finite.get("fresh_subsets") else ""
  return f"{model}/{finite.get('recipe', 'dc')} {length}{extra}"


def _distill_summary(s: Mapping[str, Any]) -> str:
  d = s.get("distill", {})
  algo = s["algorithm"]
  if algo == "kip":
    k = d.get("kernel", {})
    kern = k if isinstance(k, str) else f"{k.get('architecture')}-{k.get('depth', '')}"
    return (f"{d.get('steps', 1000)} steps, {kern} {d.get('get', 'ntk')}, lr "
            f"{d.get('learning_rate', 0.01)}, batch {d.get('target_batch_size', 1000)}")
  if algo == "ls":
    k = d.get("kernel", {})
    return f"closed form, {k if isinstance(k, str) else k.get('architecture')} kernel"
  if algo in ("dc", "dsa", "dm"):
    mk = d.get("model_kwargs")
    return (f"{d.get('steps', 'default')} steps" +
            (", " + ",".join(f"{k}={v}" for k, v in mk.items()) if mk else ""))
  if algo == "dd":
    return f"{d.get('steps', 23600)} outer steps, {d.get('model', 'lenet')}"
  return "selection"


def render_table(config: Mapping[str, Any], records: Sequence[Optional[dict]],
                 cells: Sequence[Cell]) -> tuple[str, str]:
  """``(table, caption)`` in Markdown; unfinished cells are listed in the caption."""
  fmnist = config["dataset"]["name"] == "fashion_mnist"
  header = ["method", "IPC", "KRR %", "published KRR %", "finite % (mean ± std)",
            "published finite %", "finite protocol", "distil s", "eval s", "device"]
  rows, pending, devices = [], [], set()
  for cell, rec in zip(cells, records):
    if rec is None:
      pending.append(cell.name)
      continue
    s = cell.settings
    anchors = s.get("anchor", {})
    pub = lambda kind: (common.anchor(anchors[kind], cell.ipc)  # noqa: E731
                        if fmnist and anchors.get(kind) else "-")
    fin = rec.get("finite")
    fin_txt = "-" if not fin else (f"{100 * fin['mean']:.1f} ± {100 * fin['std']:.1f} "
                                   f"(n={fin['restarts']})")
    device = rec["machine"].get("device_label", rec["machine"]["device"])
    devices.add(device)
    rows.append([rec.get("label", cell.method), cell.ipc,
                 _pct(rec["krr"]["accuracy"]) if rec.get("krr") else "-", pub("krr"), fin_txt,
                 pub("finite"), _protocol(s["finite"]) if s.get("finite") else "-",
                 f"{rec['distill_seconds']:.0f}", f"{rec['eval_seconds']:.0f}", device])
  table = common.markdown_table(header, rows)
  ds = config["dataset"]
  size = ", ".join(f"{k} {ds[k]}" for k in ("n_train", "n_test") if ds.get(k))
  if config.get("finite_num_test"):
    size += (", " if size else "") + (f"finite networks tested on {config['finite_num_test']} "
                                      "class-balanced test images")
  prep = ds.get("preprocess", "standardize")
  lines = [f"{config.get('title', config['name'])}: {ds['name']} ({prep}"
           f"{', ' + size if size else ''}), test accuracy %, seed {config.get('seed', 0)}."]
  if config.get("caption"):
    lines.append(config["caption"])
  for method, why in config.get("omitted", {}).items():
    lines.append(f"Not in this tier: {method} ({why}).")
  lines.append("Published numbers: ANCHORS.md via benchmarks/common.py (Fashion-MNIST; '(?)' = "
               "secondary source)" + ("" if fmnist else "; not shown: this is not Fashion-MNIST")
               + ".")
  settings = []
  for cell in cells:
    if cell.ipc == min(c.ipc for c in cells if c.method == cell.method):
      same = [c for c in cells if c.method == cell.method]
      distil = "; ".join(f"IPC {c.ipc}: {_distill_summary(c.settings)}" for c in same)
      settings.append(f"{cell.method}: {distil}")
  lines.append("Settings used: " + " | ".join(settings) + ".")
  if pending:
    lines.append(f"Not yet run: {', '.join(pending)}.")
  return table, "\n".join(lines)


# ------------------------------------------------------------------------------ the suite
def load_dataset(config: Mapping[str, Any]):
  import kip
  d = dict(config["dataset"])
  name = d.pop("name")
  return kip.data.load(name, **{k: v for k, v in d.items() if v is not None})


def run_suite(config: Mapping[str, Any], out: str, *, only=None, ipcs=None,
              max_minutes: Optional[float] = None, progress: bool = False,
              command: str = "", write_results: bool = True,
              results_dir: str = common.RESULTS_DIR) -> dict[str, Any]:
  """Runs the unfinished cells, then writes ``OUT/table.md``, ``OUT/suite.json`` (and RESULTS.md).

  Returns:
    The suite summary (``table``, ``caption``, ``computed``, ``reused``, ``pending``...).
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
    computed.append(cell.name)
  if stopped:
    logger.warning("stopping: %s; run the same command again to continue.", stopped)
  summary = write_suite(config, out, command=command)
  summary.update(computed=computed, stopped=stopped, seconds=time.time() - start)
  if write_results:
    write_results_md(results_dir)
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
      "commands": sorted({r.get("command") or "?" for r in done}),
      "finished": [min((r["finished_utc"] for r in done), default=None),
                   max((r["finished_utc"] for r in done), default=None)],
      "total_seconds": sum(r["seconds"] for r in done), "machine": common.machine(),
      "written_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(caption + "\n\n" + table + "\n")
  common.write_json(os.path.join(out, "suite.json"), _jsonable(summary))
  return summary


# ------------------------------------------------------------------------------ RESULTS.md
def _rel(path: str, start: str) -> str:
  return os.path.relpath(path, start).replace(os.sep, "/")


def _args_command(module: str, args: Mapping[str, Any]) -> str:
  parts = ["python -m", module]
  for k, v in args.items():
    flag = "--" + k.replace("_", "-")
    if isinstance(v, bool):
      parts += [flag] if v else []
    elif isinstance(v, (list, tuple)):
      parts += [flag] + [shlex.quote(str(x)) for x in v]
    elif v is not None:
      if k == "out" or k == "json":
        v = _rel(str(v), os.path.dirname(BENCH_DIR)) if os.path.isabs(str(v)) else v
      parts += [flag, shlex.quote(str(v))]
  return " ".join(parts)


def _machine_line(machine: Optional[Mapping[str, Any]], when: Optional[str]) -> str:
  if not machine:
    return f"machine not recorded{', ' + when if when else ''}"
  bits = [machine.get("device", "?")]
  if machine.get("cpu_count"):
    bits.append(f"{machine['cpu_count']} CPU cores")
  if machine.get("jax"):
    bits.append(f"jax {machine['jax']}")
  return ", ".join(bits) + f"; {machine.get('time_utc') or when or 'time not recorded'}"


def _mtime(path: str) -> str:
  return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(path)))


def _pngs(directory: str, start: str, exclude: Sequence[str] = ()) -> list[str]:
  return [f"[{os.path.basename(p)}]({_rel(p, start)})"
          for p in sorted(glob.glob(os.path.join(directory, "*.png"))) if p not in exclude]


def _render_generic(data: Mapping[str, Any]) -> Optional[str]:
  """A table for result JSON without a ``table``: a ``results`` list of flat dicts, or scalars."""
  rows = data.get("results")
  if isinstance(rows, list) and rows and all(isinstance(r, Mapping) for r in rows):
    cols = [k for k in rows[0] if all(not isinstance(r.get(k), (dict, list)) for r in rows)]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return common.markdown_table(cols, [[fmt(r.get(c, "")) for c in cols] for r in rows])
  scalars = {k: v for k, v in data.items() if isinstance(v, (int, float, str)) and k != "kind"}
  if scalars:
    return common.markdown_table(["key", "value"], sorted(scalars.items()))
  return None


def _throughput_section(data: Mapping[str, Any]) -> str:
  rows = []
  for key in ("ours", "reference"):
    r = data.get(key)
    if r:
      rows.append([r.get("impl", key), r.get("jax", "?"), f"{r.get('fwd_pairs_per_s', 0):.1f}",
                   f"{r.get('grad_pairs_per_s', 0):.1f}", f"{r.get('peak_rss_mb', 0):.0f}"])
  table = common.markdown_table(["implementation", "jax", "fwd pairs/s", "fwd+grad pairs/s",
                                 "peak RSS MB"], rows)
  extra = []
  if "fwd_ratio" in data:
    extra.append(f"Speed-up vs neural-tangents: forward {data['fwd_ratio']:.2f}x, "
                 f"forward+gradient {data['grad_ratio']:.2f}x; max relative kernel difference "
                 f"{data.get('max_rel_diff', float('nan')):.1e}.")
  mem = data.get("memory")
  if mem and "grad_temp_bytes" in mem:
    extra.append(f"Gradient of a {mem.get('n1')} x {mem.get('n2')} block: XLA temporaries "
                 f"{mem['grad_temp_bytes'] / 2**30:.2f} GB.")
  return table + ("\n\n" + " ".join(extra) if extra else "")


_ORDER = ("suite_cpu", "suite_gpu", "baselines_cpu", "kip_cpu", "transfer_cpu", "cross_arch",
          "compression_sweep", "poisoning_cpu", "kernel_throughput")


def _section_key(path: str) -> tuple[int, str]:
  stem = os.path.splitext(os.path.basename(path))[0]
  parent = os.path.basename(os.path.dirname(path))
  for i, name in enumerate(_ORDER):
    if name in (stem, parent):
      return i, path
  return len(_ORDER), path


def collect_sections(results_dir: str, start: str) -> list[str]:
  """One Markdown section per result file under ``results_dir`` (links relative to ``start``)."""
  skip_dirs = {"cells", "distilled", "checkpoints"}
  paths = []
  for root, dirs, files in os.walk(results_dir):
    dirs[:] = sorted(d for d in dirs if d not in skip_dirs and not d.startswith("."))
    jsons = sorted(f for f in files
                   if f.endswith(".json") and not f.endswith(".npz.json") and not f.startswith("."))
    # A benchmark's own folder (X/X.json or a suite's suite.json): its summary only, not the
    # per-cell files beside it.
    for summary in (os.path.basename(root) + ".json", "suite.json"):
      if root != results_dir and summary in jsons:
        jsons = [summary]
        break
    paths += [os.path.join(root, f) for f in jsons]
  sections = []
  for path in sorted(paths, key=_section_key):
    data = _read_json(path)
    if not isinstance(data, Mapping):
      continue
    directory = os.path.dirname(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    rel = _rel(path, start)
    if data.get("kind") == SUITE_KIND:
      cmds = data.get("commands") or [data.get("command") or "?"]
      first, last = (data.get("finished") or [None, None])
      when = (f"cells finished {first} to {last}" if first and first != last
              else f"cells finished {first}" if first else "no cell finished yet")
      grids = [f"[{c['method']} IPC {c['ipc']}]({_rel(os.path.join(directory, c['grid']), start)})"
               for c in data.get("cells", [])]
      body = [f"## {data.get('title', data.get('name'))}", "",
              "Command: " + ", ".join(f"`{c}`" for c in cmds) +
              f". Machine: {', '.join(data.get('devices', [])) or '?'}; {when}; compute "
              f"{data.get('total_seconds', 0) / 60:.1f} min in all (sum of cell wall times). "
              f"Source: [{rel}]({rel}).", "", data.get("caption", ""), "",
              data.get("table", "")]
      if grids:
        body += ["", "Distilled images: " + ", ".join(grids) + "."]
      sections.append("\n".join(body))
      continue
    md_path = os.path.join(directory, stem + ".md")
    if "table" in data and isinstance(data["table"], str):
      table = data["table"]
    elif os.path.exists(md_path):
      with open(md_path) as f:
        table = f.read().strip()
    elif stem == "kernel_throughput":
      table = _throughput_section(data)
    else:
      table = _render_generic(data)
    if not table:
      continue
    machine = data.get("machine") if isinstance(data.get("machine"), Mapping) else None
    if machine is None and isinstance(data.get("ours"), Mapping):
      machine = {"device": data["ours"].get("device"), "jax": data["ours"].get("jax")}
    if "command" in data:
      command = data["command"]
    elif isinstance(data.get("args"), Mapping):
      module = "benchmarks." + (os.path.basename(directory) if stem == os.path.basename(directory)
                                else stem)
      command = _args_command(module, data["args"])
    else:
      command = f"python -m benchmarks.{stem}"
    title = data.get("title") or stem.replace("_", " ")
    body = [f"## {title}", "",
            f"Command: `{command}`. Machine: {_machine_line(machine, None)} (file written "
            f"{_mtime(path)}). Source: [{rel}]({rel}).", ""]
    if data.get("caption"):
      body += [data["caption"], ""]
    body.append(table)
    own_png = os.path.join(directory, stem + ".png")
    if os.path.exists(own_png):
      body += ["", f"![{stem}]({_rel(own_png, start)})"]
    if stem == os.path.basename(directory):  # a benchmark's own folder: link its grids
      pngs = _pngs(directory, start, exclude=[own_png])
      if pngs:
        body += ["", "Distilled images: " + ", ".join(pngs) + "."]
    sections.append("\n".join(body))
  return sections


def write_results_md(results_dir: str = common.RESULTS_DIR,
                     path: Optional[str] = None) -> str:
  """Assembles ``benchmarks/RESULTS.md`` from the result files under ``results_dir``."""
  path = path or RESULTS_MD
  start = os.path.dirname(os.path.abspath(path))
  sections = collect_sections(results_dir, start) if os.path.isdir(results_dir) else []
  text = "\n\n".join([
      "# Benchmark results",
      "Generated by `python -m benchmarks.run --write-results` on "
      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from the files under "
      f"`{_rel(results_dir, os.path.dirname(BENCH_DIR))}/`; do not edit by hand. Published "
      "numbers are those of the project's ANCHORS.md, as held in `benchmarks/common.py` "
      "(Fashion-MNIST; '(?)': secondary source, not yet confirmed against the paper). "
      "Every section names the command and machine that produced it.",
      *(sections or ["No results yet: run `python -m benchmarks.run --tier cpu`."])]) + "\n"
  from kip._src.io import atomic_write
  with atomic_write(path, "w") as f:
    f.write(text)
  logger.info("wrote %s (%d sections)", path, len(sections))
  return text


# ------------------------------------------------------------------------------ CLI
def default_out(config: Mapping[str, Any]) -> str:
  return os.path.join(common.RESULTS_DIR, f"suite_{config['name']}")


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
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
      print(write_results_md())
      return None
    p.error("give --tier, --config or --write-results")
  config = load_config(a.tier, a.config)
  out = a.out or default_out(config)
  if a.dry_run:
    for cell in plan(config, a.only, a.ipc):
      validate(cell)
      state = "done" if finished(config, cell, out) else "to run"
      print(f"{cell.name:20s} {state:7s} {json.dumps(cell.settings, sort_keys=True)}")
    return None
  command = "python -m benchmarks.run " + " ".join(shlex.quote(x) for x in argv)
  # RESULTS.md describes benchmarks/results/; a run written elsewhere (tests) leaves it alone.
  inside = os.path.abspath(out).startswith(os.path.abspath(common.RESULTS_DIR) + os.sep)
  summary = run_suite(config, out, only=a.only, ipcs=a.ipc, max_minutes=a.max_minutes,
                      progress=a.progress, command=command,
                      write_results=(inside or a.write_results) and not a.no_results_md)
  print("\n" + summary["caption"] + "\n")
  print(summary["table"])
  print(f"\n{len(summary['computed'])} cells computed in {summary['seconds'] / 60:.1f} min"
        + (f"; stopped: {summary['stopped']}" if summary["stopped"] else "") + f"; -> {out}")
  return summary


if __name__ == "__main__":
  main()
