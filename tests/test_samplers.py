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
    ("ddim", "cosine", 250, ()),
    ("ddim", "cosine", 250, (("eta", 1.0),)),
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


def _ode_error(sampler, schedule, num_steps, options=()):
  """Max abs error of a deterministic sampler against the exact PF-ODE solution."""
  n = 512
  grid = diffusion.time_grid(schedule, num_steps, **dict(options))
  x_init = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (n, 3))) * float(grid.sigma[0])
  out = diffusion.sample(exact_denoiser(schedule), schedule, (n, 3), jax.random.PRNGKey(1),
                         sampler, num_steps, x_init=jnp.asarray(x_init, jnp.float32),
                         **dict(options))
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
  np.testing.assert_allclose(_sample(rng, s, (256, 3), "flow_euler", 10),
                             _sample(rng, s, (256, 3), "ddim", 10), atol=2e-5)


def test_euler_without_churn_is_ddim():
  s = diffusion.get_schedule("vp")
  rng = jax.random.PRNGKey(6)
  np.testing.assert_allclose(_sample(rng, s, (256, 3), "euler", 12),
                             _sample(rng, s, (256, 3), "ddim", 12), atol=2e-5)


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
