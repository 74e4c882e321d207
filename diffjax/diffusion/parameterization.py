"""What the network predicts, and how its output becomes a denoiser.

Two pieces live here:

* **Conversions** between the quantities a network may predict, all through the pair
  ``(x0, eps)`` of ``x_t = alpha x0 + sigma eps``: ``"x0"``, ``"eps"``, ``"v"``
  (``alpha eps - sigma x0``, Salimans & Ho 2022), ``"score"`` (``-eps / sigma``) and
  ``"flow"`` (the velocity ``d x_t / dt = alpha' x0 + sigma' eps``; ``eps - x0`` on the flow
  schedule). `to_x0_eps` and `from_x0_eps` are the only place these formulas are written.
* **Parameterizations**: `Prediction` (the network outputs one of the above directly) and
  `EDMPreconditioning` (Karras et al. 2022: ``D = c_skip x + c_out F(c_in x, c_noise)``). Each
  knows the network's input scaling and noise-level input, how to turn the raw output into
  ``x0_hat``, its regression target, and how an output error relates to an ``x0`` error (which
  is what lets the losses express every paper's weighting in one place).

`make_denoiser` joins a network function, a parameterization and a schedule into the single
callable ``denoise(x_t, t, cond) -> x0_hat`` that every sampler takes.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from diffjax.diffusion.schedules import Schedule, broadcast_to_rank
from diffjax.registry import Registry

PREDICTION_KINDS = ("x0", "eps", "v", "score", "flow")
NOISE_INPUTS = ("t", "logsnr", "log_sigma", "step_index")

# net_fn(x_in, noise_level, cond) -> output with the shape of x_in.
NetFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
# denoise(x_t, t, cond) -> x0_hat.
DenoiseFn = Callable[..., jax.Array]


def _check_kind(kind: str) -> None:
  if kind not in PREDICTION_KINDS:
    raise ValueError(f"unknown prediction kind {kind!r}; allowed: {', '.join(PREDICTION_KINDS)}")


def _coefficients(schedule: Schedule, t, x, need_derivatives: bool):
  alpha, sigma = schedule.alpha_sigma(t)
  coeffs = [broadcast_to_rank(alpha, x), broadcast_to_rank(sigma, x)]
  if need_derivatives:
    d_alpha, d_sigma = schedule.alpha_sigma_derivatives(t)
    coeffs += [broadcast_to_rank(d_alpha, x), broadcast_to_rank(d_sigma, x)]
  return coeffs


def to_x0_eps(kind: str, pred, x_t, t, schedule: Schedule):
  """Recovers ``(x0, eps)`` from a prediction of the given kind at ``(x_t, t)``.

  Args:
    kind: one of `PREDICTION_KINDS`.
    pred: the prediction, same shape as ``x_t`` [batch, ...].
    x_t: the noisy input [batch, ...].
    t: times [batch].
    schedule: the noise schedule.

  Returns:
    ``(x0, eps)``, both shaped like ``x_t``.
  """
  _check_kind(kind)
  if kind == "flow":
    alpha, sigma, d_alpha, d_sigma = _coefficients(schedule, t, x_t, True)
    det = alpha * d_sigma - sigma * d_alpha
    return (d_sigma * x_t - sigma * pred) / det, (alpha * pred - d_alpha * x_t) / det
  alpha, sigma = _coefficients(schedule, t, x_t, False)
  if kind == "x0":
    return pred, (x_t - alpha * pred) / sigma
  if kind == "eps":
    return (x_t - sigma * pred) / alpha, pred
  if kind == "score":
    eps = -sigma * pred
    return (x_t - sigma * eps) / alpha, eps
  norm = alpha**2 + sigma**2  # kind == "v"
  return (alpha * x_t - sigma * pred) / norm, (sigma * x_t + alpha * pred) / norm


def from_x0_eps(kind: str, x0, eps, t, schedule: Schedule):
  """The prediction of the given kind for data ``x0`` and noise ``eps`` at times ``t``."""
  _check_kind(kind)
  if kind == "x0":
    return x0
  if kind == "eps":
    return eps
  alpha, sigma, *derivs = _coefficients(schedule, t, x0, kind == "flow")
  if kind == "score":
    return -eps / sigma
  if kind == "v":
    return alpha * eps - sigma * x0
  d_alpha, d_sigma = derivs
  return d_alpha * x0 + d_sigma * eps


def convert(pred, from_kind: str, to_kind: str, x_t, t, schedule: Schedule):
  """Converts a prediction between kinds, e.g. ``convert(eps_hat, "eps", "v", x_t, t, s)``."""
  x0, eps = to_x0_eps(from_kind, pred, x_t, t, schedule)
  return from_x0_eps(to_kind, x0, eps, t, schedule)


def noise_level(kind: str, t, schedule: Schedule):
  """The scalar per example that the network is conditioned on.

  ``"t"``: ``1000 t`` (DDPM's step index scale); ``"logsnr"``: the log-SNR; ``"log_sigma"``:
  EDM's ``c_noise = ln(sigma / alpha) / 4``; ``"step_index"``: the 0-based index ``N t - 1`` of
  step ``n = N t`` of a discrete chain of N steps, which is what the published DDPM, ADM and
  DiT networks were trained on (their step 0 is diffjax's ``t = 1 / N``).
  """
  if kind == "t":
    return 1000.0 * jnp.asarray(t, jnp.float32)
  if kind == "step_index":
    if schedule.num_timesteps is None:
      raise ValueError(f"noise_input 'step_index' needs a discrete schedule (e.g. linear), not "
                       f"{schedule.name!r}")
    return schedule.num_timesteps * jnp.asarray(t, jnp.float32) - 1.0
  if kind == "logsnr":
    return schedule.logsnr(t)
  if kind == "log_sigma":
    return -0.125 * schedule.logsnr(t)
  raise ValueError(f"unknown noise_input {kind!r}; allowed: {', '.join(NOISE_INPUTS)}")


PARAMETERIZATIONS = Registry("parameterization")
register_parameterization = PARAMETERIZATIONS.register  # class decorator


def parameterization_names() -> tuple[str, ...]:
  return PARAMETERIZATIONS.names()


def get_parameterization(name: str, **kwargs) -> "Parameterization":
  """``"eps"``, ``"x0"``, ``"v"``, ``"flow"`` (network predicts that directly) or ``"edm"``."""
  return PARAMETERIZATIONS.build(name, **kwargs)


@dataclasses.dataclass(frozen=True)
class Parameterization(abc.ABC):
  """How a network's raw output ``F`` relates to the denoiser."""

  name: ClassVar[str] = ""

  @abc.abstractmethod
  def network_inputs(self, x_t, t, schedule: Schedule):
    """Returns ``(x_in, noise_level)`` to feed the network."""

  @abc.abstractmethod
  def x0_from_output(self, out, x_t, t, schedule: Schedule):
    """``x0_hat`` from the network output."""

  @abc.abstractmethod
  def target(self, x0, eps, x_t, t, schedule: Schedule):
    """The regression target for the raw output (its "native" loss is ``|F - target|^2``)."""

  @abc.abstractmethod
  def output_error_scale(self, t, schedule: Schedule):
    """``s(t)`` [batch] with ``F - target = s(t) * (x0_hat - x0)`` for the same ``x_t``."""


@register_parameterization("prediction")
@dataclasses.dataclass(frozen=True)
class Prediction(Parameterization):
  """The network outputs one of ``x0``, ``eps``, ``v`` or the flow velocity directly."""

  kind: str = "eps"
  noise_input: str = "t"

  def __post_init__(self):
    if self.kind not in ("x0", "eps", "v", "flow"):
      raise ValueError(f"Prediction kind must be one of x0, eps, v, flow; got {self.kind!r}")
    if self.noise_input not in NOISE_INPUTS:
      raise ValueError(
          f"unknown noise_input {self.noise_input!r}; allowed: {', '.join(NOISE_INPUTS)}")

  def network_inputs(self, x_t, t, schedule):
    return x_t, noise_level(self.noise_input, t, schedule)

  def x0_from_output(self, out, x_t, t, schedule):
    return to_x0_eps(self.kind, out, x_t, t, schedule)[0]

  def target(self, x0, eps, x_t, t, schedule):
    return from_x0_eps(self.kind, x0, eps, t, schedule)

  def output_error_scale(self, t, schedule):
    alpha, sigma = schedule.alpha_sigma(t)
    if self.kind == "x0":
      return jnp.ones_like(alpha)
    if self.kind == "eps":  # eps = (x_t - alpha x0) / sigma
      return -alpha / sigma
    if self.kind == "v":  # v = alpha eps - sigma x0 = (alpha x_t - (alpha^2 + sigma^2) x0) / sigma
      return -(alpha**2 + sigma**2) / sigma
    d_alpha, d_sigma = schedule.alpha_sigma_derivatives(t)  # flow: u = a' x0 + s' (x_t - a x0) / s
    return (d_alpha * sigma - d_sigma * alpha) / sigma


# The network predicts that quantity directly: "eps", "x0", "v" or "flow" (velocity).
for _kind in ("eps", "x0", "v", "flow"):
  PARAMETERIZATIONS.add(_kind, Prediction, kind=_kind)


@register_parameterization("edm")
@dataclasses.dataclass(frozen=True)
class EDMPreconditioning(Parameterization):
  """Karras et al.'s preconditioning, applied to ``x_t / alpha`` so it works on any schedule.

  With ``s = sigma / alpha``: ``c_in = 1 / sqrt(s^2 + sd^2)``, ``c_skip = sd^2 / (s^2 + sd^2)``,
  ``c_out = s sd / sqrt(s^2 + sd^2)``, ``c_noise = ln(s) / 4``.
  """

  sigma_data: float = 0.5
  noise_input: str = "log_sigma"

  def __post_init__(self):
    if not self.sigma_data > 0:
      raise ValueError(f"EDM preconditioning needs sigma_data > 0, got {self.sigma_data}")
    if self.noise_input not in NOISE_INPUTS:
      raise ValueError(
          f"unknown noise_input {self.noise_input!r}; allowed: {', '.join(NOISE_INPUTS)}")

  def coefficients(self, t, schedule):
    """``(c_skip, c_out, c_in)`` as functions of ``sigma / alpha``, each [batch]."""
    s = schedule.sigma_tilde(t)
    sd = self.sigma_data
    norm = jnp.sqrt(s**2 + sd**2)
    return sd**2 / norm**2, s * sd / norm, 1.0 / norm

  def network_inputs(self, x_t, t, schedule):
    _, _, c_in = self.coefficients(t, schedule)
    alpha = schedule.alpha(t)
    return (broadcast_to_rank(c_in / alpha, x_t) * x_t,
            noise_level(self.noise_input, t, schedule))

  def x0_from_output(self, out, x_t, t, schedule):
    c_skip, c_out, _ = self.coefficients(t, schedule)
    scaled = x_t / broadcast_to_rank(schedule.alpha(t), x_t)
    return broadcast_to_rank(c_skip, x_t) * scaled + broadcast_to_rank(c_out, x_t) * out

  def target(self, x0, eps, x_t, t, schedule):
    c_skip, c_out, _ = self.coefficients(t, schedule)
    scaled = x_t / broadcast_to_rank(schedule.alpha(t), x_t)
    return (x0 - broadcast_to_rank(c_skip, x0) * scaled) / broadcast_to_rank(c_out, x0)

  def output_error_scale(self, t, schedule):
    return 1.0 / self.coefficients(t, schedule)[1]


def make_denoiser(net_fn: NetFn, parameterization: Parameterization,
                  schedule: Schedule) -> DenoiseFn:
  """Wraps a network into ``denoise(x_t, t, cond=None) -> x0_hat``.

  Args:
    net_fn: ``net_fn(x_in, noise_level, cond) -> F`` (parameters already bound), with ``x_in``
      shaped like ``x_t`` and ``noise_level`` of shape [batch].
    parameterization: what ``F`` means.
    schedule: the noise schedule the network was trained with.
  """

  def denoise(x_t, t, cond=None):
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
    x_in, level = parameterization.network_inputs(x_t, t, schedule)
    out = net_fn(x_in, level, cond)
    return parameterization.x0_from_output(out.astype(jnp.float32), x_t, t, schedule)

  return denoise
