"""Tests for kip.baselines.augment (DSA differentiable siamese augmentation)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip.baselines import augment as aug

GROUPS = list(aug.GROUPS)
_apply = jax.jit(aug.apply)  # one compilation per test instead of many eager ops


def _images(key, n=3, h=8, w=8, c=3):
  # numpy draws: eager jax.random calls would each compile a threefry kernel.
  seed = int(np.asarray(jax.random.key_data(key)).ravel()[-1])
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, h, w, c)), jnp.float32)


def _params(key, group, batch_shape=(), **changes):
  p = aug.sample_params(key, group, batch_shape)
  return p.replace(**changes) if changes else p


@pytest.mark.parametrize("strategy", GROUPS + [aug.DEFAULT_STRATEGY, "none"])
@pytest.mark.parametrize("batch_shape", [(), (3,)])
def test_shape_and_dtype_preserved(strategy, batch_shape):
  x = _images(jax.random.PRNGKey(0), c=3)
  p = aug.sample_params(jax.random.PRNGKey(1), strategy, batch_shape)
  y = jax.jit(aug.apply)(x, p)
  assert y.shape == x.shape and y.dtype == x.dtype
  assert bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize("strategy", GROUPS)
def test_siamese_same_params_same_transform(strategy):
  # Batch mode: one draw transforms a batch of 5 and a batch of 2 identically, image by image.
  x = _images(jax.random.PRNGKey(0), n=5)
  p = aug.sample_params(jax.random.PRNGKey(3), strategy, ())
  y_all = _apply(x, p)
  y_two = _apply(x[2:4], p)
  np.testing.assert_allclose(y_all[2:4], y_two, atol=1e-6)
  # Per-image params broadcast from a shared draw give the same result.
  p_each = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (5,) + a.shape), p)
  p_each = p_each.replace(op=p.op)
  np.testing.assert_allclose(_apply(x, p_each), y_all, atol=1e-6)


@pytest.mark.parametrize("strategy", GROUPS)
def test_differentiable_wrt_images(strategy):
  x = _images(jax.random.PRNGKey(0))
  p = aug.sample_params(jax.random.PRNGKey(5), strategy, (3,))
  w = _images(jax.random.PRNGKey(6))
  g = jax.jit(jax.grad(lambda x: jnp.sum(w * _apply(x, p))))(x)
  assert bool(jnp.all(jnp.isfinite(g)))
  assert float(jnp.abs(g).sum()) > 0


def test_flip_twice_is_identity():
  x = _images(jax.random.PRNGKey(0))
  p = _params(jax.random.PRNGKey(0), "flip", (), flip=jnp.array(True))
  np.testing.assert_array_equal(_apply(_apply(x, p), p), x)
  np.testing.assert_array_equal(_apply(x, p), x[:, :, ::-1])


def test_scale_one_rotate_zero_are_identity():
  x = _images(jax.random.PRNGKey(0), h=8, w=6)
  p = _params(jax.random.PRNGKey(0), "scale", (), scale=jnp.ones(2))
  np.testing.assert_allclose(_apply(x, p), x, atol=1e-5)
  p = _params(jax.random.PRNGKey(0), "rotate", (), angle=jnp.zeros(()))
  np.testing.assert_allclose(_apply(x, p), x, atol=1e-5)


def test_rotate_90_is_anticlockwise_rot90():
  # Reference convention: positive angles rotate anticlockwise (torch affine_grid, square image).
  x = _images(jax.random.PRNGKey(0), h=6, w=6)
  p = _params(jax.random.PRNGKey(0), "rotate", (), angle=jnp.array(math.pi / 2))
  np.testing.assert_allclose(_apply(x, p), jnp.rot90(x, k=1, axes=(1, 2)), atol=1e-5)


def test_crop_is_integer_shift_with_zero_fill():
  x = _images(jax.random.PRNGKey(0), h=8, w=8)  # shift range int(8 * 0.125 + 0.5) = 1
  # u = 0.99 -> +1 row; u = 0.0 -> -1 column.
  p = _params(jax.random.PRNGKey(0), "crop", (), crop=jnp.array([0.99, 0.0]))
  y = _apply(x, p)
  np.testing.assert_allclose(y[:, :-1, 1:], x[:, 1:, :-1], atol=1e-6)
  np.testing.assert_array_equal(y[:, -1], 0.0)
  np.testing.assert_array_equal(y[:, :, 0], 0.0)


def test_cutout_zeroes_a_square():
  x = jnp.ones((2, 8, 8, 1))
  p = aug.sample_params(jax.random.PRNGKey(2), "cutout", (2,))
  y = _apply(x, p)
  zeros = np.asarray((y == 0).sum(axis=(1, 2, 3)))
  assert np.all((zeros > 0) & (zeros <= 16))  # a 4 x 4 square, possibly clipped


def test_color_formula():
  x = _images(jax.random.PRNGKey(0))
  p = aug.sample_params(jax.random.PRNGKey(4), "color", ())
  ref = x + p.brightness
  m = ref.mean(axis=3, keepdims=True)
  ref = (ref - m) * p.saturation + m
  m = ref.mean(axis=(1, 2, 3), keepdims=True)
  ref = (ref - m) * p.contrast + m
  np.testing.assert_allclose(_apply(x, p), ref, atol=1e-5)


def test_params_vary_with_key_and_ranges():
  cfg = aug.AugmentConfig()
  ps = [aug.sample_params(jax.random.PRNGKey(i), aug.DEFAULT_STRATEGY, (64,)) for i in range(2)]
  assert not np.allclose(ps[0].angle, ps[1].angle)
  assert not np.allclose(ps[0].scale, ps[1].scale)
  p = ps[0]
  assert np.all(np.abs(p.angle) <= cfg.ratio_rotate / 180 * math.pi)
  assert np.all((p.scale >= 1 / cfg.ratio_scale) & (p.scale <= cfg.ratio_scale))
  ops = {int(aug.sample_params(jax.random.PRNGKey(i), aug.DEFAULT_STRATEGY).op) for i in range(60)}
  assert ops == set(range(len(aug.GROUPS)))  # one group per call, all reachable


def test_single_mode_applies_exactly_the_sampled_group():
  x = _images(jax.random.PRNGKey(0))
  p = aug.sample_params(jax.random.PRNGKey(9), aug.DEFAULT_STRATEGY, (3,))
  for i, g in enumerate(aug.GROUPS):
    alone = _apply(x, p.replace(strategy=(g,)))
    np.testing.assert_allclose(_apply(x, p.replace(op=jnp.int32(i))), alone, atol=1e-6)


def test_multiple_mode_composes_all_groups():
  x = _images(jax.random.PRNGKey(0))
  cfg = aug.AugmentConfig(mode="multiple")
  p = aug.sample_params(jax.random.PRNGKey(9), "flip_color", (3,), cfg)
  y = x
  for g in ("flip", "color"):
    y = _apply(y, p.replace(strategy=(g,)))
  np.testing.assert_allclose(_apply(x, p), y, atol=1e-6)


def test_augment_fn_per_image_and_deterministic():
  f = jax.jit(aug.augment_fn("flip"))
  x = jnp.broadcast_to(_images(jax.random.PRNGKey(0), n=1), (32, 8, 8, 3))
  y = f(jax.random.PRNGKey(1), x)
  flipped = np.asarray([not np.allclose(y[i], x[i]) for i in range(32)])
  assert 0 < flipped.sum() < 32  # independent draws per image
  np.testing.assert_array_equal(y, f(jax.random.PRNGKey(1), x))


def test_bad_input_raises():
  with pytest.raises(ValueError, match="blur"):
    aug.parse_strategy("crop_blur")
  p = aug.sample_params(jax.random.PRNGKey(0), "crop", (4,))
  with pytest.raises(ValueError, match="batch_shape"):
    _apply(jnp.zeros((3, 8, 8, 1)), p)
  with pytest.raises(ValueError, match="mode"):
    aug.AugmentConfig(mode="M")
