"""Training losses: time samplers, weightings, and the per-example denoising loss.

Every weighting the literature uses is expressed as a weight ``w(t)`` on the x0-space error
``|x0_hat - x0|^2``; a parameterization's native loss ``|F - target|^2`` equals
``s(t)^2 |x0_hat - x0|^2`` (see `Parameterization.output_error_scale`), so the loss actually
computed is ``w(t) / s(t)^2 * |F - target|^2``. ``weighting="simple"`` means the native loss with
weight one: eps-MSE for eps-prediction (Ho et al.), v-MSE, flow-matching MSE, and for EDM
preconditioning exactly EDM's ``lambda(sigma)`` weighting.

Time samplers: ``"uniform"`` on ``[t_eps, 1]`` (on the discrete grid ``{1/N, ..., 1}`` for
discrete schedules such as DDPM's), ``"lognormal"`` (EDM: ``ln(sigma) ~ N(p_mean, p_std^2)``),
and ``"logit_normal"`` (Esser et al. 2024: ``t = sigmoid(N(m, s^2))``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import NetFn, Parameterization
from diffjax.diffusion.schedules import Schedule
from diffjax.registry import Registry

WEIGHTINGS = ("simple", "x0", "snr", "min_snr", "edm")
T_SAMPLERS = ("uniform", "lognormal", "logit_normal")

def _uniform(rng, batch_size, schedule, *, t_eps, discrete):
  if discrete is None:
    discrete = schedule.num_timesteps is not None
  if discrete:
    n = schedule.num_timesteps
    if n is None:
      raise ValueError(f"discrete=True needs a discrete schedule; {schedule.name!r} is not")
    return jax.random.randint(rng, (batch_size,), 1, n + 1).astype(jnp.float32) / n
  return jax.random.uniform(rng, (batch_size,), minval=t_eps, maxval=1.0)


def _lognormal(rng, batch_size, schedule, *, p_mean, p_std):
  log_sigma = p_mean + p_std * jax.random.normal(rng, (batch_size,))
  return schedule.t_from_logsnr(-2.0 * log_sigma)


def _logit_normal(rng, batch_size, schedule, *, m, s):
  del schedule
  return jax.nn.sigmoid(m + s * jax.random.normal(rng, (batch_size,)))


_T_SAMPLERS = Registry("t sampler", argument="option")
_T_SAMPLERS.add("uniform", _uniform, keywords={"t_eps": 1e-5, "discrete": None})
_T_SAMPLERS.add("lognormal", _lognormal, keywords={"p_mean": -1.2, "p_std": 1.2})
_T_SAMPLERS.add("logit_normal", _logit_normal, keywords={"m": 0.0, "s": 1.0})


def sample_t(rng, batch_size: int, schedule: Schedule, sampler: str = "uniform", **options):
  """Draws training times of shape [batch_size].

  Args:
    rng: a PRNG key.
    batch_size: number of times to draw.
    schedule: the noise schedule (needed to map EDM's sigma to t).
    sampler: one of `T_SAMPLERS`.
    **options: ``t_eps`` and ``discrete`` (uniform; ``discrete`` defaults to whether the schedule
      is a discrete chain), ``p_mean``/``p_std`` (lognormal), ``m``/``s`` (logit_normal).
  """
  options = _T_SAMPLERS.check_kwargs(sampler, options)
  entry = _T_SAMPLERS.get(sampler)
  return entry.factory(rng, batch_size, schedule, **{**entry.keywords, **options})


def x0_weight(t, schedule: Schedule, weighting: str, *, gamma: float = 5.0,
              sigma_data: float = 0.5):
  """The weight ``w(t)`` [batch] on ``|x0_hat - x0|^2`` for a named weighting.

  ``"x0"``: 1; ``"snr"``: ``alpha^2 / sigma^2`` (equals eps-MSE); ``"min_snr"``:
  ``min(snr, gamma)`` (Hang et al. 2023); ``"edm"``: ``(s^2 + sd^2) / (s sd)^2`` with
  ``s = sigma / alpha`` (Karras et al. 2022).
  """
  logsnr = schedule.logsnr(t)
  if weighting == "x0":
    return jnp.ones_like(logsnr)
  if weighting == "snr":
    return jnp.exp(logsnr)
  if weighting == "min_snr":
    return jnp.minimum(jnp.exp(logsnr), gamma)
  if weighting == "edm":
    s2 = jnp.exp(-logsnr)
    return (s2 + sigma_data**2) / (s2 * sigma_data**2)
  raise ValueError(f"unknown weighting {weighting!r} for an x0-space weight; "
                   f"allowed: {', '.join(w for w in WEIGHTINGS if w != 'simple')}")


def _mean_per_example(x):
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def denoising_loss(net_fn: NetFn, x0, rng, schedule: Schedule,
                   parameterization: Parameterization, *, cond=None,
                   weighting: str = "simple", t_sampler: str = "uniform",
                   t_sampler_options: dict | None = None, min_snr_gamma: float = 5.0,
                   sigma_data: float = 0.5, t=None, eps=None):
  """The per-example denoising loss.

  Args:
    net_fn: ``net_fn(x_in, noise_level, cond) -> F`` with parameters (and dropout rng) bound.
    x0: clean data [batch, ...].
    rng: PRNG key for the times and the noise.
    schedule: noise schedule.
    parameterization: what the network outputs.
    cond: conditioning passed through to ``net_fn`` (e.g. labels [batch]).
    weighting: one of `WEIGHTINGS`.
    t_sampler: one of `T_SAMPLERS`; ``t_sampler_options`` are passed to `sample_t`.
    min_snr_gamma: gamma of ``"min_snr"``.
    sigma_data: data standard deviation for ``"edm"`` weighting.
    t: optional fixed times [batch] (then no time is sampled).
    eps: optional fixed noise shaped like ``x0`` (then no noise is drawn).

  Returns:
    ``(loss, aux)``: loss of shape [batch] (mean over all non-batch axes) and a dict with the
    times ``t`` [batch] used.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
  rng_t, rng_eps = jax.random.split(rng)
  batch = x0.shape[0]
  x0 = x0.astype(jnp.float32)
  if t is None:
    t = sample_t(rng_t, batch, schedule, t_sampler, **(t_sampler_options or {}))
  if eps is None:
    eps = jax.random.normal(rng_eps, x0.shape, jnp.float32)
  x_t = schedule.marginal(x0, eps, t)
  x_in, level = parameterization.network_inputs(x_t, t, schedule)
  out = net_fn(x_in, level, cond).astype(jnp.float32)
  target = parameterization.target(x0, eps, x_t, t, schedule)
  native = _mean_per_example(jnp.square(out - target))
  if weighting == "simple":
    return native, {"t": t}
  scale = parameterization.output_error_scale(t, schedule)
  w = x0_weight(t, schedule, weighting, gamma=min_snr_gamma, sigma_data=sigma_data)
  return w / jnp.square(scale) * native, {"t": t}

