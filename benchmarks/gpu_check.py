"""One prepared GPU check: kernel throughput and time-boxed ConvNet-kernel KIP, as small JSONs.

Meant to finish within about 8 minutes on one H200 and to be run in one call; every part writes
its own JSON under ``OUT`` as soon as it is done (``throughput.json``, ``kip_convnet.json``,
``kip_rf.json``, ``summary.json``), so a run cut short still leaves what it measured. A part
that fails records its error and the next part runs.

1. **Throughput**: the exact ConvNet-3 NTK and the 4-conv KIP ConvNet NTK on 28x28x1 inputs on
   each path of the engine: ``xla`` (layer by layer, ``fused=False, banded=False``), ``fused``
   (the fused first block, ConvNet-3 only: the 4-conv network has no fusable first block) and
   ``banded`` (``fused=True, banded=True``: the pixel pairs that reach the Flatten readout only;
   the 4-conv network forms its band from the inputs), forward and forward + gradient w.r.t.
   ``x1``, pairs/s (best of ``--repeats`` after a compile), peak device memory where the
   backend reports it, and the largest relative difference of each path to ``xla``.
2. **KIP, exact ConvNet-3 kernel** on the banded path, IPC 1 and 10, each time-boxed
   (``--kip-seconds``), KRR on the first ``--num-test`` test images with the same kernel.
3. **KIP, random-feature kernel** (``convnet_rf``), IPC 10, time-boxed, KRR with 8 fixed
   networks.

On a device machine the Fashion-MNIST IDX files are not installed: copy them into a folder of
the repository ignored by git (``mkdir -p .data && cp /usr/share/datasets/fashion-mnist/*
.data/``, add ``/.data/`` to ``.git/info/exclude``), carry it, and pass ``--data-dir .data``.

  python -m benchmarks.gpu_check OUT [--data-dir DIR] [--kip-seconds 100] [--tiny]

``--tiny`` (a CPU test in the suite): scikit-learn digits, 8x8 images, seconds-long budgets.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import kip
from benchmarks import common

logger = logging.getLogger("benchmarks.gpu_check")


def _peak_bytes():
  stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
  return None if not stats else stats.get("peak_bytes_in_use")


def _best(fn, repeats):
  jax.block_until_ready(fn())  # compile
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return best


PATHS = {"xla": dict(fused=False, banded=False), "fused": dict(fused=True, banded=False),
         "banded": dict(fused=True, banded=True)}


def throughput(n1: int, n2: int, size: int, repeats: int, depth: int = 3) -> dict:
  """Pairs/s (NTK) of ConvNet-3 and the 4-conv ConvNet on each path; ``depth`` blocks."""
  rng = np.random.default_rng(0)
  x1 = jnp.asarray(rng.normal(size=(n1, size, size, 1)), jnp.float32)
  x2 = jnp.asarray(rng.normal(size=(n2, size, size, 1)), jnp.float32)
  out = {"n1": n1, "n2": n2, "image": [size, size, 1], "depth": depth, "rows": []}
  # The fused pass applies to a leading Conv -> ReLU -> AvgPool block; the 4-conv network starts
  # Conv -> ReLU -> Conv, so its fused kernel is the XLA path and is not timed twice.
  for name, prepend, paths in (("convnet3", False, ("xla", "fused", "banded")),
                               ("convnet4", True, ("xla", "banded"))):
    values = {}
    for path in paths:
      k = kip.kernels.convnet(depth=depth, prepend_conv=prepend, **PATHS[path])
      fwd = jax.jit(lambda a, b, k=k: k(a, b, "ntk"))
      grad = jax.jit(jax.grad(lambda a, b, k=k: jnp.sum(k(a, b, "ntk"))))
      t_fwd = _best(lambda: fwd(x1, x2), repeats)
      t_grad = _best(lambda: grad(x1, x2), repeats)
      values[path] = np.asarray(fwd(x1, x2), np.float64)
      out["rows"].append({"network": name, "path": path,
                          "forward_pairs_per_s": n1 * n2 / t_fwd,
                          "grad_pairs_per_s": n1 * n2 / t_grad,
                          "peak_device_bytes": _peak_bytes()})
    for path in paths[1:]:
      diff = np.abs(values[path] - values["xla"]) / np.maximum(np.abs(values["xla"]), 1e-30)
      out[f"{name}_max_rel_diff_{path}_vs_xla"] = float(diff.max())
  return out


def kip_run(ds, kernel, eval_kernel, ipcs, seconds: float, num_test: int, targets: int,
            get: str, loss: str = "mse") -> dict:
  rows = []
  for ipc in ipcs:
    t = time.time()
    s = kip.distill(ds, images_per_class=ipc, kernel=kernel, get=get, loss=loss, steps=100_000,
                    target_batch_size=min(targets, ds.x_train.shape[0]), time_budget=seconds,
                    progress=False)
    wall = time.time() - t
    acc = kip.evaluate.kernel_accuracy(s, ds, eval_kernel, get=get,
                                       num_test=min(num_test, ds.x_test.shape[0]))
    steps = int(s.metadata["steps"])
    rows.append({"ipc": ipc, "steps": steps, "seconds": wall,
                 "seconds_per_step": float(s.metadata["seconds"]) / max(steps, 1),
                 "krr_accuracy": acc, "num_test": min(num_test, ds.x_test.shape[0])})
    logger.info("KIP IPC %d: %d steps in %.0f s, KRR %.4f", ipc, steps, wall, acc)
  return {"rows": rows, "kernel": dict(getattr(kernel, "spec", {}) or {}), "get": get}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("out", help="folder for the JSON files")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--kip-seconds", type=float, default=100.0)
  p.add_argument("--rf-seconds", type=float, default=60.0)
  p.add_argument("--num-test", type=int, default=2000)
  p.add_argument("--targets", type=int, default=1000)
  p.add_argument("--block", default="100,200", help="n1,n2 of the throughput block")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--tiny", action="store_true")
  a = p.parse_args(argv)
  common.setup_logging()
  os.makedirs(a.out, exist_ok=True)
  start = time.time()
  summary = {"machine": common.machine(), "tiny": a.tiny, "parts": {}}

  def part(name, fn):
    t = time.time()
    try:
      result = fn()
      status = "ok"
    except Exception as e:  # noqa: BLE001 -- record it and go on to the next part
      result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
      status = "error"
      logger.error("%s failed: %s", name, e)
    result = {**result, "seconds": time.time() - t, "machine": summary["machine"]}
    common.write_json(os.path.join(a.out, f"{name}.json"), result)
    summary["parts"][name] = {"status": status, "seconds": result["seconds"]}

  if a.tiny:  # the depth-1 networks: the same code paths, a fraction of the compile time
    ds = kip.data.load("digits", n_train=100, n_test=50)
    n1, n2, size, seconds, rf_seconds, depth = 2, 4, 8, 1.0, 1.0, 1
  else:
    ds = kip.data.load("fashion_mnist", data_dir=a.data_dir)
    n1, n2 = (int(v) for v in a.block.split(","))
    size, seconds, rf_seconds, depth = 28, a.kip_seconds, a.rf_seconds, 3
  part("throughput", lambda: throughput(n1, n2, size, 1 if a.tiny else a.repeats, depth))
  exact = kip.kernels.convnet(depth=depth, **PATHS["banded"])
  part("kip_convnet", lambda: kip_run(ds, exact, exact, (1, 10) if not a.tiny else (1,), seconds,
                                      a.num_test, a.targets, "ntk"))
  width = 8 if a.tiny else 256
  rf = kip.kernels.convnet_rf(depth=depth, width=width, num_models=1 if a.tiny else 8)
  rf_eval = kip.kernels.convnet_rf(depth=depth, width=width, num_models=2 if a.tiny else 8,
                                   fixed_seed=0)
  part("kip_rf", lambda: kip_run(ds, rf, rf_eval, (10,) if not a.tiny else (1,), rf_seconds,
                                 a.num_test, a.targets, "nngp", loss="platt"))
  summary["seconds"] = time.time() - start
  common.write_json(os.path.join(a.out, "summary.json"), summary)
  logger.info("gpu_check done in %.0f s: %s", summary["seconds"],
              json.dumps(summary["parts"]))
  return summary


if __name__ == "__main__":
  main()
