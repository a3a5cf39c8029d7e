"""Times one ConvNet-3 NTK implementation on fixed inputs; prints one JSON line.

Run by kernel_throughput.py in the right environment: ``ours`` (kip) in the main venv,
``nt`` (neural-tangents 0.6.5) in the pinned venv. Inputs come from a shared .npz so both
time exactly the same arrays.
"""

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np


def build(impl, depth, budget):
  if impl == "nt":
    from neural_tangents import stax
    layers = []
    for _ in range(depth):
      layers += [stax.Conv(1, (3, 3), padding="SAME", W_std=2 ** 0.5, b_std=0.1), stax.Relu(),
                 stax.AvgPool((2, 2), strides=(2, 2))]
    return stax.serial(*layers, stax.Flatten(), stax.Dense(1, 2 ** 0.5, 0.1))[2]
  from kip import kernels
  return kernels.convnet(depth, memory_budget=budget)


def best_time(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # compile + warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return min(times)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("impl", choices=["ours", "nt"])
  p.add_argument("inputs")
  p.add_argument("--depth", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--budget", type=int, default=2 * 1024 ** 3)
  p.add_argument("--memory-only", default=None, help="n1,n2: compile the gradient, report temp")
  a = p.parse_args()
  kf = build(a.impl, a.depth, a.budget)
  out = {"impl": a.impl, "jax": jax.__version__, "device": str(jax.devices()[0])}
  fwd = jax.jit(lambda x1, x2: kf(x1, x2, "ntk"))
  grad = jax.jit(jax.grad(lambda x1, x2: jnp.sum(kf(x1, x2, "ntk"))))
  if a.memory_only:
    n1, n2 = (int(v) for v in a.memory_only.split(","))
    x1 = jax.ShapeDtypeStruct((n1, 28, 28, 1), jnp.float32)
    x2 = jax.ShapeDtypeStruct((n2, 28, 28, 1), jnp.float32)
    mem = grad.lower(x1, x2).compile().memory_analysis()
    out.update(n1=n1, n2=n2, grad_temp_bytes=int(mem.temp_size_in_bytes),
               grad_argument_bytes=int(mem.argument_size_in_bytes))
    if a.impl == "ours":
      out["block"] = list(kf.block_shape(n1, n2, (28, 28, 1)))
    print(json.dumps(out))
    return
  data = np.load(a.inputs)
  x1, x2 = jnp.asarray(data["x1"]), jnp.asarray(data["x2"])
  pairs = x1.shape[0] * x2.shape[0]
  t_fwd = best_time(fwd, (x1, x2), a.repeats)
  t_grad = best_time(grad, (x1, x2), a.repeats)
  k = np.asarray(fwd(x1, x2))
  out.update(pairs=pairs, fwd_seconds=t_fwd, grad_seconds=t_grad,
             fwd_pairs_per_s=pairs / t_fwd, grad_pairs_per_s=pairs / t_grad,
             peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             checksum=float(np.sum(k)), kernel=k.tolist())
  print(json.dumps(out))


if __name__ == "__main__":
  main()
