"""Conversions round-trip exactly; losses agree where the literature says they are equal."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import diffusion

KINDS = diffusion.PREDICTION_KINDS
SCHEDULES = ["linear", "cosine", "vp", "edm", "flow"]


def _data(shape=(6, 4, 4, 2), seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  x0 = jax.random.normal(k1, shape)
  eps = jax.random.normal(k2, shape)
  t = jax.random.uniform(k3, shape[:1], minval=0.05, maxval=0.95)
  return x0, eps, t


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("kind", KINDS)
def test_prediction_round_trip(kind, schedule_name):
  s = diffusion.get_schedule(schedule_name)
  x0, eps, t = _data()
  x_t = s.marginal(x0, eps, t)
  pred = diffusion.from_x0_eps(kind, x0, eps, t, s)
  x0_back, eps_back = diffusion.to_x0_eps(kind, pred, x_t, t, s)
  # x0 from eps divides by alpha; scale the tolerance by the conditioning of that step.
  np.testing.assert_allclose(x0_back, x0, atol=2e-3 * float(jnp.max(s.sigma_tilde(t))) + 1e-5)
  np.testing.assert_allclose(eps_back, eps, atol=2e-3)


def test_named_formulas():
  x0, eps, t = _data()
  vp = diffusion.get_schedule("vp")
  a, s = (diffusion.broadcast_to_rank(v, x0) for v in vp.alpha_sigma(t))
  np.testing.assert_allclose(diffusion.from_x0_eps("v", x0, eps, t, vp), a * eps - s * x0,
                             rtol=1e-6)
  np.testing.assert_allclose(diffusion.from_x0_eps("score", x0, eps, t, vp), -eps / s, rtol=1e-6)
  flow = diffusion.get_schedule("flow")
  np.testing.assert_allclose(diffusion.from_x0_eps("flow", x0, eps, t, flow), eps - x0,
                             atol=1e-6)


def test_convert_eps_to_v_and_back():
  s = diffusion.get_schedule("cosine")
  x0, eps, t = _data()
  x_t = s.marginal(x0, eps, t)
  v = diffusion.convert(eps, "eps", "v", x_t, t, s)
  np.testing.assert_allclose(diffusion.convert(v, "v", "eps", x_t, t, s), eps, atol=1e-5)


def test_edm_preconditioning_matches_karras_table1():
  p = diffusion.get_parameterization("edm", sigma_data=0.5)
  s = diffusion.get_schedule("edm")
  t = jnp.linspace(0.0, 1.0, 7)
  sigma = np.asarray(s.sigma(t), np.float64)
  c_skip, c_out, c_in = (np.asarray(c, np.float64) for c in p.coefficients(t, s))
  np.testing.assert_allclose(c_skip, 0.25 / (sigma**2 + 0.25), rtol=1e-5)
  np.testing.assert_allclose(c_out, sigma * 0.5 / np.sqrt(sigma**2 + 0.25), rtol=1e-5)
  np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma**2 + 0.25), rtol=1e-5)
  level = diffusion.noise_level("log_sigma", t, s)
  np.testing.assert_allclose(level, np.log(sigma) / 4, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("param_name", ["eps", "x0", "v", "flow", "edm"])
@pytest.mark.parametrize("schedule_name", ["cosine", "edm", "flow"])
def test_denoiser_is_exact_when_output_equals_target(param_name, schedule_name):
  s = diffusion.get_schedule(schedule_name)
  p = diffusion.get_parameterization(param_name)
  x0, eps, t = _data()
  x_t = s.marginal(x0, eps, t)
  target = p.target(x0, eps, x_t, t, s)
  denoise = diffusion.make_denoiser(lambda x, lvl, c: target, p, s)
  tol = 2e-3 * float(jnp.max(s.sigma_tilde(t))) if param_name == "eps" else 2e-4
  np.testing.assert_allclose(denoise(x_t, t), x0, atol=tol)


def _losses(param_name, schedule_name, weighting, **kw):
  """Native loss of a fixed random 'network' and its x0-space error on the same draws."""
  s = diffusion.get_schedule(schedule_name)
  p = diffusion.get_parameterization(param_name)
  x0, _, t = _data()
  w = jax.random.normal(jax.random.PRNGKey(7), x0.shape)
  net = lambda x, lvl, c: jnp.tanh(x * w) + 0.1 * lvl[:, None, None, None] / 1000
  rng = jax.random.PRNGKey(3)
  loss, aux = diffusion.denoising_loss(net, x0, rng, s, p, weighting=weighting, t=t, **kw)
  # Re-create the same x_t to measure the x0 error of the implied denoiser.
  eps = jax.random.normal(jax.random.split(rng)[1], x0.shape)
  x_t = s.marginal(x0, eps, t)
  x0_hat = diffusion.make_denoiser(net, p, s)(x_t, t)
  x0_err = jnp.mean(jnp.square(x0_hat - x0).reshape(x0.shape[0], -1), axis=1)
  return np.asarray(loss, np.float64), np.asarray(x0_err, np.float64), s, t


def test_eps_mse_is_snr_weighted_x0_mse():
  eps_loss, x0_err, s, t = _losses("eps", "cosine", "simple")
  np.testing.assert_allclose(eps_loss, np.exp(np.asarray(s.logsnr(t))) * x0_err, rtol=1e-3)


def test_v_mse_is_snr_plus_one_weighted_x0_mse():
  v_loss, x0_err, s, t = _losses("v", "vp", "simple")
  np.testing.assert_allclose(v_loss, (np.exp(np.asarray(s.logsnr(t))) + 1) * x0_err, rtol=1e-3)


def test_flow_mse_is_x0_mse_over_t_squared():
  u_loss, x0_err, s, t = _losses("flow", "flow", "simple")
  np.testing.assert_allclose(u_loss, x0_err / np.asarray(t) ** 2, rtol=1e-3)


def test_edm_native_loss_is_edm_lambda_weighting():
  native, x0_err, s, t = _losses("edm", "edm", "simple")
  weighted, _, _, _ = _losses("edm", "edm", "edm")
  sig = np.asarray(s.sigma(t), np.float64)
  lam = (sig**2 + 0.25) / (sig * 0.5) ** 2  # EDM eq. 8's lambda(sigma) with sigma_data = 0.5
  np.testing.assert_allclose(native, lam * x0_err, rtol=1e-3)
  np.testing.assert_allclose(weighted, native, rtol=1e-4)


@pytest.mark.parametrize("param_name", ["eps", "v", "x0"])
def test_min_snr_weighting_is_the_same_x0_weight_for_every_parameterization(param_name):
  loss, x0_err, s, t = _losses(param_name, "cosine", "min_snr", min_snr_gamma=5.0)
  snr = np.exp(np.asarray(s.logsnr(t), np.float64))
  np.testing.assert_allclose(loss, np.minimum(snr, 5.0) * x0_err, rtol=1e-3)


def test_min_snr_eps_weight_is_hang_et_al():
  """Hang et al. 2023: for eps-prediction the loss weight is min(SNR, gamma) / SNR."""
  simple, _, s, t = _losses("eps", "cosine", "simple")
  min_snr, _, _, _ = _losses("eps", "cosine", "min_snr", min_snr_gamma=5.0)
  snr = np.exp(np.asarray(s.logsnr(t), np.float64))
  np.testing.assert_allclose(min_snr, np.minimum(snr, 5.0) / snr * simple, rtol=1e-4)


def test_t_samplers():
  rng = jax.random.PRNGKey(0)
  lin = diffusion.get_schedule("linear")
  t = np.asarray(diffusion.sample_t(rng, 10000, lin, "uniform"))
  np.testing.assert_allclose(t * 1000, np.round(t * 1000), atol=1e-3)  # DDPM's integer steps
  assert t.min() >= 1e-3 and t.max() <= 1.0
  edm = diffusion.get_schedule("edm")
  t = diffusion.sample_t(rng, 20000, edm, "lognormal", p_mean=-1.2, p_std=1.2)
  log_sigma = np.log(np.asarray(edm.sigma(t)))
  assert abs(log_sigma.mean() + 1.2) < 0.05 and abs(log_sigma.std() - 1.2) < 0.05
  t = np.asarray(diffusion.sample_t(rng, 20000, diffusion.get_schedule("flow"), "logit_normal"))
  logit = np.log(t / (1 - t))
  assert abs(logit.mean()) < 0.05 and abs(logit.std() - 1.0) < 0.05


def test_bad_loss_arguments():
  s = diffusion.get_schedule("cosine")
  with pytest.raises(ValueError, match="unknown t sampler 'gauss'"):
    diffusion.sample_t(jax.random.PRNGKey(0), 4, s, "gauss")
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['p_men'\]"):
    diffusion.sample_t(jax.random.PRNGKey(0), 4, s, "lognormal", p_men=0.0)
  with pytest.raises(ValueError, match="unknown parameterization 'epsilon'"):
    diffusion.get_parameterization("epsilon")
  with pytest.raises(ValueError, match="unknown weighting 'snrr'"):
    diffusion.denoising_loss(lambda x, l, c: x, jnp.zeros((2, 3)), jax.random.PRNGKey(0), s,
                             diffusion.get_parameterization("eps"), weighting="snrr")
