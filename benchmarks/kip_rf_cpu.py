"""KIP with the random-feature ConvNet NNGP (RFAD-style) on Fashion-MNIST, on the CPU.

For each images-per-class value: KIP with ``kernel='convnet_rf'`` (fresh finite ConvNets drawn
every step, Platt loss with a learned temperature, centred labels, learned), time-boxed by the
driver; then

* seconds per step and the steps reached,
* KRR test accuracy on all 10,000 test images with the random-feature kernel (networks held
  fixed for the evaluation, ``--eval-models`` of them),
* finite ConvNet-3 (DC protocol: the reference DC ConvNet, padded for 28x28, instance norm;
  cross-entropy on ``argmax`` labels; SGD momentum 0.9, lr 0.01 dropped 10x at half, 300
  epochs, batch 256) test accuracy, mean +- std over ``--restarts`` networks, beside random real
  images of the same size under the same protocol and the published numbers of
  ../shared/ANCHORS.md.

Writes ``kip_rf_ipc{N}.npz`` / ``.png`` and ``kip_rf_cpu.json`` under ``--out``.

  python -m benchmarks.kip_rf_cpu [--ipc 1 10] [--budget-minutes 60 60] [--width 128]
      [--models 1] [--targets 1280] [--restarts 10 5] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import optax

import kip
from benchmarks import common

logger = logging.getLogger("benchmarks.kip_rf_cpu")
TARGETS = {1: 74.0, 10: 86.0}  # finite ConvNet-3, DC protocol (issue 13)
PUBLISHED = {  # ../shared/ANCHORS.md, Fashion-MNIST, after transfer to finite networks
    "kip_transfer": {1: "73.5", 10: "86.8"},
    "rfad": {1: "78.6", 10: "87.0"},
    "dsa": {1: "70.6", 10: "84.6"},
}


def _per_ipc(values, ipcs, what):
  if len(values) == 1:
    return {i: values[0] for i in ipcs}
  if len(values) != len(ipcs):
    raise SystemExit(f"--{what} takes one value or one per --ipc value; got {values}")
  return dict(zip(ipcs, values))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
  p.add_argument("--budget-minutes", type=float, nargs="+", default=[60.0])
  p.add_argument("--steps", type=int, default=100_000, help="upper bound; the budget decides")
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--models", type=int, default=1, help="networks drawn per step")
  p.add_argument("--eval-models", type=int, default=8, help="networks of the KRR evaluation")
  p.add_argument("--targets", type=int, default=1280, help="target images per step")
  p.add_argument("--loss", default="platt", choices=["platt", "mse"])
  p.add_argument("--lr", type=float, default=1e-3, help="AdaBelief learning rate (RFAD)")
  p.add_argument("--restarts", type=int, nargs="+", default=[10, 5])
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true",
                 help="a test: 500 training images, a few seconds of KIP, 1 short restart")
  p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "kip_rf_cpu"))
  p.add_argument("--no-progress", action="store_true")
  a = p.parse_args(argv)
  common.setup_logging()
  budgets = _per_ipc(a.budget_minutes, a.ipc, "budget-minutes")
  restarts = _per_ipc(a.restarts, a.ipc, "restarts")
  ds = kip.data.load("fashion_mnist")
  recipe_overrides = None
  if a.quick:
    ds = ds.subset(500, 200, seed=0)
    budgets = {i: 0.1 for i in a.ipc}
    restarts = {i: 1 for i in a.ipc}
    recipe_overrides = {"epochs": 2}
  rows, results = [], []
  for ipc in a.ipc:
    kernel = kip.kernels.convnet_rf(width=a.width, num_models=a.models)
    t = time.time()
    distilled = kip.distill(ds, images_per_class=ipc, kernel=kernel, get="nngp",
                            loss=a.loss, learn_labels=True, steps=a.steps,
                            optimizer=optax.adabelief(a.lr),
                            target_batch_size=min(a.targets, ds.x_train.shape[0]), seed=a.seed,
                            time_budget=60 * budgets[ipc], progress=not a.no_progress)
    seconds = time.time() - t
    steps = int(distilled.metadata["steps"])
    per_step = float(distilled.metadata["seconds"]) / max(steps, 1)
    eval_kernel = kip.kernels.convnet_rf(width=a.width, num_models=a.eval_models,
                                         fixed_seed=a.seed, batch_size=250)
    krr = kip.evaluate.kernel_accuracy(distilled, ds, eval_kernel, get="nngp")
    conv = kip.transfer.evaluate(distilled, ds, model="convnet", recipe="dc",
                                 restarts=restarts[ipc], seed=a.seed,
                                 recipe_overrides=recipe_overrides,
                                 progress=not a.no_progress)
    rand = kip.transfer.evaluate_random(ds, ipc, model="convnet", recipe="dc",
                                        restarts=restarts[ipc], seed=a.seed,
                                        recipe_overrides=recipe_overrides,
                                        progress=not a.no_progress)
    os.makedirs(a.out, exist_ok=True)
    distilled.save(os.path.join(a.out, f"kip_rf_ipc{ipc}.npz"))
    distilled.grid(os.path.join(a.out, f"kip_rf_ipc{ipc}.png"), class_names=ds.class_names)
    target = TARGETS.get(ipc)
    results.append({"ipc": ipc, "steps": steps, "seconds_per_step": per_step,
                    "distill_seconds": seconds, "budget_minutes": budgets[ipc],
                    "krr_rf_accuracy": krr, "convnet": conv.to_dict(),
                    "random_convnet": rand.to_dict(), "target": target,
                    "reached": bool(target is not None and 100 * conv.mean >= target)})
    rows.append([ipc, steps, f"{per_step:.2f}", f"{100 * krr:.2f}", str(conv), str(rand),
                 PUBLISHED["kip_transfer"].get(ipc, "-"), PUBLISHED["rfad"].get(ipc, "-"),
                 PUBLISHED["dsa"].get(ipc, "-"), "-" if target is None else f">= {target}"])
    logger.info("IPC %d: %d steps (%.2f s/step), RF KRR %.4f, ConvNet-3 %s, random %s", ipc,
                steps, per_step, krr, conv, rand)
  header = ["IPC", "steps", "s/step", "RF KRR %", "ConvNet-3 (ours)", "random real ConvNet-3",
            "published KIP transfer", "published RFAD", "published DSA", "target"]
  table = common.markdown_table(header, rows)
  logger.info("\nFashion-MNIST, KIP convnet_rf (width %d, %d model(s)/step, %d targets, %s "
              "loss)%s\n%s", a.width, a.models, a.targets, a.loss,
              " QUICK (not a result)" if a.quick else "", table)
  common.write_json(os.path.join(a.out, "kip_rf_cpu.json"),
                    {"args": vars(a), "machine": common.machine(), "results": results,
                     "table": table, "quick": a.quick})


if __name__ == "__main__":
  main()
