"""DC's evaluation augmentation: the reference ``augment`` transcribed, and when it applies."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip import transfer
from kip._src import dc_augment
from kip._src.transfer import train as transfer_train

P = dc_augment.DCAugParams()  # crop 4, scale 0.2, rotate 45, noise 0.001


def _batch(n=3, h=28, w=28, c=1, seed=0):
  return np.random.default_rng(seed).normal(size=(n, h, w, c)).astype(np.float32)


def _apply(x, group, *, offsets=(4, 4), factors=(1.0, 1.0), angle=0, eps=None,
           params=P):
  n = x.shape[0]
  g = params.groups.index(group)
  return dc_augment.apply_numpy(
      x, np.full(n, g), np.tile(offsets, (n, 1)), np.tile(factors, (n, 1)), np.full(n, angle),
      np.zeros_like(x) if eps is None else eps, params)


def test_reference_parameters_and_strategy():
  # utils.get_daparam: crop 4, scale 0.2, rotate 45, noise 0.001; MNIST crop_scale_rotate,
  # ConvNetBN crop_noise, everything else none.
  assert (P.crop, P.scale, P.rotate, P.noise, P.strategy) == (4, 0.2, 45, 0.001,
                                                              "crop_scale_rotate")
  assert dc_augment.reference_strategy("mnist") == "crop_scale_rotate"
  assert dc_augment.reference_strategy("fashion_mnist") == "none"
  assert dc_augment.reference_strategy("cifar10") == "none"
  bn = transfer.get_model("convnet", 10, norm="batch")
  assert dc_augment.reference_strategy("fashion_mnist", bn) == "crop_noise"
  assert dc_augment.reference_strategy("mnist", transfer.get_model("convnet", 10)) == \
      "crop_scale_rotate"
  assert dc_augment.REFERENCE_AUGMENT_EPOCHS == 1000


def test_crop_shifts_onto_the_batch_mean():
  x = _batch(c=2)
  assert np.array_equal(_apply(x, "crop", offsets=(4, 4)), x)  # centred cut: identity
  out = _apply(x, "crop", offsets=(1, 6))  # r = 1, c = 6: down by 3 rows, left by 2 columns
  mean = x.mean(axis=(0, 1, 2))
  np.testing.assert_array_equal(out[:, 3:, :-2], x[:, :-3, 2:])
  np.testing.assert_allclose(out[:, :3], np.broadcast_to(mean, out[:, :3].shape), rtol=1e-6)
  np.testing.assert_allclose(out[:, :, -2:], np.broadcast_to(mean, out[:, :, -2:].shape),
                             rtol=1e-6)


def test_scale_is_torch_nearest_on_a_zero_canvas():
  x = _batch()
  assert np.array_equal(_apply(x, "scale", factors=(1.0, 1.0)), x)
  # u = 0.5: 14 x 14, PyTorch nearest takes every second pixel, centred at rows 7..20.
  out = _apply(x, "scale", factors=(0.5, 0.5))
  np.testing.assert_array_equal(out[:, 7:21, 7:21], x[:, ::2, ::2])
  assert not out[:, :7].any() and not out[:, 21:].any() and not out[:, :, :7].any()
  # u = 1.1: int(30.8) = 30 rows and columns, source floor(i * 28/30) in float32, centre crop.
  idx = np.floor(np.arange(30, dtype=np.float32) * (np.float32(28) / np.float32(30)))
  idx = idx.astype(int)[1:29]
  np.testing.assert_array_equal(_apply(x, "scale", factors=(1.1, 1.1)),
                                x[:, idx][:, :, idx])
  # Both sides scale by the height (the reference's shape[2]), also for a wide image.
  wide = _batch(h=8, w=12)
  out = _apply(wide, "scale", factors=(1.0, 1.0))
  # h = w = 8: columns resized 12 -> 8 (source floor(1.5 j)) on a 12 x 12 canvas, rows 2..9.
  np.testing.assert_array_equal(out[:, :, 2:10], wide[:, :, [0, 1, 3, 4, 6, 7, 9, 10]])
  assert not out[:, :, :2].any() and not out[:, :, 10:].any()


def test_rotate_is_scipy_cubic_spline_with_the_mean_of_means():
  from scipy.ndimage import rotate
  x = _batch(c=2)
  np.testing.assert_allclose(_apply(x, "rotate", angle=0), x, atol=1e-5)
  out = _apply(x, "rotate", angle=30)
  cval = float(np.mean(x.mean(axis=(0, 1, 2))))
  for i in range(x.shape[0]):
    full = rotate(x[i].transpose(2, 0, 1), 30.0, axes=(-2, -1), cval=cval)  # reference layout
    r, c = (full.shape[-2] - 28) // 2, (full.shape[-1] - 28) // 2
    np.testing.assert_allclose(out[i], full[:, r:r + 28, c:c + 28].transpose(1, 2, 0),
                               atol=1e-6)
  np.testing.assert_allclose(out[:, 0, 0], cval, atol=1e-6)  # corners come from the canvas


def test_noise_adds_scaled_gaussian():
  x = _batch()
  eps = _batch(seed=1)
  np.testing.assert_allclose(_apply(x, "noise", eps=eps, params=dc_augment.DCAugParams(
      "crop_noise")), x + 0.001 * eps, rtol=1e-6)


def test_augment_fn_draws_one_group_per_image_under_jit_and_vmap():
  f = dc_augment.augment_fn("crop_scale_rotate")
  assert f is dc_augment.augment_fn("crop_scale_rotate")  # cached: trainers are reused
  x = jnp.asarray(_batch(n=64))
  a = jax.jit(f)(jax.random.PRNGKey(0), x)
  b = f(jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert a.shape == x.shape and not np.allclose(a, x)
  assert not np.allclose(a, f(jax.random.PRNGKey(1), x))
  choice, offsets, factors, angles, _ = dc_augment._draw(jax.random.PRNGKey(0), x, P)
  expect = dc_augment.apply_numpy(np.asarray(x), *map(np.asarray, dc_augment._draw(
      jax.random.PRNGKey(0), x, P)), P)
  np.testing.assert_array_equal(np.asarray(a), expect)
  assert set(np.asarray(choice).tolist()) == {0, 1, 2}
  assert 0 <= int(offsets.min()) and int(offsets.max()) <= 7
  assert -45 <= int(angles.min()) and int(angles.max()) <= 44
  assert 0.8 <= float(factors.min()) and float(factors.max()) < 1.2
  keys = jax.random.split(jax.random.PRNGKey(2), 2)
  v = jax.jit(jax.vmap(f, in_axes=(0, None)))(keys, x[:4])
  np.testing.assert_array_equal(np.asarray(v[1]), np.asarray(f(keys[1], x[:4])))


def test_bad_parameters_name_value_and_fix():
  with pytest.raises(ValueError, match="'blur'.*crop_scale_rotate"):
    dc_augment.DCAugParams("crop_blur")
  with pytest.raises(ValueError, match="crop=0"):
    dc_augment.DCAugParams(crop=0)
  with pytest.raises(ValueError, match="scale=1.5"):
    dc_augment.DCAugParams(scale=1.5)
  with pytest.raises(ValueError, match="augment_fn='reference' is resolved by evaluate"):
    transfer_train.resolve_augment("reference")


@dataclasses.dataclass(frozen=True)
class _Data:
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int = 3


def _data(name):
  x, y = _batch(n=30, h=8, w=8), np.arange(30) % 3
  return _Data(name, x, y, x, y)


@pytest.mark.parametrize("name, recipe, expected, epochs", [
    ("mnist", "dc", "dc:crop_scale_rotate", 1000),
    ("fashion_mnist", "dc", "none", 300),
    ("mnist", "kip", "none", None),
    ("fashion_mnist", "dsa", "dsa", 1000),
])
def test_reference_augmentation_follows_the_data_set_and_recipe(name, recipe, expected, epochs):
  model = transfer.get_model("fc", 3, width=8, depth=1)
  r = transfer.get_recipe(recipe)
  fn, r2, desc = transfer_train.reference_augment("reference", r, _data(name), model)
  assert desc == expected and r2.epochs == epochs
  assert (fn is None) == (expected == "none")
  # An explicit length or a Recipe object keeps its length; None / 'none' turn it off.
  assert transfer_train.reference_augment("reference", r, _data(name), model,
                                          preset_length=False)[1].epochs == r.epochs
  assert transfer_train.reference_augment(None, r, _data(name), model)[2] == "none"


def test_evaluate_on_mnist_trains_on_dc_augmented_batches(monkeypatch):
  ds = _data("mnist")
  used = []
  real = transfer_train._trainer
  monkeypatch.setattr(transfer_train, "_trainer", lambda *a: used.append(a[3]) or real(*a))
  kw = dict(model="fc", model_kwargs=dict(width=8, depth=1), restarts=1, progress=False,
            recipe_overrides=dict(epochs=3))
  r = transfer.evaluate((ds.x_train[:6], np.arange(6) % 3), ds, **kw)
  assert r.augment == "dc:crop_scale_rotate" and "[augment dc:crop_scale_rotate]" in str(r)
  assert used[-1] is dc_augment.augment_fn("crop_scale_rotate")
  assert r.recipe["epochs"] == 3  # the override is kept
  off = transfer.evaluate((ds.x_train[:6], np.arange(6) % 3), ds, augment_fn=None, **kw)
  assert off.augment == "none" and used[-1] is None
  rr = transfer.evaluate_random(ds, 1, **kw)
  assert rr.augment == "dc:crop_scale_rotate"
  assert transfer.evaluate((ds.x_train[:6], np.arange(6) % 3), _data("fashion_mnist"),
                           **kw).augment == "none"
