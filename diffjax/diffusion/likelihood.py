"""Likelihoods of a denoiser: the probability-flow ODE and DDPM's variational bound.

* `ode_log_likelihood`: ``log p(x)`` by integrating the PF-ODE
  ``dx/dt = alpha' x0_hat + sigma' eps_hat`` from ``t_min`` to ``t_max`` together with
  ``d log p / dt = -div f`` (Chen et al. 2018; Song et al. 2021), with an adaptive solver
  (diffrax, Tsit5) and Hutchinson's trace estimator (or the exact trace for small inputs).
* `ddpm_vlb`: the discrete-time variational bound of Ho et al. 2020 on a discrete schedule
  (prior KL, one posterior KL per step, discretised Gaussian decoder), in nats per example.
* `bits_per_dim`: converts a log-density of data scaled from 8 bits to [-1, 1] into bits/dim.
"""

from __future__ import annotations

import math
from typing import Callable

import diffrax
import jax
import jax.numpy as jnp

from diffjax.diffusion.schedules import Schedule

BIN_WIDTH_8BIT = 2.0 / 255.0  # spacing of uint8 values mapped by x / 127.5 - 1


def bits_per_dim(log_likelihood, num_dims: int, bin_width: float = BIN_WIDTH_8BIT):
  """Bits per dimension of discrete data from a continuous log-density of dequantised data.

  ``-(log p(x) + D log(bin_width)) / (D ln 2)``: the density integrated over one bin per
  dimension (uniform dequantisation gives a lower bound on the discrete likelihood).
  """
  return -(log_likelihood + num_dims * math.log(bin_width)) / (num_dims * math.log(2.0))


def _flat_sum(x):
  return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def ode_log_likelihood(denoise_fn: Callable, schedule: Schedule, x, rng, *,
                       t_min: float | None = None, t_max: float | None = None,
                       rtol: float = 1e-5, atol: float = 1e-5, num_probes: int = 1,
                       exact_trace: bool = False, max_steps: int = 4096):
  """``log p(x)`` under the PF-ODE of a denoiser.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> x0_hat`` with ``t`` of shape [batch].
    schedule: the noise schedule.
    x: data [batch, ...], taken as the state at ``t_min``.
    rng: PRNG key for the Hutchinson probes (Rademacher).
    t_min, t_max: integration range (default: 1e-5 and ``schedule.t_max``). The prior at
      ``t_max`` is ``N(0, sigma(t_max)^2 I)``.
    rtol, atol: tolerances of the adaptive solver.
    num_probes: Hutchinson probes averaged per evaluation.
    exact_trace: use the exact divergence (one Jacobian column per dimension; small x only).
    max_steps: solver step limit.

  Returns:
    ``(log_p [batch], info)`` with ``info["nfe"]`` the number of drift evaluations.
  """
  t_min = 1e-5 if t_min is None else float(t_min)
  t_max = float(schedule.t_max if t_max is None else t_max)
  batch = x.shape[0]
  dims = math.prod(x.shape[1:])
  probes = jax.random.rademacher(rng, (num_probes, *x.shape), jnp.float32)

  def drift(t, x):
    tt = jnp.full((batch,), t, jnp.float32)
    d = denoise_fn(x, tt)
    alpha, sigma = schedule.alpha_sigma(t)
    d_alpha, d_sigma = schedule.alpha_sigma_derivatives(t)
    return d_alpha * d + d_sigma * (x - alpha * d) / sigma

  def divergence(t, x):
    if exact_trace:
      flat = x.reshape(batch, dims)
      f = lambda v: drift(t, v.reshape(x.shape)).reshape(batch, dims)
      basis = jnp.eye(dims, dtype=x.dtype)
      cols = jax.vmap(lambda e: jax.jvp(f, (flat,), (jnp.broadcast_to(e, flat.shape),))[1])(
          basis)  # [dims, batch, dims]: column i of every example's Jacobian
      return drift(t, x), jnp.einsum("ibi->b", cols)
    fx, jvps = jax.vmap(lambda e: jax.jvp(lambda v: drift(t, v), (x,), (e,)),
                        out_axes=(None, 0))(probes)
    return fx, jnp.mean(jax.vmap(lambda e, j: _flat_sum(e * j))(probes, jvps), axis=0)

  def vector_field(t, y, args):
    del args
    fx, div = divergence(t, y[0])
    return fx, div

  term = diffrax.ODETerm(vector_field)
  solution = diffrax.diffeqsolve(
      term, diffrax.Tsit5(), t0=t_min, t1=t_max, dt0=None,
      y0=(jnp.asarray(x, jnp.float32), jnp.zeros((batch,), jnp.float32)),
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps)
  x_end, integral = (y[-1] for y in solution.ys)
  sigma_end = schedule.sigma(t_max)
  prior = -0.5 * (_flat_sum(x_end**2) / sigma_end**2 +
                  dims * jnp.log(2 * math.pi * sigma_end**2))
  return prior + integral, {"nfe": solution.stats["num_steps"] * 6}


def _normal_cdf(x):
  return 0.5 * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x, mean, log_scale, bin_half_width: float = 1 / 255):
  """log P(x) of 8-bit data in [-1, 1] under N(mean, exp(log_scale)^2) integrated over each
  value's bin; the edge bins extend to -inf / +inf (Ho et al. 2020)."""
  inv = jnp.exp(-log_scale)
  upper = _normal_cdf((x - mean + bin_half_width) * inv)
  lower = _normal_cdf((x - mean - bin_half_width) * inv)
  prob = jnp.where(x < -0.999, upper, jnp.where(x > 0.999, 1.0 - lower, upper - lower))
  return jnp.log(jnp.maximum(prob, 1e-12))


def gaussian_kl(mean1, var1, mean2, var2):
  """KL(N(mean1, var1) || N(mean2, var2)) elementwise."""
  return 0.5 * (jnp.log(var2) - jnp.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def ddpm_vlb(denoise_fn: Callable, schedule: Schedule, x0, rng, *, variance: str = "small"):
  """The variational bound ``-log p(x0) <= L_T + sum_{n>1} L_{n-1} + L_0`` (nats).

  Needs a discrete schedule (``schedule.num_timesteps``). Reverse-step variances are the
  posterior's (``"small"``) or beta_n (``"large"``); the decoder variance is beta_1.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> x0_hat``.
    schedule: a discrete schedule (e.g. "linear").
    x0: 8-bit data scaled to [-1, 1], [batch, ...].
    rng: PRNG key for the noise of each term.
    variance: ``"small"`` or ``"large"``.

  Returns:
    ``(total [batch], {"prior": [batch], "decoder": [batch], "terms": [N - 1, batch]})``.
  """
  n = schedule.num_timesteps
  if n is None:
    raise ValueError(f"ddpm_vlb needs a discrete schedule, got {schedule.name!r}")
  if variance not in ("small", "large"):
    raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
  batch = x0.shape[0]
  x0 = jnp.asarray(x0, jnp.float32)
  t = jnp.arange(1, n + 1, dtype=jnp.float32) / n
  alpha, sigma = schedule.alpha_sigma(t)
  logsnr = schedule.logsnr(t)
  a_last, s_last = alpha[-1], sigma[-1]
  prior = _flat_sum(gaussian_kl(a_last * x0, s_last**2, 0.0, 1.0))
  keys = jax.random.split(rng, n)

  def term(k):  # KL for the step from index k (time t_k, 1-based k >= 2) to k - 1
    ac, sc, lc = alpha[k - 1], sigma[k - 1], logsnr[k - 1]
    an, sn, ln = alpha[k - 2], sigma[k - 2], logsnr[k - 2]
    eps = jax.random.normal(keys[k - 1], x0.shape)
    x_t = ac * x0 + sc * eps
    d = denoise_fn(x_t, jnp.full((batch,), t[k - 1]))
    frac = -jnp.expm1(lc - ln)
    coef_x = (ac / an) * (sn / sc) ** 2
    coef_d = an * frac
    post_var = sn**2 * frac
    model_var = post_var if variance == "small" else sc**2 * frac
    kl = gaussian_kl(coef_x * x_t + coef_d * x0, post_var, coef_x * x_t + coef_d * d, model_var)
    return _flat_sum(kl)

  terms = jax.lax.map(term, jnp.arange(2, n + 1))
  # Decoder p(x0 | x_1): mean x0_hat(x_1), variance beta_1 = sigma_1^2.
  eps = jax.random.normal(keys[0], x0.shape)
  x1 = alpha[0] * x0 + sigma[0] * eps
  d = denoise_fn(x1, jnp.full((batch,), t[0]))
  decoder = -_flat_sum(discretized_gaussian_log_likelihood(x0, d, jnp.log(sigma[0])))
  total = prior + jnp.sum(terms, axis=0) + decoder
  return total, {"prior": prior, "decoder": decoder, "terms": terms}
