"""Command line: ``kip distill``, ``kip evaluate``, ``kip show``.

This is the edge where configuration is built (argparse -> frozen configs) and where the
environment (``KIP_DATA_DIR``, logging to a file) is read; library code below takes arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]

logger = logging.getLogger("kip.cli")


def _setup_logging(out_dir: Optional[str], verbose: bool) -> None:
  handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    handlers.append(logging.FileHandler(os.path.join(out_dir, "kip.log")))
  level = logging.DEBUG if verbose else logging.INFO
  logging.basicConfig(level=level, handlers=handlers,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
  logging.getLogger("kip").setLevel(level)  # the CLI owns logging: undo quieter settings
  for noisy in ("jax", "absl", "matplotlib", "PIL"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="kip", description="Kernel-based dataset distillation.")
  p.add_argument("-v", "--verbose", action="store_true")
  sub = p.add_subparsers(dest="command", required=True)

  d = sub.add_parser("distill", help="distil a data set with KIP or LS")
  d.add_argument("--dataset", default="fashion_mnist")
  d.add_argument("--data-dir", default=None, help="folder with the data files "
                 "(default: $KIP_DATA_DIR, then the Debian package's folder, then TFDS)")
  d.add_argument("--preprocess", default="standardize", choices=["none", "standardize", "zca"])
  d.add_argument("--zca-reg", type=float, default=0.1)
  g = d.add_mutually_exclusive_group()
  g.add_argument("--support-size", type=int, default=None, help="total support images")
  g.add_argument("--images-per-class", type=int, default=None)
  d.add_argument("--mode", default="kip", choices=["kip", "ls"])
  d.add_argument("--kernel", default="fc", choices=["fc", "convnet"])
  d.add_argument("--depth", type=int, default=None, help="kernel depth (default: preset's)")
  d.add_argument("--get", default="ntk", choices=["ntk", "nngp"])
  d.add_argument("--steps", type=int, default=1000)
  d.add_argument("--lr", type=float, default=0.01)
  d.add_argument("--target-batch-size", type=int, default=1000)
  d.add_argument("--reg", type=float, default=1e-6)
  d.add_argument("--no-learn-labels", action="store_true")
  d.add_argument("--augment", default=None, choices=["flip", "crop", "flip_crop"])
  d.add_argument("--seed", type=int, default=0)
  d.add_argument("--eval-every", type=int, default=100)
  d.add_argument("--eval-size", type=int, default=1000)
  d.add_argument("--checkpoint-every", type=int, default=100)
  d.add_argument("--memory-budget-gb", type=float, default=2.0)
  d.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
  d.add_argument("--out", required=True, help="output folder")
  d.add_argument("--no-progress", action="store_true")

  e = sub.add_parser("evaluate", help="evaluate a distilled set (KRR and/or networks)")
  e.add_argument("path")
  e.add_argument("--data-dir", default=None)
  e.add_argument("--model", default=None, help="also train networks: convnet, kip_convnet, fc, "
                 "lenet, alexnet, resnet")
  e.add_argument("--recipe", default=None, help="kip or dc (default: kip for kip/ls sets)")
  e.add_argument("--restarts", type=int, default=10)
  e.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
  e.add_argument("--seed", type=int, default=0)
  e.add_argument("--num-test", type=int, default=None)
  e.add_argument("--no-progress", action="store_true")

  s = sub.add_parser("show", help="write a PNG grid of a distilled set")
  s.add_argument("path")
  s.add_argument("--out", default=None, help="PNG path (default: next to the .npz)")
  s.add_argument("--max-images", type=int, default=100)
  return p


def _load_dataset(name, data_dir, preprocess="standardize", zca_reg=0.1):
  from kip import data
  return data.load(name, data_dir=data_dir, preprocess=preprocess, zca_reg=zca_reg)


def _cmd_distill(args) -> int:
  import kip
  from kip import kernels

  _setup_logging(args.out, args.verbose)
  ds = _load_dataset(args.dataset, args.data_dir, args.preprocess, args.zca_reg)
  if args.support_size is None and args.images_per_class is None:
    args.support_size = 10 * ds.num_classes
  budget = int(args.memory_budget_gb * 1024 ** 3)
  kw = {} if args.depth is None else {"depth": args.depth}
  kernel = (kernels.fc if args.kernel == "fc" else kernels.convnet)(memory_budget=budget, **kw)
  try:
    distilled = kip.distill(
        ds, args.support_size, not args.no_learn_labels, images_per_class=args.images_per_class,
        kernel=kernel, get=args.get, steps=args.steps, learning_rate=args.lr,
        target_batch_size=args.target_batch_size, reg=args.reg, seed=args.seed,
        augment=args.augment, mode=args.mode, checkpoint_dir=args.out,
        checkpoint_every=args.checkpoint_every, resume=args.resume, eval_every=args.eval_every,
        eval_size=args.eval_size, progress=not args.no_progress)
  except KeyboardInterrupt:
    logger.warning("interrupted: run again with --resume to continue from %s",
                   os.path.join(args.out, "checkpoint.npz"))
    return 130
  path = os.path.join(args.out, "distilled.npz")
  distilled.save(path)
  acc = kip.evaluate.kernel_accuracy(distilled, ds)
  distilled.grid(os.path.join(args.out, "distilled.png"), class_names=ds.class_names)
  summary = {"dataset": ds.name, "method": distilled.method, "support_size": len(distilled),
             "kernel": distilled.metadata["kernel"], "krr_test_accuracy": acc,
             "seconds": distilled.metadata.get("seconds")}
  from kip._src import io as kio
  with kio.atomic_write(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  logger.info("KRR test accuracy %.4f on %d test images; wrote %s", acc, len(ds.y_test), path)
  print(json.dumps(summary))
  return 0


def _cmd_evaluate(args) -> int:
  import kip

  _setup_logging(None, args.verbose)
  distilled = kip.DistilledSet.load(args.path)
  prep = distilled.preprocessing
  ds = _load_dataset(distilled.dataset, args.data_dir, getattr(prep, "kind", "standardize"),
                     getattr(prep, "zca_reg", 0.1) or 0.1)
  result = {"path": args.path, "dataset": ds.name, "method": distilled.method,
            "support_size": len(distilled)}
  spec = distilled.metadata.get("kernel", {})
  if isinstance(spec, dict) and spec.get("architecture") in ("fc", "convnet"):
    result["krr_test_accuracy"] = kip.evaluate.kernel_accuracy(distilled, ds,
                                                                num_test=args.num_test)
  if args.model:
    from kip import transfer
    recipe = args.recipe or ("kip" if distilled.method in ("kip", "ls") else "dc")
    overrides = {} if args.steps is None else {"steps": args.steps}
    r = transfer.evaluate(distilled, ds, model=args.model, recipe=recipe,
                          restarts=args.restarts, seed=args.seed,
                          recipe_overrides=overrides, progress=not args.no_progress)
    result["transfer"] = r.to_dict()
  print(json.dumps(result))
  return 0


def _cmd_show(args) -> int:
  import kip
  _setup_logging(None, args.verbose)
  distilled = kip.DistilledSet.load(args.path)
  out = args.out or os.path.splitext(args.path)[0] + ".png"
  names = distilled.metadata.get("class_names")
  distilled.grid(out, class_names=names, max_images=args.max_images)
  print(out)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return {"distill": _cmd_distill, "evaluate": _cmd_evaluate, "show": _cmd_show}[
        args.command](args)
  except (ValueError, FileNotFoundError) as e:
    logging.getLogger("kip.cli").error("%s", e)
    print(f"kip: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
