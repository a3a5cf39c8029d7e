"""Coresets and Dataset Distillation on Fashion-MNIST at IPC 1 and 10, evaluated with an FC network.

A fixed slice of the CPU suite (``benchmarks/configs/cpu.json``): random real images, herding,
k-center, class means and DD, each trained into a fully connected network (width 1024, two
hidden layers; the KIP recipe, MSE on one-hot labels, as ``benchmarks.transfer_cpu`` uses for
KIP-FC and LS) - DD with its own learned step-size schedule on the FC network it was distilled
with. KRR accuracy with the FC-3 NTK is shown beside. Runs through ``benchmarks.run`` (same
cells, same resumable files, same table), into ``benchmarks/results/baselines_cpu/``.

  python -m benchmarks.baselines_cpu [--restarts 5] [--train-steps 2000] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import sys

from benchmarks import common
from benchmarks import run
from benchmarks.suite.evaluation import evaluations

METHODS = ("random", "herding", "kcenter", "class_mean", "dd")
IPCS = [1, 10]


def config(restarts: int = 5, train_steps: int = 2000) -> dict:
  """The CPU suite's coreset and DD cells, with the FC network as the finite protocol."""
  base = run.load_config("cpu")
  finite = {"model": "fc", "recipe": "kip", "restarts": restarts,
            "recipe_overrides": {"steps": train_steps}}
  methods = {}
  for name in METHODS:
    m = copy.deepcopy(base["methods"][name])
    m["ipc"] = IPCS
    m["per_ipc"] = {ipc: {k: v for k, v in over.items() if k != "finite"}
                    for ipc, over in m.get("per_ipc", {}).items()}
    own = [e for e in evaluations(m["finite"]) if e.get("protocol") == "dd"]
    if own:  # DD: its own networks with its learned step sizes
      m["finite"] = {**own[0], "restarts": restarts}
    else:
      m["finite"] = {**finite, **({"fresh_subsets": True} if name == "random" else {})}
    methods[name] = m
  return {
      "name": "baselines_cpu",
      "title": "Coresets and DD, Fashion-MNIST, FC network (CPU)",
      "dataset": base["dataset"], "seed": base["seed"], "ipc": IPCS,
      "caption": (f"Finite network: FC (width 1024, 2 hidden layers), KIP recipe (MSE on the "
                  f"one-hot labels, SGD momentum 0.9, cosine), {train_steps} steps, {restarts} "
                  f"restarts (random real: a new subset per network); DD: "
                  f"{base['methods']['dd']['distill']['steps']} outer steps (otherwise the "
                  "reference defaults of kip.baselines.dd) on the FC network, evaluated with "
                  "its learned step sizes. The published numbers beside them are ConvNet-3 numbers (no FC numbers are published for "
                  "Fashion-MNIST); DD has none."),
      "methods": methods}


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--restarts", type=int, default=5)
  p.add_argument("--train-steps", type=int, default=2000)
  p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "baselines_cpu"))
  p.add_argument("--max-minutes", type=float, default=None)
  p.add_argument("--progress", action="store_true")
  a = p.parse_args(argv)
  common.setup_logging(quiet_kip=True)
  inside = os.path.abspath(a.out).startswith(os.path.abspath(common.RESULTS_DIR) + os.sep)
  summary = run.run_suite(config(a.restarts, a.train_steps), a.out, max_minutes=a.max_minutes,
                          progress=a.progress, write_results=inside,
                          command="python -m benchmarks.baselines_cpu " +
                          " ".join(shlex.quote(x) for x in argv))
  print("\n" + summary["caption"] + "\n")
  print(summary["table"])
  return summary


if __name__ == "__main__":
  main()
