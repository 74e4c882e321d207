"""Samplers that take any denoiser ``denoise(x_t, t) -> x0_hat``, never a model.

All samplers walk one time grid (`time_grid`) from ``t_max`` towards clean data and are written
with ``alpha``, ``sigma`` and ``logsnr`` only, so they run on every schedule. Loops are
``jax.lax.scan``; `sample` is jit-able end to end (wrap it in ``jax.jit`` with the denoiser's
parameters as arguments, not closed-over constants).

* ``"ddpm"``: ancestral sampling from the Gaussian posterior q(x_s | x_t, x0_hat) (Ho et al.;
  ``variance="small"`` is the posterior variance, ``"large"`` the forward one, beta_t).
* ``"ddim"``: Song et al. 2021 with ``eta`` (eta=1 equals ``"ddpm"``).
* ``"euler"``, ``"heun"``: Karras et al. 2022, Algorithm 2, on ``x / alpha`` against
  ``sigma / alpha``, with optional churn (``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``).
* ``"dpmpp_2m"``: DPM-Solver++(2M) (Lu et al. 2022), multistep, data prediction.
* ``"flow_euler"``, ``"flow_heun"``: Euler/Heun in ``t`` on the velocity
  ``alpha' x0_hat + sigma' eps_hat`` (flow matching / rectified flow samplers).

When ``sigma(t_min) > 0`` the grid ends with one extra jump to clean data, taken as
``x0_hat`` (Tweedie's denoising step, as in EDM and score_sde).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.guidance import classifier_free_guidance
from diffjax.diffusion.schedules import Schedule
from diffjax.registry import Registry

SPACINGS = ("uniform", "edm", "logsnr", "quadratic")


class TimeGrid(NamedTuple):
  """Sampling grid of ``num_steps + 1`` points, noisiest first; each field has shape [N+1]."""

  t: jax.Array
  alpha: jax.Array
  sigma: jax.Array
  logsnr: jax.Array
  clean_end: bool  # True when the last point is an appended jump to clean data.


def time_grid(schedule: Schedule, num_steps: int, spacing: str = "uniform", *,
              rho: float = 7.0, t_max: float | None = None,
              t_min: float | None = None) -> TimeGrid:
  """Builds the sampling time grid.

  Args:
    schedule: noise schedule.
    num_steps: number of steps (intervals) N >= 1.
    spacing: ``"uniform"`` in t; ``"edm"``: rho-spaced in ``sigma / alpha`` (Karras et al.);
      ``"logsnr"``: uniform in log-SNR; ``"quadratic"``: quadratic in t (Song et al., DDIM).
    rho: the EDM spacing exponent.
    t_max: first time (default ``schedule.t_max``).
    t_min: last noisy time (default ``schedule.t_min``).

  Returns:
    A `TimeGrid`. If ``sigma(t_min) == 0`` the N+1 points run from ``t_max`` to ``t_min``;
    otherwise N points run from ``t_max`` to ``t_min`` and a clean point (alpha=1, sigma=0) ends
    the grid.
  """
  _check_num_steps(num_steps)
  if spacing not in SPACINGS:
    raise ValueError(f"unknown spacing {spacing!r}; allowed: {', '.join(SPACINGS)}")
  with jax.ensure_compile_time_eval():
    t_max = float(schedule.t_max if t_max is None else t_max)
    t_min = float(schedule.t_min if t_min is None else t_min)
    if not t_max > t_min:
      raise ValueError(f"time grid needs t_max > t_min, got t_max={t_max}, t_min={t_min}")
    clean_end = bool(np.asarray(schedule.sigma(t_min)) > 0)
    n = num_steps if clean_end else num_steps + 1
    frac = np.linspace(0.0, 1.0, n)  # 0 at t_max, 1 at the last point
    if n == 1:
      ts = np.array([t_max])
    elif spacing == "uniform":
      ts = t_max + frac * (t_min - t_max)
    elif spacing == "quadratic":
      ts = t_min + (t_max - t_min) * (1.0 - frac) ** 2
    elif spacing == "edm":
      s_hi, s_lo = (float(np.asarray(schedule.sigma_tilde(x))) for x in (t_max, t_min))
      if not math.isfinite(s_hi):
        raise ValueError(f"spacing='edm' needs sigma/alpha finite at t_max={t_max} (the "
                         f"{schedule.name!r} schedule has alpha=0 there); pass a smaller t_max")
      sig = (s_hi ** (1 / rho) + frac * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
      ts = np.asarray(schedule.t_from_sigma_tilde(jnp.asarray(sig, jnp.float32)), np.float64)
    else:  # logsnr
      end = t_min if clean_end else t_min + (t_max - t_min) / num_steps
      l_hi, l_lo = (float(np.asarray(schedule.logsnr(x))) for x in (t_max, end))
      if not (math.isfinite(l_hi) and math.isfinite(l_lo)):
        raise ValueError(f"spacing='logsnr' needs a finite log-SNR at t_max={t_max}; "
                         f"pass a smaller t_max")
      n_noisy = n if clean_end else n - 1
      lam = np.linspace(l_hi, l_lo, n_noisy)
      ts = np.asarray(schedule.t_from_logsnr(jnp.asarray(lam, jnp.float32)), np.float64)
      if not clean_end:
        ts = np.concatenate([ts, [t_min]])
    ts = np.asarray(ts, np.float64)
    ts[0] = t_max
    ts[-1] = t_min
    t = jnp.asarray(ts, jnp.float32)
    alpha, sigma = schedule.alpha_sigma(t)
    logsnr = schedule.logsnr(t)
    if clean_end:
      t = jnp.append(t, t_min)
      alpha = jnp.append(alpha, 1.0)
      sigma = jnp.append(sigma, 0.0)
      logsnr = jnp.append(logsnr, jnp.inf)
  return TimeGrid(t, alpha, sigma, logsnr, clean_end)


def _check_num_steps(num_steps) -> None:
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
      or num_steps < 1:
    raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")


class _Step(NamedTuple):
  """Per-step scan inputs: the current (c) and next (n) grid point, a key and the index."""

  tc: jax.Array
  ac: jax.Array
  sc: jax.Array
  lc: jax.Array
  tn: jax.Array
  an: jax.Array
  sn: jax.Array
  ln: jax.Array
  key: jax.Array
  index: jax.Array


def _steps(grid: TimeGrid, rng) -> _Step:
  n = grid.t.shape[0] - 1
  return _Step(grid.t[:-1], grid.alpha[:-1], grid.sigma[:-1], grid.logsnr[:-1],
               grid.t[1:], grid.alpha[1:], grid.sigma[1:], grid.logsnr[1:],
               jax.random.split(rng, n), jnp.arange(n))


def _eps(x, d, a, s):
  return (x - a * d) / s


def _posterior_fraction(lc, ln):
  """``1 - exp(logsnr_t - logsnr_s)`` = sigma_{t|s}^2 / sigma_t^2, stable for small steps."""
  return -jnp.expm1(lc - ln)


def posterior_coefficients(alpha_t, sigma_t, logsnr_t, alpha_s, sigma_s, logsnr_s):
  """Gaussian posterior q(x_s | x_t, x0) for s < t on any schedule.

  Returns:
    ``(coef_xt, coef_x0, variance)`` with mean ``coef_xt * x_t + coef_x0 * x0``. On DDPM's
    discrete chain these are Ho et al.'s posterior mean coefficients and beta-tilde.
  """
  frac = _posterior_fraction(logsnr_t, logsnr_s)
  return (alpha_t / alpha_s) * (sigma_s / sigma_t) ** 2, alpha_s * frac, sigma_s**2 * frac


def _ddpm(denoise, schedule, grid, x, rng, *, variance: str = "small"):
  if variance not in ("small", "large"):
    raise ValueError(f"ddpm variance must be 'small' or 'large', got {variance!r}")

  def step(x, p: _Step):
    d = denoise(x, p.tc)
    coef_x, coef_d, var = posterior_coefficients(p.ac, p.sc, p.lc, p.an, p.sn, p.ln)
    mean = coef_x * x + coef_d * d
    if variance == "large":  # sigma_{t|s}^2; no noise on the final step (as Ho et al.)
      var = jnp.where(p.sn > 0, p.sc**2 * _posterior_fraction(p.lc, p.ln), 0.0)
    return mean + jnp.sqrt(var) * jax.random.normal(p.key, x.shape, x.dtype), None

  return jax.lax.scan(step, x, _steps(grid, rng))[0]


def _ddim(denoise, schedule, grid, x, rng, *, eta: float = 0.0):
  if eta < 0:
    raise ValueError(f"ddim eta must be >= 0, got {eta}")

  def step(x, p: _Step):
    d = denoise(x, p.tc)
    eps = _eps(x, d, p.ac, p.sc)
    c2 = eta**2 * p.sn**2 * _posterior_fraction(p.lc, p.ln)
    x = p.an * d + jnp.sqrt(jnp.maximum(p.sn**2 - c2, 0.0)) * eps
    if eta > 0:
      x = x + jnp.sqrt(c2) * jax.random.normal(p.key, x.shape, x.dtype)
    return x, None

  return jax.lax.scan(step, x, _steps(grid, rng))[0]


def _karras(denoise, schedule, grid, x, rng, *, heun: bool, s_churn: float = 0.0,
            s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0):
  num_steps = grid.t.shape[0] - 1
  gamma_max = min(s_churn / num_steps, math.sqrt(2.0) - 1.0)

  def step(x, p: _Step):
    # Stochastic churn: raise the noise level from s_cur to s_hat = (1 + gamma) s_cur first.
    s_cur = p.sc / p.ac
    if gamma_max > 0:
      apply = (s_cur >= s_tmin) & (s_cur <= s_tmax) & (p.ac > 0)
      gamma = jnp.where(apply, gamma_max, 0.0)
      t_hat = jnp.where(apply, schedule.t_from_sigma_tilde(s_cur * (1.0 + gamma)), p.tc)
      a_hat, sig_hat = schedule.alpha_sigma(t_hat)
      s_hat = sig_hat / a_hat  # the level actually reached (schedules may clamp t)
      noise = jnp.sqrt(jnp.maximum(s_hat**2 - s_cur**2, 0.0)) * s_noise
      x_scaled = jnp.where(apply, x / p.ac, 0.0)
      x_hat = jnp.where(
          apply, a_hat * (x_scaled + noise * jax.random.normal(p.key, x.shape, x.dtype)), x)
    else:
      t_hat, a_hat, sig_hat, x_hat = p.tc, p.ac, p.sc, x
    d = denoise(x_hat, t_hat)
    eps = _eps(x_hat, d, a_hat, sig_hat)
    x_next = p.an * d + p.sn * eps  # Euler in (x / alpha, sigma / alpha)
    if not heun:
      return x_next, None

    def correct(x_next):
      # Trapezoid rule; undefined from zero SNR (infinite sigma/alpha) and onto sigma = 0.
      eps2 = _eps(x_next, denoise(x_next, p.tn), p.an, p.sn)
      return x_next + (p.sn - p.an * sig_hat / a_hat) * (eps2 - eps) / 2.0

    return jax.lax.cond((p.sn > 0) & (a_hat > 0), correct, lambda x: x, x_next), None

  return jax.lax.scan(step, x, _steps(grid, rng))[0]


def _dpmpp_2m(denoise, schedule, grid, x, rng):
  def step(carry, p: _Step):
    x, d_prev, h_prev = carry
    d = denoise(x, p.tc)
    h = 0.5 * (p.ln - p.lc)  # step in lambda = log(alpha / sigma)
    second_order = (p.index > 0) & (p.sn > 0)
    c = h / (2.0 * h_prev)  # 1 / (2 r) with r = h_prev / h
    d_m = jnp.where(second_order, (1.0 + c) * d - c * d_prev, d)
    x = (p.sn / p.sc) * x - p.an * jnp.expm1(-h) * d_m
    return (x, d, h), None

  init = (x, jnp.zeros_like(x), jnp.asarray(jnp.inf, x.dtype))
  return jax.lax.scan(step, init, _steps(grid, rng))[0][0]


def _flow(denoise, schedule, grid, x, rng, *, heun: bool):
  def velocity(x, t, a, s):
    d = denoise(x, t)
    d_alpha, d_sigma = schedule.alpha_sigma_derivatives(t)
    return d_alpha * d + d_sigma * _eps(x, d, a, s), d

  def step(x, p: _Step):
    u, d = velocity(x, p.tc, p.ac, p.sc)
    is_clean_jump = grid.clean_end & (p.index == grid.t.shape[0] - 2)
    x_next = jnp.where(is_clean_jump, d, x + (p.tn - p.tc) * u)
    if not heun:
      return x_next, None

    def correct(x_next):
      u2, _ = velocity(x_next, p.tn, p.an, p.sn)
      return x + (p.tn - p.tc) * (u + u2) / 2.0

    return jax.lax.cond((p.sn > 0) & ~is_clean_jump, correct, lambda x: x, x_next), None

  return jax.lax.scan(step, x, _steps(grid, rng))[0]


_CHURN = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}

# name -> sampler function, with its options and their defaults
SAMPLERS = Registry("sampler", argument="option")
SAMPLERS.add("ddpm", _ddpm, keywords={"variance": "small"})
SAMPLERS.add("ddim", _ddim, keywords={"eta": 0.0})
SAMPLERS.add("euler", lambda *a, **k: _karras(*a, heun=False, **k), keywords=_CHURN)
SAMPLERS.add("heun", lambda *a, **k: _karras(*a, heun=True, **k), keywords=_CHURN)
SAMPLERS.add("dpmpp_2m", _dpmpp_2m, keywords={})
SAMPLERS.add("flow_euler", lambda *a, **k: _flow(*a, heun=False, **k), keywords={})
SAMPLERS.add("flow_heun", lambda *a, **k: _flow(*a, heun=True, **k), keywords={})


def sample(denoise_fn: Callable[..., jax.Array], schedule: Schedule, shape, rng,
           sampler: str = "ddim", num_steps: int = 50, *, spacing: str = "uniform",
           rho: float = 7.0, t_max: float | None = None, t_min: float | None = None,
           cond=None, guidance_scale: float | None = None, null_cond=None,
           guidance_interval: tuple[float, float] | None = None, x_init=None,
           **options) -> jax.Array:
  """Draws samples by integrating from noise to data with the named sampler.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> x0_hat`` (or ``denoise_fn(x_t, t, cond)`` when ``cond``
      is given), with ``x_t`` of ``shape`` and ``t`` a float array of shape [batch].
    schedule: the noise schedule the denoiser was trained with.
    shape: output shape, batch first, e.g. ``(16, 32, 32, 3)``.
    rng: PRNG key.
    sampler: a name in `SAMPLERS`.
    num_steps: number of steps N >= 1 (network evaluations: N for first-order samplers and
      DPM-Solver++(2M), up to 2N - 1 for Heun).
    spacing, rho, t_max, t_min: the time grid (see `time_grid`).
    cond: conditioning for ``denoise_fn`` (e.g. class labels [batch]).
    guidance_scale: classifier-free guidance scale w (1 = conditional model alone); needs
      ``cond`` and ``null_cond``.
    null_cond: the "no conditioning" value (e.g. the null class id), broadcast to ``cond``.
    guidance_interval: ``(lo, hi)`` in ``sigma / alpha``; guidance only inside it
      (Kynkaanniemi et al. 2024).
    x_init: optional starting noise of ``shape`` (default ``sigma(t_max) * N(0, I)``).
    **options: sampler options: ``variance`` (ddpm), ``eta`` (ddim), ``s_churn``, ``s_tmin``,
      ``s_tmax``, ``s_noise`` (euler, heun).

  Returns:
    Samples of ``shape`` (float32).
  """
  options = SAMPLERS.check_kwargs(sampler, options)
  fn, defaults = SAMPLERS.get(sampler).factory, SAMPLERS.get(sampler).keywords
  _check_num_steps(num_steps)
  shape = _check_shape(shape)
  if guidance_scale is not None:
    if cond is None or null_cond is None:
      raise ValueError("guidance_scale needs both cond and null_cond")
    denoise = classifier_free_guidance(denoise_fn, guidance_scale, null_cond,
                                       interval=guidance_interval, schedule=schedule)
  elif guidance_interval is not None:
    raise ValueError("guidance_interval is given but guidance_scale is not")
  else:
    denoise = denoise_fn
  batch = shape[0]
  if cond is None:
    call = lambda x, t: denoise(x, jnp.broadcast_to(t, (batch,)))
  else:
    call = lambda x, t: denoise(x, jnp.broadcast_to(t, (batch,)), cond)
  got = jax.eval_shape(call, jax.ShapeDtypeStruct(shape, jnp.float32),
                       jax.ShapeDtypeStruct((), jnp.float32))
  if tuple(got.shape) != shape:
    raise ValueError(f"denoise_fn returned shape {tuple(got.shape)} for input shape {shape}; "
                     f"it must return x0_hat of the input's shape")
  grid = time_grid(schedule, num_steps, spacing, rho=rho, t_max=t_max, t_min=t_min)
  rng_init, rng_steps = jax.random.split(rng)
  if x_init is None:
    x_init = grid.sigma[0] * jax.random.normal(rng_init, shape, jnp.float32)
  elif tuple(x_init.shape) != shape:
    raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {shape}")
  wrapped = lambda x, t: call(x, t).astype(jnp.float32)
  return fn(wrapped, schedule, grid, jnp.asarray(x_init, jnp.float32), rng_steps,
            **{**defaults, **options})


def _check_shape(shape) -> tuple[int, ...]:
  try:
    shape = tuple(int(d) for d in shape)
  except TypeError:
    raise ValueError(f"shape must be a tuple of positive integers, got {shape!r}") from None
  if not shape or any(d < 1 for d in shape):
    raise ValueError(f"shape must be a non-empty tuple of positive integers, got {shape}")
  return shape
