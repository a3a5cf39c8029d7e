"""The compiled CPU kernel of the fused first ConvNet block (kip._src.kernels.native) against the
layer-by-layer reference path; its selection, fallback and build cache. The float64 and
block-state tests of test_fused_kernel.py run on both paths."""

import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip import kernels as kk
from kip._src.kernels import layers as L
from kip._src.kernels import native as N
from kernel_helpers import images as _x, rel_err as _rel

needs_native = pytest.mark.skipif(not N.available(),
                                  reason=f"native kernel not built: {N.build_error()}")


@needs_native
@pytest.mark.parametrize("size,channels,depth,b_std", [
    (8, 1, 1, 0.1),    # P = 10: the register paths
    (12, 1, 2, None),  # P = 9
    (10, 3, 1, 0.1),   # P = 28: forward in registers, backward through buffers
    (9, 2, 2, 0.3),    # P = 19, odd size: the general paths
])
def test_native_equals_reference_float32(size, channels, depth, b_std):
  x1, x2 = _x((size, size, channels), 3, 0), _x((size, size, channels), 4, 1)
  ref = kk.convnet(depth, b_std=b_std, fused=False)(x1, x2, ("nngp", "ntk"))
  nat = jax.jit(lambda a, b: kk.convnet(depth, b_std=b_std, native=True)(
      a, b, ("nngp", "ntk")))(x1, x2)
  assert _rel(nat.nngp, ref.nngp) < 1e-5
  assert _rel(nat.ntk, ref.ntk) < 1e-5


@needs_native
@pytest.mark.parametrize("channels,b_std", [(1, 0.1), (1, None), (3, 0.1)])
def test_gradients_agree(channels, b_std):
  """Each argument alone and both: the compiled VJP against autodiff of the reference."""
  x1, x2 = _x((8, 8, channels), 2, 7), _x((8, 8, channels), 3, 8)
  for argnums in (0, 1, (0, 1)):
    grads = []
    for kw in (dict(fused=False), dict(native=True)):
      kf = kk.convnet(2, b_std=b_std, **kw)
      loss = lambda a, b: jnp.sum(jnp.sin(3 * kf(a, b, "ntk")) + kf(a, b, "nngp"))  # noqa: E731
      grads.append(jax.jit(jax.grad(loss, argnums))(x1, x2))
    for g_ref, g_nat in zip(*map(jax.tree_util.tree_leaves, grads)):
      assert _rel(g_nat, g_ref) < 1e-4, argnums


@needs_native
def test_constant_argument_gets_no_backward_call():
  """An argument that is not differentiated (KIP's targets) gets no backward custom call."""
  x1, x2 = _x((8, 8, 1), 2, 9), _x((8, 8, 1), 3, 10)
  kf = kk.convnet(1, native=True, banded=False)
  loss = lambda a, b: jnp.sum(kf(a, b, "ntk"))  # noqa: E731

  def calls(argnums):
    return str(jax.make_jaxpr(jax.grad(loss, argnums))(x1, x2)).count("abrelu_tile_backward")

  assert 0 < calls(0) < calls((0, 1))
  assert 0 < calls(1) < calls((0, 1))


@needs_native
def test_gradient_finite_where_inputs_coincide_or_vanish():
  kf = kk.convnet(2, b_std=None, native=True)
  x = _x((8, 8, 1), 3, 0).at[1, :5, :5].set(0.0)  # zero patches: r = 0 without a bias
  x2 = jnp.concatenate([x, _x((8, 8, 1), 2, 1)])
  g_same = jax.jit(jax.grad(lambda a: jnp.sum(kf(a, None, "ntk"))))(x)
  g_cross = jax.jit(jax.grad(lambda a: jnp.sum(kf(a, x2, "ntk"))))(x)
  assert bool(jnp.all(jnp.isfinite(g_same))) and bool(jnp.all(jnp.isfinite(g_cross)))
  assert float(jnp.abs(g_cross).max()) > 0


@needs_native
def test_flag_selects_the_path(monkeypatch):
  calls = []
  real = N.abrelu_tile
  monkeypatch.setattr(N, "abrelu_tile", lambda *a: calls.append(1) or real(*a))
  x = _x((8, 8, 1), 2, 0)
  assert kk.convnet(1).uses_native() == (jax.devices()[0].platform == "cpu")
  kk.convnet(1, native=False)(x, None, "ntk")
  assert not calls
  kk.convnet(1, native=True)(x, None, "ntk")
  assert calls
  calls.clear()
  kk.convnet(1, fused=False, native=True)(x, None, "ntk")  # nothing fused: nothing native
  assert not calls and not kk.convnet(1, fused=False, native=True).uses_native()
  assert kk.get_kernel({"architecture": "convnet", "depth": 1, "native": False}).native is False
  with pytest.raises(ValueError, match="float16"):
    kk.convnet(1, native=True).uses_native(np.float16)
  assert not kk.convnet(1).uses_native(np.float16)  # automatic: the XLA path


def test_build_failure_falls_back_to_xla(monkeypatch, tmp_path, caplog):
  """Without a working compiler: a logged warning and the XLA path; native=True says why."""
  monkeypatch.setattr(N, "_state", {})
  monkeypatch.setenv("KIP_CACHE_DIR", str(tmp_path))
  monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
  with caplog.at_level(logging.WARNING, logger="kip"):
    assert not N.available()
  assert "building kip's native CPU kernel failed" in N.build_error()
  assert any("XLA fused path" in r.getMessage() for r in caplog.records)
  x = _x((8, 8, 1), 2, 0)
  auto = kk.convnet(1)
  assert not auto.uses_native() and auto.uses_fused() == (jax.devices()[0].platform == "cpu")
  np.testing.assert_allclose(auto(x, None, "ntk"), kk.convnet(1, fused=False)(x, None, "ntk"),
                             rtol=1e-5)
  with pytest.raises(RuntimeError, match="cannot be built"):
    kk.convnet(1, native=True)(x, None, "ntk")
  assert not list(tmp_path.iterdir())  # no half-written library left behind


@needs_native
def test_build_cache_is_keyed_by_cpu(monkeypatch, tmp_path):
  monkeypatch.setenv("KIP_CACHE_DIR", str(tmp_path))
  first = N.build()
  assert first.parent == tmp_path and first.exists() and N.build() == first  # built once
  mtime = os.stat(first).st_mtime_ns
  monkeypatch.setattr(N, "_cpu_id", lambda: "another CPU")
  other = N.build()
  assert other != first and other.exists() and os.stat(first).st_mtime_ns == mtime


def test_arccos_polynomial_is_the_engines():
  """The compiled kernel's arccos coefficients are layers._ACOS_COEFFS, digit for digit."""
  source = N._SOURCE.read_text()
  body = re.search(r"kAcos\[8\] = \{([^}]*)\}", source).group(1)
  coeffs = tuple(float(v.strip().rstrip("f")) for v in body.split(","))
  assert coeffs == L._ACOS_COEFFS
