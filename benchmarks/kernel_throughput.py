"""ConvNet-3 NTK throughput on 28x28x1 inputs: kip's engine vs neural-tangents, one run.

Both implementations get the same inputs (saved to a temporary .npz); neural-tangents runs in
its pinned environment (``.venv-nt``: jax 0.5.3, neural-tangents 0.6.5) as a subprocess, since it
does not import on current JAX. Prints forward and forward+gradient (w.r.t. x1) pairs/s for
both, their ratio, peak resident memory, the agreement of the two kernels, and XLA's compiled
temporary memory for the gradient of a 100 x 2,000 block under a given memory budget.

  python -m benchmarks.kernel_throughput [--n1 8 --n2 32] [--budget-gb 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
logger = logging.getLogger("benchmarks.kernel_throughput")


def _run(python, args, env=None):
  cmd = [python, "-m", "benchmarks._throughput_worker", *args]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n1", type=int, default=8)
  p.add_argument("--n2", type=int, default=32)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--budget-gb", type=float, default=8.0)
  p.add_argument("--memory-block", default="100,2000")
  p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
  p.add_argument("--nt-python", default=os.path.join(ROOT, ".venv-nt", "bin", "python"))
  p.add_argument("--no-reference", action="store_true")
  p.add_argument("--json", default=None)
  a = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")

  rng = np.random.default_rng(0)
  env = dict(os.environ, JAX_PLATFORMS=a.device if a.device == "cpu" else "cuda")
  budget = str(int(a.budget_gb * 1024 ** 3))
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "inputs.npz")
    np.savez(path, x1=rng.normal(size=(a.n1, 28, 28, 1)).astype(np.float32),
             x2=rng.normal(size=(a.n2, 28, 28, 1)).astype(np.float32))
    ours = _run(sys.executable, ["ours", path, "--repeats", str(a.repeats)], env)
    ref = None
    if not a.no_reference:
      if not os.path.exists(a.nt_python):
        raise FileNotFoundError(f"{a.nt_python} not found: run `bash scripts/setup.sh test` to "
                                "create the pinned neural-tangents environment, or pass "
                                "--no-reference.")
      ref = _run(a.nt_python, ["nt", path, "--repeats", str(a.repeats)], env)
    mem = _run(sys.executable, ["ours", path, "--budget", budget,
                                "--memory-only", a.memory_block], env)

  rows = [("implementation", "jax", "fwd pairs/s", "fwd+grad pairs/s", "peak RSS MB")]
  for r in [ours] + ([ref] if ref else []):
    rows.append((r["impl"], r["jax"], f"{r['fwd_pairs_per_s']:.1f}",
                 f"{r['grad_pairs_per_s']:.1f}", f"{r['peak_rss_mb']:.0f}"))
  print(f"\nConvNet-3 NTK, 28x28x1, {a.n1} x {a.n2} pairs, device {ours['device']}")
  for row in rows:
    print("| " + " | ".join(row) + " |")
  result = {"ours": {k: v for k, v in ours.items() if k != "kernel"}, "memory": mem}
  if ref:
    k_ours, k_ref = np.asarray(ours["kernel"]), np.asarray(ref["kernel"])
    err = float(np.abs(k_ours - k_ref).max() / np.abs(k_ref).max())
    fwd_ratio = ours["fwd_pairs_per_s"] / ref["fwd_pairs_per_s"]
    grad_ratio = ours["grad_pairs_per_s"] / ref["grad_pairs_per_s"]
    print(f"speed-up vs neural-tangents: forward {fwd_ratio:.2f}x, forward+gradient "
          f"{grad_ratio:.2f}x (target >= 5x); max relative kernel difference {err:.2e}")
    result.update(reference={k: v for k, v in ref.items() if k != "kernel"},
                  fwd_ratio=fwd_ratio, grad_ratio=grad_ratio, max_rel_diff=err)
  gb = mem["grad_temp_bytes"] / 1024 ** 3
  print(f"gradient of a {mem['n1']} x {mem['n2']} block, budget {a.budget_gb:g} GB: XLA "
        f"temporaries {gb:.2f} GB (sub-blocks {mem['block']}), "
        f"{'within' if gb <= a.budget_gb else 'OVER'} budget")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
