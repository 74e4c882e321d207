"""GAN numerics against closed forms and independent implementations (numpy, PyTorch):
spectral normalisation, equalised learning rate, pixel norm, minibatch std, modulated
convolution, FIR resampling, transposed convolution, the losses, R1/R2 and the WGAN gradient
penalty, orthogonal regularisation, DiffAugment and ProGAN's growth schedule."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffjax.methods import gan
from diffjax.models.gan import layers, progan, stylegan2
from diffjax.models.gan.biggan import orthogonal_penalty, truncated_normal


def _rng(seed=0):
  return np.random.default_rng(seed)


# --- spectral normalisation ---------------------------------------------------------------
def test_spectral_sigma_converges_to_numpy_largest_singular_value():
  w = _rng().normal(size=(3, 3, 8, 16)).astype(np.float32)
  matrix = w.reshape(-1, 16)
  u = jnp.asarray(_rng(1).normal(size=16), jnp.float32)
  sigma, _, _ = layers.power_iteration(jnp.asarray(matrix), u, n_steps=200)
  assert float(sigma) == pytest.approx(np.linalg.svd(matrix, compute_uv=False)[0], rel=1e-4)


def test_spectral_norm_layer_equals_torch_spectral_norm_step_by_step():
  """Same weight, same starting u: PyTorch's spectral_norm and ours give the same normalised
  weight and the same u after each training forward; the normalised kernel's top singular
  value tends to 1 as the stored u converges."""
  lin = torch.nn.utils.spectral_norm(torch.nn.Linear(12, 6, bias=False), n_power_iterations=1)
  u0 = lin.weight_u.detach().numpy().copy()
  weight = lin.weight_orig.detach().numpy()  # [out, in]
  module = layers.SNDense(6, use_bias=False)
  variables = {"params": {"kernel": jnp.asarray(weight.T)}, layers.SPECTRAL: {"u": jnp.asarray(u0)}}
  x = np.eye(12, dtype=np.float32)
  for _ in range(5):
    lin.train()
    ref = lin(torch.from_numpy(x)).detach().numpy()  # = x @ (W / sigma)^T
    out, updated = module.apply(variables, jnp.asarray(x), True, mutable=[layers.SPECTRAL])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(updated[layers.SPECTRAL]["u"], lin.weight_u.numpy(), rtol=1e-5,
                               atol=1e-6)
    variables = {**variables, **updated}
  for _ in range(300):
    out, updated = module.apply(variables, jnp.asarray(x), True, mutable=[layers.SPECTRAL])
    variables = {**variables, **updated}
  assert np.linalg.svd(np.asarray(out), compute_uv=False)[0] == pytest.approx(1.0, rel=1e-4)
  # Sampling (update_stats=False) leaves u unchanged.
  _, same = module.apply(variables, jnp.asarray(x), False, mutable=[layers.SPECTRAL])
  np.testing.assert_array_equal(same[layers.SPECTRAL]["u"], variables[layers.SPECTRAL]["u"])


# --- equalised learning rate, pixel norm, minibatch std ------------------------------------
def test_equalized_lr_uses_he_scale_at_run_time():
  """Weights are stored N(0, 1) and multiplied by sqrt(2 / fan_in) (ProGAN, gain sqrt 2) at
  every use: the layer equals x @ (w * scale) and its weight gradient is scale times that of
  the unscaled product, so Adam's normalised steps move every layer alike."""
  assert layers.equalized_scale(3 * 3 * 64) == pytest.approx(math.sqrt(2 / 576))
  conv = layers.EqualConv(32, 3, gain=math.sqrt(2))
  x = jnp.asarray(_rng().normal(size=(2, 8, 8, 64)), jnp.float32)
  v = nn.meta.unbox(conv.init(jax.random.PRNGKey(0), x))
  w = np.asarray(v["params"]["kernel"])
  assert abs(w.std() - 1.0) < 0.02 and abs(w.mean()) < 0.02
  ref = jax.lax.conv_general_dilated(x, jnp.asarray(w) * math.sqrt(2 / 576), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(conv.apply(v, x), ref, rtol=1e-5, atol=1e-5)
  dense = layers.EqualDense(4, lr_mul=0.01)
  vd = nn.meta.unbox(dense.init(jax.random.PRNGKey(1), jnp.ones((1, 16))))
  assert abs(float(np.std(vd["params"]["kernel"])) - 100.0) < 30  # N(0, 1) / lr_mul
  out = dense.apply(vd, jnp.ones((1, 16)))
  np.testing.assert_allclose(out, jnp.ones((1, 16)) @ (vd["params"]["kernel"] * 0.01 / 4),
                             rtol=1e-5)


def test_pixel_norm_matches_numpy():
  x = _rng().normal(size=(3, 4, 4, 8)).astype(np.float32)
  ref = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-8)
  np.testing.assert_allclose(layers.pixel_norm(jnp.asarray(x)), ref, rtol=1e-5)


def _mbstd_numpy(x, group, features):
  """The reference code's minibatch std, written per sample with loops over numpy arrays."""
  n, h, w, c = x.shape
  g = min(group, n)
  m = n // g
  out = np.zeros((n, h, w, features), np.float64)
  for i in range(n):
    members = [x[j] for j in range(n) if j % m == i % m]  # samples i, i + m, i + 2m ...
    stack = np.stack(members).astype(np.float64)  # [g, h, w, c]
    std = np.sqrt(stack.var(axis=0) + 1e-8)
    for f in range(features):
      out[i, :, :, f] = std[..., f * (c // features):(f + 1) * (c // features)].mean()
  return np.concatenate([x, out.astype(np.float32)], axis=-1)


@pytest.mark.parametrize("n,group,features", [(8, 4, 1), (6, 2, 2), (4, 4, 1), (3, 4, 1)])
def test_minibatch_std_matches_numpy(n, group, features):
  x = _rng(n).normal(size=(n, 4, 4, 6)).astype(np.float32)
  np.testing.assert_allclose(layers.minibatch_std(jnp.asarray(x), group, features),
                             _mbstd_numpy(x, group, features), rtol=1e-5, atol=1e-6)


# --- convolutions ---------------------------------------------------------------------------
def test_modulated_conv_equals_explicit_per_sample_convolution():
  """The shared-weight computation equals convolving each sample with its own modulated and
  demodulated kernel (the paper's definition), with and without upsampling."""
  rng = _rng()
  x = rng.normal(size=(3, 6, 6, 5)).astype(np.float32)
  weight = rng.normal(size=(3, 3, 5, 7)).astype(np.float32)
  styles = rng.normal(size=(3, 5)).astype(np.float32) + 1.0
  for up in (False, True):
    for demod in (True, False):
      got = stylegan2.modulated_conv2d(jnp.asarray(x), jnp.asarray(weight), jnp.asarray(styles),
                                       demodulate=demod, up=up)
      for b in range(3):
        wb = weight * styles[b][None, None, :, None]  # w'_ijk = s_i w_ijk
        if demod:
          wb = wb / np.sqrt(np.sum(wb ** 2, axis=(0, 1, 2), keepdims=True) + 1e-8)
        xt = torch.from_numpy(x[b:b + 1].transpose(0, 3, 1, 2))
        if up:  # torch conv_transpose2d weight [in, out, kh, kw]
          ref = F.conv_transpose2d(xt, torch.from_numpy(wb.transpose(2, 3, 0, 1).copy()),
                                   stride=2)
        else:
          ref = F.conv2d(xt, torch.from_numpy(wb.transpose(3, 2, 0, 1).copy()), padding=1)
        np.testing.assert_allclose(np.asarray(got[b]), ref[0].numpy().transpose(1, 2, 0),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 2)), (2, 1, (2, 1)), (1, 2, (1, 1)),
                                         (2, 1, (1, 1))])
def test_upfirdn2d_matches_zero_insert_pad_filter_decimate_in_numpy(up, down, pad):
  x = _rng().normal(size=(2, 5, 5, 3)).astype(np.float32)
  k = layers.fir_kernel((1, 3, 3, 1), up * up)
  got = np.asarray(layers.upfirdn2d(jnp.asarray(x), k, up=up, down=down, pad=pad))
  n, h, w, c = x.shape
  z = np.zeros((n, h * up, w * up, c), np.float32)
  z[:, ::up, ::up] = x
  z = np.pad(z, ((0, 0), pad, pad, (0, 0)))
  kh = k.shape[0]
  oh = z.shape[1] - kh + 1
  full = np.zeros((n, oh, oh, c), np.float32)
  for i in range(oh):
    for j in range(oh):  # true convolution: flipped kernel
      full[:, i, j] = np.einsum("nhwc,hw->nc", z[:, i:i + kh, j:j + kh], k[::-1, ::-1])
  np.testing.assert_allclose(got, full[:, ::down, ::down], rtol=1e-5, atol=1e-5)


def test_transposed_convolution_matches_torch():
  x = _rng().normal(size=(2, 4, 4, 3)).astype(np.float32)
  w = _rng(1).normal(size=(3, 5, 4, 4)).astype(np.float32)  # torch [in, out, kh, kw]
  ref = F.conv_transpose2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(w),
                           stride=2, padding=1).numpy().transpose(0, 2, 3, 1)
  got = layers.conv_transpose2d(jnp.asarray(x), jnp.asarray(w.transpose(2, 3, 0, 1)), stride=2,
                                padding=1)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


# --- losses and penalties -------------------------------------------------------------------
def test_losses_match_their_formulas():
  r = np.array([2.0, -1.0, 0.3], np.float32)
  f = np.array([-0.5, 1.5, 0.0], np.float32)
  sig = lambda v: 1 / (1 + np.exp(-v))
  ns_d = np.mean(-np.log(sig(r))) + np.mean(-np.log(1 - sig(f)))
  assert float(gan.d_adversarial("non_saturating", r, f)) == pytest.approx(ns_d, rel=1e-6)
  assert float(gan.g_adversarial("non_saturating", f)) == pytest.approx(
      np.mean(-np.log(sig(f))), rel=1e-6)
  hinge_d = np.mean(np.maximum(0, 1 - r)) + np.mean(np.maximum(0, 1 + f))
  assert float(gan.d_adversarial("hinge", r, f)) == pytest.approx(hinge_d, rel=1e-6)
  assert float(gan.g_adversarial("hinge", f)) == pytest.approx(-f.mean(), rel=1e-6)
  assert float(gan.d_adversarial("wgan_gp", r, f)) == pytest.approx(f.mean() - r.mean(),
                                                                     rel=1e-6)


def test_r1_on_linear_and_quadratic_discriminators_equals_analytic_gradient_norm():
  """D(x) = <a, x>: ||grad||^2 = ||a||^2 for every x. D(x) = x^T A x / 2 (A symmetric):
  grad = A x, so R1 = mean_n ||A x_n||^2."""
  rng = _rng()
  a = rng.normal(size=(4, 4, 2)).astype(np.float32)
  x = rng.normal(size=(5, 4, 4, 2)).astype(np.float32)
  linear = lambda x_: jnp.sum(x_ * a, axis=(1, 2, 3))
  assert float(gan.gradient_penalty_r1(linear, jnp.asarray(x))) == pytest.approx(
      float(np.sum(a ** 2)), rel=1e-5)
  m = rng.normal(size=(32, 32)).astype(np.float32)
  sym = (m + m.T) / 2
  quad = lambda x_: 0.5 * jnp.einsum("ni,ij,nj->n", x_.reshape(5, -1), sym, x_.reshape(5, -1))
  expected = np.mean(np.sum((x.reshape(5, -1) @ sym) ** 2, axis=-1))
  assert float(gan.gradient_penalty_r1(quad, jnp.asarray(x))) == pytest.approx(expected,
                                                                               rel=1e-4)


def test_wgan_gradient_penalty_on_a_linear_critic_is_its_norm_minus_one_squared():
  a = _rng().normal(size=(3, 3, 1)).astype(np.float32)
  critic = lambda x_: jnp.sum(x_ * a, axis=(1, 2, 3))
  real, fake = jnp.ones((4, 3, 3, 1)), jnp.zeros((4, 3, 3, 1))
  gp = gan.gradient_penalty_wgan(critic, real, fake, jax.random.PRNGKey(0))
  assert float(gp) == pytest.approx((np.linalg.norm(a) - 1) ** 2, rel=1e-5)


def test_orthogonal_penalty_gradient_is_biggan_pytorch_update():
  """BigGAN-PyTorch's ``ortho`` adds ``2 (W W^T * (1 - I)) W`` (W as [out, -1]) to the
  gradient; ours is the gradient of a penalty, so the two must agree."""
  w = _rng().normal(size=(3, 3, 4, 6)).astype(np.float32)
  params = {"conv": {"kernel": jnp.asarray(w)}, "shared": jnp.ones((10, 4)),
            "bias": jnp.ones((6,))}
  grads = jax.grad(orthogonal_penalty)(params)
  wt = torch.from_numpy(w).permute(3, 0, 1, 2).reshape(6, -1)  # [out, -1]
  ref = 2 * torch.mm(torch.mm(wt, wt.t()) * (1.0 - torch.eye(6)), wt)
  ref = ref.reshape(6, 3, 3, 4).permute(1, 2, 3, 0).numpy()
  np.testing.assert_allclose(grads["conv"]["kernel"], ref, rtol=1e-4, atol=1e-4)
  assert not np.any(grads["shared"]) and not np.any(grads["bias"])


def test_truncated_latents_stay_within_the_threshold():
  z = truncated_normal(jax.random.PRNGKey(0), (1000, 8), 0.5)
  assert float(jnp.max(jnp.abs(z))) <= 0.5 and float(jnp.std(z)) > 0.2


# --- DiffAugment ------------------------------------------------------------------------------
def test_diffaugment_translation_shifts_and_cutout_zeroes_a_half_size_square():
  x = jnp.asarray(_rng().normal(size=(16, 8, 8, 2)), jnp.float32)
  t = np.asarray(gan.diff_augment(x, jax.random.PRNGKey(0), ("translation",)))
  xs = np.asarray(x)
  for i in range(16):  # each output is an integer shift of its input with zero fill
    found = False
    for dy in range(-1, 2):
      for dx in range(-1, 2):
        shifted = np.zeros_like(xs[i])
        ys, yd = (slice(0, 8 - dy), slice(dy, 8)) if dy >= 0 else (slice(-dy, 8), slice(0, 8 + dy))
        xsl, xd = (slice(0, 8 - dx), slice(dx, 8)) if dx >= 0 else (slice(-dx, 8), slice(0, 8 + dx))
        shifted[yd, xd] = xs[i][ys, xsl]
        found |= np.array_equal(shifted, t[i])
    assert found, i
  c = np.asarray(gan.diff_augment(x + 10.0, jax.random.PRNGKey(1), ("cutout",)))
  zeros = (c == 0).all(axis=-1).sum(axis=(1, 2))
  assert zeros.max() == 16 and zeros.min() >= 4  # a 4x4 square, clipped at the borders
  col = gan.diff_augment(x, jax.random.PRNGKey(2), ("color",))
  assert col.shape == x.shape and not np.allclose(col, x)
  g = jax.grad(lambda v: jnp.sum(gan.diff_augment(v, jax.random.PRNGKey(3), gan.AUGMENT_POLICIES)
                                 ** 2))(x)
  assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0


# --- ProGAN growth ----------------------------------------------------------------------------
def test_growth_schedule_stable_then_fade_in_per_level():
  levels, alphas = zip(*[tuple(map(float, progan.growth_at(s, 3, 4, 2))) for s in range(20)])
  assert levels == (0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2)
  assert alphas == (1, 1, 1, 1, 0, .5, 1, 1, 1, 1, 0, .5, 1, 1, 1, 1, 1, 1, 1, 1)


def test_fade_reals_blends_the_pooled_levels():
  x = jnp.asarray(_rng().normal(size=(2, 16, 16, 1)), jnp.float32)
  up = layers.upsample_nearest
  lvl1 = layers.downsample_avg(x, 2)  # level 1 of a 16x16 network is 8x8
  lvl0 = layers.downsample_avg(lvl1, 2)
  got = progan.fade_reals(x, (jnp.int32(1), jnp.float32(0.25)), 16)
  np.testing.assert_allclose(got, up(0.75 * up(lvl0) + 0.25 * lvl1, 2), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(progan.fade_reals(x, (jnp.int32(2), jnp.float32(1.0)), 16), x,
                             rtol=1e-6, atol=1e-6)
