"""A cell's evaluation: kernel ridge regression and finite networks trained on the set."""

from __future__ import annotations

import time
from typing import Any, Mapping, Optional

import numpy as np

from benchmarks import common
from benchmarks.suite.budget import BudgetSpent, spent
from benchmarks.suite.files import read_json

__all__ = ["krr", "finite"]


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
           deadline: Optional[float] = None) -> dict[str, Any]:
  """Finite networks trained on the set: mean +- std over restarts.

  With ``restarts_per_call = k`` the restarts run in groups of ``k`` (group ``g`` seeded with
  ``seed + g``), each group's accuracies saved to ``stage_path`` as it finishes, so that a run
  cut short (a 10-minute GPU chunk, ``--max-minutes``) continues at the next group. The
  ``'dd'`` protocol trains the DD set's own network with its learned step sizes.

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
    return {"protocol": "dd", "mean": r.mean, "std": r.std, "accuracies": list(r.accuracies),
            "restarts": len(r.accuracies), "model": r.model, "recipe": "dd learned steps",
            "init": r.init, "init_accuracy": r.init_accuracy, "seconds": time.time() - t}
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
      r = kip.transfer.evaluate(distilled, ds, **kwargs)
    done.append(r.to_dict())
    if stage_path and len(groups) > 1:
      common.write_json(stage_path, {"fingerprint": fp, "groups": done})
  accs = np.concatenate([np.asarray(d["accuracies"], float) for d in done])
  out = {k: v for k, v in done[0].items() if k not in ("accuracies", "mean", "std", "seconds",
                                                        "seed")}
  out.update(protocol="transfer", accuracies=accs.tolist(), mean=float(accs.mean()),
             std=float(accs.std()), restarts=int(accs.size), seeds=[d["seed"] for d in done],
             augment=augment or (None if done[0].get("augment", "none") == "none"
                                 else done[0]["augment"]), fresh_subsets=bool(opts.get("fresh_subsets")),
             seconds=float(sum(d["seconds"] for d in done)))
  return out
