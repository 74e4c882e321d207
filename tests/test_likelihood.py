"""Likelihoods against the analytic log-density of Gaussian data (exact denoiser)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import diffusion
from diffjax.diffusion import likelihood
from gaussian_reference import Gaussian

GAUSS = Gaussian(dim=3, seed=0)


def _samples(gauss, n, seed=0):
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, 3)), np.float64)
  return z @ (gauss.u * np.sqrt(gauss.lam)).T + gauss.mu


@pytest.mark.parametrize("exact_trace,num_probes", [(True, 1), (False, 8)])
def test_ode_likelihood_matches_the_analytic_density(exact_trace, num_probes):
  s = diffusion.get_schedule("vp")
  denoise = lambda x, t: GAUSS.denoiser(x, *s.alpha_sigma(t))
  x = _samples(GAUSS, 256)
  logp, info = jax.jit(lambda x, r: likelihood.ode_log_likelihood(
      denoise, s, x, r, exact_trace=exact_trace, num_probes=num_probes))(
          jnp.asarray(x, jnp.float32), jax.random.PRNGKey(1))
  to_bits = lambda lp: -np.asarray(lp) / (3 * np.log(2))
  truth = GAUSS.log_density(x, 1.0, 0.0)
  # The mean over the batch within 0.01 bits/dim (the target) in both modes; with the
  # exact trace every single example is within it too.
  assert abs(to_bits(logp).mean() - to_bits(truth).mean()) < 0.01
  if exact_trace:
    assert np.abs(to_bits(logp) - to_bits(truth)).max() < 0.01
  assert int(info["nfe"]) > 0


def test_bits_per_dim_of_uniform_noise_is_eight():
  # Uniform density on [-1, 1]^D: log p = -D log 2 -> exactly 8 bits per 8-bit dimension
  # (up to the 256/255 bin convention).
  d = 10
  bpd = likelihood.bits_per_dim(-d * np.log(2.0), d)
  assert bpd == pytest.approx(np.log2(255.0))


def test_gaussian_kl_closed_form():
  m1, v1, m2, v2 = 0.3, 0.5, -0.2, 2.0
  expected = np.log(np.sqrt(v2) / np.sqrt(v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5
  assert float(likelihood.gaussian_kl(m1, v1, m2, v2)) == pytest.approx(expected, rel=1e-6)


def test_discretized_gaussian_sums_to_one_over_the_256_values():
  values = jnp.arange(256) / 127.5 - 1.0
  for mean, log_scale in [(0.1, -2.0), (-0.95, -4.0), (0.999, -1.0)]:
    logp = likelihood.discretized_gaussian_log_likelihood(values, mean, log_scale)
    assert float(jnp.sum(jnp.exp(logp))) == pytest.approx(1.0, abs=1e-5)


def test_ddpm_vlb_bounds_the_true_nll_of_quantised_gaussian_data():
  small = Gaussian(dim=3, seed=0)
  small.lam, small.cov, small.mu = small.lam * 0.09, small.cov * 0.09, small.mu * 0.3
  s = diffusion.get_schedule("linear")
  denoise = lambda x, t: small.denoiser(x, *s.alpha_sigma(t))
  x = _samples(small, 512)
  xq = np.clip(np.round((x + 1) * 127.5), 0, 255) / 127.5 - 1
  # The quantised density is the Gaussian's times the bin volume (bins are far below its scale).
  nll_bits = -(small.log_density(xq, 1.0, 0.0) + 3 * np.log(2 / 255)).mean() / (3 * np.log(2))
  bound = {}
  for variance in ("small", "large"):
    total, info = jax.jit(lambda x, r: likelihood.ddpm_vlb(denoise, s, x, r, variance=variance))(
        jnp.asarray(xq, jnp.float32), jax.random.PRNGKey(1))
    bound[variance] = float(np.mean(total)) / (3 * np.log(2))
    assert info["terms"].shape == (999, 512)
  # An upper bound on the NLL (up to Monte-Carlo error); with beta_t variances it is tight.
  assert bound["large"] > nll_bits - 0.02 and bound["large"] - nll_bits < 0.1
  assert bound["small"] > bound["large"]


def test_vlb_needs_a_discrete_schedule():
  with pytest.raises(ValueError, match="needs a discrete schedule"):
    likelihood.ddpm_vlb(lambda x, t: x, diffusion.get_schedule("cosine"), jnp.zeros((1, 3)),
                        jax.random.PRNGKey(0))
