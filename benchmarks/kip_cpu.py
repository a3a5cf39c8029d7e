"""KIP with the FC kernel on Fashion-MNIST on the CPU, beside LS and random real support.

For each images-per-class value: KIP (learned labels), label solve (LS) on class-balanced real
images, and random real images with one-hot labels, all evaluated by kernel ridge regression
with the same kernel on the 10,000 test images. Prints one table with wall times and the
published KIP ConvNet-kernel numbers of ../shared/ANCHORS.md; writes JSON and PNG grids to
benchmarks/results/.

  python -m benchmarks.kip_cpu [--ipc 1 10 50] [--steps 2000]
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import kip
from benchmarks import common

logger = logging.getLogger("benchmarks.kip_cpu")
TARGETS = {1: 82.0, 10: 87.0, 50: 88.5}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
  p.add_argument("--steps", type=int, nargs="+", default=[2000, 2000, 2000],
                 help="KIP steps for each --ipc value (one value: the same for all)")
  p.add_argument("--lr", type=float, default=0.04)
  p.add_argument("--target-batch-size", type=int, default=2000)
  p.add_argument("--depth", type=int, default=3)
  p.add_argument("--get", default="ntk", choices=["ntk", "nngp"])
  p.add_argument("--preprocess", default="standardize", choices=["standardize", "zca", "zca_centered", "none"])
  p.add_argument("--reg", type=float, default=1e-6)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "kip_cpu"))
  p.add_argument("--no-progress", action="store_true")
  a = p.parse_args(argv)
  common.setup_logging()
  steps = dict(zip(a.ipc, a.steps if len(a.steps) == len(a.ipc) else a.steps[:1] * len(a.ipc)))

  ds = kip.data.load("fashion_mnist", preprocess=a.preprocess)
  kernel = kip.kernels.fc(a.depth)
  rows, results = [], []
  for ipc in a.ipc:
    t = time.time()
    distilled = kip.distill(ds, images_per_class=ipc, kernel=kernel, get=a.get,
                            steps=steps[ipc], learning_rate=a.lr,
                            target_batch_size=a.target_batch_size, reg=a.reg, seed=a.seed,
                            progress=not a.no_progress)
    t_kip = time.time() - t
    acc_kip = kip.evaluate.kernel_accuracy(distilled, ds)
    t = time.time()
    ls = kip.distill(ds, images_per_class=ipc, kernel=kernel, get=a.get, reg=a.reg,
                     seed=a.seed, mode="ls", progress=False)
    t_ls = time.time() - t
    acc_ls = kip.evaluate.kernel_accuracy(ls, ds)
    rand = kip.baselines.random_real(ds, ipc, a.seed)
    acc_rand = kip.evaluate.kernel_accuracy(rand, ds, kernel=kernel, get=a.get, reg=a.reg)
    os.makedirs(a.out, exist_ok=True)
    distilled.save(os.path.join(a.out, f"kip_fc_ipc{ipc}.npz"))
    distilled.grid(os.path.join(a.out, f"kip_fc_ipc{ipc}.png"), class_names=ds.class_names)
    target = TARGETS.get(ipc)
    rows.append([ipc, f"{100 * acc_kip:.2f}", f"{t_kip:.0f}", steps[ipc],
                 f"{100 * acc_ls:.2f}", f"{t_ls:.0f}", f"{100 * acc_rand:.2f}",
                 common.anchor("kip_krr", ipc), common.anchor("ls_krr", ipc),
                 "-" if target is None else f">= {target}"])
    results.append({"ipc": ipc, "kip_acc": acc_kip, "kip_seconds": t_kip, "steps": steps[ipc],
                    "ls_acc": acc_ls, "ls_seconds": t_ls, "random_acc": acc_rand,
                    "target": target})
    logger.info("IPC %d: KIP %.4f (%.0f s), LS %.4f, random %.4f", ipc, acc_kip, t_kip, acc_ls,
                acc_rand)
  header = ["IPC", "KIP-FC KRR %", "KIP s", "steps", "LS KRR %", "LS s", "random KRR %",
            "published KIP ConvNet KRR", "published LS ConvNet KRR", "target"]
  table = common.markdown_table(header, rows)
  print(f"\nFashion-MNIST, FC kernel (depth {a.depth}, {a.get}), KRR test accuracy on 10,000 "
        f"test images, preprocessing {a.preprocess}, {common.machine()['device']}")
  print(table)
  common.write_json(os.path.join(a.out, "kip_cpu.json"),
                    {"args": vars(a), "machine": common.machine(), "results": results,
                     "table": table})


if __name__ == "__main__":
  main()
