"""Parity of kip's native kernels with neural-tangents 0.6.5 (the reference).

neural-tangents imports only with jax<=0.5.3, so these run in the pinned environment
(``.venv-nt``, see scripts/test.sh). Elsewhere they skip; with ``KIP_REQUIRE_NT=1`` a missing
neural-tangents is an error instead, so CI cannot silently skip them.
"""

import math
import os

import numpy as np
import pytest

pytestmark = pytest.mark.nt

if os.environ.get("KIP_REQUIRE_NT") == "1":
  import neural_tangents  # noqa: F401  (fail loudly: CI must run these)
nt = pytest.importorskip("neural_tangents")
stax = nt.stax

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

from kip import kernels as kk  # noqa: E402

SQ2 = math.sqrt(2.0)


def nt_convnet(depth, W_std, b_std, prepend=False, filter_size=3, readout="flatten",
               act=stax.Relu):
  conv = lambda: stax.Conv(1, (filter_size, filter_size), padding="SAME", W_std=W_std,  # noqa
                           b_std=b_std)
  layers = [conv(), act()] if prepend else []
  for _ in range(depth):
    layers += [conv(), act(), stax.AvgPool((2, 2), strides=(2, 2))]
  layers += [stax.Flatten() if readout == "flatten" else stax.GlobalAvgPool(),
             stax.Dense(1, W_std=W_std, b_std=b_std)]
  return stax.serial(*layers)[2]


def rel_err(ref, ours):
  ref, ours = np.asarray(ref, np.float64), np.asarray(ours, np.float64)
  return np.abs(ref - ours).max() / np.abs(ref).max()


def _inputs(shape, n1, n2, same, dtype=np.float64, seed=0):
  rng = np.random.default_rng(seed)
  x1 = rng.normal(size=(n1,) + shape).astype(dtype)
  x2 = None if same else rng.normal(size=(n2,) + shape).astype(dtype)
  return x1, x2


CONV_GRID = [
    # depth, size, channels, W_std, b_std
    (1, 8, 1, SQ2, 0.1), (1, 9, 3, 1.3, 0.5), (2, 12, 1, 1.3, 0.5), (2, 15, 3, SQ2, 0.1),
    (3, 16, 1, SQ2, 0.1), (3, 16, 3, 1.3, 0.5), (3, 28, 1, SQ2, 0.1), (4, 17, 3, 1.3, 0.5),
    (4, 32, 1, SQ2, 0.1), (2, 32, 3, 1.3, 0.5),
]


@pytest.mark.parametrize("depth,size,channels,W_std,b_std", CONV_GRID)
@pytest.mark.parametrize("same", [False, True])
def test_convnet_matches_neural_tangents(depth, size, channels, W_std, b_std, same):
  x1, x2 = _inputs((size, size, channels), 2, 3, same)
  ref = nt_convnet(depth, W_std, b_std)(x1, x2, ("nngp", "ntk"))
  ours = kk.convnet(depth, W_std, b_std)(x1, x2, ("nngp", "ntk"))
  assert rel_err(ref.nngp, ours.nngp) < 1e-5
  assert rel_err(ref.ntk, ours.ntk) < 1e-5


def _skip_without_native(kw):
  """A path that asks for the compiled block needs it built (a C++ compiler); others do not."""
  from kip._src.kernels import native as N
  if kw.get("native") and not N.available():
    pytest.skip(f"kip's native CPU kernel is not built here: {N.build_error()}")


PATHS = {"fused+banded": dict(fused=True, banded=True, native=False),
         "native+banded": dict(fused=True, banded=True, native=True),
         "banded": dict(fused=False, banded=True),
         "fused": dict(fused=True, banded=False, native=False),
         "native": dict(fused=True, banded=False, native=True),
         "reference": dict(fused=False, banded=False)}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("depth,size,channels,same", [(1, 8, 1, False), (3, 28, 1, True),
                                                      (2, 12, 3, False)])
def test_fused_banded_and_reference_paths_match_neural_tangents(depth, size, channels, same,
                                                                path):
  _skip_without_native(PATHS[path])
  x1, x2 = _inputs((size, size, channels), 2, 3, same, seed=11)
  ref = nt_convnet(depth, SQ2, 0.1)(x1, x2, ("nngp", "ntk"))
  ours = kk.convnet(depth, SQ2, 0.1, **PATHS[path])(x1, x2, ("nngp", "ntk"))
  assert ours.ntk.dtype == jnp.float64
  assert rel_err(ref.nngp, ours.nngp) < 1e-12
  assert rel_err(ref.ntk, ours.ntk) < 1e-12


@pytest.mark.parametrize("variant", ["prepend", "filter5", "gap", "erf", "abs", "nobias"])
def test_convnet_variants_match(variant):
  x1, x2 = _inputs((10, 10, 2), 3, 2, same=False, seed=1)
  kw_nt, kw = {}, {}
  if variant == "prepend":
    kw_nt, kw = {"prepend": True}, {"prepend_conv": True}
  elif variant == "filter5":
    kw_nt, kw = {"filter_size": 5}, {"filter_size": 5}
  elif variant == "gap":
    kw_nt, kw = {"readout": "gap"}, {"readout": "gap"}
  elif variant == "erf":
    kw_nt, kw = {"act": stax.Erf}, {"activation": "erf"}
  elif variant == "abs":
    kw_nt, kw = {"act": stax.Abs}, {"activation": "abs"}
  b_std = None if variant == "nobias" else 0.2
  ref = nt_convnet(2, 1.5, b_std, **kw_nt)(x1, x2, ("nngp", "ntk"))
  ours = kk.convnet(2, 1.5, b_std, **kw)(x1, x2, ("nngp", "ntk"))
  assert rel_err(ref.nngp, ours.nngp) < 1e-5
  assert rel_err(ref.ntk, ours.ntk) < 1e-5


@pytest.mark.parametrize("depth", [0, 1, 2, 4])
@pytest.mark.parametrize("act", ["relu", "erf", "abs"])
@pytest.mark.parametrize("same", [False, True])
def test_fc_matches_neural_tangents(depth, act, same):
  x1, x2 = _inputs((5, 5, 2), 6, 4, same, seed=depth)
  nt_act = {"relu": stax.Relu, "erf": stax.Erf, "abs": stax.Abs}[act]
  layers = []
  for _ in range(depth):
    layers += [stax.Dense(1, 1.7, 0.3), nt_act()]
  ref_fn = stax.serial(stax.Flatten(), *layers, stax.Dense(1, 1.7, 0.3))[2]
  ref = ref_fn(x1, x2, ("nngp", "ntk"))
  ours = kk.fc(depth, 1.7, 0.3, act)(x1, x2, ("nngp", "ntk"))
  assert rel_err(ref.nngp, ours.nngp) < 1e-5
  assert rel_err(ref.ntk, ours.ntk) < 1e-5


def test_leaky_relu_and_dense_on_spatial():
  x1, x2 = _inputs((6, 6, 3), 2, 3, same=False, seed=3)
  ref = stax.serial(stax.Conv(1, (3, 3), padding="SAME", W_std=1.2, b_std=0.1),
                    stax.LeakyRelu(0.2), stax.Dense(1, 1.1, 0.2), stax.Relu(),
                    stax.AvgPool((2, 2), (2, 2)), stax.Flatten(), stax.Dense(1))[2]
  ours = kk.kernel_function(kk.serial(kk.Conv(1, (3, 3), 1.2, 0.1), kk.LeakyRelu(0.2),
                                      kk.Dense(1, 1.1, 0.2), kk.Relu(), kk.AvgPool(2, 2),
                                      kk.Flatten(), kk.Dense(1, 1.0, 0.0)))
  r, o = ref(x1, x2, ("nngp", "ntk")), ours(x1, x2, ("nngp", "ntk"))
  assert rel_err(r.nngp, o.nngp) < 1e-5
  assert rel_err(r.ntk, o.ntk) < 1e-5


def test_avgpool_default_stride_is_neural_tangents():
  """``kk.AvgPool(3)`` is ``stax.AvgPool((3, 3))``: both pool with unit strides by default."""
  x1, x2 = _inputs((7, 7, 2), 2, 3, same=False, seed=5)
  ref = stax.serial(stax.Conv(1, (3, 3), padding="SAME"), stax.Relu(), stax.AvgPool((3, 3)),
                    stax.Flatten(), stax.Dense(1))[2]
  ours = kk.kernel_function(kk.serial(kk.Conv(1, (3, 3), 1.0, 0.0), kk.Relu(), kk.AvgPool(3),
                                      kk.Flatten(), kk.Dense(1, 1.0, 0.0)))
  r, o = ref(x1, x2, ("nngp", "ntk")), ours(x1, x2, ("nngp", "ntk"))
  assert rel_err(r.nngp, o.nngp) < 1e-5
  assert rel_err(r.ntk, o.ntk) < 1e-5


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("depth,size", [(3, 28), (2, 15)])
def test_float32_within_1e5_of_reference(depth, size, native):
  """float32 (polynomial arccos) against the float64 reference, XLA and compiled fused block."""
  _skip_without_native(dict(native=native))
  x1, x2 = _inputs((size, size, 1), 3, 4, same=False, seed=7)
  ref = nt_convnet(depth, SQ2, 0.1)(x1, x2, ("nngp", "ntk"))
  ours = kk.convnet(depth, SQ2, 0.1, native=native)(x1.astype(np.float32),
                                                    x2.astype(np.float32), ("nngp", "ntk"))
  assert ours.ntk.dtype == jnp.float32
  assert rel_err(ref.nngp, ours.nngp) < 1e-5
  assert rel_err(ref.ntk, ours.ntk) < 1e-5


@pytest.mark.parametrize("native", [False, True])
def test_gradients_match_neural_tangents(native):
  """Gradients w.r.t. both arguments (float64) through the fused block's hand-written VJPs."""
  _skip_without_native(dict(native=native))
  x1, x2 = _inputs((12, 12, 1), 2, 3, same=False, seed=5)
  ref, ours = nt_convnet(2, SQ2, 0.1), kk.convnet(2, SQ2, 0.1, native=native)

  def grads(kf):
    loss = lambda a, b: jnp.sum(jnp.sin(kf(a, b, "ntk")) + kf(a, b, "nngp"))  # noqa: E731
    return jax.grad(loss, (0, 1))(x1, x2)

  for g_ref, g_ours in zip(grads(ref), grads(ours)):
    assert rel_err(g_ref, g_ours) < 1e-10


def test_neural_tangents_kernel_fn_drives_kip():
  """A neural-tangents kernel_fn is accepted wherever kip's is: same KIP loss and gradient."""
  import kip
  from kip._src.methods import kip as D
  from kip._src.sampling import ClassTable
  ds = kip.data.load("digits", n_train=300, n_test=100)
  nt_fn = stax.serial(stax.Flatten(), stax.Dense(1, SQ2, 0.1), stax.Relu(),
                      stax.Dense(1, SQ2, 0.1))[2]
  cfg = D.KIPConfig(images_per_class=2)
  xs, ys = D.init_support(jax.random.PRNGKey(0), ds, 2)
  data = ClassTable.from_dataset(ds)
  xt, yt = data.sample(jax.random.PRNGKey(1), 100)
  params = {"images": xs.astype(jnp.float64), "labels": ys.astype(jnp.float64)}
  outs = []
  for kf in (nt_fn, kip.kernels.fc(1)):
    loss = D.make_loss(kf, cfg)
    (value, _), grads = jax.value_and_grad(loss, has_aux=True)(
        params, {}, xt.astype(jnp.float64), yt.astype(jnp.float64), jax.random.PRNGKey(2))
    outs.append((value, grads))
  np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-6)
  for name in ("images", "labels"):
    np.testing.assert_allclose(outs[0][1][name], outs[1][1][name], rtol=1e-5, atol=1e-9)
  d_nt = kip.distill(ds, support_size=20, kernel=nt_fn, steps=3, progress=False)
  assert kip.evaluate.kernel_accuracy(d_nt, ds, kernel=nt_fn) > 0.5
