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
* ``"dpmpp_2m"``, ``"dpmpp_3m"``: DPM-Solver++ multistep (Lu et al. 2022), data prediction;
  ``"dpmpp_2m_sde"``, ``"dpmpp_3m_sde"``: their stochastic variants (``eta``, ``s_noise``).
* ``"unipc"``: UniPC (Zhao et al. 2023), predictor-corrector multistep of ``order`` 1-3 with
  no extra evaluations.
* ``"pc"``: Song et al. 2021's predictor-corrector (Langevin corrector, ancestral predictor).
* ``"ode"``: the probability-flow ODE with an adaptive solver (diffrax Tsit5), ``rtol`` /
  ``atol``; its number of evaluations is known only afterwards (``return_nfe``).
* ``"flow_euler"``, ``"flow_heun"``: Euler/Heun in ``t`` on the velocity
  ``alpha' x0_hat + sigma' eps_hat`` (flow matching / rectified flow samplers; the flow schedule
  only).

Every sampler has a default time grid (``spacing="auto"``, `default_spacing`).

When ``sigma(t_min) > 0`` the grid ends with one extra jump to clean data, taken as
``x0_hat`` (Tweedie's denoising step, as in EDM and score_sde).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.guidance import autoguidance, classifier_free_guidance
from diffjax.diffusion.schedules import Schedule
from diffjax.registry import Registry

SPACINGS = ("auto", "uniform", "edm", "logsnr", "quadratic", "respaced")


class TimeGrid(NamedTuple):
  """Sampling grid of ``num_steps + 1`` points, noisiest first; each field has shape [N+1]."""

  t: jax.Array
  alpha: jax.Array
  sigma: jax.Array
  logsnr: jax.Array
  clean_end: bool  # True when the last point is an appended jump to clean data.


SIGMA_MAX, SIGMA_MIN = 80.0, 0.002  # EDM's noise range in sigma / alpha (Karras et al. 2022)


def time_grid(schedule: Schedule, num_steps: int, spacing: str = "uniform", *,
              rho: float = 7.0, t_max: float | None = None,
              t_min: float | None = None, sigma_max: float = SIGMA_MAX,
              sigma_min: float = SIGMA_MIN) -> TimeGrid:
  """Builds the sampling time grid.

  Args:
    schedule: noise schedule.
    num_steps: number of steps (intervals) N >= 1.
    spacing: ``"uniform"`` in t; ``"quadratic"`` in t (Song et al., DDIM); two grids in noise
      space that keep the noise level ``sigma / alpha`` within ``[sigma_min, sigma_max]``
      whatever the schedule (a VP schedule's alpha(1) may be 0 or tiny, where a first step of
      a million in ``sigma / alpha`` wrecks any solver): ``"edm"``, rho-spaced in
      ``sigma / alpha`` (Karras et al.), and ``"logsnr"``, uniform in log-SNR (Lu et al.).
      ``"respaced"``: the steps of a discrete chain (``schedule.num_timesteps``) that
      guided-diffusion's ``space_timesteps(N, str(num_steps))`` keeps (ADM's and DiT's
      ``timestep_respacing``; the whole chain when ``num_steps`` is its length), ending on
      clean data: `respaced_steps`.
      ``"auto"`` is not a grid: `sample` resolves it per sampler (`default_spacing`).
    rho: the EDM spacing exponent.
    t_max: first time (default ``schedule.t_max``).
    t_min: last noisy time (default ``schedule.t_min``).
    sigma_max, sigma_min: the noise range of the ``"edm"`` and ``"logsnr"`` grids (EDM's 80 and
      0.002), narrowed to the schedule's own where that is smaller.

  Returns:
    A `TimeGrid`. If ``sigma(t_min) == 0`` the N+1 points run from ``t_max`` to ``t_min``;
    otherwise (and always for the noise-space grids) N noisy points are followed by a clean
    point (alpha=1, sigma=0).
  """
  _check_num_steps(num_steps)
  if spacing == "auto":
    raise ValueError("spacing='auto' depends on the sampler: resolve it with "
                     "default_spacing(sampler, schedule)")
  if spacing not in SPACINGS:
    raise ValueError(f"unknown spacing {spacing!r}; allowed: {', '.join(SPACINGS)}")
  if spacing == "respaced":
    if t_max is not None or t_min is not None:
      raise ValueError("spacing='respaced' walks the chain's own steps: no t_max / t_min")
    return _respaced_grid(schedule, num_steps)
  with jax.ensure_compile_time_eval():
    t_max = float(schedule.t_max if t_max is None else t_max)
    t_min = float(schedule.t_min if t_min is None else t_min)
    if not t_max > t_min:
      raise ValueError(f"time grid needs t_max > t_min, got t_max={t_max}, t_min={t_min}")
    # The noise-space grids stop at sigma_min > 0 and end with a jump to clean data.
    clean_end = spacing in ("edm", "logsnr") or bool(np.asarray(schedule.sigma(t_min)) > 0)
    n = num_steps if clean_end else num_steps + 1
    frac = np.linspace(0.0, 1.0, n)  # 0 at t_max, 1 at the last point
    if n == 1:
      ts = np.array([t_max])
    elif spacing == "uniform":
      ts = t_max + frac * (t_min - t_max)
    elif spacing == "quadratic":
      ts = t_min + (t_max - t_min) * (1.0 - frac) ** 2
    elif spacing == "edm":  # EDM's rho grid in sigma / alpha, clipped to its noise range
      s_hi, s_lo = (float(np.asarray(schedule.sigma_tilde(x))) for x in (t_max, t_min))
      s_hi, s_lo = min(s_hi, sigma_max), max(s_lo, sigma_min)
      sig = (s_hi ** (1 / rho) + frac * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
      ts = np.asarray(schedule.t_from_sigma_tilde(jnp.asarray(sig, jnp.float32)), np.float64)
      t_max, t_min = ts[0], ts[-1]
    else:  # logsnr, within the same noise range as "edm"
      l_hi, l_lo = (float(np.asarray(schedule.logsnr(x))) for x in (t_max, t_min))
      l_hi, l_lo = max(l_hi, -2.0 * math.log(sigma_max)), min(l_lo, -2.0 * math.log(sigma_min))
      lam = np.linspace(l_hi, l_lo, n)
      ts = np.asarray(schedule.t_from_logsnr(jnp.asarray(lam, jnp.float32)), np.float64)
      t_max, t_min = ts[0], ts[-1]
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


def respaced_steps(num_timesteps: int, num_steps: int) -> list[int]:
  """The 0-based steps of a chain of ``num_timesteps`` that guided-diffusion's
  ``space_timesteps(num_timesteps, str(num_steps))`` keeps, ascending: ``num_steps`` steps
  evenly strided from 0 to ``num_timesteps - 1`` (its float stride accumulated and rounded as
  it does), e.g. DiT's 250 of 1000."""
  _check_num_steps(num_steps)
  if num_steps > num_timesteps:
    raise ValueError(f"cannot take {num_steps} steps of a chain of {num_timesteps}")
  if num_steps == 1:
    return [0]
  stride = (num_timesteps - 1) / (num_steps - 1)
  steps, position = [], 0.0
  for _ in range(num_steps):
    steps.append(round(position))
    position += stride
  return steps


def _respaced_grid(schedule: Schedule, num_steps: int) -> TimeGrid:
  n = schedule.num_timesteps
  if n is None:
    raise ValueError(f"spacing='respaced' needs a discrete schedule (e.g. linear), not "
                     f"{schedule.name!r}")
  with jax.ensure_compile_time_eval():
    # Step k (0-based) is diffjax's t = (k + 1) / N; the grid ends on clean data (t = 0).
    ts = [(k + 1) / n for k in reversed(respaced_steps(n, num_steps))] + [0.0]
    t = jnp.asarray(np.asarray(ts, np.float64), jnp.float32)
    alpha, sigma = schedule.alpha_sigma(t)
    logsnr = schedule.logsnr(t)
  return TimeGrid(t, alpha, sigma, logsnr, False)


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


def _dpmpp_multistep(denoise, schedule, grid, x, rng, *, order: int, eta: float = 0.0,
                     s_noise: float = 1.0):
  """DPM-Solver++ multistep in data prediction (Lu et al. 2022), order 2 or 3, and its SDE
  variant (``eta > 0``: the stochastic DPM-Solver++ of Lu et al., as k-diffusion's
  ``dpmpp_2m_sde`` / ``dpmpp_3m_sde``).

  Written on ``y = x / alpha`` against ``lambda = log(alpha / sigma)``, where the exact solution
  of the probability-flow ODE is ``y_s = e^{-h} y_t + sigma_s/alpha_s int e^lambda D``; the
  integral uses a polynomial in lambda through the last ``order`` data predictions (fewer at
  the start, and only the first-order term on the final jump to clean data). With ``eta`` the
  step leaves an ``eta``-dependent share of the noise in and draws it afresh.
  """
  if eta < 0:
    raise ValueError(f"dpmpp eta must be >= 0, got {eta}")

  def step(carry, p: _Step):
    x, d1, d2, h1, h2 = carry  # the previous two predictions and steps
    d = denoise(x, p.tc)
    h = 0.5 * (p.ln - p.lc)  # step in lambda (infinite onto clean data)
    he = h * (1.0 + eta)
    y = x / p.ac
    final = p.sn <= 0
    decay = jnp.where(final, 0.0, jnp.exp(-he))
    y_next = decay * y + (1.0 - decay) * d
    phi2 = jnp.where(final, 0.0, jnp.expm1(-he) / he + 1.0)  # phi functions of -h_eta
    phi3 = jnp.where(final, 0.0, phi2 / he - 0.5)
    # The past steps' ratios; 1 where a step does not exist yet (its terms are masked out).
    r0 = jnp.where(p.index > 0, h1 / h, 1.0)
    first = (d - d1) / r0
    if order == 2:  # k-diffusion's "midpoint" form: DPM-Solver++(2M) at eta = 0
      y_next = y_next + jnp.where((p.index > 0) & ~final, 0.5 * (1.0 - decay) * first, 0.0)
    else:
      r1 = jnp.where(p.index > 1, h2 / h, 1.0)
      second = (d1 - d2) / r1
      dd1 = first + (first - second) * r0 / (r0 + r1)
      dd2 = (first - second) / (r0 + r1)
      y_next = y_next + jnp.where((p.index > 1) & ~final, phi2 * dd1 - phi3 * dd2,
                                  jnp.where((p.index == 1) & ~final, phi2 * first, 0.0))
    x_next = p.an * y_next
    if eta > 0:
      noise_scale = jnp.where(final, 0.0, p.sn * jnp.sqrt(-jnp.expm1(-2.0 * eta * h)))
      x_next = x_next + s_noise * noise_scale * jax.random.normal(p.key, x.shape, x.dtype)
    return (x_next, d, d1, h, h1), None

  zero, inf = jnp.zeros_like(x), jnp.asarray(jnp.inf, x.dtype)
  return jax.lax.scan(step, (x, zero, zero, inf, inf), _steps(grid, rng))[0][0]


def _unipc(denoise, schedule, grid, x, rng, *, order: int = 2):
  """UniPC (Zhao et al. 2023) in data prediction with the B(h) = e^h - 1 variant (bh2): the
  UniP predictor of ``order`` from the last predictions, and the UniC corrector that reuses
  the model evaluation of the next step (no extra evaluations; none after the last step).
  Written on ``y = x / alpha`` against ``lambda = log(alpha / sigma)``."""
  if order not in (1, 2, 3):
    raise ValueError(f"unipc order must be 1, 2 or 3, got {order}")

  def coefficients(hh, rks):
    """(R, b) of the UniPC linear systems for ``rks`` (ratios of the past steps, then 1)."""
    h_phi_1 = jnp.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = jnp.expm1(hh)
    rows, b, factorial = [], [], 1.0
    for i in range(1, len(rks) + 1):
      rows.append(jnp.stack([r ** (i - 1) for r in rks]))
      b.append(h_phi_k * factorial / b_h)
      factorial *= i + 1
      h_phi_k = h_phi_k / hh - 1.0 / factorial
    return jnp.stack(rows), jnp.stack(b), h_phi_1, b_h

  def update(y, d0, hist_d, hist_l, l0, l_next, p_order, d_next=None):
    """UniP (d_next None) or UniC (with the new prediction) from point l0 to l_next."""
    h = l_next - l0
    hh = -h
    rks = [(hist_l[k] - l0) / h for k in range(p_order - 1)] + [jnp.asarray(1.0)]
    diffs = [(hist_d[k] - d0) / rks[k] for k in range(p_order - 1)]
    big_r, b, h_phi_1, b_h = coefficients(hh, rks)
    base = jnp.exp(-h) * y - h_phi_1 * d0
    if d_next is None:  # predictor
      if p_order == 1:
        return base
      if p_order == 2:
        rhos = jnp.array([0.5])
      else:
        rhos = jnp.linalg.solve(big_r[:-1, :-1], b[:-1])
      return base - b_h * sum(rhos[k] * diffs[k] for k in range(p_order - 1))
    if p_order == 1:
      rhos = jnp.array([0.5])
    else:
      rhos = jnp.linalg.solve(big_r, b)
    res = sum((rhos[k] * diffs[k] for k in range(p_order - 1)), jnp.zeros_like(y))
    return base - b_h * (res + rhos[-1] * (d_next - d0))

  n = grid.t.shape[0] - 1
  lam = 0.5 * grid.logsnr  # lambda of every grid point
  y = x / grid.alpha[0]
  ds, ls = [], []  # predictions and lambdas, newest last (unrolled: the order changes)
  y_prev = None
  for i in range(n):
    d = denoise(grid.alpha[i] * y, grid.t[i])
    if i > 0:  # UniC: correct the previous step's result with the prediction made here
      k = min(order, i)
      y = update(y_prev, ds[-1], ds[-2::-1][:k - 1], ls[-2::-1][:k - 1], ls[-1], lam[i], k,
                 d_next=d)
    ds.append(d)
    ls.append(lam[i])
    if i == n - 1 and grid.clean_end:  # the jump to clean data: the prediction itself
      return d
    k = min(order, i + 1)
    y_prev = y
    y = update(y, d, ds[-2::-1][:k - 1], ls[-2::-1][:k - 1], lam[i], lam[i + 1], k)
  return grid.alpha[-1] * y


def _ode_adaptive(denoise, schedule, grid, x, rng, *, rtol: float = 1e-4, atol: float = 1e-4,
                  max_steps: int = 4096):
  """The probability-flow ODE solved adaptively (diffrax, Tsit5 with a PID step controller)
  from the grid's first noise level to its last noisy one, then the jump to clean data.

  Integrated on ``y = x / alpha`` against ``u = log(sigma / alpha)``, where the ODE reads
  ``dy/du = y - D``: smooth over the whole noise range. Returns ``(x, nfe)``.
  """
  import diffrax  # only this sampler needs it
  del rng
  if not grid.clean_end:
    raise ValueError("the 'ode' sampler needs a grid that ends at a noise level > 0 (spacing "
                     "'edm' or 'logsnr')")
  s_hi = grid.sigma[0] / grid.alpha[0]
  s_lo = grid.sigma[-2] / grid.alpha[-2]

  def vector_field(u, y, args):
    del args
    t = schedule.t_from_sigma_tilde(jnp.exp(u))
    alpha = schedule.alpha_sigma(t)[0]
    d = denoise(alpha * y, jnp.asarray(t, jnp.float32))
    return y - d

  solution = diffrax.diffeqsolve(
      diffrax.ODETerm(vector_field), diffrax.Tsit5(), t0=jnp.log(s_hi), t1=jnp.log(s_lo),
      dt0=None, y0=x / grid.alpha[0],
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps)
  y = solution.ys[-1]
  nfe = 1 + 6 * solution.stats["num_steps"]  # Tsit5: 6 new stages a step (first same as last)
  return denoise(grid.alpha[-2] * y, grid.t[-2]), nfe + 1  # the jump to clean data


def _predictor_corrector(denoise, schedule, grid, x, rng, *, snr: float = 0.16,
                         corrector_steps: int = 1):
  """Song et al. 2021's predictor-corrector: at each noise level ``corrector_steps`` Langevin
  MCMC steps (step size from the signal-to-noise ratio ``snr``, as score_sde's
  ``LangevinCorrector`` with its per-level factor taken as 1), then one ancestral
  reverse-diffusion step (the ``ddpm`` sampler's)."""
  if snr <= 0 or corrector_steps < 0:
    raise ValueError(f"pc needs snr > 0 and corrector_steps >= 0, got {snr}, {corrector_steps}")

  def langevin(x, key, p: _Step):
    score = (p.ac * denoise(x, p.tc) - x) / p.sc**2
    z = jax.random.normal(key, x.shape, x.dtype)
    # score_sde takes the norms per image; over the whole batch here, which is the same for
    # images (their norms concentrate) and stays stable for low-dimensional data.
    eps = 2.0 * (snr * jnp.linalg.norm(z) / jnp.maximum(jnp.linalg.norm(score), 1e-20)) ** 2
    return x + eps * score + jnp.sqrt(2.0 * eps) * z

  def step(x, p: _Step):
    keys = jax.random.split(p.key, corrector_steps + 1)
    for k in range(corrector_steps):
      x = langevin(x, keys[k], p)
    d = denoise(x, p.tc)
    coef_x, coef_d, var = posterior_coefficients(p.ac, p.sc, p.lc, p.an, p.sn, p.ln)
    return coef_x * x + coef_d * d + jnp.sqrt(var) * jax.random.normal(keys[-1], x.shape), None

  return jax.lax.scan(step, x, _steps(grid, rng))[0]


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
SAMPLERS.add("dpmpp_3m", lambda *a, **k: _dpmpp_multistep(*a, order=3, **k), keywords={})
SAMPLERS.add("dpmpp_2m_sde", lambda *a, **k: _dpmpp_multistep(*a, order=2, **k),
             keywords={"eta": 1.0, "s_noise": 1.0})
SAMPLERS.add("dpmpp_3m_sde", lambda *a, **k: _dpmpp_multistep(*a, order=3, **k),
             keywords={"eta": 1.0, "s_noise": 1.0})
SAMPLERS.add("unipc", _unipc, keywords={"order": 2})
SAMPLERS.add("pc", _predictor_corrector, keywords={"snr": 0.16, "corrector_steps": 1})
SAMPLERS.add("ode", _ode_adaptive, keywords={"rtol": 1e-4, "atol": 1e-4, "max_steps": 4096})
SAMPLERS.add("flow_euler", lambda *a, **k: _flow(*a, heun=False, **k), keywords={})
SAMPLERS.add("flow_heun", lambda *a, **k: _flow(*a, heun=True, **k), keywords={})


_FLOW_SAMPLERS = ("flow_euler", "flow_heun")


def default_spacing(sampler: str, schedule: Schedule, num_steps: int | None = None) -> str:
  """The time grid that suits ``sampler`` (``spacing="auto"``).

  EDM's rho grid for Euler and Heun (Karras et al.: their steps are in ``sigma / alpha``, where
  uniform steps in t on a VP schedule start with a jump of thousands) and for the flow samplers
  (on the exact Gaussian it keeps small-variance structure that uniform steps in t lose);
  uniform in t for DDPM / DDIM when they walk a discrete chain's every step (the chain itself);
  uniform in log-SNR otherwise (DPM-Solver's grid; for the
  first-order DDPM / DDIM updates it keeps small-variance structure that uniform-t respacing of
  DDPM's linear schedule loses: measured on the exact Gaussian in tests/test_samplers.py).
  """
  if sampler in ("euler", "heun", *_FLOW_SAMPLERS):
    return "edm"
  if (sampler in ("ddpm", "ddim") and schedule.num_timesteps is not None
      and num_steps == schedule.num_timesteps):
    return "uniform"
  return "logsnr"


def sample(denoise_fn: Callable[..., jax.Array], schedule: Schedule, shape, rng,
           sampler: str = "ddim", num_steps: int = 50, *, spacing: str = "auto",
           rho: float = 7.0, t_max: float | None = None, t_min: float | None = None,
           cond=None, guidance_scale: float | None = None, null_cond=None,
           guidance_interval: tuple[float, float] | None = None, guidance_rescale: float = 0.0,
           guide_fn: Callable[..., jax.Array] | None = None, x_init=None,
           return_nfe: bool = False, **options) -> jax.Array:
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
    spacing, rho, t_max, t_min: the time grid (see `time_grid`; ``"auto"``: the sampler's
      own, `default_spacing`).
    cond: conditioning for ``denoise_fn`` (e.g. class labels [batch]).
    guidance_scale: classifier-free guidance scale w (1 = conditional model alone); needs
      ``cond`` and ``null_cond``.
    null_cond: the "no conditioning" value (e.g. the null class id), broadcast to ``cond``.
    guidance_interval: ``(lo, hi)`` in ``sigma / alpha``; guidance only inside it
      (Kynkaanniemi et al. 2024).
    guidance_rescale: Lin et al. 2024's rescale phi of the classifier-free guided prediction.
    guide_fn: a weaker denoiser ``fn(x_t, t, cond)``: autoguidance (Karras et al. 2024) with
      weight ``guidance_scale`` instead of classifier-free guidance (``null_cond`` unused).
    x_init: optional starting noise of ``shape`` (default ``sigma(t_max) * N(0, I)``).
    return_nfe: also return the number of denoiser evaluations (counted by the adaptive
      ``"ode"`` solver, known in advance for the others).
    **options: sampler options: ``variance`` (ddpm), ``eta`` (ddim), ``s_churn``, ``s_tmin``,
      ``s_tmax``, ``s_noise`` (euler, heun).

  Returns:
    Samples of ``shape`` (float32); with ``return_nfe``, ``(samples, nfe)``.
  """
  options = SAMPLERS.check_kwargs(sampler, options)
  fn, defaults = SAMPLERS.get(sampler).factory, SAMPLERS.get(sampler).keywords
  if sampler in _FLOW_SAMPLERS and schedule.name != "flow":
    raise ValueError(f"sampler {sampler!r} integrates the velocity in t, which is first order "
                     f"only where alpha and sigma are linear in t (the 'flow' schedule); on "
                     f"{schedule.name!r} use 'euler' or 'heun' (the same ODE in sigma / alpha)")
  if spacing == "auto":
    spacing = default_spacing(sampler, schedule, num_steps)
  _check_num_steps(num_steps)
  shape = _check_shape(shape)
  if guide_fn is not None:
    if guidance_scale is None:
      raise ValueError("guide_fn (autoguidance) needs guidance_scale")
    guided = guide_fn if cond is not None else (lambda x, t, c: guide_fn(x, t))
    main = denoise_fn if cond is not None else (lambda x, t, c: denoise_fn(x, t))
    denoise = autoguidance(main, guided, guidance_scale, interval=guidance_interval,
                           schedule=schedule)
    if cond is None:
      denoise = lambda x, t, _d=denoise: _d(x, t, None)
  elif guidance_scale is not None:
    if cond is None or null_cond is None:
      raise ValueError("guidance_scale needs both cond and null_cond")
    denoise = classifier_free_guidance(denoise_fn, guidance_scale, null_cond,
                                       interval=guidance_interval, schedule=schedule,
                                       rescale=guidance_rescale)
  elif guidance_interval is not None or guidance_rescale:
    raise ValueError("guidance_interval / guidance_rescale are given but guidance_scale is not")
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
  out = fn(wrapped, schedule, grid, jnp.asarray(x_init, jnp.float32), rng_steps,
           **{**defaults, **options})
  x, nfe = out if sampler == "ode" else (out, _fixed_nfe(sampler, grid, {**defaults, **options}))
  return (x, nfe) if return_nfe else x


def evaluations(sampler: str, schedule: Schedule, num_steps: int, spacing: str = "auto",
                **options) -> int | None:
  """Denoiser evaluations per image of ``sampler`` with ``num_steps`` on its grid, known before
  sampling (None for the adaptive ``"ode"`` solver: `sample` with ``return_nfe`` counts it)."""
  if sampler == "ode":
    return None
  if spacing == "auto":
    spacing = default_spacing(sampler, schedule, num_steps)
  defaults = SAMPLERS.get(sampler).keywords
  return _fixed_nfe(sampler, time_grid(schedule, num_steps, spacing), {**defaults, **options})


def _fixed_nfe(sampler: str, grid: TimeGrid, options: dict) -> int:
  """Denoiser evaluations of a fixed-step sampler on ``grid`` (per image; guidance doubles the
  batch, not the count)."""
  n = grid.t.shape[0] - 1
  if sampler in ("heun", "flow_heun"):
    return 2 * n - 1  # no correction on the last step, which ends at sigma = 0
  if sampler == "pc":
    return n * (1 + options["corrector_steps"])
  return n


def _check_shape(shape) -> tuple[int, ...]:
  try:
    shape = tuple(int(d) for d in shape)
  except TypeError:
    raise ValueError(f"shape must be a tuple of positive integers, got {shape!r}") from None
  if not shape or any(d < 1 for d in shape):
    raise ValueError(f"shape must be a non-empty tuple of positive integers, got {shape}")
  return shape
