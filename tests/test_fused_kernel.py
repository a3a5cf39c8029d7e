"""The fused first ConvNet block (XLA path) against the layer-by-layer reference path, and
evaluate's ETA. The compiled CPU kernel of the same block: test_native_kernel.py."""

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip import kernels as kk
from kip._src.kernels import fused as F
from kip._src.kernels import layers as L
from kip._src.kernels import native as N
from kernel_helpers import images as _x, rel_err as _rel

SQ2 = math.sqrt(2.0)
# The XLA fused block, and the compiled one (test_native_kernel.py) where it builds.
PATHS = [False, pytest.param(True, marks=pytest.mark.skipif(
    not N.available(), reason=f"native kernel not built: {N.build_error()}"), id="native")]


@pytest.mark.parametrize("size,channels,depth,prepend", [
    (8, 1, 1, False), (12, 3, 2, False), (8, 3, 1, True),
])
def test_fused_equals_reference_float32(size, channels, depth, prepend):
  x1, x2 = _x((size, size, channels), 3, 0), _x((size, size, channels), 4, 1)
  ref = kk.convnet(depth, prepend_conv=prepend, fused=False)(x1, x2, ("nngp", "ntk"))
  fus = jax.jit(lambda a, b: kk.convnet(depth, prepend_conv=prepend, fused=True,
                                        native=False)(a, b, ("nngp", "ntk")))(x1, x2)
  assert _rel(fus.nngp, ref.nngp) < 1e-5
  assert _rel(fus.ntk, ref.ntk) < 1e-5


@pytest.mark.parametrize("native", PATHS)
@pytest.mark.parametrize("act,b_std", [("relu", 0.1), ("abs", None)])
def test_fused_equals_reference_float64(act, b_std, native):
  with jax.enable_x64(True):
    x1, x2 = _x((8, 8, 2), 2, 2, jnp.float64), _x((8, 8, 2), 3, 3, jnp.float64)
    x2 = x2.at[0].set(x1[1])  # a coinciding pair: c = 1 exactly
    ref = kk.convnet(1, 1.3, b_std, act, fused=False)(x1, x2, ("nngp", "ntk"))
    fus = kk.convnet(1, 1.3, b_std, act, fused=True, native=native)(x1, x2, ("nngp", "ntk"))
    assert fus.ntk.dtype == jnp.float64
    assert _rel(fus.nngp, ref.nngp) < 1e-12
    assert _rel(fus.ntk, ref.ntk) < 1e-12


@pytest.mark.parametrize("native", PATHS)
@pytest.mark.parametrize("a,b,window", [(0.0, 1.0, 2), (-1.0, 1.0, 3)])
def test_block_state_matches_layers(a, b, window, native):
  """All four fields of the block's state (cross, NTK, self covariances), odd sizes too; the
  compiled kernel's general code paths at window 3."""
  x1, x2 = _x((7, 7, 2), 2, 4), _x((7, 7, 2), 3, 5)
  want = L.serial(L.Conv(1, (3, 3), 1.2, 0.3), L.ABRelu(a, b), L.AvgPool(window, window)).kernel_fn(
      L.lazy_input(x1, x2, True))
  got = F.conv_abrelu_pool_on_inputs(x1, x2, True, filter_shape=(3, 3), W_std=1.2, b_std=0.3,
                                     a=a, b=b, window=window, native=native)
  for name in ("nngp", "ntk", "cov1", "cov2"):
    assert getattr(got, name).shape == getattr(want, name).shape
    assert _rel(getattr(got, name), getattr(want, name)) < 1e-5, name


def test_float32_coinciding_inputs_closer_to_float64_than_reference():
  """With x1 == x2 the fused cosines are snapped to 1, where float64 has them exactly."""
  x = _x((8, 8, 3), 3, 6)
  with jax.enable_x64(True):
    exact = kk.convnet(1, fused=False)(x.astype(jnp.float64), None, "ntk")
  fus = kk.convnet(1, fused=True, native=False)(x, None, "ntk")
  ref = kk.convnet(1, fused=False)(x, None, "ntk")
  assert _rel(fus, exact) < 1e-5
  assert _rel(fus, exact) <= _rel(ref, exact) + 1e-7


def test_gradients_agree():
  """Both arguments' gradients: the hand-written VJP against autodiff of the reference."""
  x1, x2 = _x((8, 8, 1), 2, 7), _x((8, 8, 1), 3, 8)
  grads = []
  for fz in (False, True):
    kf = kk.convnet(2, fused=fz, native=False)
    loss = lambda a, b: jnp.sum(jnp.sin(3 * kf(a, b, "ntk")) + kf(a, b, "nngp"))  # noqa: E731
    grads.append(jax.jit(jax.grad(loss, (0, 1)))(x1, x2))
  for g_ref, g_fus in zip(*grads):
    assert _rel(g_fus, g_ref) < 1e-4


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_gradient_of_one_argument(get):
  """One argument differentiated (the other a constant, as KIP's targets), one output wanted:
  the VJP gets symbolic zeros for the rest and still agrees with the reference."""
  x1, x2 = _x((8, 8, 1), 2, 9), _x((8, 8, 1), 3, 10)
  for argnum in (0, 1):
    grads = []
    for fz in (False, True):
      kf = kk.convnet(2, fused=fz, banded=False, native=False)
      grads.append(jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.cos(kf(a, b, get))),
                                    argnum))(x1, x2))
    assert _rel(grads[1], grads[0]) < 1e-4, argnum


def test_constant_argument_gets_no_cotangent_gemms():
  """The tile's backward skips the two GEMMs of an argument that is not differentiated."""
  x1, x2 = _x((8, 8, 1), 2, 9), _x((8, 8, 1), 3, 10)
  kf = kk.convnet(1, fused=True, banded=False, native=False)
  loss = lambda a, b: jnp.sum(kf(a, b, "ntk"))  # noqa: E731

  def dots(argnums):
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums))(x1, x2)
    return str(jaxpr).count("dot_general")

  assert dots(0) < dots((0, 1))
  assert dots(1) < dots((0, 1))


def test_gradient_finite_where_inputs_coincide():
  kf = kk.convnet(2, fused=True, native=False)
  x = _x((8, 8, 1), 3, 0)
  x2 = jnp.concatenate([x, _x((8, 8, 1), 2, 1)])
  g_same = jax.jit(jax.grad(lambda a: jnp.sum(kf(a, None, "ntk"))))(x)
  g_cross = jax.jit(jax.grad(lambda a: jnp.sum(kf(a, x2, "ntk"))))(x)
  assert bool(jnp.all(jnp.isfinite(g_same))) and bool(jnp.all(jnp.isfinite(g_cross)))
  assert float(jnp.abs(g_cross).max()) > 0


def test_flag_selects_the_path(monkeypatch):
  calls = []
  real = F.conv_abrelu_pool_on_inputs
  monkeypatch.setattr(F, "conv_abrelu_pool_on_inputs",
                      lambda *a, **k: calls.append(1) or real(*a, **k))
  x = _x((8, 8, 1), 2, 0)
  kk.convnet(1, fused=False)(x, None, "ntk")
  assert not calls
  kk.convnet(1, fused=True, native=False)(x, None, "ntk")
  assert calls
  calls.clear()
  kk.convnet(1, prepend_conv=True, fused=True)(x, None, "ntk")  # starts Conv, ReLU, Conv
  assert not calls
  assert kk.convnet(1).uses_fused() == (jax.devices()[0].platform == "cpu")
  assert kk.convnet(1, fused=False).replace(fused=True).uses_fused()
  assert kk.get_kernel({"architecture": "convnet", "depth": 1, "fused": False}).fused is False


def test_fused_block_memory_within_budget():
  """XLA's temporaries for the gradient of a blocked 28x28 ConvNet-3 stay within budget."""
  budget = 256 * 2 ** 20
  kf = kk.convnet(3, memory_budget=budget, fused=True, native=False)
  x1, x2 = _x((28, 28, 1), 6, 0), _x((28, 28, 1), 12, 1)
  grad = jax.jit(jax.grad(lambda a, b: jnp.sum(kf(a, b, "ntk"))))
  mem = grad.lower(x1, x2).compile().memory_analysis()
  if mem is None:
    pytest.skip("this backend reports no memory analysis")
  assert mem.temp_size_in_bytes <= budget


# ----------------------------------------------------------------------------- evaluate ETA
def test_kernel_accuracy_logs_eta_and_progress(caplog):
  import kip
  ds = kip.data.load("digits", n_train=200, n_test=60)
  support = kip.distill(ds, support_size=10, kernel=kk.fc(1), steps=1, progress=False)
  with caplog.at_level(logging.INFO, logger="kip"):
    acc = kip.evaluate.kernel_accuracy(support, ds, kernel=kk.fc(1), batch_size=25,
                                       progress=True)
  assert 0.0 <= acc <= 1.0
  messages = [r.getMessage() for r in caplog.records]
  assert any("expected" in m and "kernel evaluation" in m for m in messages), messages
  rf = kk.fc_rf(width=16, num_models=1, fixed_seed=0)
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="kip"):
    kip.evaluate.kernel_accuracy(support, ds, kernel=rf, get="nngp", batch_size=25)
  eta = [r.getMessage() for r in caplog.records if "expected" in r.getMessage()]
  assert eta and "images/s" in eta[0] and "60 test images" in eta[0], eta  # cost per image
