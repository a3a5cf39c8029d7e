"""The banded ConvNet path (only the pixel pairs that reach a Flatten readout) against the
layer-by-layer reference path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip import kernels as kk
from kip._src.kernels import banded as B
from kip._src.kernels import layers as L
from kernel_helpers import images as _x, rel_err as _rel


def test_plan_bands_of_convnet3_on_28x28():
  """Walking back from Flatten: B = s B + w - 1 at each 2x2 pool, unchanged elsewhere."""
  layers = kk.convnet(3).layer.kernel_fn.layers
  p = B.plan(layers)
  assert p.stop == 9
  assert [b[0] for b in p.bands] == [7, 7, 7, 3, 3, 3, 1, 1, 1, 0]
  prepend = B.plan(kk.convnet(3, prepend_conv=True).layer.kernel_fn.layers)
  assert prepend.bands[:3] == ((7, 7),) * 3
  assert B.plan(kk.convnet(2, readout="gap").layer.kernel_fn.layers) is None
  assert B.plan(kk.convnet(2, activation="erf").layer.kernel_fn.layers) is None  # untagged
  assert B.plan(L.serial(L.Flatten(), L.Dense(1)).kernel_fn.layers) is None


# (size, channels, depth, prepend, fused, activation, b_std): odd sizes crop at the pools.
GRID = [(8, 1, 2, False, False, "relu", 0.1), (9, 3, 2, True, False, "abs", None),
        (7, 2, 1, False, True, "relu", 0.3), (11, 1, 3, False, True, "relu", 0.1)]


@pytest.mark.parametrize("size,channels,depth,prepend,fused,act,b_std", GRID)
def test_banded_equals_reference_float64(size, channels, depth, prepend, fused, act, b_std):
  with jax.enable_x64(True):
    x1, x2 = _x((size, size, channels), 2, 0, jnp.float64), _x((size, size, channels), 3, 1,
                                                               jnp.float64)
    x2 = x2.at[0].set(x1[1])  # a coinciding pair
    kw = dict(prepend_conv=prepend, activation=act, b_std=b_std)
    ref = kk.convnet(depth, fused=False, **kw)
    ban = kk.convnet(depth, fused=fused, banded=True, **kw)
    assert ban.uses_banded() and not ref.uses_banded()
    both = jax.jit(lambda a, b: [f(a, c, ("nngp", "ntk")) for f in (ban, ref) for c in (b, None)])
    got_cross, got_self, want_cross, want_self = both(x1, x2)
    for a, b in ((got_cross, want_cross), (got_self, want_self)):
      assert a.ntk.dtype == jnp.float64
      assert _rel(a.nngp, b.nngp) < 1e-12
      assert _rel(a.ntk, b.ntk) < 1e-12


def test_banded_equals_reference_float32_28x28():
  x1, x2 = _x((28, 28, 1), 2, 2), _x((28, 28, 1), 3, 3)
  ban, ref = jax.jit(lambda a, b: [kk.convnet(3, fused=f, banded=f)(a, b, ("nngp", "ntk"))
                                   for f in (True, False)])(x1, x2)
  assert _rel(ban.nngp, ref.nngp) < 1e-5
  assert _rel(ban.ntk, ref.ntk) < 1e-5


@pytest.mark.parametrize("fused", [False, True])
def test_banded_gradients_agree(fused):
  """Both arguments' gradients, through the band (and the fused block's VJP when fused)."""
  x1, x2 = _x((8, 8, 1), 2, 7), _x((8, 8, 1), 3, 8)
  x2 = x2.at[0].set(x1[0])
  grads = []
  for kf in (kk.convnet(2, fused=False), kk.convnet(2, fused=fused, banded=True)):
    loss = lambda a, b, kf=kf: jnp.sum(jnp.sin(3 * kf(a, b, "ntk")) + kf(a, b, "nngp"))  # noqa
    grads.append(jax.jit(jax.grad(loss, (0, 1)))(x1, x2))
  for g_ref, g_ban in zip(*grads):
    assert bool(jnp.all(jnp.isfinite(g_ban)))
    assert _rel(g_ban, g_ref) < 1e-4


def test_banded_from_dense_state_matches_layers():
  """Entering the band from a dense state (as after the fused block) keeps every field."""
  x1, x2 = _x((7, 7, 2), 2, 4), _x((7, 7, 2), 3, 5)
  head = L.serial(L.Conv(1, (3, 3), 1.2, 0.3), L.Relu())
  tail = [L.Conv(1, (3, 3), 1.2, 0.3), L.Relu(), L.AvgPool(2, 2), L.Dense(1, 0.9, 0.2),
          L.Flatten()]

  @jax.jit
  def both(x1, x2):
    k0 = head.kernel_fn(L.lazy_input(x1, x2, True))
    return L.serial(*tail).kernel_fn(k0), B.through_flatten(tail, B.plan(tail), k0)

  want, got = both(x1, x2)
  for name in ("nngp", "ntk", "cov1", "cov2"):
    assert getattr(got, name).shape == getattr(want, name).shape
    assert _rel(getattr(got, name), getattr(want, name)) < 1e-5, name


def test_flags_select_the_path(monkeypatch):
  calls = []
  real = B.through_flatten
  monkeypatch.setattr(B, "through_flatten", lambda *a, **k: calls.append(1) or real(*a, **k))
  x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
  trace = lambda kf: jax.eval_shape(lambda a: kf(a, None, "ntk"), x)  # noqa: E731
  trace(kk.convnet(1, fused=False))
  trace(kk.convnet(1, fused=True, banded=False))
  trace(kk.convnet(1, readout="gap", fused=True, banded=True))  # no Flatten: no band
  assert not calls
  trace(kk.convnet(1, fused=False, banded=True))
  assert calls
  cpu = jax.devices()[0].platform == "cpu"
  assert kk.convnet(1).uses_banded() == cpu
  assert not kk.convnet(1, fused=False).uses_banded()
  assert kk.convnet(1, fused=False).replace(banded=True).uses_banded()
  assert kk.get_kernel({"architecture": "convnet", "depth": 1, "banded": False}).banded is False


def test_banded_blocks_are_larger_and_within_budget():
  """The band sets the block size (more pairs per block), and XLA's temporaries for the
  gradient of a blocked 28x28 ConvNet-3 stay within the budget."""
  budget = 256 * 2 ** 20
  kf = kk.convnet(3, memory_budget=budget, fused=True, banded=True)
  dense = kf.replace(banded=False)
  assert kf.bytes_per_pair((28, 28, 1)) * 3 < dense.bytes_per_pair((28, 28, 1))
  x1, x2 = _x((28, 28, 1), 6, 0), _x((28, 28, 1), 12, 1)
  grad = jax.jit(jax.grad(lambda a, b: jnp.sum(kf(a, b, "ntk"))))
  mem = grad.lower(x1, x2).compile().memory_analysis()
  if mem is None:
    pytest.skip("this backend reports no memory analysis")
  assert mem.temp_size_in_bytes <= budget
