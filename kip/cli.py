"""Command line: ``kip distill``, ``kip evaluate``, ``kip show``, ``kip methods``.

This is the edge where configuration is built (argparse -> frozen configs) and where the
environment (``KIP_DATA_DIR``, logging to a file) is read; library code below takes arguments.
Defaults of method hyperparameters come from the config classes (one place per default).

A run folder (``--out``) is a unit: a run refuses to start in a folder that holds another
run's results or checkpoint unless ``--resume`` (continue it) or ``--overwrite`` (move the old
files aside into ``OUT/previous-<time>/``) is given. The result is written first, atomically;
the KRR evaluation, the PNG and ``summary.json`` follow.

Errors are one line on stderr (``--debug`` shows the traceback): bad values exit 2, missing
files, I/O errors and divergence exit 1, Ctrl-C exits 130 (the checkpoint is kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
import typing
from typing import Any, Optional, Sequence

__all__ = ["main", "build_parser"]

logger = logging.getLogger("kip.cli")

RESULT_FILES = ("distilled.npz", "distilled.npz.json", "distilled.png", "summary.json",
                "checkpoint.npz", "checkpoint.prev.npz")


def _version() -> str:
  import importlib.metadata as md
  try:
    return md.version("kip")
  except md.PackageNotFoundError:  # pragma: no cover - running from a source tree
    return "unknown"


def _setup_logging(out_dir: Optional[str], verbose: bool) -> None:
  handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
  if out_dir:
    handlers.append(logging.FileHandler(os.path.join(out_dir, "kip.log")))
  level = logging.DEBUG if verbose else logging.INFO
  logging.basicConfig(level=level, handlers=handlers,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
  logging.getLogger("kip").setLevel(level)  # the CLI owns logging: undo quieter settings
  for noisy in ("jax", "absl", "matplotlib", "PIL"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------ parser
def _kip_defaults():
  from kip._src.methods.kip import KIPConfig
  return KIPConfig()


def _count(minimum: int):
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
    return value
  return parse


def _positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not (value > 0 and value != float("inf")):
    raise argparse.ArgumentTypeError(f"{value} must be a finite number > 0")
  return value


def _nonneg_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not (value >= 0 and value != float("inf")):
    raise argparse.ArgumentTypeError(f"{value} must be a finite number >= 0")
  return value


def build_parser() -> argparse.ArgumentParser:
  from kip._src import registry
  fmt = argparse.ArgumentDefaultsHelpFormatter
  kd = _kip_defaults()
  p = argparse.ArgumentParser(prog="kip", description="Kernel-based dataset distillation.",
                              formatter_class=fmt)
  p.add_argument("--version", action="version", version=f"kip {_version()}")
  p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
  sub = p.add_subparsers(dest="command", required=True)
  # --debug / -v are also accepted after the command (`kip distill ... --debug`); SUPPRESS
  # keeps a subcommand from resetting a value given before it.
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                      help="debug logging (default: off)")
  common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                      help="show full tracebacks on errors (default: off)")

  d = sub.add_parser("distill", help="distil a data set with any registered method",
                     formatter_class=fmt, parents=[common])
  d.add_argument("--method", default="kip", choices=registry.names(),
                 help="distillation method (see `kip methods`)")
  d.add_argument("--mode", default=None, choices=["kip", "ls"],
                 help="shorthand for --method kip / --method ls")
  d.add_argument("--dataset", default="fashion_mnist", help="data set name")
  d.add_argument("--data-dir", default=None, help="folder with the data files (default: "
                 "$KIP_DATA_DIR, then the Debian package's folder, then TFDS)")
  d.add_argument("--preprocess", default="standardize",
                 choices=["none", "standardize", "zca", "zca_centered"],
                 help="preprocessing fitted on the training split")
  d.add_argument("--zca-reg", type=_nonneg_float, default=0.1, help="ZCA regularisation")
  g = d.add_mutually_exclusive_group()
  g.add_argument("--support-size", type=_count(1), default=None,
                 help="total support images (default: 10 per class)")
  g.add_argument("--images-per-class", type=_count(1), default=None,
                 help="support images per class")
  d.add_argument("--steps", type=_count(1), default=None,
                 help="steps (default: the method config's)")
  d.add_argument("--seed", type=_count(0), default=0, help="PRNG seed")
  d.add_argument("--time-budget", type=_positive_float, default=None,
                 help="seconds of optimisation before a clean stop with a checkpoint")
  k = d.add_argument_group("kernel methods (kip, ls)")
  k.add_argument("--kernel", default="fc", choices=["fc", "convnet", "convnet3", "convnet_rf",
                                                    "fc_rf", "learned_features"],
                 help="fc, the KIP ConvNet (4 convs), ConvNet3 (3 convs), a random-feature "
                      "estimate, or FRePo's learned features (a pool of ConvNet-3s trained on "
                      "the support)")
  k.add_argument("--depth", type=_count(0), default=None, help="kernel depth (default: "
                 "preset's)")
  k.add_argument("--get", default=kd.get, choices=["ntk", "nngp"], help="kernel type")
  k.add_argument("--lr", type=_positive_float, default=kd.learning_rate,
                 help="learning rate (KIP; other methods: --option)")
  k.add_argument("--target-batch-size", type=_count(1), default=kd.target_batch_size,
                 help="targets per KIP step")
  k.add_argument("--reg", type=_nonneg_float, default=kd.reg, help="relative ridge")
  k.add_argument("--no-learn-labels", action="store_true", help="keep the labels fixed")
  k.add_argument("--augment", default=kd.augment, choices=["flip", "crop", "flip_crop"],
                 help="augment the support at each KIP step")
  k.add_argument("--loss", default=kd.loss, choices=["mse", "platt"], help="KIP outer loss")
  k.add_argument("--labels", default=kd.labels, choices=["centred", "one_hot"],
                 help="label encoding (reference: centred)")
  k.add_argument("--target-sampling", default=kd.target_sampling,
                 choices=["without_replacement", "with_replacement"],
                 help="how KIP draws its class-balanced targets")
  k.add_argument("--rf-width", type=_count(1), default=None,
                 help="random-feature kernels: channels of the drawn networks")
  k.add_argument("--rf-models", type=_count(1), default=None,
                 help="random-feature kernels: networks drawn per step")
  k.add_argument("--pool-models", type=_count(1), default=None,
                 help="learned_features: networks in the pool (FRePo: 10)")
  k.add_argument("--pool-reset-every", type=_count(1), default=None,
                 help="learned_features: online steps before a network is re-initialised "
                      "(FRePo: 100)")
  k.add_argument("--pool-lr", type=_positive_float, default=None,
                 help="learned_features: step size of the online training (FRePo's Adam: "
                      "3e-4; --pool-online dc: 0.01)")
  k.add_argument("--pool-online", choices=["frepo", "dc"], default=None,
                 help="learned_features: how the pool trains on the support: frepo (Adam on "
                      "the MSE, the default) or dc (the DC protocol's SGD on the cross-entropy)")
  k.add_argument("--pool-width", type=_count(1), default=None,
                 help="learned_features: channels of the pool's ConvNet-3 (default 128)")
  k.add_argument("--init", default=None, metavar="SET.npz",
                 help="kip: start from this distilled set's images (its labels' argmax, "
                      "encoded as --labels) instead of real images; its size is the default "
                      "support size")
  k.add_argument("--memory-budget-gb", type=_positive_float, default=2.0,
                 help="memory per kernel block")
  d.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                 help="any field of the method's config (repeatable), e.g. --option "
                      "learning_rate=0.1")
  d.add_argument("--eval-every", type=_count(0), default=100,
                 help="steps between test evaluations (0: none)")
  d.add_argument("--eval-size", type=_count(1), default=1000,
                 help="test images of those evaluations")
  d.add_argument("--checkpoint-every", type=_count(0), default=100,
                 help="steps between checkpoints (0: at the end and on Ctrl-C)")
  d.add_argument("--resume", action="store_true", help="continue the run in --out")
  d.add_argument("--overwrite", action="store_true",
                 help="replace the run in --out (old files moved to OUT/previous-<time>/)")
  d.add_argument("--out", required=True, help="output folder (a run folder)")
  d.add_argument("--no-progress", action="store_true", help="no progress output")

  e = sub.add_parser("evaluate", help="evaluate a distilled set (KRR and/or networks)",
                     formatter_class=fmt, parents=[common])
  e.add_argument("path", help="distilled .npz")
  e.add_argument("--data-dir", default=None, help="folder with the data files")
  e.add_argument("--kernel", default=None, help="KRR with this kernel (fc, convnet, "
                 "convnet3; default: the set's own kernel, if any)")
  e.add_argument("--model", default=None, help="also train networks: convnet, kip_convnet, "
                 "fc, lenet, alexnet, resnet")
  e.add_argument("--recipe", default=None,
                 help="kip, dc or dsa (default: kip for kip/ls sets, else dc)")
  e.add_argument("--restarts", type=_count(1), default=10, help="networks trained")
  e.add_argument("--steps", type=_count(1), default=None, help="override the recipe's steps")
  e.add_argument("--augment", default="reference", help="augment the networks' training "
                 "batches: reference (default: what the reference code evaluates the recipe "
                 "with: DSA for dsa, DC's crop_scale_rotate and 1,000 epochs for dc on MNIST, "
                 "none otherwise), none, dsa (all DSA groups), a DSA strategy such as "
                 "crop_flip, dc (DC's crop_scale_rotate) or dc:GROUPS such as dc:crop_noise")
  e.add_argument("--tune", action="store_true", help="choose the networks' learning rate (NTK "
                 "rule x factor) and L2 on a validation split of the training set first")
  e.add_argument("--validation-size", type=_count(1), default=5000,
                 help="training images held out for --tune (taken from the end)")
  e.add_argument("--random-real", action="store_true", help="with --model: also train the "
                 "same networks on class-balanced random real images of the same size (a new "
                 "draw per restart) under the same protocol, for comparison")
  e.add_argument("--seed", type=_count(0), default=0, help="PRNG seed")
  e.add_argument("--num-test", type=_count(1), default=None, help="test images (default all)")
  e.add_argument("--no-progress", action="store_true", help="no progress output")

  s = sub.add_parser("show", help="write a PNG grid of a distilled set", formatter_class=fmt,
                     parents=[common])
  s.add_argument("path", help="distilled .npz, or a run folder holding distilled.npz")
  s.add_argument("--out", default=None, help="PNG path or folder (default: next to the .npz)")
  s.add_argument("--max-images", type=_count(1), default=100, help="images shown")

  sub.add_parser("methods", help="list the registered methods", formatter_class=fmt,
                 parents=[common])
  return p


# ------------------------------------------------------------------------------ helpers
def _load_dataset(name, data_dir, preprocess="standardize", zca_reg=0.1):
  from kip import data
  return data.load(name, data_dir=data_dir, preprocess=preprocess, zca_reg=zca_reg)


_POOL_FLAGS = {"pool_models": "num_models", "pool_reset_every": "reset_every",
               "pool_lr": "learning_rate", "pool_online": "online"}


def _kernel(args, num_classes: int):
  from kip import kernels
  budget = int(args.memory_budget_gb * 1024 ** 3)
  kw: dict[str, Any] = {} if args.depth is None else {"depth": args.depth}
  name = args.kernel
  pool = {v: getattr(args, k) for k, v in _POOL_FLAGS.items() if getattr(args, k) is not None}
  if name == "learned_features":
    if args.rf_width is not None or args.rf_models is not None:
      raise ValueError("--rf-width/--rf-models apply to random-feature kernels; for "
                       "learned_features use --pool-width/--pool-models.")
    model_kwargs = dict(kw)
    if args.pool_width is not None:
      model_kwargs["width"] = args.pool_width
    return kernels.learned_features("convnet", num_classes, model_kwargs=model_kwargs, **pool)
  if pool or args.pool_width is not None:
    raise ValueError("--pool-models/--pool-reset-every/--pool-lr/--pool-online/--pool-width "
                     f"apply to --kernel learned_features, not --kernel {name}.")
  if name in ("fc_rf", "convnet_rf"):
    if args.rf_width is not None:
      kw["width"] = args.rf_width
    if args.rf_models is not None:
      kw["num_models"] = args.rf_models
    return getattr(kernels, name)(**kw)
  if args.rf_width is not None or args.rf_models is not None:
    raise ValueError(f"--rf-width/--rf-models apply to random-feature kernels (convnet_rf, "
                     f"fc_rf), not --kernel {name}.")
  if name == "fc":
    return kernels.fc(memory_budget=budget, **kw)
  return kernels.convnet(memory_budget=budget, prepend_conv=(name == "convnet"), **kw)


def _parse_value(text: str, annotation: Any) -> Any:
  """A ``--option`` value converted to the config field's type."""
  hint = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
  low = text.strip().lower()
  if low in ("none", "null"):
    return None
  if "bool" in str(hint):
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise ValueError(f"{text!r} is not a boolean (true/false).")
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def _options(method_name: str, pairs: Sequence[str]) -> dict[str, Any]:
  from kip._src import registry
  cls = registry.get(method_name).config_class
  fields = {f.name: f for f in dataclasses.fields(cls)}
  hints = typing.get_type_hints(cls) if hasattr(cls, "__annotations__") else {}
  out = {}
  for pair in pairs:
    if "=" not in pair:
      raise ValueError(f"--option {pair!r}: write NAME=VALUE (fields of {cls.__name__}: "
                       f"{sorted(fields)}).")
    name, value = pair.split("=", 1)
    name = name.strip().replace("-", "_")
    if name not in fields:
      raise ValueError(f"--option {name}: {cls.__name__} has no such field; its fields are "
                       f"{sorted(fields)}.")
    value = _parse_value(value, hints.get(name, fields[name].type))
    if isinstance(value, list):
      value = tuple(value)
    out[name] = value
  return out


def _existing_results(out: str) -> list[str]:
  if not os.path.isdir(out):
    return []
  return [f for f in RESULT_FILES if os.path.exists(os.path.join(out, f))]


def _prepare_out(args) -> None:
  """Makes ``--out`` a run folder this run may use (see the module docstring)."""
  out = args.out
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"--out {out} is a file, not a folder; give a folder path.")
  if args.resume and args.overwrite:
    raise ValueError("--resume and --overwrite exclude each other: --resume continues the run "
                     f"in {out}, --overwrite replaces it.")
  found = _existing_results(out)
  if found and not (args.resume or args.overwrite):
    raise ValueError(f"{out} already holds a run ({', '.join(found)}); add --resume to "
                     "continue it or --overwrite to replace it (the old files are moved to "
                     f"{os.path.join(out, 'previous-<time>')}/), or choose another --out.")
  if args.resume and found and "checkpoint.npz" not in found and \
      "checkpoint.prev.npz" not in found:
    raise ValueError(f"{out} holds results ({', '.join(found)}) but no checkpoint to resume; "
                     "use --overwrite to replace them.")
  os.makedirs(out, exist_ok=True)
  if not os.access(out, os.W_OK):
    raise PermissionError(f"--out {out} is not writable; choose another folder.")
  if found and args.overwrite:
    aside = os.path.join(out, time.strftime("previous-%Y%m%d-%H%M%S"))
    os.makedirs(aside, exist_ok=True)
    for f in found + (["kip.log"] if os.path.exists(os.path.join(out, "kip.log")) else []):
      os.replace(os.path.join(out, f), os.path.join(aside, f))
    args._moved_aside = aside


def _write_json(path: str, obj: Any) -> None:
  from kip._src import io as kio
  with kio.atomic_write(path, "w") as f:
    json.dump(obj, f, indent=2, default=str)


# ------------------------------------------------------------------------------ commands
def _cmd_distill(args, argv) -> int:
  import jax

  import kip
  from kip._src import driver
  from kip._src import registry

  method = args.mode or args.method
  if args.mode and args.method not in ("kip", args.mode):
    raise ValueError(f"--mode {args.mode} and --method {args.method} disagree; give one.")
  _prepare_out(args)
  _setup_logging(args.out, args.verbose)
  from kip._src.distilled import library_versions
  logger.info("=" * 20 + " kip %s run " + "=" * 20, method)
  logger.info("command: %s", " ".join(shlex.quote(a) for a in ["kip", *argv]))
  logger.info("versions: %s", json.dumps(library_versions()))
  if getattr(args, "_moved_aside", None):
    logger.warning("--overwrite: moved the previous run's files to %s", args._moved_aside)
  ds = _load_dataset(args.dataset, args.data_dir, args.preprocess, args.zca_reg)
  start = None
  if args.init is not None:
    if method != "kip":
      raise ValueError(f"--init starts a KIP run; method {method!r} does not take it.")
    start = kip.DistilledSet.load(args.init)
    start.check_compatible(ds)
    if args.support_size is None and args.images_per_class is None:
      args.support_size = len(start)
  if args.support_size is not None:
    from kip._src.methods.kip import resolve_images_per_class
    ipc = resolve_images_per_class(ds.num_classes, args.support_size)
  else:
    ipc = args.images_per_class or 10
  options = _options(method, args.option)
  components: dict[str, Any] = {}
  if method == "kip":
    kd = _kip_defaults()
    options = {"learn_labels": not args.no_learn_labels, "get": args.get, "reg": args.reg,
               "target_batch_size": args.target_batch_size, "learning_rate": args.lr,
               "augment": args.augment, "loss": args.loss, "labels": args.labels,
               "target_sampling": args.target_sampling,
               "steps": args.steps or kd.steps, **options}
    components = {"kernel_fn": _kernel(args, ds.num_classes), "eval_size": args.eval_size,
                  "eval_seed": args.seed, "init": start}
  elif method == "ls":
    options = {"get": args.get, "reg": args.reg, "labels": args.labels, **options}
    components = {"kernel_fn": _kernel(args, ds.num_classes)}
  elif args.steps is not None:
    options["steps"] = args.steps
  config = registry.make_config(method, ipc, **options)
  algorithm = registry.make(method, config, **components)
  logger.info("config: %s %s", type(config).__name__, json.dumps(config.to_dict(), default=str))
  logger.info("data: %s", json.dumps(driver.dataset_fingerprint(ds)))
  try:
    distilled = driver.run(
        algorithm, ds, args.steps or algorithm.default_steps, key=args.seed,
        checkpoint_dir=args.out, checkpoint_every=args.checkpoint_every,
        resume=args.resume, overwrite=args.overwrite, eval_every=args.eval_every,
        time_budget=args.time_budget, progress=not args.no_progress)
  except KeyboardInterrupt:
    logger.warning("interrupted: run again with --resume to continue from %s",
                   os.path.join(args.out, "checkpoint.npz"))
    return 130
  path = os.path.join(args.out, "distilled.npz")
  distilled.save(path)  # first: nothing after this can lose the result
  meta = distilled.metadata
  summary = {"dataset": ds.name, "method": distilled.method, "support_size": len(distilled),
             "images_per_class": ipc, "config": config.to_dict(),
             "preprocessing": {"kind": args.preprocess, "zca_reg": args.zca_reg},
             "seed": args.seed, "steps": meta.get("steps"),
             "requested_steps": meta.get("requested_steps"),
             "stopped_early": meta.get("stopped_early"), "seconds": meta.get("seconds"),
             "data_fingerprint": meta.get("fingerprint", {}).get("data"),
             "kernel": meta.get("kernel"), "versions": meta.get("versions")}
  if start is not None:  # other methods' metadata may use "init" for their own setting
    summary["init"] = {**meta["init"], "path": args.init}
  _write_json(os.path.join(args.out, "summary.json"), summary)
  if method in ("kip", "ls") or meta.get("kernel"):
    kernel = components.get("kernel_fn") if method in ("kip", "ls") else None
    get = None
    evals = (meta.get("history") or {}).get("eval") or []
    if isinstance(kernel, kip.kernels.LearnedFeatureKernel):
      # The pool's networks are not part of the set: report the run's last evaluation (at
      # its last step, with the pool's mean kernel) instead of rebuilding the kernel.
      if evals:
        summary["krr_test_accuracy"] = evals[-1][1]["test_accuracy"]
        summary["krr_test_images"] = min(args.eval_size, len(ds.y_test))
        summary["krr_kernel"] = "the final pool's mean kernel"
        logger.info("KRR test accuracy %.4f on %d test images (the final pool's networks)",
                    summary["krr_test_accuracy"], summary["krr_test_images"])
      else:
        logger.info("no KRR evaluation: with --eval-every 0 the learned-feature pool is not "
                    "evaluated, and its networks are not saved with the set")
    else:
      if kernel is not None and getattr(kernel, "features", None) is not None:
        kernel, get = kernel.replace(fixed_seed=args.seed), "nngp"  # one fixed draw
      try:
        acc = kip.evaluate.kernel_accuracy(distilled, ds, kernel, get=get)
      except ValueError as e:  # e.g. a set without a kernel of its own
        logger.info("no KRR evaluation: %s", e)
      else:
        summary["krr_test_accuracy"] = acc
        logger.info("KRR test accuracy %.4f on %d test images", acc, len(ds.y_test))
  else:
    from kip import kernels
    acc = kip.evaluate.kernel_accuracy(distilled, ds, kernels.fc(depth=3))
    summary["krr_test_accuracy_fc3"] = acc
    logger.info("KRR test accuracy (FC-3 NTK) %.4f on %d test images", acc, len(ds.y_test))
  _write_json(os.path.join(args.out, "summary.json"), summary)
  distilled.grid(os.path.join(args.out, "distilled.png"), class_names=ds.class_names)
  logger.info("wrote %s", path)
  del jax
  print(json.dumps({k: summary[k] for k in summary if k not in ("versions", "config")},
                   default=str))
  return 0


def _cmd_evaluate(args, argv) -> int:
  import kip

  _setup_logging(None, args.verbose)
  if args.random_real and not args.model:
    raise ValueError("--random-real compares networks trained on the set with networks "
                     "trained on random real images; give --model too (e.g. --model convnet).")
  if args.random_real and args.tune:
    raise ValueError("--random-real with --tune: random real sets are not tuned, so the "
                     "two figures would not share a protocol; drop one of them.")
  distilled = kip.DistilledSet.load(args.path)
  prep = distilled.preprocessing
  ds = _load_dataset(distilled.dataset, args.data_dir, getattr(prep, "kind", "standardize"),
                     getattr(prep, "zca_reg", 0.1) or 0.1)
  result = {"path": args.path, "dataset": ds.name, "method": distilled.method,
            "support_size": len(distilled)}
  ipc, rest = divmod(len(distilled), ds.num_classes)
  if args.random_real and rest:
    raise ValueError(f"--random-real needs a size the {ds.num_classes} classes split evenly; "
                     f"the set has {len(distilled)} images.")
  spec = distilled.metadata.get("kernel", {})
  kernel = None
  if args.kernel is not None:
    from kip import kernels
    if args.kernel == "fc":
      kernel = kernels.fc(depth=3)
    elif args.kernel in ("convnet", "convnet3"):
      kernel = kernels.convnet(prepend_conv=args.kernel == "convnet")
    else:
      raise ValueError(f"--kernel {args.kernel!r}; use fc, convnet or convnet3.")
  if kernel is not None or (isinstance(spec, dict) and spec.get("architecture") in
                            ("fc", "convnet")):
    result["krr_test_accuracy"] = kip.evaluate.kernel_accuracy(
        distilled, ds, kernel, num_test=args.num_test, **_progress_kw(args))
  if args.model:
    from kip import transfer
    recipe = args.recipe or ("kip" if distilled.method in ("kip", "ls") else "dc")
    overrides = {} if args.steps is None else {"steps": args.steps}
    tune = transfer.Tune(validation_size=args.validation_size) if args.tune else None
    r = transfer.evaluate(distilled, ds, model=args.model, recipe=recipe,
                          restarts=args.restarts, seed=args.seed,
                          recipe_overrides=overrides, progress=not args.no_progress, tune=tune,
                          augment_fn=args.augment)
    result["transfer"] = r.to_dict()
    logger.info("transfer (%s, %s recipe): %s", args.model, recipe, r)
    if args.random_real:
      rr = transfer.evaluate_random(ds, ipc, model=args.model, recipe=recipe,
                                    restarts=args.restarts, seed=args.seed,
                                    recipe_overrides=overrides, progress=not args.no_progress,
                                    augment_fn=args.augment)
      result["random_real"] = rr.to_dict()
      logger.info("random real, %d per class (same protocol): %s", ipc, rr)
  print(json.dumps(result))
  return 0


def _progress_kw(args) -> dict:
  import inspect

  import kip
  params = inspect.signature(kip.evaluate.kernel_accuracy).parameters
  return {"progress": not args.no_progress} if "progress" in params else {}


def _cmd_show(args, argv) -> int:
  import kip
  _setup_logging(None, args.verbose)
  path = args.path
  if os.path.isdir(path):
    path = os.path.join(path, "distilled.npz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist; give a distilled .npz or a run folder "
                            "holding distilled.npz.")
  distilled = kip.DistilledSet.load(path)
  out = args.out or os.path.splitext(path)[0] + ".png"
  if os.path.isdir(out) or out.endswith(os.sep):
    out = os.path.join(out, os.path.splitext(os.path.basename(path))[0] + ".png")
  names = distilled.metadata.get("class_names")
  distilled.grid(out, class_names=names, max_images=args.max_images)
  print(out)
  return 0


def _cmd_methods(args, argv) -> int:
  from kip._src import registry
  for m in registry.METHODS.values():
    print(f"{m.name:12s} {m.description}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  commands = {"distill": _cmd_distill, "evaluate": _cmd_evaluate, "show": _cmd_show,
              "methods": _cmd_methods}
  try:
    return commands[args.command](args, argv)
  except KeyboardInterrupt:
    print("kip: interrupted", file=sys.stderr)
    return 130
  except (ValueError, ImportError) as e:
    code = 2
    err = e
  except (FileNotFoundError, FloatingPointError, OSError) as e:
    code = 1
    err = e
  if args.debug:
    raise err
  message = str(err).strip() or type(err).__name__
  if not isinstance(err, FloatingPointError):  # divergence is logged by the driver already
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "%s", (message,), None)
    for h in logging.getLogger().handlers:  # into kip.log; stderr gets the line below
      if isinstance(h, logging.FileHandler):
        h.emit(record)
  print(f"kip: error: {message}", file=sys.stderr)
  return code


if __name__ == "__main__":
  sys.exit(main())
