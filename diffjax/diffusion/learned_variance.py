"""Learned reverse-process variances (Nichol & Dhariwal 2021, "Improved DDPM"), as ADM and DiT
train and sample with them.

The network outputs ``2C`` channels for ``C`` data channels: the first ``C`` are its usual
prediction (eps, x0 or v, through a `Prediction` parameterization), the last ``C`` a value
``v`` per element that interpolates the log-variance of each reverse step between its two
natural bounds, ``log Sigma = f log beta_t + (1 - f) log beta~_t`` with ``f = (v + 1) / 2``:
``beta~_t`` is the posterior variance of ``q(x_{t-1} | x_t, x0)`` (the lower bound) and
``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` the forward one (the upper bound). As in
improved-/guided-diffusion, ``beta~`` at the chain's first step (0) is replaced by that of step 1
("clipped"), and the bounds of a respaced chain are its own (``beta'_k = 1 - alpha_bar_k /
alpha_bar_{k'}`` between consecutive kept steps).

Training (`hybrid_loss`): ``L_simple + lambda * N * L_t`` per example, ``L_t`` the chain's
variational-bound term at the sampled step in bits per dimension (the KL of the true posterior
from the model's Gaussian, the discretised-Gaussian decoder at step 0), computed with a
stop-gradient on the predicted mean so that the VLB term trains only the variance. With
``lambda = 0.001`` and ``N = 1000`` this is guided-diffusion's ``mse + vb`` (ADM, DiT);
improved-diffusion's rescaled loss at N = 4000 is the same ``lambda``.

Sampling (`sample`): ancestral steps ``x_{k'} ~ N(mu_theta, Sigma_theta)`` along the chain or a
respacing of it (``spacing="respaced"``: DiT's 250 steps of 1000), with classifier-free
guidance of the prediction channels (the variance taken from the conditional branch) and DiT's
option of guiding only the first ``guidance_channels`` of them.

All per-step constants are computed in float64 from the schedule's ``betas`` (a discrete chain:
``linear``, ``cosine_discrete``), like the reference implementations' numpy tables.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion import samplers
from diffjax.diffusion.losses import denoising_loss, sample_t
from diffjax.diffusion.parameterization import NetFn, Parameterization, Prediction
from diffjax.diffusion.schedules import Schedule, broadcast_to_rank

BIN_HALF_WIDTH = 1.0 / 255.0  # half the spacing of uint8 values mapped by x / 127.5 - 1


def check_schedule(schedule: Schedule, parameterization: Parameterization) -> None:
  """Raises ValueError unless the pair can learn variances: a discrete chain with a beta table
  and a direct prediction (eps, x0 or v)."""
  if schedule.num_timesteps is None or not hasattr(schedule, "betas"):
    raise ValueError(f"learned variances live on a discrete chain with betas (linear, "
                     f"cosine_discrete), not the {schedule.name!r} schedule")
  if not isinstance(parameterization, Prediction) or parameterization.kind == "flow":
    raise ValueError(f"learned variances need an eps, x0 or v prediction, not "
                     f"{parameterization.name or type(parameterization).__name__}")


def chain_tables(schedule: Schedule, steps: list[int] | None = None) -> dict[str, np.ndarray]:
  """float64 per-step constants of the chain's steps ``steps`` (0-based, ascending; default
  every step), each step's predecessor being the previous kept step (a respaced chain).

  Returns ``{"alpha_bar", "alpha_bar_prev", "beta", "posterior_variance",
  "posterior_log_variance_clipped", "log_beta", "coef_x0", "coef_xt"}``, arrays of
  ``len(steps)``; the posterior mean is ``coef_x0 * x0 + coef_xt * x_t``.
  """
  full = np.cumprod(1.0 - np.asarray(schedule.betas, np.float64))
  steps = list(range(len(full))) if steps is None else list(steps)
  ab = full[steps]
  prev = np.concatenate([[1.0], ab[:-1]])
  beta = 1.0 - ab / prev
  post = beta * (1.0 - prev) / (1.0 - ab)
  clipped = np.log(np.concatenate([post[1:2], post[1:]])) if len(post) > 1 else np.log(beta)
  return {"alpha_bar": ab, "alpha_bar_prev": prev, "beta": beta, "posterior_variance": post,
          "posterior_log_variance_clipped": clipped, "log_beta": np.log(beta),
          "coef_x0": beta * np.sqrt(prev) / (1.0 - ab),
          "coef_xt": (1.0 - prev) * np.sqrt(1.0 - beta) / (1.0 - ab)}


def model_log_variance(v, min_log, max_log):
  """``f max_log + (1 - f) min_log`` with ``f = (v + 1) / 2`` (v is the network's raw output;
  [-1, 1] spans the bounds)."""
  frac = (v + 1.0) / 2.0
  return frac * max_log + (1.0 - frac) * min_log


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) +
                jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _normal_cdf(x):
  return 0.5 * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


def discretized_gaussian_nll(x, mean, log_scale):
  """``-log P(x)`` of 8-bit data in [-1, 1] under N(mean, exp(log_scale)^2) integrated over each
  value's bin, the edge bins open (Ho et al.; guided-diffusion's decoder term uses the tanh
  approximation of the normal CDF, diffjax the exact one)."""
  inv = jnp.exp(-log_scale)
  upper = _normal_cdf((x - mean + BIN_HALF_WIDTH) * inv)
  lower = _normal_cdf((x - mean - BIN_HALF_WIDTH) * inv)
  prob = jnp.where(x < -0.999, upper, jnp.where(x > 0.999, 1.0 - lower, upper - lower))
  return -jnp.log(jnp.maximum(prob, 1e-12))


def _mean_flat(x):
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def step_index(t, schedule: Schedule):
  """0-based chain step of times ``t = (k + 1) / N`` [batch] (int32)."""
  return jnp.round(jnp.asarray(t, jnp.float32) * schedule.num_timesteps - 1.0).astype(jnp.int32)


def vlb_term(x0, x_t, t, x0_hat, v, schedule: Schedule):
  """The variational-bound term ``L_k`` of the chain's step k at times ``t``, in bits/dim.

  Args:
    x0: clean data [B, ...] in [-1, 1] (8-bit values for the decoder term to be a likelihood).
    x_t: the noisy input at ``t`` [B, ...].
    t: times [B] on the chain's grid, ``(k + 1) / N``.
    x0_hat: the predicted clean data [B, ...] (pass it through ``jax.lax.stop_gradient`` for
      the hybrid loss).
    v: the variance output [B, ...].
    schedule: the discrete schedule.

  Returns:
    [B]: ``KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k)) / (D ln 2)`` for k > 0, the decoder's
    ``-log p(x0 | x_1) / (D ln 2)`` at k = 0.
  """
  tab = {k: jnp.asarray(v_, jnp.float32) for k, v_ in chain_tables(schedule).items()}
  k = step_index(t, schedule)
  at = lambda name: broadcast_to_rank(tab[name][k], x_t)
  true_mean = at("coef_x0") * x0 + at("coef_xt") * x_t
  model_mean = at("coef_x0") * x0_hat + at("coef_xt") * x_t
  true_logvar = at("posterior_log_variance_clipped")
  logvar = model_log_variance(v, true_logvar, at("log_beta"))
  kl = _mean_flat(normal_kl(true_mean, true_logvar, model_mean, logvar)) / math.log(2.0)
  nll = _mean_flat(discretized_gaussian_nll(x0, model_mean, 0.5 * logvar)) / math.log(2.0)
  return jnp.where(k == 0, nll, kl)


def hybrid_loss(net_fn: NetFn, x0, rng, schedule: Schedule, parameterization: Parameterization,
                *, cond=None, vlb_weight: float = 0.001, weighting: str = "simple",
                t_sampler_options: dict | None = None, min_snr_gamma: float = 5.0,
                t=None, eps=None):
  """The per-example hybrid loss ``L_simple + vlb_weight * N * L_t`` (Nichol & Dhariwal).

  Args:
    net_fn: ``net_fn(x_in, noise_level, cond) -> [B, ..., 2C]`` (prediction, variance).
    x0, rng, schedule, parameterization, cond, weighting, min_snr_gamma, t, eps: as
      `denoising_loss`, whose value on the prediction channels is the first term; times are
      drawn uniformly over the chain's steps.
    vlb_weight: lambda (0.001 in both papers).

  Returns:
    ``(loss [B], {"t": [B], "mse": [B], "vlb": [B] (bits/dim)})``.
  """
  check_schedule(schedule, parameterization)
  channels = x0.shape[-1]
  rng_t, rng_eps = jax.random.split(rng)
  x0 = x0.astype(jnp.float32)
  if t is None:  # denoising_loss's own draws, made here to rebuild x_t for the VLB term
    t = sample_t(rng_t, x0.shape[0], schedule, "uniform",
                 **{**(t_sampler_options or {}), "discrete": True})
  if eps is None:
    eps = jax.random.normal(rng_eps, x0.shape, jnp.float32)
  outputs = []

  def prediction_net(x_in, level, c):
    out = net_fn(x_in, level, c)
    if out.shape[-1] != 2 * channels:
      raise ValueError(f"a learned-variance network outputs 2 x {channels} channels, got "
                       f"{out.shape[-1]}")
    outputs.append(out.astype(jnp.float32))
    return out[..., :channels]

  mse, _ = denoising_loss(prediction_net, x0, rng, schedule, parameterization, cond=cond,
                          weighting=weighting, min_snr_gamma=min_snr_gamma, t=t, eps=eps)
  out = outputs[0]
  x_t = schedule.marginal(x0, eps, t)
  # The stop-gradient: the VLB term trains the variance only, not the mean (Nichol & Dhariwal).
  x0_hat = parameterization.x0_from_output(jax.lax.stop_gradient(out[..., :channels]), x_t, t,
                                           schedule)
  vlb = vlb_term(x0, x_t, t, x0_hat, out[..., channels:], schedule)
  loss = mse + vlb_weight * schedule.num_timesteps * vlb
  return loss, {"t": t, "mse": mse, "vlb": vlb}


def sample(net_fn: NetFn, parameterization: Parameterization, schedule: Schedule, shape, rng, *,
           num_steps: int, spacing: str = "respaced", cond=None,
           guidance_scale: float | jax.Array | None = None, null_cond=None,
           guidance_channels: int = 0, clip_denoised: bool = False, x_init=None) -> jax.Array:
  """Ancestral sampling with the learned variances (guided-diffusion's ``p_sample_loop``).

  Args:
    net_fn: ``net_fn(x_in, noise_level, cond) -> [B, ..., 2C]``.
    parameterization: what the prediction channels are (eps, x0 or v).
    schedule: the discrete schedule the network was trained on.
    shape: output shape ``(B, ..., C)``.
    rng: PRNG key.
    num_steps: steps of the chain kept (its length: the whole chain).
    spacing: ``"respaced"`` (guided-diffusion's ``space_timesteps``; the default) or
      ``"uniform"`` (every ``N / num_steps``-th step from the last): steps of the chain.
    cond: labels [B] or None.
    guidance_scale: classifier-free guidance weight of the prediction channels (None: off).
    null_cond: the null label for guidance.
    guidance_channels: guide only the first this many prediction channels (0: all). The DiT
      release guides 3 of its 4 latent channels "for exact reproducibility"; its FID 2.27 was
      measured so.
    clip_denoised: clip the predicted x0 to [-1, 1] before the posterior mean (ADM pixels).
    x_init: starting noise (default N(0, I), as the reference implementations).

  Returns:
    Samples of ``shape`` (float32).
  """
  check_schedule(schedule, parameterization)
  if guidance_channels < 0:
    raise ValueError(f"guidance_channels must be >= 0, got {guidance_channels}")
  shape = tuple(int(d) for d in shape)
  channels = shape[-1]
  grid = samplers.time_grid(schedule, num_steps, spacing)
  n = schedule.num_timesteps
  with jax.ensure_compile_time_eval():
    all_ts = np.asarray(grid.t, np.float64)
  ts = all_ts[:-1]
  steps = np.round(ts * n - 1.0).astype(int)
  if np.any(np.abs(ts * n - 1.0 - steps) > 1e-3) or all_ts[-1] != 0.0:
    raise ValueError(f"spacing {spacing!r} with {num_steps} steps does not walk the chain's own "
                     f"steps; use 'respaced'")
  tab = chain_tables(schedule, list(steps[::-1]))  # ascending steps
  rev = {k: jnp.asarray(v[::-1], jnp.float32) for k, v in tab.items()}  # noisiest first
  batch = shape[0]
  if guidance_scale is not None and (cond is None or null_cond is None):
    raise ValueError("guidance_scale needs both cond and null_cond")

  def model(x, t):
    t = jnp.broadcast_to(t, (batch,))
    if guidance_scale is None:
      x_in, level = parameterization.network_inputs(x, t, schedule)
      return net_fn(x_in, level, cond).astype(jnp.float32)
    null = jnp.broadcast_to(jnp.asarray(null_cond, jnp.asarray(cond).dtype), jnp.shape(cond))
    x2, t2 = jnp.concatenate([x, x]), jnp.concatenate([t, t])
    x_in, level = parameterization.network_inputs(x2, t2, schedule)
    out = net_fn(x_in, level, jnp.concatenate([cond, null])).astype(jnp.float32)
    c_out, u_out = jnp.split(out, 2)
    k = guidance_channels or channels
    guided = u_out[..., :k] + guidance_scale * (c_out[..., :k] - u_out[..., :k])
    return jnp.concatenate([guided, c_out[..., k:]], axis=-1)

  def step(x, inputs):
    i, key = inputs
    t = grid.t[i]
    out = model(x, t)
    x0_hat = parameterization.x0_from_output(out[..., :channels], x, jnp.broadcast_to(
        t, (batch,)), schedule)
    if clip_denoised:
      x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
    mean = rev["coef_x0"][i] * x0_hat + rev["coef_xt"][i] * x
    logvar = model_log_variance(out[..., channels:], rev["posterior_log_variance_clipped"][i],
                                rev["log_beta"][i])
    last = i == len(steps) - 1
    noise = jax.random.normal(key, shape, jnp.float32)
    return jnp.where(last, mean, mean + jnp.exp(0.5 * logvar) * noise), None

  rng_init, rng_steps = jax.random.split(rng)
  if x_init is None:
    x_init = jax.random.normal(rng_init, shape, jnp.float32)
  keys = jax.random.split(rng_steps, len(steps))
  x, _ = jax.lax.scan(step, jnp.asarray(x_init, jnp.float32),
                      (jnp.arange(len(steps)), keys))
  return x


def evaluations(num_steps: int) -> int:
  """Network evaluations per image of `sample` (guidance doubles the batch, not the count)."""
  return int(num_steps)


__all__ = ["BIN_HALF_WIDTH", "chain_tables", "check_schedule", "discretized_gaussian_nll",
           "evaluations", "hybrid_loss", "model_log_variance", "normal_kl", "sample",
           "step_index", "vlb_term"]
