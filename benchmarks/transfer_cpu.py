"""Transfer of a KIP-FC set to a finite FC network on the CPU, beside LS and random real images.

The CPU target: on Fashion-MNIST, the KIP-FC set of 10 images per class (learned labels, used
as given) trains a fully connected network with the library's MSE recipe (``'kip'``) clearly
above random real images of the same size, both measured as mean ± std over 10 freshly
initialised networks (a new random subset for every random-real restart). Also shown: LS
(label solve on class-balanced real images) and, with ``--full`` (the default), one network
trained on the whole training set with the same recipe. KRR accuracy of each set with the
distillation kernel is printed beside the finite-network numbers, with the published
ConvNet-transfer numbers of ../shared/ANCHORS.md.

The KIP set is read from ``benchmarks/results/kip_cpu/kip_fc_ipc{ipc}.npz`` (written by
``benchmarks.kip_cpu``) when it exists and matches, else distilled here.

  python -m benchmarks.transfer_cpu [--ipc 10] [--restarts 10] [--train-steps 800]
      [--width 1024] [--no-full] [--kip-path PATH|none] [--json out.json]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time

import numpy as np

import kip
from benchmarks import common

logger = logging.getLogger("benchmarks.transfer_cpu")
DEFAULT_KIP_DIR = os.path.join(common.RESULTS_DIR, "kip_cpu")
# Welch t-statistic of (KIP - random) above which the gap counts as "clearly above".
CLEAR_T = 3.0


def _welch(a, b) -> tuple[float, float]:
  """``(mean(a) - mean(b), Welch t)`` with sample (ddof=1) variances."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  delta = float(a.mean() - b.mean())
  va = a.var(ddof=1) / len(a) if len(a) > 1 else 0.0
  vb = b.var(ddof=1) / len(b) if len(b) > 1 else 0.0
  se = math.sqrt(va + vb)
  return delta, (delta / se if se > 0 else math.inf if delta > 0 else -math.inf)


def _pct(result) -> str:
  n = len(result.accuracies)
  if n == 1:
    return f"{100 * result.mean:.2f} (1 restart)"
  return f"{100 * result.mean:.2f} ± {100 * result.std:.2f}"


def load_saved_set(path: str | None, ds, ipc: int, *, method: str = "kip",
                   architecture: str | None = "fc", depth: int | None = None):
  """The saved set at ``path`` if it fits (data set, size, method, kernel), else ``None``.

  A missing file, ``path`` None or ``'none'`` give ``None`` silently; a mismatch is logged.
  """
  if not path or path.lower() == "none" or not os.path.exists(path):
    return None
  distilled = kip.DistilledSet.load(path)
  spec = distilled.metadata.get("kernel", {})
  problems = []
  try:
    distilled.check_compatible(ds)
  except ValueError as e:
    problems.append(str(e))
  if len(distilled) != ipc * ds.num_classes:
    problems.append(f"{len(distilled)} images, not {ipc * ds.num_classes}")
  if architecture is not None and spec.get("architecture") != architecture:
    problems.append(f"kernel {spec} is not {architecture}")
  if depth is not None and spec.get("depth") != depth:
    problems.append(f"kernel depth {spec.get('depth')} is not {depth}")
  if distilled.method != method:
    problems.append(f"method {distilled.method!r} is not {method!r}")
  if problems:
    logger.warning("not using %s: %s; distilling instead", path, "; ".join(problems))
    return None
  logger.info("using %s set %s (%s steps)", method, path, distilled.metadata.get("steps"))
  return distilled


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--preprocess", default="standardize", choices=["standardize", "zca", "zca_centered", "none"])
  p.add_argument("--ipc", type=int, default=10)
  p.add_argument("--restarts", type=int, default=10)
  p.add_argument("--seed", type=int, default=0)
  # Finite network and recipe.
  p.add_argument("--model", default="fc", help="kip.transfer model name")
  p.add_argument("--width", type=int, default=1024, help="FC hidden width")
  p.add_argument("--net-depth", type=int, default=2, help="FC hidden layers")
  p.add_argument("--recipe", default="kip", help="kip.transfer recipe name")
  p.add_argument("--train-steps", type=int, default=800,
                 help="SGD steps per network on the small sets (the 'kip' preset: 5,000)")
  p.add_argument("--train-lr", type=float, default=None, help="recipe learning rate override")
  p.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                 help="also train one network on the whole training set")
  p.add_argument("--full-steps", type=int, default=3000,
                 help="SGD steps of the whole-training-set network (3,000 x batch 100: 5 "
                      "epochs of Fashion-MNIST)")
  # KIP / LS (FC kernel).
  p.add_argument("--kip-path", default=None,
                 help="saved KIP set (default: results/kip_cpu/kip_fc_ipc{ipc}.npz for "
                      "fashion_mnist); 'none' always distils")
  p.add_argument("--kip-steps", type=int, default=1000, help="KIP steps when distilling here")
  p.add_argument("--lr", type=float, default=0.04, help="KIP learning rate")
  p.add_argument("--depth", type=int, default=3, help="FC kernel depth")
  p.add_argument("--target-batch-size", type=int, default=2000)
  p.add_argument("--reg", type=float, default=1e-6)
  p.add_argument("--json", default=os.path.join(common.RESULTS_DIR, "transfer_cpu.json"))
  p.add_argument("--no-progress", action="store_true")
  a = p.parse_args(argv)
  common.setup_logging()
  progress = not a.no_progress
  t_start = time.time()

  ds = kip.data.load(a.dataset, preprocess=a.preprocess)
  kernel = kip.kernels.fc(a.depth)
  overrides = {"steps": a.train_steps}
  if a.train_lr is not None:
    overrides["learning_rate"] = a.train_lr
  model_kwargs = {"width": a.width, "depth": a.net_depth} if a.model == "fc" else {}
  net = dict(model=a.model, recipe=a.recipe, recipe_overrides=overrides,
             model_kwargs=model_kwargs, seed=a.seed, progress=progress)

  kip_path = a.kip_path
  if kip_path is None and a.dataset == "fashion_mnist":
    kip_path = os.path.join(DEFAULT_KIP_DIR, f"kip_fc_ipc{a.ipc}.npz")
  t = time.time()
  distilled = load_saved_set(kip_path, ds, a.ipc, depth=a.depth)
  kip_source = None
  if distilled is not None:
    kip_source = (f"{os.path.relpath(kip_path)} ({distilled.metadata.get('steps')} KIP "
                  f"steps, lr {distilled.metadata.get('config', {}).get('learning_rate')})")
  if distilled is None:
    distilled = kip.distill(ds, images_per_class=a.ipc, kernel=kernel, steps=a.kip_steps,
                            learning_rate=a.lr, target_batch_size=a.target_batch_size,
                            reg=a.reg, seed=a.seed, mode="kip", progress=progress)
    kip_source = f"distilled here ({a.kip_steps} steps, {time.time() - t:.0f} s)"
  t = time.time()
  ls = kip.distill(ds, images_per_class=a.ipc, kernel=kernel, reg=a.reg, seed=a.seed,
                   mode="ls", progress=False)
  t_ls = time.time() - t
  rand = kip.baselines.random_real(ds, a.ipc, a.seed)

  krr = {"kip": kip.evaluate.kernel_accuracy(distilled, ds, kernel=kernel),
         "ls": kip.evaluate.kernel_accuracy(ls, ds, kernel=kernel),
         "random": kip.evaluate.kernel_accuracy(rand, ds, kernel=kernel, reg=a.reg)}
  logger.info("KRR (FC depth %d): KIP %.4f, LS %.4f, random %.4f", a.depth, krr["kip"],
              krr["ls"], krr["random"])

  results = {}
  logger.info("training %d %s networks on the KIP set", a.restarts, a.model)
  results["kip"] = kip.transfer.evaluate(distilled, ds, restarts=a.restarts, **net)
  logger.info("training %d %s networks on the LS set", a.restarts, a.model)
  results["ls"] = kip.transfer.evaluate(ls, ds, restarts=a.restarts, **net)
  logger.info("training %d %s networks on random real subsets", a.restarts, a.model)
  results["random"] = kip.transfer.evaluate_random(ds, a.ipc, restarts=a.restarts, **net)
  if a.full:
    logger.info("training one %s network on the whole training set", a.model)
    results["whole"] = kip.transfer.evaluate_full(
        ds, restarts=1, **{**net, "recipe_overrides": {**overrides, "steps": a.full_steps}})

  delta, t_stat = _welch(results["kip"].accuracies, results["random"].accuracies)
  separated = min(results["kip"].accuracies) > max(results["random"].accuracies)
  clearly_above = bool(delta > 0 and t_stat >= CLEAR_T)
  fashion = a.dataset == "fashion_mnist"
  size = a.ipc * ds.num_classes
  rows_spec = [
      ("kip", f"KIP-FC ({size} images, learned labels)", krr["kip"], "kip_transfer"),
      ("ls", f"LS ({size} real images, solved labels)", krr["ls"], "ls_transfer"),
      ("random", f"random real ({size} images, one-hot; new subset per restart)",
       krr["random"], "random"),
      ("whole", f"whole training set ({len(ds.y_train):,} images, one-hot)", None, "whole"),
  ]
  rows = []
  for key, name, acc_krr, anchor_key in rows_spec:
    if key not in results:
      continue
    r = results[key]
    gap = "-"
    if key in ("kip", "ls"):
      d, tt = _welch(r.accuracies, results["random"].accuracies)
      gap = f"{100 * d:+.2f} (t = {tt:.1f})"
    rows.append([name, _pct(r), len(r.accuracies), gap,
                 "-" if acc_krr is None else f"{100 * acc_krr:.2f}",
                 common.anchor(anchor_key, a.ipc) if fashion else "-", f"{r.seconds:.0f}"])
  header = ["support set", f"finite {a.model} test % (mean ± std)", "restarts",
            "vs random (pp, Welch t)", f"KRR % (FC-{a.depth} NTK)",
            "published ConvNet transfer", "train s"]
  table = common.markdown_table(header, rows)
  recipe = kip.transfer.get_recipe(a.recipe, **overrides)
  width_txt = f"width {a.width}, {a.net_depth} hidden layers, " if a.model == "fc" else ""
  caption = (f"{a.dataset}, IPC {a.ipc}: finite {a.model} ({width_txt}PyTorch-default init) "
             f"trained with recipe '{recipe.name}' ({recipe.loss}, SGD momentum "
             f"{recipe.momentum}, lr {recipe.learning_rate} {recipe.schedule}, weight decay "
             f"{recipe.weight_decay}, batch {recipe.batch_size}, {recipe.steps} steps"
             f"{f'; whole training set: {a.full_steps} steps' if a.full else ''}), "
             f"labels used as given; test accuracy on all {len(ds.y_test):,} test images; "
             f"KIP set: {kip_source}; published numbers are ConvNet transfers (KIP/LS: width "
             f"1024; random/whole: ConvNet-3), not FC; {common.machine()['device']}")
  verdict = (f"KIP - random = {100 * delta:+.2f} pp, Welch t = {t_stat:.1f} "
             f"({'clearly above' if clearly_above else 'NOT clearly above'} random at t >= "
             f"{CLEAR_T:g}; ranges {'do not overlap' if separated else 'overlap'})")
  total = time.time() - t_start
  print(f"\n{caption}")
  print(table)
  print(f"\n{verdict}. Total wall time {total:.0f} s.")
  common.write_json(a.json, {
      "args": vars(a), "machine": common.machine(), "caption": caption, "table": table,
      "kip_source": kip_source, "kip_metadata_steps": distilled.metadata.get("steps"),
      "ls_seconds": t_ls, "krr": krr,
      "results": {k: r.to_dict() for k, r in results.items()},
      "kip_minus_random": delta, "welch_t": t_stat, "clearly_above": clearly_above,
      "ranges_separated": separated, "total_seconds": total})
  return results


if __name__ == "__main__":
  main()
