"""A cell's evaluation: kernel ridge regression and finite networks trained on the set."""

from __future__ import annotations

import time
from typing import Any, Mapping, Optional

import numpy as np

from benchmarks import common
from benchmarks.suite.budget import BudgetSpent, spent
from benchmarks.suite.files import commands, read_json

__all__ = ["krr", "finite", "evaluations", "column"]


def evaluations(setting: Any) -> list[dict[str, Any]]:
  """A cell's finite evaluations as a list: ``finite`` may be one evaluation (a dict), a list
  of them (one table column each) or ``None``."""
  if setting is None:
    return []
  if isinstance(setting, Mapping):
    return [dict(setting)]
  if isinstance(setting, (list, tuple)) and all(isinstance(e, Mapping) for e in setting):
    return [dict(e) for e in setting]
  raise ValueError(f"finite={setting!r}: expected an evaluation (a dict), a list of them or "
                   "null.")


def column(opts: Mapping[str, Any]) -> str:
  """The table column of a finite evaluation: its ``column``, else ``'DD learned steps'`` for
  the ``'dd'`` protocol, else the model's name."""
  if opts.get("column"):
    return str(opts["column"])
  if opts.get("protocol", "transfer") == "dd":
    return "DD learned steps"
  return str(opts.get("model", "convnet"))


def krr(distilled, ds, opts: Mapping[str, Any]) -> dict[str, Any]:
  """KRR test accuracy of ``distilled`` (``opts``: ``kernel``, ``reg``, ``get``, ``num_test``;
  default the set's own kernel)."""
  import kip
  t = time.time()
  acc = kip.evaluate.kernel_accuracy(distilled, ds, kernel=opts.get("kernel"),
                                     reg=opts.get("reg"), get=opts.get("get"),
                                     num_test=opts.get("num_test"))
  kernel = opts.get("kernel") or distilled.metadata.get("kernel")
  return {"accuracy": float(acc), "seconds": time.time() - t, "kernel": kernel,
          "get": opts.get("get") or distilled.metadata.get("config", {}).get("get", "ntk")}


def finite(distilled, ds, ipc: int, opts: Mapping[str, Any], seed: int, progress: bool, *,
           stage_path: Optional[str] = None, fp: Any = None,
           deadline: Optional[float] = None, command: Optional[str] = None) -> dict[str, Any]:
  """Finite networks trained on the set: mean +- std over restarts.

  ``opts`` holds ``model``, ``recipe``, ``restarts``, ``model_kwargs``, ``recipe_overrides``,
  ``augment`` (``True``: DSA's, or a strategy string), ``tune`` (``kip.transfer.Tune``
  fields: the learning rate and L2 chosen on a validation split carved from the training set,
  then ``restarts`` networks trained with them), ``fresh_subsets`` (random real images: a new
  subset per network, no tuning), ``restarts_per_call`` and ``column``.

  With ``restarts_per_call = k`` the restarts run in groups of ``k`` (group ``g`` seeded with
  ``seed + g``), each group's accuracies saved to ``stage_path`` as it finishes, so that a run
  cut short (a 10-minute GPU chunk, ``--max-minutes``) continues at the next group. The
  ``'dd'`` protocol trains the DD set's own network with its learned step sizes. Each group
  records ``command`` (the call that ran it); the result lists them under ``commands``.

  Raises:
    BudgetSpent: ``deadline`` passed between two restart groups (the first group of a call
      always runs).
  """
  import kip
  restarts = int(opts.get("restarts", 1))
  if opts.get("protocol", "transfer") == "dd":
    t = time.time()
    r = kip.baselines.evaluate_dd(distilled, ds, key=seed, restarts=restarts,
                                  model=opts.get("model"), init=opts.get("init"))
    return {"protocol": "dd", "column": column(opts), "mean": r.mean, "std": r.std,
            "accuracies": list(r.accuracies),
            "restarts": len(r.accuracies), "model": r.model, "recipe": "dd learned steps",
            "init": r.init, "init_accuracy": r.init_accuracy, "seconds": time.time() - t,
            "commands": commands([command])}
  augment = opts.get("augment")
  augment_fn = "reference"  # the reference code's evaluation augmentation (none on F-MNIST)
  if augment:
    from kip.baselines import augment as aug
    augment_fn = aug.augment_fn() if augment is True else aug.augment_fn(augment)
  per_call = int(opts.get("restarts_per_call") or restarts)
  groups = [min(per_call, restarts - lo) for lo in range(0, restarts, per_call)]
  stage = read_json(stage_path) if stage_path else None
  done = stage["groups"] if stage and stage.get("fingerprint") == fp else []
  first = len(done)
  for g in range(first, len(groups)):
    if g > first and spent(deadline):
      raise BudgetSpent(f"finite evaluation, after restart group {g} of {len(groups)}")
    kwargs = dict(model=opts.get("model", "convnet"), recipe=opts.get("recipe", "dc"),
                  restarts=groups[g], seed=seed + g, augment_fn=augment_fn,
                  model_kwargs=opts.get("model_kwargs"),
                  recipe_overrides=opts.get("recipe_overrides"), progress=progress)
    if opts.get("fresh_subsets"):  # the published random baseline: a new subset per network
      r = kip.transfer.evaluate_random(ds, ipc, **kwargs)
    else:
      r = kip.transfer.evaluate(distilled, ds, tune=opts.get("tune"), **kwargs)
    done.append({**r.to_dict(), "command": command})
    if stage_path:  # every finished group, so that an interrupted cell keeps it
      common.write_json(stage_path, {"fingerprint": fp, "groups": done})
  accs = np.concatenate([np.asarray(d["accuracies"], float) for d in done])
  out = {k: v for k, v in done[0].items() if k not in ("accuracies", "mean", "std", "seconds",
                                                        "seed", "command")}
  saved_aug = done[0].get("augment", "none")
  out.update(protocol="transfer", column=column(opts), accuracies=accs.tolist(),
             mean=float(accs.mean()), std=float(accs.std()), restarts=int(accs.size),
             seeds=[d["seed"] for d in done],
             commands=commands(d.get("command") for d in done),
             augment=augment or (None if saved_aug == "none" else saved_aug),
             fresh_subsets=bool(opts.get("fresh_subsets")),
             seconds=float(sum(d["seconds"] for d in done)))
  return out
