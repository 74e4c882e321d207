"""Guidance as denoiser-to-denoiser wrappers: classifier-free guidance (Ho & Salimans 2021)
with an optional interval (Kynkaanniemi et al. 2024) and rescale (Lin et al. 2024), and
autoguidance (Karras et al. 2024)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.diffusion.schedules import Schedule, broadcast_to_rank


def _check_interval(interval, schedule):
  if interval is not None:
    if schedule is None:
      raise ValueError("guidance interval needs the schedule")
    lo, hi = interval
    if not 0 <= lo < hi:
      raise ValueError(f"guidance interval must satisfy 0 <= lo < hi, got {interval}")


def _scale_at(t, scale, interval, schedule):
  """Per-example guidance weight: ``scale`` inside the interval of ``sigma / alpha``, else 1."""
  w = jnp.full(t.shape, scale, jnp.float32)
  if interval is not None:
    level = schedule.sigma_tilde(t)
    w = jnp.where((level > interval[0]) & (level <= interval[1]), w, 1.0)
  return w


def rescale_guided(guided, reference, phi: float):
  """Lin et al. 2024's rescale: the guided prediction scaled to the standard deviation (per
  example, over all its values) of ``reference``, mixed with the unscaled one by ``phi``."""
  axes = tuple(range(1, guided.ndim))
  factor = jnp.std(reference, axis=axes, keepdims=True) / jnp.maximum(
      jnp.std(guided, axis=axes, keepdims=True), 1e-12)
  return guided * (phi * factor + (1.0 - phi))


def autoguidance(denoise_fn: Callable[..., jax.Array], guide_fn: Callable[..., jax.Array],
                 scale: float, *, interval: tuple[float, float] | None = None,
                 schedule: Schedule | None = None) -> Callable[..., jax.Array]:
  """Karras et al. 2024: ``D_guide + w (D - D_guide)`` with a weaker model of the same task
  (smaller, or trained for less) as the guide, both given the same conditioning.

  Args:
    denoise_fn, guide_fn: ``fn(x_t, t, cond) -> x0_hat``, the main and the guiding model.
    scale: w; 1 gives the main model alone.
    interval, schedule: as in `classifier_free_guidance`.
  """
  _check_interval(interval, schedule)

  def guided(x_t, t, cond):
    d, d_guide = denoise_fn(x_t, t, cond), guide_fn(x_t, t, cond)
    return d_guide + broadcast_to_rank(_scale_at(t, scale, interval, schedule), x_t) * (
        d - d_guide)

  return guided


def classifier_free_guidance(denoise_fn: Callable[..., jax.Array], scale: float, null_cond, *,
                             interval: tuple[float, float] | None = None,
                             schedule: Schedule | None = None,
                             rescale: float = 0.0) -> Callable[..., jax.Array]:
  """Makes a guided denoiser ``D_u + w (D_c - D_u)`` from a conditional one.

  Guidance is linear in the prediction, so guiding x0 equals guiding eps, v or the score.
  Both branches run as one batch of twice the size.

  Args:
    denoise_fn: ``denoise_fn(x_t, t, cond) -> x0_hat``.
    scale: guidance scale w; 1 gives the conditional denoiser, 0 the unconditional one.
    null_cond: the unconditional value (e.g. the null class id); broadcast to each leaf of cond.
    interval: optional ``(lo, hi)`` in ``sigma / alpha``: guide only where
      ``lo < sigma / alpha <= hi`` and use the conditional denoiser elsewhere (Kynkaanniemi et
      al. 2024). Needs ``schedule``.
    schedule: the schedule, to map ``t`` to ``sigma / alpha`` for ``interval``.
    rescale: Lin et al.'s phi in [0, 1] (`rescale_guided` of the guided x0 prediction to the
      conditional one's standard deviation; 0: off). Not linear, so unlike the guidance itself
      it depends on the prediction it is applied to (here x0).

  Returns:
    ``guided(x_t, t, cond) -> x0_hat``.
  """
  _check_interval(interval, schedule)
  if not 0.0 <= rescale <= 1.0:
    raise ValueError(f"guidance rescale must be in [0, 1], got {rescale}")

  def guided(x_t, t, cond):
    null = jax.tree.map(lambda c, n: jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape),
                        cond, null_cond)
    both = jax.tree.map(lambda c, n: jnp.concatenate([c, n]), cond, null)
    d = denoise_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), both)
    d_cond, d_uncond = jnp.split(d, 2)
    w = _scale_at(t, scale, interval, schedule)
    out = d_uncond + broadcast_to_rank(w, x_t) * (d_cond - d_uncond)
    return rescale_guided(out, d_cond, rescale) if rescale else out

  return guided
