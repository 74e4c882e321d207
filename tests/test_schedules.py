"""Schedules against the papers' formulas, written out independently in float64 numpy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import diffusion

T = np.linspace(0.02, 0.98, 25)


def _np(x):
  return np.asarray(x, np.float64)


def test_linear_reproduces_ddpm_alpha_bar_on_every_step():
  s = diffusion.get_schedule("linear")
  betas = np.linspace(1e-4, 0.02, 1000)  # Ho et al. 2020, Sec. 4
  alpha_bar = np.cumprod(1.0 - betas)
  t = np.arange(1, 1001) / 1000.0
  np.testing.assert_allclose(_np(s.alpha(t)) ** 2, alpha_bar, rtol=2e-6, atol=0)
  np.testing.assert_allclose(_np(s.sigma(t)) ** 2, 1.0 - alpha_bar, rtol=2e-5, atol=0)
  assert float(s.sigma(0.0)) == 0.0 and float(s.alpha(0.0)) == 1.0
  assert s.num_timesteps == 1000


def test_ddpm_sampler_chain_equals_ho_posterior():
  """1000 DDPM steps on the linear schedule use exactly Ho et al.'s posterior (their eq. 6-7)."""
  s = diffusion.get_schedule("linear")
  grid = diffusion.time_grid(s, 1000)
  np.testing.assert_allclose(_np(grid.t), np.arange(1000, -1, -1) / 1000.0, atol=1e-7)
  assert not grid.clean_end
  coef_xt, coef_x0, var = (_np(c) for c in diffusion.posterior_coefficients(
      grid.alpha[:-1], grid.sigma[:-1], grid.logsnr[:-1],
      grid.alpha[1:], grid.sigma[1:], grid.logsnr[1:]))
  betas = np.linspace(1e-4, 0.02, 1000)
  ab = np.cumprod(1.0 - betas)
  ab_prev = np.concatenate([[1.0], ab[:-1]])
  # Step k of the grid goes from Ho's index n = 1000 - k to n - 1 (both 1-based).
  n = np.arange(1000, 0, -1) - 1
  ho_coef_x0 = betas[n] * np.sqrt(ab_prev[n]) / (1.0 - ab[n])
  ho_coef_xt = (1.0 - ab_prev[n]) * np.sqrt(1.0 - betas[n]) / (1.0 - ab[n])
  ho_var = betas[n] * (1.0 - ab_prev[n]) / (1.0 - ab[n])
  np.testing.assert_allclose(coef_x0, ho_coef_x0, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(coef_xt, ho_coef_xt, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(var, ho_var, rtol=1e-3, atol=1e-9)


def test_cosine_matches_nichol_dhariwal():
  s = diffusion.get_schedule("cosine")
  f = lambda t: np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  alpha_bar = f(T) / f(0.0)
  np.testing.assert_allclose(_np(s.alpha(T)) ** 2, alpha_bar, rtol=1e-5)
  np.testing.assert_allclose(_np(s.sigma(T)) ** 2, 1.0 - alpha_bar, rtol=1e-4)
  assert float(s.sigma(0.0)) == 0.0
  assert float(s.logsnr(1.0)) == pytest.approx(-20.0)  # floored, so alpha(1) > 0


def test_vp_matches_song_et_al():
  s = diffusion.get_schedule("vp", beta_min=0.1, beta_max=20.0)
  log_mean_coeff = -0.25 * T**2 * (20.0 - 0.1) - 0.5 * T * 0.1  # score_sde's VPSDE
  np.testing.assert_allclose(_np(s.alpha(T)), np.exp(log_mean_coeff), rtol=1e-5)
  np.testing.assert_allclose(_np(s.sigma(T)), np.sqrt(1 - np.exp(2 * log_mean_coeff)), rtol=1e-5)
  assert s.t_min == pytest.approx(1e-3)


def test_edm_uniform_grid_is_karras_rho_spacing():
  s = diffusion.get_schedule("edm")
  grid = diffusion.time_grid(s, 18)
  i = np.arange(18)
  lo, hi = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
  karras = (hi + i / 17 * (lo - hi)) ** 7  # EDM eq. 5, then t_N = 0
  np.testing.assert_allclose(_np(grid.sigma[:-1]), karras, rtol=2e-5)
  assert float(grid.sigma[-1]) == 0.0 and grid.clean_end
  np.testing.assert_allclose(_np(grid.alpha), 1.0)


def test_ve_and_flow_formulas():
  ve = diffusion.get_schedule("ve", sigma_min=0.01, sigma_max=50.0)
  np.testing.assert_allclose(_np(ve.sigma(T)), 0.01 * (50.0 / 0.01) ** T, rtol=1e-5)
  flow = diffusion.get_schedule("flow")
  np.testing.assert_allclose(_np(flow.alpha(T)), 1 - T, rtol=1e-6)
  np.testing.assert_allclose(_np(flow.sigma(T)), T, rtol=1e-6)


@pytest.mark.parametrize("name", diffusion.schedule_names())
def test_logsnr_consistent_and_invertible(name):
  s = diffusion.get_schedule(name)
  alpha, sigma = (_np(v) for v in s.alpha_sigma(T))
  np.testing.assert_allclose(_np(s.logsnr(T)), np.log(alpha**2 / sigma**2), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(_np(s.t_from_logsnr(s.logsnr(T))), T, atol=2e-5)
  assert np.all(np.diff(_np(s.logsnr(T))) < 0), "log-SNR must decrease with t"


@pytest.mark.parametrize("name", diffusion.schedule_names())
def test_derivatives_match_finite_differences(name):
  s = diffusion.get_schedule(name)
  t = np.linspace(0.1, 0.9, 9)
  h = 1e-3
  d_alpha, d_sigma = (_np(v) for v in s.alpha_sigma_derivatives(t))
  fd_alpha = (_np(s.alpha(t + h)) - _np(s.alpha(t - h))) / (2 * h)
  fd_sigma = (_np(s.sigma(t + h)) - _np(s.sigma(t - h))) / (2 * h)
  # The linear schedule is piecewise linear in log(alpha_bar): compare at the cell level.
  tol = 2e-2 if name == "linear" else 5e-3
  np.testing.assert_allclose(d_alpha, fd_alpha, rtol=tol, atol=tol * np.abs(fd_alpha).max())
  np.testing.assert_allclose(d_sigma, fd_sigma, rtol=tol, atol=tol * np.abs(fd_sigma).max())


def test_schedules_are_jittable_and_hashable():
  s = diffusion.get_schedule("cosine")
  f = jax.jit(lambda t, sched: sched.logsnr(t), static_argnums=1)
  np.testing.assert_allclose(f(jnp.asarray(T), s), s.logsnr(T), rtol=1e-5, atol=1e-5)
  assert hash(s) == hash(diffusion.get_schedule("cosine"))


def test_bad_schedule_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="unknown schedule 'cosin'; allowed: .*cosine"):
    diffusion.get_schedule("cosin")
  with pytest.raises(ValueError, match=r"unknown argument\(s\) \['sigma_mx'\]"):
    diffusion.get_schedule("edm", sigma_mx=3.0)
  with pytest.raises(ValueError, match="sigma_min < sigma_max"):
    diffusion.get_schedule("edm", sigma_min=1.0, sigma_max=0.5)
  with pytest.raises(ValueError, match="beta_start"):
    diffusion.get_schedule("linear", beta_start=-1.0)


def test_interp_matches_numpy_without_a_while_loop():
  """The schedules' interpolation: np.interp's values (inside, on and outside the sample points,
  on increasing non-uniform points), and no while loop in the compiled program (on GPU each
  bisection round of jnp.interp waits for the device)."""
  from diffjax.diffusion.schedules import interp
  rng = np.random.default_rng(0)
  xp = np.sort(rng.uniform(-2.0, 3.0, 41))
  fp = rng.normal(size=41)
  x = np.concatenate([rng.uniform(-3.0, 4.0, 500), xp, [xp[0] - 1.0, xp[-1] + 1.0]])
  np.testing.assert_allclose(interp(x, xp, fp), np.interp(x, xp, fp), rtol=1e-5, atol=1e-5)
  hlo = jax.jit(lambda x: interp(x, xp, fp)).lower(jnp.asarray(x, jnp.float32)).as_text()
  assert "while" not in hlo


def test_linear_schedule_interpolates_its_table_like_numpy():
  s = diffusion.get_schedule("linear")
  t = np.concatenate([np.random.default_rng(1).uniform(0.0, 1.0, 300), [0.0, 0.5, 1.0]])
  table = np.concatenate([[0.0], np.cumsum(np.log1p(-s.betas))])
  expected = np.exp(0.5 * np.interp(t, np.linspace(0.0, 1.0, 1001), table))
  np.testing.assert_allclose(_np(s.alpha(t)), expected, rtol=2e-6, atol=1e-7)
