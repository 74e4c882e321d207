"""Every sampler against closed forms for Gaussian data (see gaussian_reference.py).

* Moments: with the exact denoiser each sampler's samples, whitened by the target covariance,
  must have mean 0 and covariance I within 4.5 Monte-Carlo standard errors. The step counts
  below are where each sampler's discretisation bias on this Gaussian falls under that error
  (first-order samplers need a few hundred steps for that; at 50 steps DDIM's covariance is off
  by about 7%, which the convergence tests quantify).
* Convergence order: deterministic samplers against the exact probability-flow ODE solution;
  the error must fall as N^-1 (Euler, DDIM) or N^-2 (Heun, DPM-Solver++(2M)).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import diffusion
from gaussian_reference import Gaussian

GAUSS = Gaussian(dim=3, seed=0)


def exact_denoiser(schedule):
  return lambda x, t: GAUSS.denoiser(x, *schedule.alpha_sigma(t))


@functools.partial(jax.jit, static_argnames=("schedule", "shape", "sampler", "num_steps",
                                              "options"))
def _sample(rng, schedule, shape, sampler, num_steps, options=()):
  return diffusion.sample(exact_denoiser(schedule), schedule, shape, rng, sampler, num_steps,
                          **dict(options))


MOMENT_CASES = [
    ("ddpm", "linear", 1000, ()),
    ("ddpm", "linear", 1000, (("variance", "large"),)),
    ("ddim", "cosine", 250, (("spacing", "uniform"),)),
    ("ddim", "cosine", 250, (("eta", 1.0), ("spacing", "uniform"))),
    ("euler", "edm", 250, ()),
    ("heun", "edm", 64, ()),
    ("heun", "edm", 128, (("s_churn", 40.0), ("s_tmin", 0.05), ("s_tmax", 50.0))),
    ("dpmpp_2m", "vp", 50, (("spacing", "logsnr"),)),
    ("flow_euler", "flow", 250, ()),
    ("flow_heun", "flow", 50, ()),
    ("heun", "flow", 50, ()),
]


@pytest.mark.parametrize("sampler,schedule_name,steps,options", MOMENT_CASES)
def test_sampler_moments_match_gaussian_target(sampler, schedule_name, steps, options):
  n = 16384
  schedule = diffusion.get_schedule(schedule_name)
  x = _sample(jax.random.PRNGKey(1), schedule, (n, 3), sampler, steps, options)
  z = GAUSS.whiten(np.asarray(x))
  assert np.all(np.isfinite(z))
  se_mean, se_cov = 1 / np.sqrt(n), np.sqrt(2 / n)
  # EDM-style starts use x = sigma_max * eps, ignoring the data mean: a bias of ~mu / sigma_max.
  assert np.abs(z.mean(0)).max() < 4.5 * se_mean + 0.01, z.mean(0)
  assert np.abs(np.cov(z.T) - np.eye(3)).max() < 4.5 * se_cov, np.cov(z.T)


# --- every sampler on every schedule, at the step counts people use ----------------------------
HARD = Gaussian(dim=3, seed=0)
HARD.lam = np.array([0.01, 0.1, 1.0])  # a direction of std 0.1, as images have
HARD.cov = (HARD.u * HARD.lam) @ HARD.u.T
NOISE_RANGE = 2 * np.log(80 / 0.002)  # log-SNR range of the noise-space grids
ERROR_CONSTANT = {1: 0.25, 2: 0.1, 3: 0.05}  # one constant per order, every method alike
N_HARD = 4096
# (sampler, steps, order of its error); SDE samplers and the Langevin corrector: first order.
MATRIX = [("ddpm", 250, 1), ("ddim", 50, 1), ("euler", 100, 1), ("heun", 18, 2),
          ("dpmpp_2m", 10, 2), ("dpmpp_3m", 20, 2), ("unipc", 10, 3),
          ("dpmpp_2m_sde", 50, 1), ("dpmpp_3m_sde", 50, 1), ("pc", 250, 1), ("ode", 10, 3)]
SCHEDULES = ("linear", "cosine", "vp", "edm", "ve", "flow")


@functools.partial(jax.jit, static_argnames=("schedule", "sampler", "num_steps", "spacing"))
def _hard_sample(rng, schedule, sampler, num_steps, spacing="auto"):
  denoise = lambda x, t: HARD.denoiser(x, *schedule.alpha_sigma(t))
  return diffusion.sample(denoise, schedule, (N_HARD, 3), rng, sampler, num_steps,
                          spacing=spacing)


def _covariance_error(schedule, sampler, steps, spacing="auto"):
  x = np.asarray(_hard_sample(jax.random.PRNGKey(1), schedule, sampler, steps, spacing))
  return np.abs(np.cov(HARD.whiten(x).T) - np.eye(3)).max()


def _tolerance(steps, order):
  """4.5 Monte-Carlo standard errors plus the method's discretisation error, C_p h^p with h the
  mean log-SNR step over the noise range (ode: adaptive, counted as third order)."""
  return 4.5 * np.sqrt(2 / N_HARD) + ERROR_CONSTANT[order] * (NOISE_RANGE / steps) ** order


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_every_sampler_is_right_on_every_schedule(schedule_name):
  """With each sampler's default grid, the whitened covariance of its samples is the identity
  within the tolerance of its order; on today's uniform grid Heun at 18 steps on the cosine
  schedule gave variances 67 times too large, and DPM-Solver++(2M) at 10 steps lost 75% of the
  small direction's variance (both fail these tolerances: see the next test)."""
  schedule = diffusion.get_schedule(schedule_name)
  cases = MATRIX + ([("flow_euler", 50, 1), ("flow_heun", 18, 2)]
                    if schedule_name == "flow" else [])
  errors = {(s, n): _covariance_error(schedule, s, n) for s, n, _ in cases}
  failed = {k: round(e, 3) for (k, e), (_, n, p) in zip(errors.items(), cases)
            if not e < _tolerance(n, p)}
  assert not failed, failed


def test_the_former_grids_fail_the_same_tolerance():
  cosine = diffusion.get_schedule("cosine")
  assert _covariance_error(cosine, "heun", 18, "uniform") > 10 * _tolerance(18, 2)
  assert _covariance_error(cosine, "dpmpp_2m", 10, "uniform") > _tolerance(10, 2)


def test_default_grids_and_refused_combinations():
  cosine, flow, ddpm = (diffusion.get_schedule(n) for n in ("cosine", "flow", "linear"))
  assert [diffusion.default_spacing(s, cosine) for s in ("heun", "euler", "dpmpp_3m", "unipc",
                                                         "ddim", "ddpm", "flow_euler")] == [
      "edm", "edm", "logsnr", "logsnr", "logsnr", "logsnr", "edm"]
  assert diffusion.default_spacing("ddpm", ddpm, 1000) == "uniform"  # DDPM's chain itself
  assert diffusion.default_spacing("ddpm", ddpm, 250) == "logsnr"
  grid = diffusion.time_grid(cosine, 18, "edm")  # EDM's range whatever alpha(1) is
  np.testing.assert_allclose(float(grid.sigma[0] / grid.alpha[0]), 80.0, rtol=1e-3)
  np.testing.assert_allclose(float(grid.sigma[-2] / grid.alpha[-2]), 0.002, rtol=1e-3)
  assert grid.clean_end and float(grid.sigma[-1]) == 0.0
  denoise = lambda x, t: x
  with pytest.raises(ValueError, match="'flow_euler' integrates the velocity in t.*on 'cosine' "
                                       "use 'euler' or 'heun'"):
    diffusion.sample(denoise, cosine, (2, 3), jax.random.PRNGKey(0), "flow_euler", 10)
  diffusion.sample(denoise, flow, (2, 3), jax.random.PRNGKey(0), "flow_euler", 10)
  with pytest.raises(ValueError, match="needs a grid that ends at a noise level > 0"):
    diffusion.sample(denoise, ddpm, (2, 3), jax.random.PRNGKey(0), "ode", 10, spacing="uniform")


def test_evaluation_counts():
  edm = diffusion.get_schedule("edm")
  denoise = lambda x, t: HARD.denoiser(x, *edm.alpha_sigma(t))
  counts = {s: int(diffusion.sample(denoise, edm, (4, 3), jax.random.PRNGKey(0), s, 18,
                                    return_nfe=True)[1]) for s in ("heun", "dpmpp_3m", "unipc")}
  assert counts == {"heun": 35, "dpmpp_3m": 18, "unipc": 18}
  _, nfe = diffusion.sample(denoise, edm, (4, 3), jax.random.PRNGKey(0), "pc", 10,
                            corrector_steps=2, return_nfe=True)
  assert int(nfe) == 30
  _, loose = diffusion.sample(denoise, edm, (4, 3), jax.random.PRNGKey(0), "ode", 10,
                              rtol=1e-3, atol=1e-3, return_nfe=True)
  _, tight = diffusion.sample(denoise, edm, (4, 3), jax.random.PRNGKey(0), "ode", 10,
                              rtol=1e-6, atol=1e-6, return_nfe=True)
  assert 8 <= int(loose) < int(tight)  # adaptive: a tighter tolerance takes more steps


def _ode_error(sampler, schedule, num_steps, options=()):
  """Max abs error of a deterministic sampler against the exact PF-ODE solution."""
  n = 512
  options = dict(options)
  spacing = options.pop("spacing", diffusion.default_spacing(sampler, schedule, num_steps))
  grid = diffusion.time_grid(schedule, num_steps, spacing)
  x_init = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (n, 3))) * float(grid.sigma[0])
  out = diffusion.sample(exact_denoiser(schedule), schedule, (n, 3), jax.random.PRNGKey(1),
                         sampler, num_steps, x_init=jnp.asarray(x_init, jnp.float32),
                         spacing=spacing, **options)
  a0, s0 = float(grid.alpha[0]), float(grid.sigma[0])
  if grid.clean_end:  # exact ODE to the last noisy point, then the final denoising jump
    a1, s1 = float(grid.alpha[-2]), float(grid.sigma[-2])
    end = GAUSS.ode_solution(x_init, a0, s0, a1, s1)
    exact = np.asarray(GAUSS.denoiser(end, np.full(n, a1), np.full(n, s1)))
  else:
    exact = GAUSS.ode_solution(x_init, a0, s0, 1.0, 0.0)
  return np.abs(np.asarray(out, np.float64) - exact).max()


ORDER_CASES = [
    ("ddim", "cosine", (), 1, (32, 64, 128)),
    ("euler", "edm", (), 1, (32, 64, 128)),
    ("flow_euler", "flow", (), 1, (32, 64, 128)),
    ("heun", "edm", (), 2, (16, 32, 64)),
    ("flow_heun", "flow", (), 2, (8, 16, 32)),
    ("dpmpp_2m", "vp", (("spacing", "logsnr"),), 2, (16, 32, 64)),
    # Steps of unequal length in log-SNR: the multistep ratio h / h_prev matters (on the
    # uniform log-SNR grid it is 1).
    ("dpmpp_2m", "vp", (("spacing", "edm"),), 2, (16, 32, 64)),
    # Multistep warm-up (first- then second-order steps) bounds 3M's global order by 2 here.
    ("dpmpp_3m", "vp", (), 2, (16, 32, 64)),
    ("unipc", "vp", (), 3, (16, 32, 64)),  # UniP-2 + UniC: third order
    ("unipc", "cosine", (("order", 3),), 3, (8, 16, 32)),  # at 64: float32's floor
    ("heun", "cosine", (), 2, (16, 32, 64)),  # on its default (EDM) grid
]


@pytest.mark.parametrize("sampler,schedule_name,options,order,steps", ORDER_CASES)
def test_deterministic_sampler_convergence_order(sampler, schedule_name, options, order, steps):
  schedule = diffusion.get_schedule(schedule_name)
  errors = np.array([_ode_error(sampler, schedule, n, options) for n in steps])
  rates = np.log2(errors[:-1] / errors[1:])
  assert np.all(rates > order - 0.25), (errors, rates)


def test_ddim_eta_one_is_ddpm_ancestral():
  s = diffusion.get_schedule("cosine")
  rng = jax.random.PRNGKey(4)
  a = _sample(rng, s, (256, 3), "ddpm", 20)
  b = _sample(rng, s, (256, 3), "ddim", 20, (("eta", 1.0),))
  np.testing.assert_allclose(a, b, atol=2e-5)


def test_flow_euler_equals_ddim_on_the_flow_schedule():
  s = diffusion.get_schedule("flow")
  rng = jax.random.PRNGKey(5)
  uniform = (("spacing", "uniform"),)
  np.testing.assert_allclose(_sample(rng, s, (256, 3), "flow_euler", 10, uniform),
                             _sample(rng, s, (256, 3), "ddim", 10, uniform), atol=2e-5)


def test_euler_without_churn_is_ddim():
  s = diffusion.get_schedule("vp")
  rng = jax.random.PRNGKey(6)
  for grid in ("uniform", "edm"):  # on the same grid (their default grids differ)
    np.testing.assert_allclose(_sample(rng, s, (256, 3), "euler", 12, (("spacing", grid),)),
                               _sample(rng, s, (256, 3), "ddim", 12, (("spacing", grid),)),
                               atol=2e-5)


def test_heun_uses_two_n_minus_one_evaluations():
  calls = []

  def counting(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return jnp.zeros_like(x)

  s = diffusion.get_schedule("edm")
  jax.block_until_ready(diffusion.sample(counting, s, (2, 3), jax.random.PRNGKey(0), "heun", 18))
  jax.effects_barrier()
  assert len(calls) == 35  # EDM: 18 steps, 35 NFE


def _two_gaussian_denoisers():
  """Conditional (mean +1) and unconditional (mean 0) isotropic unit Gaussians."""

  def denoise(x, t, cond):
    s = diffusion.get_schedule("cosine")
    alpha, sigma = (v[:, None] for v in s.alpha_sigma(t))
    mu = jnp.where(cond[:, None] == 1, 1.0, 0.0)
    return mu + alpha / (alpha**2 + sigma**2) * (x - alpha * mu)

  return denoise


def test_classifier_free_guidance_is_linear_extrapolation():
  denoise = _two_gaussian_denoisers()
  s = diffusion.get_schedule("cosine")
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
  t = jnp.linspace(0.1, 0.9, 8)
  cond = jnp.ones(8, jnp.int32)
  d_c, d_u = denoise(x, t, cond), denoise(x, t, jnp.zeros(8, jnp.int32))
  for w in (0.0, 1.0, 3.0):
    guided = diffusion.classifier_free_guidance(denoise, w, 0)
    np.testing.assert_allclose(guided(x, t, cond), d_u + w * (d_c - d_u), atol=1e-6)
  # Inside (0.5, 2] in sigma / alpha the guided value, outside the conditional one.
  guided = diffusion.classifier_free_guidance(denoise, 3.0, 0, interval=(0.5, 2.0), schedule=s)
  level = np.asarray(s.sigma_tilde(t))
  inside = (level > 0.5) & (level <= 2.0)
  assert inside.any() and (~inside).any()
  expected = np.where(inside[:, None], d_u + 3.0 * (d_c - d_u), d_c)
  np.testing.assert_allclose(guided(x, t, cond), expected, atol=1e-6)


def test_guided_sampling_through_sample_shifts_the_mean():
  s = diffusion.get_schedule("cosine")
  cond = jnp.ones(4096, jnp.int32)
  out = diffusion.sample(_two_gaussian_denoisers(), s, (4096, 2), jax.random.PRNGKey(0),
                         "ddim", 50, cond=cond, null_cond=0, guidance_scale=2.0)
  # Guidance 2 on these means moves the samples' mean well past the conditional mean of 1.
  assert float(jnp.mean(out)) > 1.3


def test_cfg_rescale_and_autoguidance_against_their_formulas():
  """On Gaussians with closed-form denoisers: the rescaled guided prediction has the
  conditional one's per-example standard deviation at phi = 1 (Lin et al. 2024, Alg. 2), the
  unrescaled one at phi = 0; autoguidance by a weaker model (a wider Gaussian of the same mean,
  Karras et al. 2024) is D_guide + w (D - D_guide) and, sampled, pulls the samples towards the
  main model's mean and shrinks their spread below the main model's."""
  denoise = _two_gaussian_denoisers()
  s = diffusion.get_schedule("cosine")
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 16))
  t = jnp.linspace(0.1, 0.9, 8)
  cond = jnp.ones(8, jnp.int32)
  d_c, d_u = np.asarray(denoise(x, t, cond)), np.asarray(denoise(x, t, jnp.zeros(8, jnp.int32)))
  plain = d_u + 4.0 * (d_c - d_u)
  for phi in (0.0, 0.7, 1.0):
    factor = d_c.std(axis=1, keepdims=True) / plain.std(axis=1, keepdims=True)
    expected = plain * (phi * factor + 1 - phi)
    got = diffusion.classifier_free_guidance(denoise, 4.0, 0, rescale=phi)(x, t, cond)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      np.asarray(diffusion.classifier_free_guidance(denoise, 4.0, 0, rescale=1.0)(
          x, t, cond)).std(axis=1), d_c.std(axis=1), rtol=1e-5)

  def gaussian(mean, var):  # exact denoiser of N(mean, var I)
    def d(x, t, cond):
      alpha, sigma = (v[:, None] for v in s.alpha_sigma(t))
      return mean + alpha * var / (alpha**2 * var + sigma**2) * (x - alpha * mean)
    return d

  main, weak = gaussian(1.0, 1.0), gaussian(1.0, 4.0)
  guided = diffusion.autoguidance(main, weak, 2.5)
  w_main, w_weak = np.asarray(main(x, t, cond)), np.asarray(weak(x, t, cond))
  np.testing.assert_allclose(guided(x, t, cond), w_weak + 2.5 * (w_main - w_weak), rtol=1e-5)
  n = 4096
  c = jnp.ones(n, jnp.int32)
  plain_x = diffusion.sample(main, s, (n, 2), jax.random.PRNGKey(3), "ddim", 100, cond=c)
  ag_x = diffusion.sample(main, s, (n, 2), jax.random.PRNGKey(3), "ddim", 100, cond=c,
                          guide_fn=weak, guidance_scale=2.5)
  assert abs(float(jnp.mean(ag_x)) - 1.0) < 0.05 and abs(float(jnp.mean(plain_x)) - 1.0) < 0.05
  assert float(jnp.std(ag_x)) < 0.9 * float(jnp.std(plain_x))


def test_sample_is_jittable_with_parameters_as_arguments():
  s = diffusion.get_schedule("edm")

  @jax.jit
  def run(scale, rng):
    return diffusion.sample(lambda x, t: scale * x / (1 + s.sigma(t)[:, None] ** 2), s, (4, 3),
                            rng, "heun", 8)

  out = run(jnp.float32(1.0), jax.random.PRNGKey(0))
  assert out.shape == (4, 3) and np.all(np.isfinite(out))


@pytest.mark.parametrize("kwargs,match", [
    ({"sampler": "dpm++"}, "unknown sampler 'dpm\\+\\+'; allowed: ddpm, ddim"),
    ({"num_steps": 0}, "num_steps must be an integer >= 1, got 0"),
    ({"num_steps": 2.5}, "num_steps must be an integer >= 1"),
    ({"sampler": "ddim", "churn": 1.0}, "sampler 'ddim' got unknown option\\(s\\) \\['churn'\\]"),
    ({"spacing": "log"}, "unknown spacing 'log'"),
    ({"shape": (0, 3)}, "shape must be a non-empty tuple of positive integers"),
    ({"guidance_scale": 2.0}, "guidance_scale needs both cond and null_cond"),
])
def test_bad_sample_arguments_raise_value_errors(kwargs, match):
  args = {"sampler": "ddim", "num_steps": 4, "shape": (2, 3), **kwargs}
  s = diffusion.get_schedule("cosine")
  with pytest.raises(ValueError, match=match):
    diffusion.sample(lambda x, t: x, s, args.pop("shape"), jax.random.PRNGKey(0), **args)


def test_denoiser_with_wrong_output_shape_is_reported():
  s = diffusion.get_schedule("cosine")
  with pytest.raises(ValueError, match=r"denoise_fn returned shape \(2, 4\) for input shape"):
    diffusion.sample(lambda x, t: jnp.zeros((2, 4)), s, (2, 3), jax.random.PRNGKey(0))


# --- variances and grids against the papers' formulas (issue 34) ------------------------------
DDPM_BETAS = np.linspace(1e-4, 0.02, 1000)  # Ho et al. 2020, Sec. 4
DDPM_ALPHA_BAR = np.concatenate([[1.0], np.cumprod(1 - DDPM_BETAS)])  # index n: after n steps


def _ddpm_variance_reference(num_steps, variance, v):
  """Variance of DDPM's ancestral samples of N(0, v) data with the exact (linear) denoiser
  ``x0_hat = k x_t``, respaced to ``num_steps`` uniform jumps t -> s of the 1000-step chain:
  ``x_s = (c_xt + c_x0 k) x_t + sqrt(var) z`` with Ho et al.'s posterior coefficients (eq. 7),
  ``var`` = beta-tilde ("small") or beta = 1 - alpha_bar_t / alpha_bar_s ("large", no noise
  on the last step)."""
  ab = DDPM_ALPHA_BAR
  idx = np.linspace(1000, 0, num_steps + 1).round().astype(int)
  var_x = 1 - ab[1000]  # x_T ~ N(0, sigma(1)^2)
  for t, s in zip(idx[:-1], idx[1:]):
    beta = 1 - ab[t] / ab[s]
    k = np.sqrt(ab[t]) * v / (ab[t] * v + 1 - ab[t])
    c_xt = np.sqrt(ab[t] / ab[s]) * (1 - ab[s]) / (1 - ab[t])
    c_x0 = np.sqrt(ab[s]) * beta / (1 - ab[t])
    noise = (beta if variance == "large" else (1 - ab[s]) / (1 - ab[t]) * beta) if s else 0.0
    var_x = (c_xt + c_x0 * k) ** 2 * var_x + noise
  return var_x


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_variances_equal_ho_et_al_on_a_respaced_chain(variance):
  """At 1000 steps the two variances give sample variances 3% apart; on 10 respaced steps 2.5x:
  each must match its own recursion within 4.5 Monte-Carlo standard errors."""
  v, n = 0.1, 20000
  lin = diffusion.get_schedule("linear")

  def denoise(x, t):
    a, s = (u[:, None] for u in lin.alpha_sigma(t))
    return a * v / (a**2 * v + s**2) * x

  x = diffusion.sample(denoise, lin, (n, 1), jax.random.PRNGKey(0), "ddpm", 10,
                       spacing="uniform", variance=variance)
  want = _ddpm_variance_reference(10, variance, v)
  other = _ddpm_variance_reference(10, "large" if variance == "small" else "small", v)
  assert abs(other / want - 1) > 0.5  # the check can tell the two apart
  assert float(np.var(np.asarray(x, np.float64))) == pytest.approx(want,
                                                                   rel=4.5 * np.sqrt(2 / n))


def _karras_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  """Karras et al. 2022, eq. 5: the N noise levels of the rho grid, then sigma_N = 0."""
  i = np.arange(num_steps)
  s = (sigma_max ** (1 / rho) + i / (num_steps - 1) *
       (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  return np.append(s, 0.0)


def test_euler_churn_and_s_noise_variance_equal_karras_algorithm_2():
  """Euler with stochastic churn (Karras et al. 2022, Alg. 2 without the Heun correction) on
  N(0, v) with the exact denoiser: each step raises sigma to (1 + gamma) sigma with fresh noise
  of std s_noise sqrt(sigma_hat^2 - sigma^2), then takes the Euler step. The variance of the
  samples follows a numpy recursion over EDM's grid, for every s_noise."""
  v, n, steps, churn = 0.1, 20000, 8, 40.0
  edm = diffusion.get_schedule("edm")
  denoise = lambda x, t: v / (v + edm.sigma(t)[:, None] ** 2) * x
  sig = _karras_sigmas(steps)
  gamma = min(churn / steps, np.sqrt(2) - 1)
  for s_noise in (0.5, 2.0):
    var_x = sig[0] ** 2
    for s_cur, s_next in zip(sig[:-1], sig[1:]):
      s_hat = s_cur * (1 + gamma)
      k = v / (v + s_hat**2)
      var_x = (k + s_next * (1 - k) / s_hat) ** 2 * (var_x + s_noise**2 * (s_hat**2 - s_cur**2))
    x = diffusion.sample(denoise, edm, (n, 1), jax.random.PRNGKey(0), "euler", steps,
                         s_churn=churn, s_noise=s_noise)
    got = float(np.var(np.asarray(x, np.float64)))
    assert got == pytest.approx(var_x, rel=4.5 * np.sqrt(2 / n)), s_noise


def test_time_grids_equal_their_closed_forms():
  """``edm``: Karras et al.'s eq. 5 in sigma / alpha on any schedule (clipped to [0.002, 80]);
  ``quadratic``: t quadratic in the step index, dense near the data (Song et al., DDIM);
  ``logsnr``: uniform in log-SNR over the same noise range; ``uniform``: uniform in t. A grid
  that stops at a noisy time ends with a jump to clean data."""
  edm, cosine, vp = (diffusion.get_schedule(n) for n in ("edm", "cosine", "vp"))
  for schedule in (edm, cosine):
    grid = diffusion.time_grid(schedule, 18, "edm")
    got = np.asarray(grid.sigma / grid.alpha, np.float64)
    np.testing.assert_allclose(got[:-1], _karras_sigmas(18)[:-1], rtol=2e-4)
    assert grid.clean_end and got[-1] == 0.0
  grid = diffusion.time_grid(edm, 6, "edm", rho=3.0)
  np.testing.assert_allclose(np.asarray(grid.sigma)[:-1], _karras_sigmas(6, rho=3.0)[:-1],
                             rtol=2e-4)
  # cosine: sigma(0) = 0, so N + 1 points from 1 to 0; vp: N points from 1 to eps, then clean.
  i = np.arange(11)
  np.testing.assert_allclose(diffusion.time_grid(cosine, 10, "quadratic").t,
                             (1 - i / 10) ** 2, atol=1e-7)
  np.testing.assert_allclose(diffusion.time_grid(cosine, 10, "uniform").t, 1 - i / 10, atol=1e-7)
  i = np.arange(10)
  quad = diffusion.time_grid(vp, 10, "quadratic")
  np.testing.assert_allclose(quad.t[:-1], 1e-3 + (1 - 1e-3) * (1 - i / 9) ** 2, rtol=1e-6)
  assert quad.clean_end and float(quad.alpha[-1]) == 1.0 and float(quad.sigma[-1]) == 0.0
  lam = np.asarray(diffusion.time_grid(vp, 10, "logsnr").logsnr, np.float64)[:-1]
  lo, hi = -2 * np.log(80.0), min(float(vp.logsnr(1e-3)), -2 * np.log(0.002))
  np.testing.assert_allclose(lam, np.linspace(lo, hi, 10), rtol=1e-4, atol=1e-4)
