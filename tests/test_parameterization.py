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


# --- weightings, time samplers and EDM preconditioning against closed forms (issue 34) --------
def _cosine_alpha_sigma(t, s=0.008):
  """Nichol & Dhariwal 2021, eq. 17: alpha_bar = f(t) / f(0), f = cos^2((t + s)/(1 + s) pi/2)."""
  t = np.asarray(t, np.float64)
  f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
  alpha_bar = f(t) / f(0.0)
  return np.sqrt(alpha_bar), np.sqrt(1 - alpha_bar)


def _vp_alpha_sigma(t, beta_min=0.1, beta_max=20.0):
  """Song et al. 2021's VP SDE: log alpha = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2."""
  t = np.asarray(t, np.float64)
  alpha = np.exp(-0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min)
  return alpha, np.sqrt(1 - alpha**2)


@pytest.mark.parametrize("param_name", ["eps", "v", "x0", "edm"])
def test_x0_snr_and_edm_weightings_are_their_formulas_for_every_parameterization(param_name):
  """``x0``: w = 1; ``snr``: w = alpha^2 / sigma^2 (Ho et al.'s eps-MSE); ``edm``:
  w = (s^2 + sd^2) / (s sd)^2 with s = sigma / alpha (Karras et al.), on the x0-space error of
  the same draws, with alpha and sigma from the cosine schedule's closed form."""
  for weighting in ("x0", "snr", "edm"):
    loss, x0_err, _, t = _losses(param_name, "cosine", weighting)
    alpha, sigma = _cosine_alpha_sigma(t)
    s = sigma / alpha
    w = {"x0": np.ones_like(t), "snr": alpha**2 / sigma**2,
         "edm": (s**2 + 0.25) / (s * 0.5) ** 2}[weighting]
    np.testing.assert_allclose(loss, w * x0_err, rtol=2e-3, err_msg=weighting)


def test_discrete_uniform_times_cover_every_step_of_the_chain_equally():
  """DDPM's t ~ U{1, ..., N} (Ho et al., Alg. 1) as t = n / N: on a 10-step chain every step
  is drawn, none outside, each about a tenth of the time (chi-square, 9 dof, p > 1e-4)."""
  import scipy.stats
  chain = diffusion.get_schedule("linear", timesteps=10)
  n = 20000
  t = np.asarray(diffusion.sample_t(jax.random.PRNGKey(0), n, chain, "uniform"), np.float64)
  steps = np.round(t * 10).astype(int)
  np.testing.assert_allclose(t * 10, steps, atol=1e-5)
  counts = np.bincount(steps, minlength=11)
  assert counts[0] == 0 and steps.max() == 10, counts
  assert scipy.stats.chisquare(counts[1:]).pvalue > 1e-4, counts
  # Continuous schedules: U[t_eps, 1].
  t = np.asarray(diffusion.sample_t(jax.random.PRNGKey(1), n, diffusion.get_schedule("vp"),
                                    "uniform", t_eps=0.2))
  assert t.min() >= 0.2 and t.max() <= 1.0 and abs(t.mean() - 0.6) < 0.01


@pytest.mark.parametrize("schedule_name", ["cosine", "vp"])
def test_edm_preconditioning_on_a_variance_preserving_schedule(schedule_name):
  """EDM's preconditioning on x_t / alpha (Karras et al. 2022, Table 1 with sigma = sigma /
  alpha): the network sees c_in x_t / alpha and c_noise = ln(sigma / alpha) / 4, and D = c_skip
  x_t / alpha + c_out F; the training target is (x0 - c_skip x_t / alpha) / c_out."""
  s = diffusion.get_schedule(schedule_name)
  p = diffusion.get_parameterization("edm", sigma_data=0.5)
  x0, eps, t = _data()
  alpha, sigma = (_cosine_alpha_sigma if schedule_name == "cosine" else _vp_alpha_sigma)(t)
  b = lambda u: u[:, None, None, None]
  x_t = b(alpha) * np.asarray(x0, np.float64) + b(sigma) * np.asarray(eps, np.float64)
  lvl = sigma / alpha
  c_in, c_skip = 1 / np.sqrt(lvl**2 + 0.25), 0.25 / (lvl**2 + 0.25)
  c_out = lvl * 0.5 / np.sqrt(lvl**2 + 0.25)
  x_in, noise = p.network_inputs(jnp.asarray(x_t, jnp.float32), t, s)
  np.testing.assert_allclose(x_in, b(c_in / alpha) * x_t, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(noise, np.log(lvl) / 4, rtol=1e-4, atol=1e-5)
  f = np.asarray(jax.random.normal(jax.random.PRNGKey(9), x0.shape), np.float64)
  np.testing.assert_allclose(p.x0_from_output(jnp.asarray(f, jnp.float32), jnp.asarray(
      x_t, jnp.float32), t, s), b(c_skip / alpha) * x_t + b(c_out) * f, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      p.target(x0, eps, jnp.asarray(x_t, jnp.float32), t, s),
      (np.asarray(x0, np.float64) - b(c_skip / alpha) * x_t) / b(c_out), rtol=1e-3, atol=1e-3)
