"""Noise schedules over continuous time.

Every schedule describes the forward process ``x_t = alpha(t) * x0 + sigma(t) * eps`` for
``t`` in ``[0, 1]`` (``t = 0`` is data, ``t = 1`` is the noise end) through one interface:

* ``alpha(t)``, ``sigma(t)`` and ``logsnr(t) = log(alpha**2 / sigma**2)``;
* ``t_from_logsnr(logsnr)``, the inverse, which samplers use to place steps in noise space
  (EDM's rho spacing, stochastic churn) on any schedule;
* ``t_max`` / ``t_min``: where sampling starts and ends. When ``sigma(t_min) > 0`` samplers add
  one last jump to clean data (as EDM and score_sde do).

Schedules are frozen dataclasses of floats, so they are hashable and can be static arguments of
``jax.jit``. All methods are pure ``jax.numpy`` functions that broadcast over ``t``.

References:
  Ho et al. 2020 (DDPM, linear betas); Nichol & Dhariwal 2021 (cosine); Song et al. 2021
  (VP/VE SDEs); Karras et al. 2022 (EDM); Lipman et al. 2023 / Liu et al. 2023 (flow matching /
  rectified flow).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.registry import Registry

SCHEDULES = Registry("schedule")
register_schedule = SCHEDULES.register  # class decorator: @register_schedule("name")


def schedule_names() -> tuple[str, ...]:
  return tuple(sorted(SCHEDULES.names()))


def get_schedule(name: str, **kwargs) -> "Schedule":
  """Builds a schedule by name, e.g. ``get_schedule("edm", sigma_max=80.0)``.

  Raises:
    ValueError: unknown name, unknown keyword, or an impossible parameter value.
  """
  return SCHEDULES.build(name, **kwargs)


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class Schedule(abc.ABC):
  """Interface every schedule implements. Subclasses define the three abstract methods."""

  name: ClassVar[str] = ""

  @property
  def t_max(self) -> float:
    return 1.0

  @property
  def t_min(self) -> float:
    return 0.0

  @property
  def num_timesteps(self) -> int | None:
    """Length of the discrete training chain, or None for continuous-time schedules."""
    return None

  @abc.abstractmethod
  def alpha_sigma(self, t) -> tuple[jax.Array, jax.Array]:
    """Returns ``(alpha(t), sigma(t))``, each with the shape of ``t``."""

  @abc.abstractmethod
  def logsnr(self, t) -> jax.Array:
    """``log(alpha(t)**2 / sigma(t)**2)``: +inf at clean data, -inf at pure noise."""

  @abc.abstractmethod
  def t_from_logsnr(self, logsnr) -> jax.Array:
    """Inverse of `logsnr`: the time at which the schedule reaches the given log-SNR."""

  def alpha(self, t) -> jax.Array:
    return self.alpha_sigma(t)[0]

  def sigma(self, t) -> jax.Array:
    return self.alpha_sigma(t)[1]

  def sigma_tilde(self, t) -> jax.Array:
    """``sigma / alpha = exp(-logsnr / 2)``: the noise level of ``x_t / alpha`` (EDM's sigma)."""
    return jnp.exp(-0.5 * self.logsnr(t))

  def t_from_sigma_tilde(self, sigma_tilde) -> jax.Array:
    return self.t_from_logsnr(-2.0 * jnp.log(sigma_tilde))

  def alpha_sigma_derivatives(self, t) -> tuple[jax.Array, jax.Array]:
    """``(d alpha / dt, d sigma / dt)`` by forward-mode autodiff of `alpha_sigma`."""
    t = jnp.asarray(t, jnp.float32)
    _, tangents = jax.jvp(self.alpha_sigma, (t,), (jnp.ones_like(t),))
    return tangents

  def marginal(self, x0, eps, t):
    """``x_t = alpha(t) x0 + sigma(t) eps`` with ``t`` of shape [batch] broadcast over x."""
    alpha, sigma = self.alpha_sigma(t)
    return broadcast_to_rank(alpha, x0) * x0 + broadcast_to_rank(sigma, x0) * eps


def broadcast_to_rank(v, x):
  """Reshapes a per-example array of shape [batch] to broadcast against ``x`` [batch, ...]."""
  v = jnp.asarray(v)
  return v.reshape(v.shape + (1,) * (jnp.ndim(x) - v.ndim))


def _logsnr_from_log_alpha_sq(log_alpha_sq):
  """log(a^2 / (1 - a^2)) from log(a^2), accurate at both ends of (0, 1]."""
  return log_alpha_sq - jnp.log(-jnp.expm1(log_alpha_sq))


def interp(x, xp, fp):
  """Piecewise-linear interpolation, ``jnp.interp``'s values (clamped outside ``xp``).

  ``jnp.interp`` finds the interval by bisection in a ``while`` loop; on GPU every round of it
  waits for the host, which stalled a train step for about a millisecond. Comparing ``x``
  against every sample point instead (``searchsorted(method="compare_all")``) is one fused
  kernel: cheap for short tables or few ``x`` (uniform tables index directly, see
  `LinearSchedule._log_alpha_sq`).
  """
  xp = jnp.asarray(xp, jnp.float32)
  fp = jnp.asarray(fp, jnp.float32)
  x = jnp.asarray(x, jnp.float32)
  # Clamp with where, not clip: clip's gradient on a tie is 1/2, and x often sits on a point.
  x = jnp.where(x < xp[0], xp[0], jnp.where(x > xp[-1], xp[-1], x))
  i = jnp.clip(jnp.searchsorted(xp, x, side="right", method="compare_all") - 1, 0, xp.shape[0] - 2)
  x0, x1 = xp[i], xp[i + 1]
  return fp[i] + (x - x0) / (x1 - x0) * (fp[i + 1] - fp[i])


@register_schedule("linear")
@dataclasses.dataclass(frozen=True)
class LinearSchedule(Schedule):
  """DDPM's discrete chain with betas linear in the step index (Ho et al. 2020).

  ``alpha_bar_n = prod_{i<=n} (1 - beta_i)`` for n = 1..N is computed in float64 and reached
  exactly at ``t = n / N`` (``alpha(n/N)**2 == alpha_bar_n``); between grid points
  ``log alpha_bar`` is interpolated linearly, which makes the schedule usable in continuous time.
  """

  beta_start: float = 1e-4
  beta_end: float = 0.02
  timesteps: int = 1000

  def __post_init__(self):
    _check(0.0 < self.beta_start <= self.beta_end < 1.0,
           f"linear schedule needs 0 < beta_start <= beta_end < 1, got "
           f"beta_start={self.beta_start}, beta_end={self.beta_end}")
    _check(int(self.timesteps) == self.timesteps and self.timesteps >= 1,
           f"linear schedule needs an integer timesteps >= 1, got {self.timesteps}")

  @property
  def num_timesteps(self) -> int:
    return int(self.timesteps)

  @functools.cached_property
  def betas(self) -> np.ndarray:
    """The float64 beta table of Ho et al., shape [N]."""
    return np.linspace(self.beta_start, self.beta_end, self.num_timesteps, dtype=np.float64)

  @functools.cached_property
  def _log_alpha_bar_table(self) -> np.ndarray:
    # Index n holds log(alpha_bar) at t = n / N; n = 0 is clean data (alpha_bar = 1).
    return np.concatenate([[0.0], np.cumsum(np.log1p(-self.betas))])

  def _log_alpha_sq(self, t):
    # The table's points are t = n / N: the cell is floor(t * N), no search needed (samplers
    # call this with t per example, thousands of them per step).
    n = self.num_timesteps
    table = jnp.asarray(self._log_alpha_bar_table, jnp.float32)
    t = jnp.asarray(t, jnp.float32)
    pos = jnp.where(t < 0.0, 0.0, jnp.where(t > 1.0, 1.0, t)) * n  # where: see `interp`
    i = jnp.clip(jnp.floor(pos), 0, n - 1).astype(jnp.int32)
    return table[i] + (pos - i) * (table[i + 1] - table[i])

  def alpha_sigma(self, t):
    log_a2 = self._log_alpha_sq(jnp.asarray(t, jnp.float32))
    return jnp.exp(0.5 * log_a2), jnp.sqrt(-jnp.expm1(log_a2))

  def logsnr(self, t):
    return _logsnr_from_log_alpha_sq(self._log_alpha_sq(jnp.asarray(t, jnp.float32)))

  def t_from_logsnr(self, logsnr):
    log_a2 = jax.nn.log_sigmoid(jnp.asarray(logsnr, jnp.float32))
    grid = np.linspace(0.0, 1.0, self.num_timesteps + 1)
    # interp needs increasing sample points; log(alpha_bar) decreases with t.
    return interp(-log_a2, -self._log_alpha_bar_table, grid)


@register_schedule("cosine_discrete")
@dataclasses.dataclass(frozen=True)
class DiscreteCosineSchedule(LinearSchedule):
  """Nichol & Dhariwal's cosine schedule as the discrete chain improved-/guided-diffusion build
  (``betas_for_alpha_bar``): ``beta_i = min(1 - f((i + 1) / N) / f(i / N), max_beta)`` with
  ``f(t) = cos^2((t + s) / (1 + s) * pi / 2)``, in float64. The last beta is clipped to
  0.999, so the chain ends at ``alpha_bar`` about 2e-9 rather than the continuous schedule's 0;
  ADM's ImageNet 64x64 model was trained on this chain (N = 1000). Between grid points it is
  used like `LinearSchedule` (``beta_start`` / ``beta_end`` do not apply).
  """

  s: float = 0.008
  max_beta: float = 0.999

  def __post_init__(self):
    _check(int(self.timesteps) == self.timesteps and self.timesteps >= 1,
           f"cosine_discrete schedule needs an integer timesteps >= 1, got {self.timesteps}")
    _check(self.s >= 0.0 and 0.0 < self.max_beta < 1.0,
           f"cosine_discrete schedule needs s >= 0 and 0 < max_beta < 1, got s={self.s}, "
           f"max_beta={self.max_beta}")
    _check((self.beta_start, self.beta_end) == (1e-4, 0.02),
           "cosine_discrete takes no beta_start / beta_end (its betas come from the cosine)")

  @functools.cached_property
  def betas(self) -> np.ndarray:
    n = self.num_timesteps
    f = lambda t: np.cos((t + self.s) / (1.0 + self.s) * np.pi / 2) ** 2
    i = np.arange(n, dtype=np.float64)
    return np.minimum(1.0 - f((i + 1) / n) / f(i / n), self.max_beta)


@register_schedule("cosine")
@dataclasses.dataclass(frozen=True)
class CosineSchedule(Schedule):
  """Nichol & Dhariwal's cosine schedule in continuous time.

  ``alpha_bar(t) = cos^2(phi(t)) / cos^2(phi(0))`` with ``phi(t) = (t + s) / (1 + s) * pi / 2``.
  The log-SNR is floored at ``logsnr_min`` (-20 by default, about where the paper's
  0.999-clipped discrete betas end) so that ``alpha(1) > 0`` and eps-prediction stays defined.
  """

  s: float = 0.008
  logsnr_min: float = -20.0

  def __post_init__(self):
    _check(self.s >= 0.0, f"cosine schedule needs s >= 0, got s={self.s}")
    _check(math.isfinite(self.logsnr_min),
           f"cosine schedule needs a finite logsnr_min, got {self.logsnr_min}")

  def _phi(self, t):
    return (t + self.s) / (1.0 + self.s) * (math.pi / 2)

  def logsnr(self, t):
    t = jnp.asarray(t, jnp.float32)
    phi, phi0 = self._phi(t), self._phi(jnp.zeros_like(t))
    cos0_sq = jnp.cos(phi0) ** 2
    alpha_bar = jnp.cos(phi) ** 2 / cos0_sq
    # 1 - alpha_bar written as a product of sines, with phi - phi0 computed directly (not as a
    # difference): exact near t = 0 where alpha_bar -> 1.
    one_minus = jnp.sin(t / (1.0 + self.s) * (math.pi / 2)) * jnp.sin(phi + phi0) / cos0_sq
    raw = jnp.log(alpha_bar) - jnp.log(one_minus)
    return jnp.maximum(raw, self.logsnr_min)

  def alpha_sigma(self, t):
    logsnr = self.logsnr(t)
    return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))

  def t_from_logsnr(self, logsnr):
    logsnr = jnp.maximum(jnp.asarray(logsnr, jnp.float32), self.logsnr_min)
    # cos(phi) = sqrt(alpha_bar) cos(phi0), solved as an angle from both of its legs:
    # sin^2(phi) = sin^2(phi0) + sigmoid(-logsnr) cos^2(phi0) has no cancellation (arccos of a
    # number near 1 would lose the small times, where sigma / alpha is near EDM's 0.002).
    phi0 = self._phi(0.0)
    sin_phi = jnp.sqrt(math.sin(phi0) ** 2 + jax.nn.sigmoid(-logsnr) * math.cos(phi0) ** 2)
    phi = jnp.arctan2(sin_phi, jnp.sqrt(jax.nn.sigmoid(logsnr)) * math.cos(phi0))
    t = (phi - phi0) / (math.pi / 2) * (1.0 + self.s)
    return jnp.clip(t, 0.0, 1.0)


@register_schedule("vp")
@dataclasses.dataclass(frozen=True)
class VPSchedule(Schedule):
  """Song et al.'s VP-SDE with linear beta(t) = beta_min + t (beta_max - beta_min).

  ``log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2``. Sampling ends at
  ``t_min = eps`` (1e-3 in the paper) followed by a jump to clean data.
  """

  beta_min: float = 0.1
  beta_max: float = 20.0
  eps: float = 1e-3

  def __post_init__(self):
    _check(0.0 < self.beta_min < self.beta_max,
           f"vp schedule needs 0 < beta_min < beta_max, got beta_min={self.beta_min}, "
           f"beta_max={self.beta_max}")
    _check(0.0 <= self.eps < 1.0, f"vp schedule needs 0 <= eps < 1, got eps={self.eps}")

  @property
  def t_min(self) -> float:
    return float(self.eps)

  def _log_alpha_sq(self, t):
    t = jnp.asarray(t, jnp.float32)
    return -0.5 * t**2 * (self.beta_max - self.beta_min) - t * self.beta_min

  def alpha_sigma(self, t):
    log_a2 = self._log_alpha_sq(t)
    return jnp.exp(0.5 * log_a2), jnp.sqrt(-jnp.expm1(log_a2))

  def logsnr(self, t):
    return _logsnr_from_log_alpha_sq(self._log_alpha_sq(t))

  def t_from_logsnr(self, logsnr):
    log_a2 = jax.nn.log_sigmoid(jnp.asarray(logsnr, jnp.float32))
    d = self.beta_max - self.beta_min
    # Positive root of d/2 t^2 + beta_min t + log_a2 = 0.
    return (-self.beta_min + jnp.sqrt(self.beta_min**2 - 2.0 * d * log_a2)) / d


@register_schedule("edm")
@dataclasses.dataclass(frozen=True)
class EDMSchedule(Schedule):
  """Karras et al. 2022: alpha = 1 and sigma on the rho-spaced grid.

  ``sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``, so uniform
  steps in t are exactly the paper's time steps. The formula extends past [0, 1] to any
  sigma > 0, which the log-normal training distribution needs.
  """

  sigma_min: float = 0.002
  sigma_max: float = 80.0
  rho: float = 7.0

  def __post_init__(self):
    _check(0.0 < self.sigma_min < self.sigma_max,
           f"edm schedule needs 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
           f"sigma_max={self.sigma_max}")
    _check(self.rho > 0.0, f"edm schedule needs rho > 0, got rho={self.rho}")

  def _sigma(self, t):
    lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
    return jnp.maximum(lo + jnp.asarray(t, jnp.float32) * (hi - lo), 0.0) ** self.rho

  def alpha_sigma(self, t):
    sigma = self._sigma(t)
    return jnp.ones_like(sigma), sigma

  def logsnr(self, t):
    return -2.0 * jnp.log(self._sigma(t))

  def t_from_logsnr(self, logsnr):
    sigma = jnp.exp(-0.5 * jnp.asarray(logsnr, jnp.float32))
    lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
    return (sigma ** (1 / self.rho) - lo) / (hi - lo)


@register_schedule("ve")
@dataclasses.dataclass(frozen=True)
class VESchedule(Schedule):
  """Song et al.'s VE-SDE: alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

  sigma_min: float = 0.01
  sigma_max: float = 50.0

  def __post_init__(self):
    _check(0.0 < self.sigma_min < self.sigma_max,
           f"ve schedule needs 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
           f"sigma_max={self.sigma_max}")

  def alpha_sigma(self, t):
    sigma = jnp.exp(self.logsnr(t) * -0.5)
    return jnp.ones_like(sigma), sigma

  def logsnr(self, t):
    t = jnp.asarray(t, jnp.float32)
    return -2.0 * (math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min))

  def t_from_logsnr(self, logsnr):
    log_sigma = -0.5 * jnp.asarray(logsnr, jnp.float32)
    return (log_sigma - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)


@register_schedule("flow")
@dataclasses.dataclass(frozen=True)
class FlowSchedule(Schedule):
  """Rectified flow / flow matching (linear interpolation): alpha = 1 - t, sigma = t."""

  def alpha_sigma(self, t):
    t = jnp.asarray(t, jnp.float32)
    return 1.0 - t, t

  def logsnr(self, t):
    t = jnp.asarray(t, jnp.float32)
    return 2.0 * (jnp.log1p(-t) - jnp.log(t))

  def t_from_logsnr(self, logsnr):
    return jax.nn.sigmoid(-0.5 * jnp.asarray(logsnr, jnp.float32))
