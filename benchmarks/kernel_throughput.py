"""ConvNet NTK throughput on 28x28x1: kip native / banded / fused / reference vs neural-tangents.

All implementations get the same inputs (saved to a temporary .npz); neural-tangents runs in
its pinned environment (``.venv-nt``: jax 0.5.3, neural-tangents 0.6.5) as a subprocess, since it
does not import on current JAX. Our paths: ``native`` (the CPU default: the fused first block as
the compiled CPU kernel of :mod:`kip._src.kernels.native`, then the rest of the network on the
band of pixel pairs that reaches the Flatten readout, :mod:`kip._src.kernels.banded`; CPU only),
``banded`` (the same with the fused block in XLA), ``fused`` (the XLA fused first block, the
rest dense) and ``reference`` (layer by layer, the XLA path). For ConvNet-3 and the 4-conv KIP
ConvNet (``convnet(depth=3, prepend_conv=True)``) it prints forward and forward+gradient (w.r.t.
x1) pairs/s, peak resident memory, the ratios, and the maximum relative difference to
neural-tangents; then the pairs/s of the pieces (patch GEMM alone, ReLU map alone, fused first
block in XLA and compiled, later layers dense and banded) that bound the speed, and XLA's
compiled temporary memory
for the gradient of a 100 x 2,000 block under a given memory budget.

Each implementation runs in ``--rounds`` separate processes, interleaved with the others, and
keeps its best round (every round is in the JSON): this machine's speed drifts by up to 1.7x
over minutes, and a drift during one implementation's only process would decide a ratio.

  python -m benchmarks.kernel_throughput [--n1 4 --n2 32] [--rounds 2] [--budget-gb 8]
      [--json out.json]
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

from benchmarks import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
logger = logging.getLogger("benchmarks.kernel_throughput")

ARCHS = {"convnet3": "ConvNet-3", "kip4": "KIP ConvNet (prepend_conv, 4 conv)"}
TARGETS = {"fwd_pairs_per_s": 600.0, "grad_pairs_per_s": 200.0, "nt_ratio": 40.0,
           "max_rel_diff": 1e-5}


def _run(python, args, env=None):
  cmd = [python, "-m", "benchmarks._throughput_worker", *args]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def _best(rounds):
  """One implementation's rounds merged: the fastest forward and gradient (each with its own
  round's seconds), the largest peak RSS; the rest from the first round."""
  out = dict(rounds[0])
  for kind in ("fwd", "grad"):
    best = max(rounds, key=lambda r: r[f"{kind}_pairs_per_s"])
    out[f"{kind}_pairs_per_s"] = best[f"{kind}_pairs_per_s"]
    out[f"{kind}_seconds"] = best[f"{kind}_seconds"]
  out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
  out["rounds"] = [{k: r[k] for k in ("fwd_pairs_per_s", "grad_pairs_per_s")} for r in rounds]
  return out


def _rel(a, ref):
  a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(a - ref).max() / np.abs(ref).max())


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n1", type=int, default=4)
  p.add_argument("--n2", type=int, default=32)
  p.add_argument("--repeats", type=int, default=2, help="timed calls per process (best kept)")
  p.add_argument("--rounds", type=int, default=2,
                 help="processes per implementation, interleaved across implementations; each "
                      "figure is the best round's (the machine's speed drifts by up to 1.7x)")
  p.add_argument("--archs", default="convnet3,kip4")
  p.add_argument("--budget-gb", type=float, default=8.0)
  p.add_argument("--memory-block", default="100,2000")
  p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
  p.add_argument("--nt-python", default=os.path.join(ROOT, ".venv-nt", "bin", "python"))
  p.add_argument("--no-reference", action="store_true", help="skip neural-tangents")
  p.add_argument("--json", default=None)
  a = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  archs = [s for s in a.archs.split(",") if s]
  bad = [s for s in archs if s not in ARCHS]
  if bad:
    raise ValueError(f"--archs {bad}: expected some of {sorted(ARCHS)}.")
  if not a.no_reference and not os.path.exists(a.nt_python):
    raise FileNotFoundError(f"{a.nt_python} not found: run `bash scripts/setup.sh test` to "
                            "create the pinned neural-tangents environment, or pass "
                            "--no-reference.")

  rng = np.random.default_rng(0)
  env = dict(os.environ, JAX_PLATFORMS=a.device if a.device == "cpu" else "cuda")
  budget = str(int(a.budget_gb * 1024 ** 3))
  rep = ["--repeats", str(a.repeats), "--budget", budget]
  result = {"n1": a.n1, "n2": a.n2, "rounds": a.rounds, "repeats": a.repeats,
            "targets": TARGETS, "archs": {}}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "inputs.npz")
    np.savez(path, x1=rng.normal(size=(a.n1, 28, 28, 1)).astype(np.float32),
             x2=rng.normal(size=(a.n2, 28, 28, 1)).astype(np.float32))
    for arch in archs:
      runs = {}
      impls = [("native", sys.executable, ["ours", path, "--arch", arch, "--path", "native"])
               ] if a.device == "cpu" else []
      impls += [("banded", sys.executable, ["ours", path, "--arch", arch, "--path", "banded"]),
               ("fused", sys.executable, ["ours", path, "--arch", arch, "--path", "fused"]),
               ("reference", sys.executable, ["ours", path, "--arch", arch, "--path",
                                              "reference"])]
      if not a.no_reference:
        impls.append(("nt", a.nt_python, ["nt", path, "--arch", arch]))
      for rnd in range(a.rounds):  # interleaved, so a slow spell of the machine hits all alike
        for impl, python, args in impls:
          logger.info("%s: %s, round %d of %d ...", arch, impl, rnd + 1, a.rounds)
          runs.setdefault(impl, []).append(_run(python, [*args, *rep], env))
      result["archs"][arch] = {impl: _best(rs) for impl, rs in runs.items()}
    logger.info("parts of the fused path ...")
    result["parts"] = _run(sys.executable, ["ours", path, "--parts", *rep], env)
    mem = _run(sys.executable, ["ours", path, "--budget", budget,
                                "--memory-only", a.memory_block], env)
    result["memory"] = mem

  print(f"\nNTK, 28x28x1 inputs, {a.n1} x {a.n2} pairs, device {mem['device']}")
  for arch, runs in result["archs"].items():
    print(f"\n{ARCHS[arch]}")
    print("| implementation | jax | fwd pairs/s | fwd+grad pairs/s | peak RSS MB | "
          "max rel. diff to NT |")
    ref_k = runs["nt"]["kernel"] if "nt" in runs else None
    for name, r in runs.items():
      r["max_rel_diff_to_nt"] = None if ref_k is None else _rel(r["kernel"], ref_k)
      diff = "-" if r["max_rel_diff_to_nt"] is None else f"{r['max_rel_diff_to_nt']:.2e}"
      print(f"| {r['impl']} | {r['jax']} | {r['fwd_pairs_per_s']:.1f} | "
            f"{r['grad_pairs_per_s']:.1f} | {r['peak_rss_mb']:.0f} | {diff} |")
    ratios = {}
    for impl in [i for i in ("native", "banded", "fused") if i in runs]:
      f, ref = runs[impl], runs["reference"]
      ratios[f"{impl}_vs_reference_fwd"] = f["fwd_pairs_per_s"] / ref["fwd_pairs_per_s"]
      ratios[f"{impl}_vs_reference_grad"] = f["grad_pairs_per_s"] / ref["grad_pairs_per_s"]
      if "nt" in runs:
        ratios[f"{impl}_vs_nt_fwd"] = f["fwd_pairs_per_s"] / runs["nt"]["fwd_pairs_per_s"]
        ratios[f"{impl}_vs_nt_grad"] = f["grad_pairs_per_s"] / runs["nt"]["grad_pairs_per_s"]
    print("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    result["archs"][arch] = {"runs": {k: {kk: vv for kk, vv in r.items() if kk != "kernel"}
                                      for k, r in runs.items()}, "ratios": ratios}
  if "convnet3" in result["archs"]:
    default = "native" if "native" in result["archs"]["convnet3"]["runs"] else "banded"
    f = result["archs"]["convnet3"]["runs"][default]  # the default path on this device
    ratios = result["archs"]["convnet3"]["ratios"]
    checks = {"fwd >= 600 pairs/s": f["fwd_pairs_per_s"] >= TARGETS["fwd_pairs_per_s"],
              "fwd+grad >= 200 pairs/s": f["grad_pairs_per_s"] >= TARGETS["grad_pairs_per_s"]}
    if f"{default}_vs_nt_fwd" in ratios:
      checks["fwd >= 40x NT"] = ratios[f"{default}_vs_nt_fwd"] >= TARGETS["nt_ratio"]
      checks["fwd+grad >= 40x NT"] = ratios[f"{default}_vs_nt_grad"] >= TARGETS["nt_ratio"]
      checks["within 1e-5 of NT"] = f["max_rel_diff_to_nt"] <= TARGETS["max_rel_diff"]
    print(f"\nConvNet-3 targets (default path, {default}): " +
          ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in checks.items()))
    result["default_path"] = default
    result["targets_met"] = checks
  pt = result["parts"]
  native_block = (f" (compiled: {pt['first_block_native_pairs_per_s']:.0f})"
                  if "first_block_native_pairs_per_s" in pt else "")
  print("ConvNet-3 pieces (forward pairs/s): patch GEMM alone "
        f"{pt['gemm_alone_pairs_per_s']:.0f}, ReLU map alone {pt['map_alone_pairs_per_s']:.0f}, "
        f"fused first block {pt['first_block_fused_pairs_per_s']:.0f}{native_block}, "
        "layers 2-3 + readout "
        f"{pt['later_layers_pairs_per_s']:.0f} dense, "
        f"{pt['later_layers_banded_pairs_per_s']:.0f} banded (a network cannot exceed the "
        "harmonic sum of its first block and its later layers)")
  gb = mem["grad_temp_bytes"] / 1024 ** 3
  print(f"gradient of a {mem['n1']} x {mem['n2']} block (default path, ConvNet-3), budget "
        f"{a.budget_gb:g} GB: XLA temporaries {gb:.2f} GB (sub-blocks {mem['block']}), "
        f"{'within' if gb <= a.budget_gb else 'OVER'} budget")
  result.update(render(result))
  result["command"] = "python -m benchmarks.kernel_throughput " + " ".join(argv or sys.argv[1:])
  result["machine"] = common.machine()
  if a.json:
    with open(a.json, "w") as fh:
      json.dump(result, fh, indent=2)
  return result


def render(result) -> dict:
  """``title``, ``caption`` and a Markdown ``table`` of a result, for RESULTS.md."""
  rows = []
  for arch, block in result["archs"].items():
    for impl, r in block["runs"].items():
      rows.append([arch, impl, r.get("jax", "?"), f"{r['fwd_pairs_per_s']:.1f}",
                   f"{r['grad_pairs_per_s']:.1f}", f"{r['peak_rss_mb']:.0f}",
                   f"{r['max_rel_diff_to_nt']:.2g}"])
  table = common.markdown_table(["network", "implementation", "jax", "forward pairs/s",
                                 "forward+grad pairs/s", "peak RSS MB", "max rel diff to NT"],
                                rows)
  pt = result.get("parts", {})
  met = result.get("targets_met", {})
  rounds = result.get("rounds", 1)
  caption = (f"ConvNet NTK on 28x28x1 float32 inputs, one {result['n1']} x {result['n2']} "
             "block, same inputs for all implementations (neural-tangents 0.6.5 in its pinned "
             "env); " + (f"each figure the best of {rounds} processes per implementation, "
                         "interleaved across implementations (all rounds in the JSON). "
                         if rounds > 1 else "one process per implementation. ") +
             "ConvNet-3 targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}"
                                                     for k, v in met.items()) +
             (f". Pieces (forward pairs/s, one process): patch GEMM alone "
              f"{pt['gemm_alone_pairs_per_s']:.0f}, ReLU map alone "
              f"{pt['map_alone_pairs_per_s']:.0f}, fused first block "
              f"{pt['first_block_fused_pairs_per_s']:.0f} in XLA" +
              (f" / {pt['first_block_native_pairs_per_s']:.0f} compiled"
               if "first_block_native_pairs_per_s" in pt else "") +
              f", layers 2-3 + readout "
              f"{pt['later_layers_pairs_per_s']:.0f} dense / "
              f"{pt.get('later_layers_banded_pairs_per_s', float('nan')):.0f} banded." if pt
              else ".") +
             " Paths: native = the fused first block as the compiled CPU kernel "
             "(kip._src.kernels.native), then the band of pixel pairs that reaches the Flatten "
             "readout (the CPU default); banded = the same with the fused block in XLA; "
             "fused = XLA fused first block, the rest dense; reference = layer by layer (XLA "
             "path). The 4-conv network starts Conv, ReLU, Conv, so it has no fused block: its "
             "native and banded paths are the same computation (the band from the inputs) and "
             "its fused path is the reference path.")
  return {"title": (f"ConvNet kernel throughput, {result['n1']} x {result['n2']} block: native "
                    "vs banded vs fused vs XLA path vs neural-tangents"),
          "caption": caption, "table": table}


if __name__ == "__main__":
  main()
