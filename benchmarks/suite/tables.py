"""The suite's Markdown table: our numbers beside the published ones, with a caption."""

from __future__ import annotations

import collections
from typing import Any, Mapping, Optional, Sequence

from benchmarks import common
from benchmarks.suite.evaluation import column, evaluations
from benchmarks.suite.plan import Cell

__all__ = ["render_table", "protocol_summary", "distill_summary", "load_ceilings", "ceiling_rows",
           "tuning_summary"]


def _pct(x: Optional[float]) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def protocol_summary(finite: Mapping[str, Any]) -> str:
  """Short description of a finite-network protocol, e.g. ``fc/kip 1000 steps, aug``."""
  if finite.get("protocol") == "dd":
    return f"{finite.get('model') or 'distillation model'}, DD learned steps"
  from kip import transfer
  recipe = transfer.get_recipe(finite.get("recipe", "dc"),
                               **(finite.get("recipe_overrides") or {}))
  length = f"{recipe.steps} steps" if recipe.steps is not None else f"{recipe.epochs} ep"
  mk = finite.get("model_kwargs")
  model = finite.get("model", "convnet") + (
      "(" + ",".join(f"{k}={v}" for k, v in mk.items()) + ")" if mk else "")
  extra = ", aug" if finite.get("augment") else ""
  extra += ", new subset per net" if finite.get("fresh_subsets") else ""
  tune = finite.get("tune")
  if tune:
    t = transfer.Tune(**tune) if isinstance(tune, Mapping) else transfer.Tune()
    search = "" if t.search_epochs is None else f", {t.search_epochs}-epoch search runs"
    extra += (f", lr = f x {t.lr_rule} rule and L2 tuned on {t.validation_size:,} training "
              f"images (f in {'/'.join(f'{v:g}' for v in t.lr_factors)}, L2 in "
              f"{'/'.join(f'{v:g}' for v in t.weight_decays)}{search})")
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


def ceiling_rows(models: Sequence[Optional[str]], ceilings: Mapping[str, dict],
                 width: int) -> list[list]:
  """One "whole training set" row per finite network of a table (``'-'`` if not measured).

  ``models[j]`` is the network of the table's ``j``-th finite column (``None``: no ceiling,
  e.g. DD's own networks); the ceiling goes in that column, after ``method, IPC, KRR %,
  published KRR %``.
  """
  rows = []
  for j, m in enumerate(models):
    if m is None or m in models[:j]:
      continue
    r = ceilings.get(m)
    if r is None:
      fin, proto, secs, device = "not measured", f"{m}: no ceiling run yet", "-", "-"
    else:
      res = r["result"]
      fin = f"{r['test_accuracy']:.1f} (n=1, 10,000 test images)"
      proto = (f"{m}/ceiling {r['epochs']} ep, lr {res['recipe']['learning_rate']:.3g} "
               "(Whole-training-set ceilings)")
      secs, device = f"{r['seconds']:.0f}", "CPU, 2 cores"
    cols = ["-"] * len(models)
    cols[j] = fin
    row = [f"whole training set ({m}; ceiling)", "all", "-", "-", *cols, "-", proto, "-", secs,
           device]
    rows.append(row[:width])
  return rows


def _columns(cells: Sequence[Cell]) -> list[tuple[str, Optional[str]]]:
  """The finite columns of a table in order of first use: ``(name, network)`` (network
  ``None`` for the DD protocol)."""
  cols: dict[str, Optional[str]] = {}
  for cell in cells:
    for f in evaluations(cell.settings.get("finite")):
      name = column(f)
      if name not in cols:
        cols[name] = (None if f.get("protocol", "transfer") == "dd"
                      else f.get("model", "convnet"))
  return list(cols.items())


def tuning_summary(cells: Sequence[Cell], records: Sequence[Optional[dict]]) -> list[str]:
  """One caption line per tuned column: the chosen lr factor / L2 of every finished row.

  A value on the edge of its search grid (``kip.transfer.grid_edges``: the best setting may lie
  outside the grid) is starred, and the line says how many rows have one.
  """
  from kip.transfer import grid_edges
  chosen: dict[str, list[str]] = {}
  starred: dict[str, int] = collections.Counter()
  for cell, rec in zip(cells, records):
    if rec is None:
      continue
    for f, r in zip(evaluations(cell.settings.get("finite")), evaluations(rec.get("finite"))):
      t = (r or {}).get("tuning")
      if not t or not t.get("chosen"):
        continue
      c, name = t["chosen"], r.get("column") or column(f)
      edges = " ".join(e.split()[0] for e in grid_edges(t.get("grid", []), c))
      star = lambda key: "*" if key in edges else ""  # noqa: E731
      chosen.setdefault(name, []).append(
          f"{cell.method} {cell.ipc}: {c['lr_factor']:g}{star('lr_factor')} / "
          f"{c['weight_decay']:g}{star('weight_decay')}")
      starred[name] += bool(edges)
  return [f"{name} tuning, chosen lr factor / L2 by method and IPC ({starred[name]} of "
          f"{len(v)} with a value on the grid's edge, starred: the best setting may lie "
          f"outside the grid): {'; '.join(v)}." for name, v in chosen.items()]


def _fin_text(r: Optional[Mapping[str, Any]]) -> str:
  if not r:
    return "-"
  return f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} (n={r['restarts']})"


def render_table(config: Mapping[str, Any], records: Sequence[Optional[dict]],
                 cells: Sequence[Cell], ceilings: Optional[Mapping[str, dict]] = None
                 ) -> tuple[str, str]:
  """``(table, caption)`` in Markdown; unfinished cells are listed in the caption.

  One column per finite evaluation (``column`` of each entry of a cell's ``finite``, in
  order of first use). Each column's most common protocol is stated once in the caption; a
  row's protocol entry names any other. On Fashion-MNIST the table ends
  with the whole-training-set ceiling of every finite network it uses (``ceilings``: rows by
  network name; default :func:`load_ceilings`).
  """
  fmnist = config["dataset"]["name"] == "fashion_mnist"
  cols = _columns(cells)
  names = [c for c, _ in cols]
  counts: dict[str, collections.Counter] = {c: collections.Counter() for c in names}
  for cell in cells:
    for f in evaluations(cell.settings.get("finite")):
      counts[column(f)][protocol_summary(f)] += 1
  # Each column's most common protocol goes in the caption; rows name any other.
  shared = {c: v.most_common(1)[0][0] for c, v in counts.items()}
  if len(names) == 1 and len(counts[names[0]]) > 1:
    shared = {}  # one column with several protocols: each row names its own
  header = ["method", "IPC", "KRR %", "published KRR %",
            *[f"{c} % (mean ± std)" for c in names], "published finite %",
            "finite protocol", "distil s", "eval s", "device"]
  if len(names) == 1:
    header[4] = "finite % (mean ± std)"
  rows, pending = [], []
  for cell, rec in zip(cells, records):
    if rec is None:
      pending.append(cell.name)
      continue
    s = cell.settings
    anchors = s.get("anchor", {})
    pub = lambda kind: (common.anchor(anchors[kind], cell.ipc)  # noqa: E731
                        if fmnist and anchors.get(kind) else "-")
    results = {r.get("column") or column(f): r for f, r in
               zip(evaluations(s.get("finite")), evaluations(rec.get("finite")))}
    own = [f"{column(f)}: {protocol_summary(f)}" if len(names) > 1 else protocol_summary(f)
           for f in evaluations(s.get("finite"))
           if shared.get(column(f)) != protocol_summary(f)]
    device = rec["machine"].get("device_label", rec["machine"]["device"])
    rows.append([rec.get("label", cell.method), cell.ipc,
                 _pct(rec["krr"]["accuracy"]) if rec.get("krr") else "-", pub("krr"),
                 *[_fin_text(results.get(c)) for c in names], pub("finite"),
                 "; ".join(own) or "as caption",
                 f"{rec['distill_seconds']:.0f}", f"{rec['eval_seconds']:.0f}", device])
  models = [m for _, m in cols]
  if fmnist and any(models):
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
  if shared:
    lines.append("Finite protocols (column: protocol, unless the row names another): " +
                 "; ".join(f"{c}: {p}" for c, p in shared.items()) + ".")
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
  if fmnist and any(models):
    lines.append("Ceiling rows: the same network trained on the whole training set (minus a "
                 "5,000-image validation split) with the epoch-based ceiling protocol "
                 "(section 'Whole-training-set ceilings'), tested on all 10,000 test images; a "
                 "distilled set above its ceiling would mean the protocol is wrong.")
  lines += tuning_summary(cells, records)
  if pending:
    lines.append(f"Not yet run: {', '.join(pending)}.")
  return table, "\n".join(lines)
