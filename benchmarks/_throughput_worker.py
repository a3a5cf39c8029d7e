"""Times one ConvNet NTK implementation on fixed inputs; prints one JSON line.

Run by kernel_throughput.py in the right environment: ``ours`` (kip, ``--path native``: the
CPU default, the fused first block as the compiled CPU kernel and the rest on the band of pixel
pairs that reaches the readout; ``banded``: the same with the fused block in XLA; ``fused``: the
XLA fused first block, the rest dense; ``reference``: layer by layer) in the main venv, ``nt``
(neural-tangents 0.6.5) in the pinned venv. Inputs come
from a shared .npz so all time exactly the same arrays. ``--arch convnet3`` is
``3 x [Conv, ReLU, AvgPool]``; ``kip4`` adds the leading ``Conv, ReLU`` of the released KIP code
(``convnet(depth=3, prepend_conv=True)``). ``--parts`` times the pieces of the fused path instead.
"""

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np


def build(impl, arch, budget, path="native"):
  prepend = arch == "kip4"
  if impl == "nt":
    from neural_tangents import stax
    conv = lambda: stax.Conv(1, (3, 3), padding="SAME", W_std=2 ** 0.5, b_std=0.1)  # noqa
    layers = [conv(), stax.Relu()] if prepend else []
    for _ in range(3):
      layers += [conv(), stax.Relu(), stax.AvgPool((2, 2), strides=(2, 2))]
    return stax.serial(*layers, stax.Flatten(), stax.Dense(1, 2 ** 0.5, 0.1))[2]
  from kip import kernels
  return kernels.convnet(3, prepend_conv=prepend, memory_budget=budget,
                         fused=path in ("native", "fused", "banded"),
                         banded=path in ("native", "banded"), native=path == "native")


def best_time(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # compile + warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return min(times)


def parts(x1, x2, repeats):
  """Pairs/s of the fused path's pieces: the patch GEMM alone, the ReLU map alone, the fused
  first block (XLA and, where it builds, the compiled kernel), and the layers after it, dense
  and banded (forward; ConvNet-3)."""
  from kip._src.kernels import fused as F
  from kip._src.kernels import layers as L
  pairs = x1.shape[0] * x2.shape[0]
  q1, r1 = F._unit_patches(x1, 3, 3, 2 ** 0.5, 0.1, 2)
  q2, r2 = F._unit_patches(x2, 3, 3, 2 ** 0.5, 0.1, 2)
  p = q1.shape[-1]
  gemm = jax.jit(lambda a, b: jnp.sum(a.reshape(-1, p) @ b.reshape(-1, p).T))
  c = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (56, x2.shape[0] * 784)), x1.dtype)

  def relu_map(c):  # the fused block's per-entry work on one tile, GEMM excluded
    sin, t, _ = F._maps(c, 2.0, 1.0)
    return jnp.sum(sin + t)

  tiles = x1.shape[0] * 14
  def block_fn(native):
    return jax.jit(lambda a, b: F.conv_abrelu_pool_on_inputs(
        a, b, True, filter_shape=(3, 3), W_std=2 ** 0.5, b_std=0.1, a=0.0, b=1.0, window=2,
        native=native))

  block = block_fn(False)
  k0 = block(x1, x2)
  rest = L.serial(*[L.Conv(1, (3, 3), 2 ** 0.5, 0.1), L.Relu(), L.AvgPool(2, 2)] * 2, L.Flatten(),
                  L.Dense(1, 2 ** 0.5, 0.1))
  later = jax.jit(lambda k: rest.kernel_fn(k).ntk)
  from kip._src.kernels import banded as B
  tail = rest.kernel_fn.layers
  plan = B.plan(tail)
  readout = tail[plan.stop + 1:]
  later_banded = jax.jit(lambda k: L.serial(*readout).kernel_fn(
      B.through_flatten(tail, plan, k)).ntk)
  out = {"gemm_alone": pairs / best_time(gemm, (q1, q2), repeats),
         "map_alone": pairs / (tiles * best_time(jax.jit(relu_map), (c,), repeats)),
         "first_block_fused": pairs / best_time(block, (x1, x2), repeats),
         "later_layers": pairs / best_time(later, (k0,), repeats),
         "later_layers_banded": pairs / best_time(later_banded, (k0,), repeats)}
  from kip._src.kernels import native as N
  if jax.devices()[0].platform == "cpu" and N.available():
    out["first_block_native"] = pairs / best_time(block_fn(True), (x1, x2), repeats)
  return {k + "_pairs_per_s": v for k, v in out.items()}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("impl", choices=["ours", "nt"])
  p.add_argument("inputs")
  p.add_argument("--arch", default="convnet3", choices=["convnet3", "kip4"])
  p.add_argument("--path", default="native", choices=["native", "banded", "fused", "reference"])
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--budget", type=int, default=2 * 1024 ** 3)
  p.add_argument("--memory-only", default=None, help="n1,n2: compile the gradient, report temp")
  p.add_argument("--parts", action="store_true")
  a = p.parse_args()
  out = {"impl": a.impl if a.impl == "nt" else f"kip-{a.path}", "arch": a.arch,
         "jax": jax.__version__, "device": str(jax.devices()[0])}
  if a.parts:
    data = np.load(a.inputs)
    out.update(parts(jnp.asarray(data["x1"]), jnp.asarray(data["x2"]), a.repeats))
    print(json.dumps(out))
    return
  kf = build(a.impl, a.arch, a.budget, a.path)
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
