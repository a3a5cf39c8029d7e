"""Kernel ridge regression: closed form against NumPy, jitter fallback, errors, helpers."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kip
from kip import krr


@pytest.fixture(scope="module")
def digits():
  return kip.data.load("digits", n_train=40, n_test=20)


@pytest.fixture(scope="module")
def kernel_fn():
  # Jitted so that every call with the shapes below reuses one executable (eager evaluation
  # compiles each primitive separately); jit inside predict still traces through it.
  return jax.jit(kip.kernels.fc(1), static_argnums=2)


def _numpy_predict(k_ss, k_ts, y_s, reg):
  """The documented convention in float64: K_ts (K_ss + reg tr(K_ss)/n I)^-1 y_s."""
  k_ss, k_ts, y_s = (np.asarray(a, np.float64) for a in (k_ss, k_ts, y_s))
  n = k_ss.shape[0]
  lam = reg * np.trace(k_ss) / n
  return k_ts @ np.linalg.solve(k_ss + lam * np.eye(n), y_s)


def _support_and_targets(digits):
  """10 support images (one per class) and 6 targets; shared shapes keep compiles cached."""
  first = [int(np.flatnonzero(digits.y_train == c)[0]) for c in range(10)]
  return (jnp.asarray(digits.x_train[first]), jnp.asarray(digits.x_test[:6]),
          jnp.asarray(digits.one_hot(digits.y_train[first])))


# ----------------------------------------------------------------------------- closed form
@pytest.mark.parametrize("get", ["ntk", "nngp"])
@pytest.mark.parametrize("reg", [1e-4, 0.3])
def test_predict_matches_numpy_solve(digits, kernel_fn, get, reg):
  xs, xt, ys = _support_and_targets(digits)
  pred = krr.predict(kernel_fn, xs, ys, xt, reg, get=get)
  k_ss = kernel_fn(xs, None, get)
  want = _numpy_predict(k_ss, kernel_fn(xt, xs, get), ys, reg)
  assert pred.shape == (6, 10)
  np.testing.assert_allclose(pred, want, rtol=2e-4, atol=2e-5)
  assert float(krr.ridge(k_ss, reg)) == pytest.approx(reg * float(np.trace(k_ss)) / 10, rel=1e-6)


def _linear_kernel(x1, x2, get):
  """A cheap stand-in (float32 in, float32 out) for the float64 solve test."""
  x2 = x1 if x2 is None else x2
  a, b = x1.reshape(x1.shape[0], -1), x2.reshape(x2.shape[0], -1)
  return (a @ b.T / a.shape[1] + (1.0 if get == "ntk" else 0.5)).astype(jnp.float32)


def test_predict_float64(digits):
  """With ``dtype=float64`` the solve matches NumPy's double precision one tightly."""
  xs, xt, ys = _support_and_targets(digits)
  with jax.enable_x64(True):
    pred = krr.predict(_linear_kernel, xs, ys, xt, 1e-3, dtype=jnp.float64)
  assert pred.dtype == jnp.float64
  want = _numpy_predict(_linear_kernel(xs, None, "ntk"), _linear_kernel(xt, xs, "ntk"), ys, 1e-3)
  np.testing.assert_allclose(pred, want, rtol=1e-9, atol=1e-12)
  # Float32 loses several digits on this conditioning: the dtype argument is what matters.
  assert not np.allclose(krr.predict(_linear_kernel, xs, ys, xt, 1e-3), want, rtol=1e-9,
                         atol=1e-12)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_predict_batched_targets(digits, kernel_fn, batch_size):
  xs, xt, ys = _support_and_targets(digits)
  whole = krr.predict(kernel_fn, xs, ys, xt, 1e-3)
  np.testing.assert_allclose(krr.predict(kernel_fn, xs, ys, xt, 1e-3, batch_size=batch_size),
                             whole, rtol=1e-5, atol=1e-6)


def test_progress_counts_computed_chunks(digits, kernel_fn, monkeypatch):
  """Each chunk is waited for before the bar advances (not just dispatched)."""
  xs, xt, ys = _support_and_targets(digits)
  waited = []
  real = jax.block_until_ready
  monkeypatch.setattr(jax, "block_until_ready", lambda x: waited.append(1) or real(x))
  krr.predict(kernel_fn, xs, ys, xt, 1e-3, batch_size=4, progress=True)
  assert len(waited) == -(-xt.shape[0] // 4)


def test_predict_from_kernels_and_mse(digits, kernel_fn):
  xs, xt, ys = _support_and_targets(digits)
  k_ss, k_ts = kernel_fn(xs, None, "ntk"), kernel_fn(xt, xs, "ntk")
  pred = krr.predict_from_kernels(k_ss, k_ts, ys, 1e-3)
  np.testing.assert_allclose(pred, _numpy_predict(k_ss, k_ts, ys, 1e-3), rtol=2e-4, atol=2e-5)
  yt = digits.one_hot(digits.y_test[:6])
  assert krr.mse(pred, yt) == pytest.approx(
      0.5 * np.mean(np.sum((np.asarray(pred) - yt) ** 2, axis=1)), rel=1e-5)


# ----------------------------------------------------------------------------- jitter fallback
def _duplicated_support(digits, kernel_fn):
  """Support set with repeated rows: K_ss is exactly singular."""
  idx = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 1])
  x = jnp.asarray(digits.x_train[idx])
  y = jnp.asarray(digits.one_hot(digits.y_train[idx]))
  return x, y


def test_solve_needs_fallback_for_singular_matrix():
  k = jnp.ones((2, 2), jnp.float32)  # rank one, Cholesky pivot exactly zero
  y = jnp.array([[1.0], [1.0]], jnp.float32)
  assert not bool(jnp.all(jnp.isfinite(krr.solve(k, y, 0.0, jitter_fallback=False))))
  alpha = krr.solve(k, y, 0.0)
  assert bool(jnp.all(jnp.isfinite(alpha)))
  np.testing.assert_allclose(k @ alpha, y, rtol=0.05)


def test_raised_ridge_is_logged(caplog, monkeypatch):
  from kip._src import krr as krr_src
  monkeypatch.setitem(krr_src._raised, "count", 0)
  k = jnp.ones((2, 2), jnp.float32)
  y = jnp.array([[1.0], [1.0]], jnp.float32)
  with caplog.at_level(logging.WARNING, logger="kip._src.krr"):
    jax.block_until_ready(krr.solve(k, y, 0.0))
    jax.effects_barrier()
  assert "not numerically positive definite at reg=0; solved with reg=1e-06" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="kip._src.krr"):  # a well-posed solve is quiet
    jax.block_until_ready(krr.solve(jnp.eye(2), y, 1e-6))
    jax.effects_barrier()
  assert "positive definite" not in caplog.text


@pytest.mark.parametrize("transform", ["eager", "jit", "grad"])
def test_solve_duplicate_rows(digits, kernel_fn, transform):
  x, y = _duplicated_support(digits, kernel_fn)

  def fit(xs):  # interpolation of the support labels through the solve
    k = kernel_fn(xs, None, "ntk")
    return k @ krr.solve(k, y, 0.0)

  if transform == "grad":
    g = jax.jit(jax.grad(lambda xs: jnp.sum(fit(xs) ** 2)))(x)
    assert g.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.abs(g).max()) > 0
    return
  out = jax.jit(fit)(x) if transform == "jit" else fit(x)
  assert bool(jnp.all(jnp.isfinite(out)))
  # Duplicates carry the same labels, so the jittered solve still (nearly) interpolates them.
  np.testing.assert_allclose(out, y, atol=0.05)


def test_predict_with_duplicates_is_finite(digits, kernel_fn):
  x, y = _duplicated_support(digits, kernel_fn)
  pred = krr.predict(kernel_fn, x, y, jnp.asarray(digits.x_test[:6]), 0.0)
  assert bool(jnp.all(jnp.isfinite(pred)))


# ----------------------------------------------------------------------------- errors
def _bad_inputs(case):
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(5, 4, 4, 1)).astype(np.float32)
  ys = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]
  xt = rng.normal(size=(2, 4, 4, 1)).astype(np.float32)
  if case == "rows":
    ys = ys[:4]
  elif case == "1d_labels":
    ys = np.array([0, 1, 2, 0, 1], np.float32)
  elif case == "target_shape":
    xt = rng.normal(size=(2, 4, 5, 1)).astype(np.float32)
  elif case == "nan_x_support":
    xs[2, 1, 1, 0] = np.nan
  elif case == "nan_y_support":
    ys[1, 1] = np.nan
  elif case == "inf_x_target":
    xt[0, 0, 0, 0] = np.inf
  return jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(xt)


@pytest.mark.parametrize("case,match", [
    ("rows", "5 support inputs but 4 support labels"),
    ("1d_labels", r"y_support must be \(n, k\)"),
    ("target_shape", "differ in shape"),
    ("nan_x_support", "x_support contains NaN"),
    ("nan_y_support", "y_support contains NaN"),
    ("inf_x_target", "x_target contains NaN or inf"),
])
def test_predict_errors(case, match):
  xs, ys, xt = _bad_inputs(case)
  with pytest.raises(ValueError, match=match):
    krr.predict(kip.kernels.fc(1), xs, ys, xt)


# ----------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("form", ["int", "one_hot", "soft"])
def test_accuracy_label_forms(form):
  pred = jnp.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.2, 0.3], [0.5, 0.4, 0.1]])
  y = np.array([0, 1, 2, 2])  # last one wrong
  labels = {"int": y, "one_hot": np.eye(3)[y],
            "soft": 0.6 * np.eye(3)[y] + 0.2}[form]
  assert krr.accuracy(pred, labels) == pytest.approx(0.75)


@pytest.mark.parametrize("get", ["ntk", "nngp"])
@pytest.mark.parametrize("batch_size", [4, None])
def test_kernel_matrix_chunks(digits, kernel_fn, get, batch_size):
  x1, x2, _ = _support_and_targets(digits)
  whole = kernel_fn(x1, x2, get)
  chunked = krr.kernel_matrix(kernel_fn, x1, x2, get, batch_size=batch_size)
  assert isinstance(chunked, np.ndarray) and chunked.shape == (10, 6)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_kernel_matrix_self(digits, kernel_fn):
  x = jnp.asarray(digits.x_train[:10])
  np.testing.assert_allclose(krr.kernel_matrix(kernel_fn, x, None, "nngp", batch_size=3),
                             kernel_fn(x, x, "nngp"), rtol=1e-5, atol=1e-6)
