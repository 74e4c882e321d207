"""EDM's non-leaky geometric augmentation (diffjax.data.augment): each transform's matrix and
label encoding against the formulas of Karras et al. 2022 (Appendix F.2, the ADA transforms),
the probabilities, the resampling (identity and whole-pixel shifts exact, quarter turns of
smooth content), augmentation off = today's batches bit for bit, and the network's
augmentation-label conditioning through a training run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from diffjax import data
from diffjax.data import augment as A

ONLY = dict(xflip=0.0, yflip=0.0, scale=0.0, rotate_frac=0.0, aniso=0.0, translate_frac=0.0)


def _only(name, p=1.0):
  return A.AugmentOptions(p=p, **{**ONLY, name: 1.0})


def _draws(options, n=200, size=(32, 24)):
  return [A.draw(np.random.default_rng(i), options, *size) for i in range(n)]


def test_sym6_is_an_orthonormal_wavelet_with_six_vanishing_moments():
  h = A.SYM6
  assert np.sum(h) == pytest.approx(math.sqrt(2), abs=1e-12)
  for k in range(6):
    assert np.dot(h[:len(h) - 2 * k], h[2 * k:]) == pytest.approx(float(k == 0), abs=1e-11)
  g = np.array([(-1) ** k * h[len(h) - 1 - k] for k in range(len(h))])  # its high-pass
  for moment in range(6):
    assert abs(np.sum(g * np.arange(len(h)) ** moment)) < 1e-7 * 12 ** moment


def test_each_transform_matrix_and_labels_follow_the_formulas():
  height, width = 32, 24
  # Isotropic scale: s = 2^(0.2 w), G^-1 = S(1/s, 1/s); label w.
  for d in _draws(_only("scale")):
    s = 2 ** (0.2 * d.labels[2])
    np.testing.assert_allclose(d.g_inv, np.diag([1 / s, 1 / s, 1]), rtol=1e-6)
    assert np.count_nonzero(d.labels) == 1 and not d.xflip
  # Rotation: w ~ U(-pi, pi), labels (cos w - 1, sin w); G^-1 = R(w) (EDM: rotate2d_inv(-w)).
  angles = []
  for d in _draws(_only("rotate_frac")):
    w = math.atan2(d.labels[4], d.labels[3] + 1)
    angles.append(w)
    c, s = math.cos(w), math.sin(w)
    np.testing.assert_allclose(d.g_inv, [[c, -s, 0], [s, c, 0], [0, 0, 1]], atol=1e-6)
  assert min(angles) < -2.5 and max(angles) > 2.5  # the whole circle
  # Anisotropic scale: G^-1 = R(-r) S(1/s, s) R(r) (EDM: rotate2d_inv(r) @ scale2d_inv(s, 1/s)
  # @ rotate2d_inv(-r)), s = 2^(0.2 w); labels (w cos r, w sin r). Area-preserving.
  for d in _draws(_only("aniso")):
    w, r = math.hypot(d.labels[5], d.labels[6]), math.atan2(d.labels[6], d.labels[5])
    candidates = []
    for ww, rr in ((w, r), (-w, r + math.pi)):  # the labels name (w, r) up to this sign
      s = 2 ** (0.2 * ww)
      candidates.append(A.rotate2d(-rr) @ np.diag([1 / s, s, 1]) @ A.rotate2d(rr))
    assert min(np.abs(d.g_inv - c).max() for c in candidates) < 1e-5
    assert np.linalg.det(d.g_inv) == pytest.approx(1.0, abs=1e-9)
  # Translation: t = 0.125 w (W, H) pixels, G^-1 = T(-t); labels w.
  for d in _draws(_only("translate_frac"), size=(height, width)):
    tx, ty = 0.125 * d.labels[7] * width, 0.125 * d.labels[8] * height
    np.testing.assert_allclose(d.g_inv, [[1, 0, -tx], [0, 1, -ty], [0, 0, 1]], atol=1e-5)
  # Flips: a blit, label 0 / 1.
  for name, index in (("xflip", 0), ("yflip", 1)):
    draws = _draws(_only(name))
    assert all(d.labels[index] == getattr(d, name) for d in draws)
    assert 0.35 < np.mean([getattr(d, name) for d in draws]) < 0.65
    assert all(np.array_equal(d.g_inv, np.eye(3)) for d in draws)


def test_probabilities_and_edm_cifar10_setting():
  edm = A.AugmentOptions(p=0.12)  # xflip 1e8: a flip decided for every image, 50%
  draws = _draws(edm, n=3000)
  labels = np.stack([d.labels for d in draws])
  assert labels.shape == (3000, A.AUGMENT_DIM) == (3000, 9)
  assert 0.45 < labels[:, 0].mean() < 0.55
  for column in (2, 3, 5, 7):  # each other transform with probability 0.12
    assert 0.10 < np.mean(labels[:, column] != 0) < 0.14, column
  assert 0.045 < labels[:, 1].mean() < 0.075  # y-flip: drawn with 0.12, then a coin
  none = _draws(A.AugmentOptions(p=0.12, **ONLY), n=50)
  assert all(d.identity and not d.labels.any() for d in none)
  with pytest.raises(ValueError, match="p must be in"):
    A.AugmentOptions(p=1.5)


def test_resampling_geometry():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (20, 20, 3))
  np.testing.assert_allclose(A.resample(x, np.eye(3)), x, atol=1e-9)  # sym6 up/down: exact
  shifted = A.resample(x, A.translate2d_inv(2, -1))  # content moves right 2, up 1
  np.testing.assert_allclose(shifted[:-1, 2:], x[1:, :-2], atol=1e-9)
  np.testing.assert_allclose(shifted[:, 0], np.roll(np.pad(x, ((0, 1), (2, 0), (0, 0)),
                                                           mode="reflect"), -1, 0)[:-1, 0],
                             atol=1e-9)  # reflected at the border, as EDM pads
  smooth = scipy.ndimage.gaussian_filter(rng.uniform(-1, 1, (48, 48, 3)), (3, 3, 0))
  quarter = A.resample(smooth, A.rotate2d(math.pi / 2))
  err = np.abs(quarter - np.rot90(smooth, 1))[8:-8, 8:-8].max() / np.abs(smooth).max()
  assert err < 0.01, err
  d = A.Draw(1, 1, np.eye(3), np.zeros(9, np.float32))
  np.testing.assert_array_equal(A.execute(x, d), x[::-1, ::-1])


def _batches(options, n=3):
  source = data.digits_source("train")
  ds = data.make_dataset(source, options)
  it = iter(ds)
  return [next(it) for _ in range(n)]


def test_augmentation_off_gives_todays_batches_bit_for_bit():
  base = dict(image_size=8, channels=1, random_flip=True, batch_size=16, seed=3)
  today = _batches(data.PipelineOptions(**base))
  for off in (None, A.AugmentOptions(p=0.0)):
    again = _batches(data.PipelineOptions(**base, augment=off))
    for a, b in zip(today, again):
      assert set(a) == set(b)
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
  on = _batches(data.PipelineOptions(**base, augment=A.AugmentOptions(p=0.5)))
  assert on[0]["augment_labels"].shape == (16, 9) and on[0]["augment_labels"].dtype == np.float32
  np.testing.assert_array_equal(on[0]["label"], today[0]["label"])  # same examples, same order
  changed = np.any(on[0]["image"] != today[0]["image"], axis=(1, 2, 3))
  np.testing.assert_array_equal(changed, np.any(on[0]["augment_labels"] != 0, axis=1) |
                                changed)
  assert changed.any()


def test_unet_takes_augmentation_labels_and_none_means_zeros():
  from diffjax.models.registry import get_model
  model = get_model("unet-tiny", augment_dim=9)
  x, t = jnp.ones((2, 8, 8, 3)), jnp.array([10.0, 500.0])
  variables = model.init(jax.random.PRNGKey(0), x, t)
  params = jax.tree.map(lambda p: p + 0.01, variables["params"])  # zero-initialised output
  labels = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9)), jnp.float32)
  none = model.apply({"params": params}, x, t)
  zeros = model.apply({"params": params}, x, t, augment_labels=jnp.zeros((2, 9)))
  some = model.apply({"params": params}, x, t, augment_labels=labels)
  np.testing.assert_array_equal(none, zeros)
  assert float(jnp.abs(some - none).max()) > 1e-4
  assert "augment" in variables["params"]["noise_embed"]
  with pytest.raises(ValueError, match="augment_labels of width 4"):
    model.apply({"params": params}, x, t, augment_labels=jnp.zeros((2, 4)))
  plain = get_model("unet-tiny")
  assert "augment" not in plain.init(jax.random.PRNGKey(0), x, t)["params"]["noise_embed"]


def test_training_with_augmentation_feeds_the_labels_to_the_network(tmp_path):
  """Through the train job: the pipeline's labels travel with the batch to the UNet (a network
  without augment_dim is refused before any compute)."""
  from diffjax.experiment import build_spec
  from diffjax.fields import ConfigError
  from diffjax.jobs.train import train
  from launch_util import tiny_config
  config = tiny_config(**{"train.num_steps": 2, "checkpoint.every_steps": 2})
  config.data.augment.p = 0.5
  config.model.name = "unet-tiny"  # the smallest UNet: the subject is the labels' path
  with pytest.raises(ConfigError, match="config.model.kwargs.augment_dim: EDM's augmentation"):
    build_spec(config, num_devices=8)
  config.model.kwargs.augment_dim = 9
  summary = train(config, str(tmp_path / "run"))
  assert summary["step"] == 2 and np.isfinite(summary["metrics"]["loss"])
