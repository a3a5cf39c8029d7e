"""Cross-architecture matrix: how a support set was made (rows) x what is trained on it (columns).

Rows are support sets of the same size: KIP with the FC kernel, KIP with the ConvNet kernel,
LS (label solve, FC kernel), random real images, herding (and k-center, DC, DSA, DM on
request). Columns are finite networks trained on the set with one recipe (mean ± std over
``--restarts`` fresh initialisations, labels used as given) and kernel ridge regression with
the FC kernel. Every row is one fixed set; restarts vary the network initialisation only.
Every set made here is built by the ``kip.methods`` registry and run by its driver: ``ROW_SPECS``
maps a row to a registry method and its config options (:mod:`benchmarks.suite.methods`).

CPU defaults are small on purpose and printed in the table caption: few training steps at a
raised learning rate, reduced network widths (``--widths``; ``--preset-widths`` restores the
library presets), and no KIP-ConvNet row: the ConvNet NTK runs at about 10 to 50 pairs/s
with gradients on a CPU, so even one KIP step at 10 images per class (100 x 110 pairs) takes
over ten minutes. Add it with ``--include kip_convnet`` (``--convnet-steps`` steps distilled
here) or ``--kip-convnet-path`` (a set distilled elsewhere, e.g. on a GPU). Published
Fashion-MNIST ConvNet numbers of ../shared/ANCHORS.md are printed beside the ConvNet column.

  python -m benchmarks.cross_arch [--dataset fashion_mnist] [--ipc 10] [--restarts 2]
      [--steps 100] [--rows kip_fc ls random] [--cols fc convnet krr]
      [--include kip_convnet dc dsa dm] [--kip-convnet-path SET.npz]
      [--out benchmarks/results/cross_arch]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Optional

import kip
from benchmarks import common
from benchmarks.suite import methods as suite_methods
from benchmarks.transfer_cpu import DEFAULT_KIP_DIR, load_saved_set

logger = logging.getLogger("benchmarks.cross_arch")

ROWS = ("kip_fc", "kip_convnet", "ls", "random", "herding", "kcenter", "dc", "dsa", "dm")
# KIP-ConvNet is not a default row on the CPU: one KIP step at 10 images per class needs the
# ConvNet NTK and its gradient on 100 x 110 pairs, over ten minutes on two cores (measured).
# It runs with --include kip_convnet (distilled here) or --kip-convnet-path (a saved set).
DEFAULT_ROWS = ("kip_fc", "ls", "random", "herding")
NETS = ("fc", "convnet", "kip_convnet", "lenet", "alexnet", "resnet")
COLS = NETS + ("krr",)
DEFAULT_COLS = ("fc", "convnet", "lenet", "alexnet", "resnet", "krr")
# The width attribute of each preset model (LeNet has none).
WIDTH_FIELD = {"fc": "width", "convnet": "width", "kip_convnet": "width", "alexnet": "width2",
               "resnet": "width"}
CPU_WIDTHS = ("fc=512", "convnet=32", "alexnet=32", "resnet=8")
ROW_NAMES = {"kip_fc": "KIP, FC kernel", "kip_convnet": "KIP, ConvNet kernel",
             "ls": "LS, FC kernel", "random": "random real", "herding": "herding (pixels)",
             "kcenter": "k-center (pixels)", "dc": "DC", "dsa": "DSA", "dm": "DM"}
ANCHOR_KEY = {"kip_convnet": "kip_transfer", "ls": "ls_transfer", "random": "random",
              "herding": "herding", "kcenter": "kcenter", "dc": "dc", "dsa": "dsa", "dm": "dm"}


def _parse_widths(tokens) -> dict[str, dict[str, int]]:
  out = {}
  for tok in tokens:
    name, _, value = tok.partition("=")
    if name not in WIDTH_FIELD or not value.isdigit():
      raise ValueError(f"--widths entry {tok!r}: use MODEL=INT with MODEL one of "
                       f"{sorted(WIDTH_FIELD)}.")
    out[name] = {WIDTH_FIELD[name]: int(value)}
  return out


@dataclasses.dataclass(frozen=True)
class Row:
  """How a row's set is made: a registry method, its options and a note for the table.

  Attributes:
    method: ``kip.methods`` registry name.
    options: ``(args, fc_kernel, model_kwargs) -> distill options`` (fields of the method's
      config and ``kernel``, see :mod:`benchmarks.suite.methods`).
    note: ``(config) -> str`` shown beside the row name (``None``: no note).
    saved: ``(args) -> (path, load_saved_set keywords)`` of a set distilled elsewhere, used
      when it fits (``None``: always distilled here).
    save: whether a set distilled here is saved under ``--sets-dir``.
  """
  method: str
  options: Optional[Callable[..., dict]] = None
  note: Optional[Callable[[Any], str]] = None
  saved: Optional[Callable[..., tuple]] = None
  save: bool = False


def _kip_fc_saved(a) -> tuple:
  path = a.kip_fc_path
  if path is None and a.dataset == "fashion_mnist":
    path = os.path.join(DEFAULT_KIP_DIR, f"kip_fc_ipc{a.ipc}.npz")
  return path, {"architecture": "fc", "depth": a.fc_depth}


def _matching(method: str, iterations: str) -> Row:
  """DC, DSA or DM on the (width-overridden) ConvNet, ``args.<iterations>`` steps."""
  return Row(method,
             lambda a, k, mk: {"steps": getattr(a, iterations),
                               "model_kwargs": mk.get("convnet", {})},
             lambda c: f"{c.steps} iterations, ConvNet {dict(c.model_kwargs) or 'preset'}",
             save=True)


ROW_SPECS: dict[str, Row] = {
    "kip_fc": Row(
        "kip", lambda a, k, mk: {"kernel": k, "steps": a.kip_fc_steps, "learning_rate": a.lr,
                                 "target_batch_size": a.target_batch_size, "reg": a.reg},
        lambda c: f"{c.steps} steps, target batch {c.target_batch_size}",
        saved=_kip_fc_saved, save=True),
    "kip_convnet": Row(
        "kip", lambda a, k, mk: {"kernel": kip.kernels.convnet(), "steps": a.convnet_steps,
                                 "learning_rate": a.lr, "reg": a.reg,
                                 "target_batch_size": a.convnet_target_batch_size},
        lambda c: f"only {c.steps} step{'s' * (c.steps != 1)}, target batch "
                  f"{c.target_batch_size}",
        saved=lambda a: (a.kip_convnet_path, {"architecture": "convnet"}), save=True),
    "ls": Row("ls", lambda a, k, mk: {"kernel": k, "reg": a.reg}),
    "random": Row("random"),
    "herding": Row("herding"),
    "kcenter": Row("kcenter"),
    "dc": _matching("dc", "dc_iterations"),
    "dsa": _matching("dsa", "dc_iterations"),
    "dm": _matching("dm", "dm_iterations"),
}


def _make_sets(a, ds, rows, fc_kernel, model_kwargs, sets_dir, progress):
  """Builds (or loads) the support set of every row; returns ``{row: (set, note, seconds)}``.

  Every set distilled here is built by the ``kip.methods`` registry and run by its driver
  (:func:`benchmarks.suite.methods.distill`), keyed by ``--seed``.
  """
  sets = {}
  for row in rows:
    if row not in ROW_SPECS:
      raise ValueError(f"unknown row {row!r}; rows: {list(ROWS)}.")
    spec = ROW_SPECS[row]
    t = time.time()
    s = None
    if spec.saved is not None:
      path, expect = spec.saved(a)
      s = load_saved_set(path, ds, a.ipc, **expect)
      if s is not None:
        note = f"{s.metadata.get('steps')} steps, loaded from {os.path.relpath(path)}"
    if s is None:
      options = spec.options(a, fc_kernel, model_kwargs) if spec.options else {}
      method = suite_methods.resolve(spec.method, a.ipc, options)
      s = suite_methods.distill(method, ds, key=a.seed, progress=progress)
      note = spec.note(method.config) if spec.note else ""
      if spec.save:
        os.makedirs(sets_dir, exist_ok=True)
        s.save(os.path.join(sets_dir, f"{row}_ipc{a.ipc}.npz"))
    seconds = time.time() - t
    logger.info("row %s ready in %.0f s %s", row, seconds, note)
    sets[row] = (s, note, seconds)
  return sets


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--preprocess", default="standardize",
                 choices=["standardize", "zca", "zca_centered", "none"])
  p.add_argument("--ipc", type=int, default=10)
  p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=ROWS)
  p.add_argument("--include", nargs="*", default=[], choices=ROWS,
                 help="rows added to --rows (e.g. dc dsa dm)")
  p.add_argument("--cols", nargs="+", default=list(DEFAULT_COLS), choices=COLS)
  p.add_argument("--restarts", type=int, default=2)
  p.add_argument("--recipe", default="kip", help="kip.transfer recipe for every network")
  p.add_argument("--steps", type=int, default=100, help="SGD steps per network (recipe "
                 "override; 0 keeps the preset's length, 5,000 for 'kip')")
  p.add_argument("--train-lr", type=float, default=0.05,
                 help="recipe learning-rate override for the short CPU schedule (0: the "
                      "preset's, 0.01 for 'kip')")
  p.add_argument("--widths", nargs="*", default=list(CPU_WIDTHS),
                 help="MODEL=INT width overrides (alexnet: second conv's channels)")
  p.add_argument("--preset-widths", action="store_true",
                 help="ignore --widths; use the library presets (ConvNet 128, ...)")
  p.add_argument("--num-test", type=int, default=None,
                 help="class-balanced test subset for every column (default: all)")
  p.add_argument("--seed", type=int, default=0)
  # Distillation settings.
  p.add_argument("--fc-depth", type=int, default=3, help="FC kernel depth (KIP-FC, LS, KRR)")
  p.add_argument("--lr", type=float, default=0.04, help="KIP learning rate")
  p.add_argument("--reg", type=float, default=1e-6)
  p.add_argument("--target-batch-size", type=int, default=2000, help="KIP-FC target batch")
  p.add_argument("--kip-fc-path", default=None,
                 help="saved KIP-FC set (default for fashion_mnist: results/kip_cpu/"
                      "kip_fc_ipc{ipc}.npz); 'none' distils here")
  p.add_argument("--kip-fc-steps", type=int, default=1000)
  p.add_argument("--kip-convnet-path", default=None,
                 help="saved KIP-ConvNet set (adds the kip_convnet row)")
  p.add_argument("--convnet-steps", type=int, default=1,
                 help="KIP-ConvNet steps when distilling here (slow on CPU)")
  p.add_argument("--convnet-target-batch-size", type=int, default=10)
  p.add_argument("--dc-iterations", type=int, default=10, help="DC / DSA iterations")
  p.add_argument("--dm-iterations", type=int, default=200)
  p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "cross_arch"),
                 help="writes OUT.json and OUT.md")
  p.add_argument("--sets-dir", default=None,
                 help="where distilled sets are saved (default OUT_sets/)")
  p.add_argument("--no-progress", action="store_true")
  a = p.parse_args(argv)
  common.setup_logging()
  progress = not a.no_progress
  extra = ["kip_convnet"] if a.kip_convnet_path else []
  rows = list(dict.fromkeys(list(a.rows) + list(a.include) + extra))
  cols = list(dict.fromkeys(a.cols))
  model_kwargs = {} if a.preset_widths else _parse_widths(a.widths)
  sets_dir = a.sets_dir or a.out + "_sets"
  t_start = time.time()

  ds = kip.data.load(a.dataset, preprocess=a.preprocess)
  eval_ds = ds if a.num_test is None else ds.subset(None, a.num_test, seed=a.seed)
  fc_kernel = kip.kernels.fc(a.fc_depth)
  overrides = {} if not a.steps else {"steps": a.steps}
  if a.train_lr:
    overrides["learning_rate"] = a.train_lr
  recipe = kip.transfer.get_recipe(a.recipe, **overrides)

  sets = _make_sets(a, ds, rows, fc_kernel, model_kwargs, sets_dir, progress)
  cells: dict[str, dict[str, dict]] = {r: {} for r in rows}
  for row in rows:
    s = sets[row][0]
    for col in cols:
      if col == "krr":
        t = time.time()
        acc = kip.evaluate.kernel_accuracy(s, eval_ds, kernel=fc_kernel, reg=a.reg)
        cells[row][col] = {"mean": acc, "std": 0.0, "accuracies": [acc],
                           "seconds": time.time() - t}
        logger.info("%s x KRR: %.4f", row, acc)
        continue
      try:
        res = kip.transfer.evaluate(s, eval_ds, model=col, recipe=recipe, restarts=a.restarts,
                                    seed=a.seed, model_kwargs=model_kwargs.get(col),
                                    progress=progress)
        cells[row][col] = res.to_dict()
      except ValueError as e:  # a diverged network is a result, not a crash
        if "diverged" not in str(e):
          raise
        logger.warning("%s x %s diverged: %s", row, col, e)
        cells[row][col] = {"mean": None, "std": None, "error": str(e)}

  fashion = a.dataset == "fashion_mnist"
  header = ["set (how distilled)"] + [c if c != "krr" else f"KRR (FC-{a.fc_depth} NTK)"
                                      for c in cols]
  if fashion and "convnet" in cols:
    header.append(f"published ConvNet, IPC {a.ipc}")
  header.append("distil s")
  table_rows = []
  for row in rows:
    s, note, seconds = sets[row]
    name = ROW_NAMES[row] + (f" ({note})" if note else "")
    line = [name]
    for col in cols:
      c = cells[row][col]
      if c.get("mean") is None:
        line.append("diverged")
      elif col == "krr":
        line.append(f"{100 * c['mean']:.2f}")
      else:
        line.append(f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}")
    if fashion and "convnet" in cols:
      line.append(common.anchor(ANCHOR_KEY[row], a.ipc) if row in ANCHOR_KEY else "-")
    line.append(f"{seconds:.0f}")
    table_rows.append(line)
  table = common.markdown_table(header, table_rows)
  widths = ", ".join(f"{m} {kw}" for m, kw in model_kwargs.items() if m in cols) or "presets"
  caption = (f"{a.dataset}, {a.ipc} images per class ({a.ipc * ds.num_classes} images): test "
             f"accuracy % on {len(eval_ds.y_test):,} test images. Finite networks: mean ± std "
             f"over {a.restarts} restarts, recipe '{recipe.name}' ({recipe.loss}, lr "
             f"{recipe.learning_rate} {recipe.schedule}, batch {recipe.batch_size}, "
             f"{recipe.num_steps(a.ipc * ds.num_classes)} steps), labels used as given; "
             f"width overrides: {widths}. KRR: FC depth-{a.fc_depth} NTK, reg {a.reg:g}. "
             f"Published numbers: ConvNet-3 (KIP/LS: ConvNet width 1024), full-length "
             f"protocols. {common.machine()['device']}.")
  notes = []
  if "kip_convnet" not in rows:
    notes.append("KIP, ConvNet kernel: not run (the ConvNet NTK with gradients is too slow for "
                 "a CPU default); add it with --include kip_convnet or --kip-convnet-path.")
  total = time.time() - t_start
  footer = "\n".join(notes + [f"Total wall time {total:.0f} s."])
  print(f"\n{caption}")
  print(table)
  print(f"\n{footer}")
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out + ".md", "w") as f:
    f.write(f"{caption}\n\n{table}\n\n{footer}\n")
  common.write_json(a.out + ".json", {
      "args": vars(a), "machine": common.machine(), "caption": caption, "table": table,
      "rows": rows, "cols": cols, "recipe": recipe.to_dict(), "model_kwargs": model_kwargs,
      "sets": {r: {"note": sets[r][1], "seconds": sets[r][2], "method": sets[r][0].method,
                   "num_images": len(sets[r][0])} for r in rows},
      "cells": cells, "notes": notes, "total_seconds": total})
  return cells


if __name__ == "__main__":
  main()
