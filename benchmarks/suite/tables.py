"""The suite's Markdown table: our numbers beside the published ones, with a caption."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from benchmarks import common
from benchmarks.suite.plan import Cell

__all__ = ["render_table", "protocol_summary", "distill_summary", "load_ceilings", "ceiling_rows"]


def _pct(x: Optional[float]) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def protocol_summary(finite: Mapping[str, Any]) -> str:
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


def distill_summary(s: Mapping[str, Any]) -> str:
  """One line of distillation settings for the caption (unset ones: the method config's)."""
  from kip import methods as registry
  d = s.get("distill", {})
  algo = s["algorithm"]
  default = registry.get(algo).config_class()
  if algo == "kip":
    k = d.get("kernel", {})
    kern = k if isinstance(k, str) else f"{k.get('architecture')}-{k.get('depth', '')}"
    return (f"{d.get('steps', default.steps)} steps, {kern} {d.get('get', default.get)}, lr "
            f"{d.get('learning_rate', default.learning_rate)}, batch "
            f"{d.get('target_batch_size', default.target_batch_size)}")
  if algo == "ls":
    k = d.get("kernel", {})
    return f"closed form, {k if isinstance(k, str) else k.get('architecture')} kernel"
  if algo in ("dc", "dsa", "dm"):
    mk = d.get("model_kwargs")
    return (f"{d.get('steps', 'default')} steps" +
            (", " + ",".join(f"{k}={v}" for k, v in mk.items()) if mk else ""))
  if algo == "dd":
    return f"{d.get('steps', default.steps)} outer steps, {d.get('model', default.model)}"
  return "selection"


CEILINGS_JSON = "ceilings_cpu.json"  # written by benchmarks/ceilings.py


def load_ceilings(path: Optional[str] = None) -> dict[str, dict]:
  """The whole-training-set ceiling rows by network name (empty if none were measured)."""
  import json
  import os
  path = path or os.path.join(common.RESULTS_DIR, CEILINGS_JSON)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    data = json.load(f)
  if data.get("quick") or data.get("dataset") != "fashion_mnist":
    return {}
  return {r["model"]: r for r in data.get("rows", [])}


def ceiling_rows(models: Sequence[str], ceilings: Mapping[str, dict], width: int) -> list[list]:
  """One "whole training set" row per finite network of a table (``'-'`` if not measured)."""
  rows = []
  for m in models:
    r = ceilings.get(m)
    if r is None:
      fin, proto, secs, device = "not measured", f"{m}: no ceiling run yet", "-", "-"
    else:
      res = r["result"]
      fin = f"{r['test_accuracy']:.1f} (n=1, 10,000 test images)"
      proto = (f"{m}/ceiling {r['epochs']} ep, lr {res['recipe']['learning_rate']:.3g} "
               "(Whole-training-set ceilings)")
      secs, device = f"{r['seconds']:.0f}", "CPU, 2 cores"
    row = [f"whole training set ({m}; ceiling)", "all", "-", "-", fin, "-", proto, "-", secs,
           device]
    rows.append(row[:width])
  return rows


def render_table(config: Mapping[str, Any], records: Sequence[Optional[dict]],
                 cells: Sequence[Cell], ceilings: Optional[Mapping[str, dict]] = None
                 ) -> tuple[str, str]:
  """``(table, caption)`` in Markdown; unfinished cells are listed in the caption.

  On Fashion-MNIST the table ends with the whole-training-set ceiling of every finite network
  it uses (``ceilings``: rows by network name; default :func:`load_ceilings`).
  """
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
                 pub("finite"), protocol_summary(s["finite"]) if s.get("finite") else "-",
                 f"{rec['distill_seconds']:.0f}", f"{rec['eval_seconds']:.0f}", device])
  models = []
  for cell in cells:
    fin = cell.settings.get("finite") or {}
    if fin and fin.get("protocol") != "dd" and fin.get("model", "convnet") not in models:
      models.append(fin.get("model", "convnet"))
  if fmnist and models:
    rows += ceiling_rows(models, load_ceilings() if ceilings is None else ceilings,
                         len(header))
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
      distil = "; ".join(f"IPC {c.ipc}: {distill_summary(c.settings)}" for c in same)
      settings.append(f"{cell.method}: {distil}")
  lines.append("Settings used: " + " | ".join(settings) + ".")
  if fmnist and models:
    lines.append("Ceiling rows: the same network trained on the whole training set (minus a "
                 "5,000-image validation split) with the epoch-based ceiling protocol "
                 "(section 'Whole-training-set ceilings'), tested on all 10,000 test images; a "
                 "distilled set above its ceiling would mean the protocol is wrong.")
  if pending:
    lines.append(f"Not yet run: {', '.join(pending)}.")
  return table, "\n".join(lines)
