"""KRR test accuracy against support size, from 1 image per class to a third of the training set.

For each images-per-class value (default 1, 10, 50, 100, 500, 2000: 10 to 20,000 of
Fashion-MNIST's 60,000 training images) and the FC kernel: KIP (learned labels; up to
``--kip-max-ipc``, fewer steps at larger sizes), LS (label solve on class-balanced real images;
up to ``--ls-max-ipc``, since it costs ``n_s^2 x N`` multiply-adds over the ``N`` training
images) and random real images with one-hot labels (every size). Every cell is kernel ridge
regression with the same kernel on the whole test split.

Nothing holds a dense support x training kernel: ``kip.krr.predict`` evaluates the test kernel
in blocks of ``--batch-size`` rows and ``kip.label_solve`` accumulates its normal equations
over blocks of training images; only ``K_ss`` is dense (20,000^2 float32 is 1.6 GB). KIP sets
of ``benchmarks.kip_cpu`` (``results/kip_cpu/kip_fc_ipc{ipc}.npz``) are evaluated instead of
re-distilled when they fit. Prints a table and the skipped cells with their reasons; writes
``OUT.json`` and ``OUT.png`` (accuracy against support size, log x).

  python -m benchmarks.compression_sweep [--ipc 1 10 50 100 500 2000] [--kip-max-ipc 100]
      [--ls-max-ipc 500] [--kip-steps ...] [--out benchmarks/results/compression_sweep]
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np

import kip
from benchmarks import common
from benchmarks.transfer_cpu import DEFAULT_KIP_DIR, load_saved_set

logger = logging.getLogger("benchmarks.compression_sweep")
METHODS = ("kip", "ls", "random")
LABELS = {"kip": "KIP (learned labels)", "ls": "LS (solved labels)",
          "random": "random real (one-hot)"}


def default_kip_steps(ipc: int) -> int:
  """Fewer KIP steps as the support grows (each step costs ~ n_s^3 + n_s x target batch)."""
  if ipc <= 10:
    return 1000
  if ipc <= 50:
    return 500
  if ipc <= 100:
    return 300
  if ipc <= 500:
    return 10
  return 2


def _plot(path: str, results: dict, num_train: int, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from kip._src.io import atomic_write

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for method, marker in zip(METHODS, ("o", "s", "^")):
    pts = [(c["support_size"], 100 * c["acc"]) for c in results[method] if "acc" in c]
    if pts:
      x, y = zip(*pts)
      ax.plot(x, y, marker=marker, label=LABELS[method])
  ax.set_xscale("log")
  ax.set_xlabel("support size (images)")
  ax.set_ylabel("KRR test accuracy (%)")
  ax.axvline(num_train, color="gray", lw=0.8, ls=":")
  ax.set_title(title, fontsize=9)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  with atomic_write(path, "wb") as f:
    fig.savefig(f, format="png", dpi=120)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--preprocess", default="standardize", choices=["standardize", "zca", "zca_centered", "none"])
  p.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50, 100, 500, 2000])
  p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
  p.add_argument("--kip-max-ipc", type=int, default=100)
  p.add_argument("--ls-max-ipc", type=int, default=500)
  p.add_argument("--kip-steps", type=int, nargs="+", default=None,
                 help="KIP steps for each --ipc value (one value: the same for all; default: "
                      "1000 up to IPC 10, 500 to 50, 100 to 100, 10 to 500, then 2)")
  p.add_argument("--kip-dir", default=None,
                 help="folder of saved kip_fc_ipc{ipc}.npz sets to evaluate instead of "
                      "distilling (default for fashion_mnist: results/kip_cpu; 'none': never)")
  p.add_argument("--lr", type=float, default=0.04)
  p.add_argument("--target-batch-size", type=int, default=2000)
  p.add_argument("--depth", type=int, default=3, help="FC kernel depth")
  p.add_argument("--get", default="ntk", choices=["ntk", "nngp"])
  p.add_argument("--reg", type=float, default=1e-6)
  p.add_argument("--batch-size", type=int, default=1000,
                 help="kernel rows per block for test predictions and label solve")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "compression_sweep"),
                 help="writes OUT.json and OUT.png")
  p.add_argument("--no-progress", action="store_true")
  a = p.parse_args(argv)
  common.setup_logging()
  if a.kip_steps is None:
    steps = {ipc: default_kip_steps(ipc) for ipc in a.ipc}
  elif len(a.kip_steps) in (1, len(a.ipc)):
    steps = dict(zip(a.ipc, a.kip_steps * (len(a.ipc) if len(a.kip_steps) == 1 else 1)))
  else:
    raise ValueError(f"--kip-steps has {len(a.kip_steps)} values for {len(a.ipc)} --ipc "
                     "values; give one, or one per --ipc value.")
  progress = not a.no_progress
  t_start = time.time()

  ds = kip.data.load(a.dataset, preprocess=a.preprocess)
  kernel = kip.kernels.fc(a.depth)
  num_train = len(ds.y_train)
  smallest = int(np.bincount(ds.y_train, minlength=ds.num_classes).min())
  kip_dir = a.kip_dir
  if kip_dir is None and a.dataset == "fashion_mnist":
    kip_dir = DEFAULT_KIP_DIR
  krr_args = dict(kernel=kernel, reg=a.reg, get=a.get, batch_size=a.batch_size)

  results = {m: [] for m in METHODS}
  skipped = []
  for ipc in sorted(set(a.ipc)):
    n_s = ipc * ds.num_classes
    for method in a.methods:
      cell = {"ipc": ipc, "support_size": n_s}
      reason = None
      if ipc > smallest:
        reason = f"IPC {ipc} exceeds the smallest class ({smallest} training images)"
      elif method == "kip" and ipc > a.kip_max_ipc:
        reason = (f"above --kip-max-ipc {a.kip_max_ipc} (each step factorises a "
                  f"{n_s:,} x {n_s:,} kernel)")
      elif method == "ls" and ipc > a.ls_max_ipc:
        reason = (f"above --ls-max-ipc {a.ls_max_ipc} (label solve: n_s^2 x N = "
                  f"{n_s ** 2 * num_train:.1e} multiply-adds)")
      if reason is not None:
        cell["skipped"] = reason
        results[method].append(cell)
        skipped.append((method, ipc, reason))
        logger.info("skip %s at IPC %d: %s", method, ipc, reason)
        continue
      t = time.time()
      if method == "kip":
        path = None if kip_dir in (None, "none") else os.path.join(kip_dir,
                                                                    f"kip_fc_ipc{ipc}.npz")
        s = load_saved_set(path, ds, ipc, architecture="fc", depth=a.depth)
        if s is not None and s.metadata.get("config", {}).get("get", a.get) != a.get:
          s = None
        if s is not None:
          cell["source"] = os.path.relpath(path)
          cell["steps"] = s.metadata.get("steps")
          cell["seconds_distill_recorded"] = s.metadata.get("seconds")
        else:
          s = kip.distill(ds, images_per_class=ipc, kernel=kernel, get=a.get, steps=steps[ipc],
                          learning_rate=a.lr, target_batch_size=a.target_batch_size,
                          reg=a.reg, seed=a.seed, progress=progress)
          cell["source"] = "distilled here"
          cell["steps"] = steps[ipc]
      elif method == "ls":
        s = kip.distill(ds, images_per_class=ipc, kernel=kernel, get=a.get, reg=a.reg,
                        seed=a.seed, mode="ls", progress=progress)
      else:
        s = kip.baselines.random_real(ds, ipc, a.seed)
      cell["seconds_distill"] = time.time() - t
      t = time.time()
      cell["acc"] = kip.evaluate.kernel_accuracy(s, ds, **krr_args)
      cell["seconds_eval"] = time.time() - t
      results[method].append(cell)
      logger.info("%s IPC %d (%d images): KRR %.4f (distil %.0f s, eval %.0f s)", method, ipc,
                  n_s, cell["acc"], cell["seconds_distill"], cell["seconds_eval"])

  def fmt(method, ipc):
    c = next((c for c in results[method] if c["ipc"] == ipc), None)
    if c is None:
      return "-"
    if "acc" not in c:
      return "skipped"
    extra = f", {c['steps']} steps" if method == "kip" else ""
    if method == "kip" and c.get("source") != "distilled here":
      extra += ", kip_cpu set"
    return f"{100 * c['acc']:.2f} ({c['seconds_distill'] + c['seconds_eval']:.0f} s{extra})"

  loaded = [str(c["ipc"]) for c in results["kip"] if c.get("source", "distilled here")
            != "distilled here"]
  loaded = (f" (KIP at IPC {', '.join(loaded)}: sets of benchmarks.kip_cpu loaded from "
            f"{os.path.relpath(kip_dir)}, evaluation only)") if loaded else ""
  header = ["IPC", "support size", "% of training set"] + [
      f"{LABELS[m]} KRR % (s)" for m in a.methods]
  rows = [[ipc, f"{ipc * ds.num_classes:,}", f"{100 * ipc * ds.num_classes / num_train:.2f}"]
          + [fmt(m, ipc) for m in a.methods] for ipc in sorted(set(a.ipc))]
  table = common.markdown_table(header, rows)
  caption = (f"{a.dataset}: KRR test accuracy on all {len(ds.y_test):,} test images against "
             f"support size, FC depth-{a.depth} {a.get.upper()}, reg {a.reg:g}, preprocessing "
             f"{a.preprocess}; times are distillation + evaluation seconds{loaded}; "
             f"{common.machine()['device']}")
  total = time.time() - t_start
  print(f"\n{caption}")
  print(table)
  if skipped:
    print("\nSkipped cells:")
    for method, ipc, reason in skipped:
      print(f"- {method} at IPC {ipc}: {reason}")
  print(f"\nTotal wall time {total:.0f} s.")
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  _plot(a.out + ".png", results, num_train,
        f"{a.dataset}, FC-{a.depth} {a.get.upper()} KRR ({num_train:,} training images: dotted)")
  common.write_json(a.out + ".json", {
      "args": vars(a), "machine": common.machine(), "caption": caption, "table": table,
      "num_train": num_train, "results": results,
      "skipped": [{"method": m, "ipc": i, "reason": r} for m, i, r in skipped],
      "total_seconds": total})
  return results


if __name__ == "__main__":
  main()
