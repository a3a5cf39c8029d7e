"""KIP with the random-feature ConvNet NNGP (RFAD-style) on Fashion-MNIST, on the CPU.

For each images-per-class value: KIP with ``kernel='convnet_rf'`` (fresh finite ConvNets drawn
every step, Platt loss with a learned temperature, centred labels, learned) or, with
``--kernel learned``, FRePo's learned-feature kernel (a pool of ConvNet-3s trained online on
the support), time-boxed by the driver; then

* seconds per step and the steps reached,
* KRR test accuracy on all 10,000 test images with the random-feature kernel (networks held
  fixed for the evaluation, ``--eval-models`` of them),
* finite ConvNet-3 (DC protocol: the reference DC ConvNet, padded for 28x28, instance norm;
  cross-entropy on ``argmax`` labels; SGD momentum 0.9, lr 0.01 dropped 10x at half, 300
  epochs, batch 256) test accuracy, mean +- std over ``--restarts`` networks, beside random real
  images of the same size under the same protocol and the published numbers of
  ../shared/ANCHORS.md.

The library's stored sets of the same size (DM, DSA, KIP-FC under ``benchmarks/results``;
``--compare`` names others) are evaluated under the same protocol in the same run, or in a later
one with ``--stored-only`` (no distillation; the JSON's rows get the stored sets beside them).
Each stored result records the SHA-1 of the set it measured (``set_sha1``); ``--stored-only``
evaluates again a set whose file has changed since (or whose result has no digest), so a
re-distilled set never keeps its predecessor's figure.

``--validation-size N`` is the setting search: KIP distils from all but the last ``N`` training
images and every figure is measured on those ``N`` held-out training images instead of the
test set (the JSON says ``"split": "validation"``); stored sets are not compared there, since
they saw those images.

Writes ``kip_rf_ipc{N}.npz`` / ``.png`` and ``kip_rf_cpu.json`` under ``--out``
(``kip_lf_*`` in ``benchmarks/results/kip_lf_cpu`` with ``--kernel learned``). Results of IPC
values not run now are kept in the JSON when the other settings match (``--fresh``: replace).

  python -m benchmarks.kip_rf_cpu [--ipc 1 10] [--budget-minutes 60 60] [--width 128]
      [--models 1] [--targets 1280] [--restarts 10 5] [--loss platt|mse] [--fixed-labels]
      [--optimizer adabelief|adam] [--lr 1e-3] [--lr-decay cosine --steps N]
      [--augment flip|crop|flip_crop]
      [--validation-size N] [--stored-ipc 1]
      [--random-from benchmarks/results/kip_lf_cpu/kip_lf_cpu.json] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import time

import numpy as np

import optax

import kip
from benchmarks import common

logger = logging.getLogger("benchmarks.kip_rf_cpu")
TARGETS = {1: 74.0, 10: 86.0}  # finite ConvNet-3, DC protocol (issue 13)
PUBLISHED = {  # ../shared/ANCHORS.md, Fashion-MNIST, after transfer to finite networks
    "kip_transfer": {1: "73.5", 10: "86.8", 50: "88.0"},
    "rfad": {1: "78.6 (?)", 10: "87.0 (?)", 50: "88.8 (?)"},
    "frepo": {1: "75.6 (?)", 10: "86.2 (?)", 50: "89.6 (?)"},
    "rcig": {1: "79.8 (?)", 10: "88.5 (?)", 50: "90.2 (?)"},
    "dsa": {1: "70.6", 10: "84.6", 50: "88.7"},
}
STORED = {  # the library's own sets, evaluated beside KIP-RF under the same protocol
    "DM": os.path.join(common.RESULTS_DIR, "suite_cpu", "distilled", "dm_ipc{ipc}.npz"),
    "DSA": os.path.join(common.RESULTS_DIR, "suite_cpu", "distilled", "dsa_ipc{ipc}.npz"),
    "KIP-FC": os.path.join(common.RESULTS_DIR, "kip_cpu", "kip_fc_ipc{ipc}.npz"),
}


def holdout(ds, n: int):
  """``ds`` with its last ``n`` training images moved to the test split (a validation split)."""
  if not 0 < n < ds.x_train.shape[0]:
    raise SystemExit(f"--validation-size {n}: must be in [1, {ds.x_train.shape[0] - 1}]")
  return dataclasses.replace(ds, x_train=ds.x_train[:-n], y_train=ds.y_train[:-n],
                             x_test=ds.x_train[-n:], y_test=ds.y_train[-n:])


def stored_sets(ds, ipc: int, extra=()) -> dict:
  """The stored sets of ``ipc`` images per class whose preprocessing matches ``ds``'s."""
  out = {}
  paths = {**{k: v.format(ipc=ipc) for k, v in STORED.items()},
           **{os.path.basename(p): p for p in extra if f"ipc{ipc}." in os.path.basename(p)}}
  for name, path in paths.items():
    if not os.path.exists(path):
      continue
    s = kip.DistilledSet.load(path)
    s.check_compatible(ds)
    prep = s.preprocessing
    mine = ds.preprocessing.to_arrays()
    same = prep is not None and prep.kind == ds.preprocessing.kind and all(
        k in mine and np.shape(v) == np.shape(mine[k]) and (
            np.allclose(v, mine[k]) if np.asarray(v).dtype.kind in "fiu"
            else np.array_equal(v, mine[k]))
        for k, v in prep.to_arrays().items())
    if len(s) != ipc * ds.num_classes or not same:
      logger.warning("skipping %s: %d images or other preprocessing", path, len(s))
      continue
    out[name] = s
  return out


def _learning_rate(a):
  """``--lr``, or its cosine decay to 10 % over ``--steps`` (``--lr-decay cosine``)."""
  if a.lr_decay == "cosine":
    return optax.cosine_decay_schedule(a.lr, a.steps, alpha=0.1)
  return a.lr


def _per_ipc(values, ipcs, what):
  if len(values) == 1:
    return {i: values[0] for i in ipcs}
  if len(values) != len(ipcs):
    raise SystemExit(f"--{what} takes one value or one per --ipc value; got {values}")
  return dict(zip(ipcs, values))


def parse_args(argv=None) -> argparse.Namespace:
  """The command line; ``a.defaults`` holds every option's default, ``a.out`` is filled in."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
  p.add_argument("--budget-minutes", type=float, nargs="+", default=[60.0])
  p.add_argument("--steps", type=int, default=100_000, help="upper bound; the budget decides")
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--models", type=int, default=1, help="networks drawn per step")
  p.add_argument("--eval-models", type=int, default=8, help="networks of the KRR evaluation")
  p.add_argument("--targets", type=int, default=1280, help="target images per step")
  p.add_argument("--loss", default="platt", choices=["platt", "mse"])
  p.add_argument("--lr", type=float, default=1e-3, help="learning rate (RFAD: AdaBelief 1e-3)")
  p.add_argument("--optimizer", default="adabelief", choices=["adabelief", "adam"])
  p.add_argument("--lr-decay", default=None, choices=["cosine"],
                 help="cosine: the learning rate decays to 10 %% of --lr over --steps (FRePo's "
                 "outer schedule); set --steps to what the budget allows (default: constant)")
  p.add_argument("--init", nargs="+", default=None, metavar="SET.npz",
                 help="start each IPC's run from this set (one per --ipc value) instead of "
                 "real images (kip.distill(init=...)); a continuation adds its budget to the "
                 "earlier run's, so compare it as such")
  p.add_argument("--augment", default=None, choices=["flip", "crop", "flip_crop"],
                 help="DSA flips/crops of the support at every step (default: none)")
  p.add_argument("--fixed-labels", action="store_true",
                 help="keep the centred one-hot labels (images only)")
  p.add_argument("--validation-size", type=int, default=0,
                 help="measure on the last N training images instead of the test set")
  p.add_argument("--compare", nargs="*", default=[],
                 help="more stored sets (.npz, name containing ipcN.) to evaluate alike")
  p.add_argument("--stored-ipc", type=int, nargs="*", default=None,
                 help="images-per-class values at which the stored sets are compared (default: "
                 "all); a ConvNet-3 restart on 100 images costs about 4 minutes on 2 cores")
  p.add_argument("--restarts", type=int, nargs="+", default=None,
                 help="one value or one per --ipc value (default: 10 at IPC 1, else 5)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true",
                 help="a test: 500 training images, a few seconds of KIP, 1 short restart")
  p.add_argument("--kernel", default="rf", choices=["rf", "learned"],
                 help="rf: convnet_rf random features; learned: FRePo's pool of ConvNet-3s "
                 "trained online on the support (kip.kernels.learned_features)")
  p.add_argument("--pool-models", type=int, default=10, help="learned: networks (FRePo: 10)")
  p.add_argument("--pool-reset-every", type=int, default=100,
                 help="learned: online steps before a reset (FRePo: 100)")
  p.add_argument("--pool-lr", type=float, default=None,
                 help="learned: online lr (default: FRePo's Adam 3e-4; --pool-online dc: 0.01)")
  p.add_argument("--pool-online", choices=["frepo", "dc"], default="frepo",
                 help="learned: the pool's online training, FRePo's (Adam, MSE) or the DC "
                 "protocol's (SGD momentum, cross-entropy, lr / 10 at half of "
                 "--pool-reset-every)")
  p.add_argument("--random-from", nargs="*", default=[],
                 help="result JSONs of this benchmark whose random-real row at the same IPC "
                 "is reused when its protocol (recipe, network, seed, restarts, split) equals "
                 "this run's: the evaluation is deterministic, so it would repeat the same "
                 "figures (about 20 minutes at IPC 10)")
  p.add_argument("--stored-only", action="store_true",
                 help="no distillation: evaluate the stored sets (those not yet evaluated, "
                 "or changed since: each result records its set's SHA-1) "
                 "beside the results already in the JSON at each --ipc (in --stored-ipc, if "
                 "given), under the same protocol and restarts, and rewrite its table")
  p.add_argument("--fresh", action="store_true", help="replace the JSON's results instead of "
                 "keeping those of IPC values not run now")
  p.add_argument("--out", default=None,
                 help="default benchmarks/results/kip_rf_cpu (rf) or kip_lf_cpu (learned)")
  p.add_argument("--no-progress", action="store_true")
  a = p.parse_args(argv)
  a.defaults = {k: p.get_default(k) for k in vars(a)}  # what a result file without a key meant
  if a.lr_decay and a.steps == a.defaults["steps"]:
    p.error(f"--lr-decay {a.lr_decay} decays over --steps (default {a.steps}, an upper bound "
            "the budget never reaches); give --steps, about what the budget allows")
  a.out = a.out or os.path.join(common.RESULTS_DIR, f"{_NAMES[a.kernel]}_cpu")
  return a


_NAMES = {"rf": "kip_rf", "learned": "kip_lf"}


def main(argv=None):
  a = parse_args(argv)
  name = _NAMES[a.kernel]
  common.setup_logging()
  budgets = _per_ipc(a.budget_minutes, a.ipc, "budget-minutes")
  inits = {i: kip.DistilledSet.load(path)
           for i, path in (_per_ipc(a.init, a.ipc, "init") if a.init else {}).items()}
  restarts = (_per_ipc(a.restarts, a.ipc, "restarts") if a.restarts
              else {i: 10 if i == 1 else 5 for i in a.ipc})
  ds = kip.data.load("fashion_mnist")
  split = "test"
  if a.validation_size:
    ds, split = holdout(ds, a.validation_size), "validation"
  recipe_overrides = None
  if a.quick:
    ds = ds.subset(500, 200, seed=0)
    budgets = {i: 0.1 for i in a.ipc}
    restarts = {i: 1 for i in a.ipc}
    recipe_overrides = {"epochs": 2}
  rows, results = [], []
  make_optimizer = {"adabelief": optax.adabelief, "adam": optax.adam}[a.optimizer]
  transfer = dict(model="convnet", recipe="dc", seed=a.seed, recipe_overrides=recipe_overrides,
                  progress=not a.no_progress)
  if a.stored_only:
    table = _stored_only(a, ds, split, transfer)
    logger.info("\n%s", table)
    return
  for ipc in a.ipc:
    if a.kernel == "rf":
      kernel = kip.kernels.convnet_rf(width=a.width, num_models=a.models)
      final_eval = {}
    else:
      kernel = kip.kernels.learned_features(
          "convnet", ds.num_classes, num_models=a.pool_models,
          reset_every=a.pool_reset_every, learning_rate=a.pool_lr, online=a.pool_online,
          model_kwargs={"width": a.width})
      # the pool is not saved with the set: KRR once, at the last step, on all test images
      final_eval = dict(eval_every=10 ** 9, eval_size=len(ds.y_test))
    t = time.time()
    distilled = kip.distill(ds, images_per_class=ipc, kernel=kernel, get="nngp",
                            loss=a.loss, learn_labels=not a.fixed_labels, steps=a.steps,
                            optimizer=make_optimizer(_learning_rate(a)), augment=a.augment,
                            init=inits.get(ipc),
                            target_batch_size=min(a.targets, ds.x_train.shape[0]), seed=a.seed,
                            time_budget=60 * budgets[ipc], progress=not a.no_progress,
                            **final_eval)
    seconds = time.time() - t
    os.makedirs(a.out, exist_ok=True)  # saved before the evaluations: an interruption keeps it
    distilled.save(os.path.join(a.out, f"{name}_ipc{ipc}.npz"))
    distilled.grid(os.path.join(a.out, f"{name}_ipc{ipc}.png"), class_names=ds.class_names)
    steps = int(distilled.metadata["steps"])
    per_step = float(distilled.metadata["seconds"]) / max(steps, 1)
    if a.kernel == "rf":
      eval_kernel = kip.kernels.convnet_rf(width=a.width, num_models=a.eval_models,
                                           fixed_seed=a.seed, batch_size=250)
      krr = kip.evaluate.kernel_accuracy(distilled, ds, eval_kernel, get="nngp")
    else:
      krr = float(distilled.metadata["history"]["eval"][-1][1]["test_accuracy"])
    conv = kip.transfer.evaluate(distilled, ds, restarts=restarts[ipc], **transfer)
    reused = reused_random(a.random_from, ipc, split, conv.to_dict(),
                           validation_size=a.validation_size)
    if reused is None:
      rand = kip.transfer.evaluate_random(ds, ipc, restarts=restarts[ipc], **transfer).to_dict()
      random_from = None
    else:
      rand, random_from = reused
      logger.info("IPC %d: random real reused from %s", ipc, random_from)
    others = {}
    if split == "test" and not a.quick and (a.stored_ipc is None or ipc in a.stored_ipc):
      others = _evaluate_stored(ds, ipc, a.compare, restarts[ipc], transfer)
    target = TARGETS.get(ipc)
    results.append({"ipc": ipc, "split": split, "steps": steps, "seconds_per_step": per_step,
                    "kernel": kernel.spec, "budget_seconds_used": seconds,
                    "distill_seconds": seconds, "budget_minutes": budgets[ipc],
                    "krr_rf_accuracy": krr, "convnet": conv.to_dict(),
                    "random_convnet": rand, "random_from": random_from,
                    "stored_convnet": others,
                    "target": target,
                    "reached": bool(split == "test" and target is not None
                                    and 100 * conv.mean >= target)})
    logger.info("IPC %d: %d steps (%.2f s/step), KRR %.4f, ConvNet-3 %s, random %.4f +- %.4f "
                "(%s)", ipc, steps, per_step, krr, conv, rand["mean"], rand["std"], split)
    table = _write(a, split, results)  # after every IPC: a later failure keeps this one
  logger.info("\nFashion-MNIST, KIP %s (width %d, %d targets, %s loss, %s labels, %s lr %g)"
              "%s\n%s", name, a.width, a.targets, a.loss,
              "fixed" if a.fixed_labels else "learned", a.optimizer, a.lr,
              " QUICK (not a result)" if a.quick else "", table)


def _evaluate_stored(ds, ipc, extra, restarts, transfer) -> dict:
  """ConvNet-3 results (as dicts) of the stored sets of ``ipc`` images per class (see
  :func:`stored_sets`)."""
  return {set_name: _evaluate_one(s, ds, ipc, set_name, restarts, transfer)
          for set_name, s in stored_sets(ds, ipc, extra).items()}


def set_sha1(s) -> str:
  """SHA-1 of a set's images and labels (what a stored result was measured on)."""
  h = hashlib.sha1()
  for a in (s.images, s.labels):
    a = np.ascontiguousarray(a, np.float32)
    h.update(str(a.shape).encode())
    h.update(a.data)
  return h.hexdigest()


def _evaluate_one(s, ds, ipc, set_name, restarts, transfer) -> dict:
  r = kip.transfer.evaluate(s, ds, restarts=restarts, **transfer).to_dict()
  logger.info("IPC %d, %s: ConvNet-3 %.4f +- %.4f", ipc, set_name, r["mean"], r["std"])
  return {**r, "set_sha1": set_sha1(s)}


def _stored_only(a, ds, split, transfer) -> str:
  """``--stored-only``: the stored sets beside the JSON's rows at ``a.ipc``; the new table."""
  name = os.path.basename(os.path.normpath(a.out))
  path = os.path.join(a.out, f"{name}.json")
  results = {r["ipc"]: r for r in _merged(path, a, split, [])}
  missing = sorted(set(a.ipc) - set(results))
  if missing:
    raise SystemExit(f"--stored-only: {path} has no result at IPC {missing} with these "
                     "settings; run the benchmark without --stored-only first")
  if split == "test" and not a.quick:
    for ipc in a.ipc:
      if a.stored_ipc is not None and ipc not in a.stored_ipc:
        continue  # `--stored-only --stored-ipc` alone: only the table is rewritten
      row = results[ipc]
      for set_name, s in stored_sets(ds, ipc, a.compare).items():
        old = row["stored_convnet"].get(set_name)
        if old is not None and old.get("set_sha1") == set_sha1(s):
          continue
        if old is not None:
          logger.warning("IPC %d, %s: the stored result was measured on %s set; evaluating "
                         "it again", ipc, set_name,
                         "an unrecorded" if "set_sha1" not in old else "another")
        row["stored_convnet"] = {**row["stored_convnet"], set_name: _evaluate_one(
            s, ds, ipc, set_name, len(row["convnet"]["accuracies"]), transfer)}
        row["stored_later"] = sorted(set(row.get("stored_later", [])) | {set_name})
        _write(a, split, list(results.values()), distilled=())  # an interruption keeps it
  return _write(a, split, list(results.values()), distilled=())


PROTOCOL_KEYS = ("dataset", "model", "model_config", "recipe", "seed", "restarts", "tuning")


def reused_random(paths, ipc: int, split: str, protocol: dict, *, validation_size: int):
  """The random-real ConvNet-3 row at ``ipc`` of the first result file in ``paths`` measured
  under the same protocol as ``protocol`` (this run's evaluation of its distilled set: same
  dataset, network and its config, recipe, seed, restarts, no tuning) on the same ``split``
  and validation size, as ``(row, path)``; ``None`` when no file has one.

  ``kip.transfer.evaluate_random`` draws its subsets and networks from ``seed`` alone, so such
  a row is what a new evaluation would return. A row that was itself reused names the file
  that measured it, and that file is returned as the source."""
  for path in paths:
    with open(path) as f:
      old = json.load(f)
    if old.get("quick") or old.get("args", {}).get("validation_size", 0) != validation_size:
      continue
    for r in old.get("results", []):
      rand = r.get("random_convnet") or {}
      if (r.get("ipc") == ipc and r.get("split") == split
          and rand.get("num_images") == ipc * protocol.get("model_config", {}).get("num_classes")
          and all(rand.get(k) == protocol.get(k) for k in PROTOCOL_KEYS)):
        return rand, r.get("random_from") or os.path.relpath(
            path, os.path.dirname(os.path.dirname(common.RESULTS_DIR)))
  return None


def _row(r) -> list:
  ipc = r["ipc"]
  def fmt(d):
    n = len(d["accuracies"])
    return f"{100 * d['mean']:.2f} ± {100 * d['std']:.2f} % ({n} restart{'s' * (n != 1)})"

  return [ipc, r["steps"], f"{r['seconds_per_step']:.2f}", f"{100 * r['krr_rf_accuracy']:.2f}",
          fmt(r["convnet"]), fmt(r["random_convnet"]),
          "; ".join(f"{k} {fmt(v)}" for k, v in r["stored_convnet"].items()) or "-",
          *(PUBLISHED[k].get(ipc, "-") for k in ("kip_transfer", "rfad", "frepo", "rcig", "dsa")),
          "-" if r["target"] is None else f">= {r['target']}"]


def _merged(path: str, a, split, results) -> list:
  """``results`` plus the stored file's results for other IPC values (same split, same args
  apart from ``ipc``/``budget_minutes``/``restarts``/``stored_ipc``), unless ``--fresh``."""
  if a.fresh or a.quick or not os.path.exists(path):
    return list(results)
  with open(path) as f:
    old = json.load(f)
  free = {"ipc", "budget_minutes", "restarts", "stored_ipc", "no_progress", "fresh", "out",
          "random_from", "stored_only"}
  old_args = old.get("args", {})
  same = all(old_args.get(k, a.defaults.get(k)) == v for k, v in vars(a).items()
             if k not in free and k != "defaults")
  if not same or old.get("split") != split:
    logger.warning("%s holds results of other settings; replacing them", path)
    return list(results)
  mine = {r["ipc"] for r in results}
  return sorted([r for r in old.get("results", []) if r["ipc"] not in mine] + list(results),
                key=lambda r: r["ipc"])


def _write(a, split, results, distilled=None) -> str:
  """Writes the JSON (``results`` merged with the file's) and returns the table;
  ``distilled``: the IPC values distilled by this command (default ``a.ipc``)."""
  name = os.path.basename(os.path.normpath(a.out))
  path = os.path.join(a.out, f"{name}.json")
  results = _merged(path, a, split, results)
  rf = a.kernel == "rf"
  header = ["IPC", "steps", "s/step", f"{'RF' if rf else 'pool'} KRR % ({split})",
            f"ConvNet-3 {'KIP-RF' if rf else 'KIP-LF'} ({split})",
            "random real ConvNet-3", "stored sets, ConvNet-3",
            "published KIP transfer", "published RFAD", "published FRePo",
            "published RCIG", "published DSA", "target"]
  table = common.markdown_table(header, [_row(r) for r in results])
  compared = [r["ipc"] for r in results if r["stored_convnet"]]
  later = [f"{', '.join(r['stored_later'])} at IPC {r['ipc']}" for r in results
           if r.get("stored_later")]
  where = (f" (at IPC {', '.join(map(str, compared))}"
           + (f"; {'; '.join(later)} in a later `--stored-only` run" if later else "") + ")"
           if compared else
           " (none compared here: see the random-feature section for them)")
  if rf:
    kernel = (f"`kernel=convnet_rf` (ConvNet-3 random features: width {a.width}, {a.models} "
              f"network(s) drawn fresh every step)")
    krr = f"RF KRR: {a.eval_models} fixed networks of the same width."
  else:
    online = ("one Adam step on the MSE" if a.pool_online == "frepo" else
              "one step of the DC protocol's SGD on the cross-entropy")
    pool_lr = kip.kernels.learned_features(online=a.pool_online,  # the mode's default lr
                                           learning_rate=a.pool_lr).learning_rate
    kernel = (f"`kernel=learned_features` (FRePo: a pool of {a.pool_models} DC ConvNet-3s of "
              f"width {a.width}, one drawn per step and then trained {online} (lr "
              f"{pool_lr:g}) on the support, reset after {a.pool_reset_every} steps)")
    krr = ("pool KRR: the mean kernel of the final pool's networks, all test images (the pool "
           "is not saved with the set).")
  started = f"started from {', '.join(a.init)} (not from real images), " if a.init else ""
  caption = (
      f"KIP with {kernel}, {a.loss} loss on centred labels "
      f"({'fixed' if a.fixed_labels else 'learned'}), {a.optimizer} lr {a.lr:g}"
      f"{f' cosine-decayed to 10 % over {a.steps} steps' if a.lr_decay else ''}, {a.targets} "
      f"targets per step without replacement, "
      f"{f'support augmented ({a.augment}) at every step, ' if a.augment else ''}"
      f"{started}"
      f"time-boxed per IPC by the driver. {krr} "
      f"Finite ConvNet-3: DC protocol (see Protocols) on the "
      f"{split} images; random real: a new class-balanced subset per restart; stored sets: the "
      f"library's DM / DSA (suite_cpu) and KIP-FC (kip_cpu) sets where stored, under the same "
      f"protocol and restarts{where}. Published numbers: ANCHORS.md, after transfer to finite "
      f"networks ((?): secondary there).")
  reused = [f"IPC {r['ipc']}: {r['random_from']}" for r in results if r.get("random_from")]
  if reused:
    caption += (" Random real reused (same protocol, seed and restarts, so the same figures) "
                f"from {'; '.join(reused)}.")
  kept = sorted({r["ipc"] for r in results} - set(a.ipc if distilled is None else distilled))
  if kept:
    caption += (f" IPC {', '.join(map(str, kept))}: kept from an earlier run with the same "
                f"settings (its budget and restarts in its JSON row); the command shows the "
                f"latest run.")
  caption += (" s/step: the run's seconds over its steps (compilation included, and for the "
              "pool kernel its final KRR evaluation, which runs inside the loop). "
              + ", ".join(f"IPC {r['ipc']}: {r['budget_minutes']:g} min budget"
                          for r in results) + ".")
  title = ("KIP with random-feature ConvNet kernels (Fashion-MNIST, CPU)" if rf else
           "KIP with FRePo's learned-feature kernel (Fashion-MNIST, CPU)")
  if a.init:
    title = title[:-1] + ", started from a stored set)"
  args = {k: v for k, v in vars(a).items() if k != "defaults"}
  common.write_json(path,
                    {"title": title, "module": "benchmarks.kip_rf_cpu",
                     "caption": caption, "args": args, "machine": common.machine(),
                     "results": results, "table": table, "quick": a.quick, "split": split})
  return table

if __name__ == "__main__":
  main()
