"""Classifier-free guidance (Ho & Salimans 2021) as a denoiser-to-denoiser wrapper."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.diffusion.schedules import Schedule, broadcast_to_rank


def classifier_free_guidance(denoise_fn: Callable[..., jax.Array], scale: float, null_cond, *,
                             interval: tuple[float, float] | None = None,
                             schedule: Schedule | None = None) -> Callable[..., jax.Array]:
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

  Returns:
    ``guided(x_t, t, cond) -> x0_hat``.
  """
  if interval is not None:
    if schedule is None:
      raise ValueError("guidance interval needs the schedule")
    lo, hi = interval
    if not 0 <= lo < hi:
      raise ValueError(f"guidance interval must satisfy 0 <= lo < hi, got {interval}")

  def guided(x_t, t, cond):
    null = jax.tree.map(lambda c, n: jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape),
                        cond, null_cond)
    both = jax.tree.map(lambda c, n: jnp.concatenate([c, n]), cond, null)
    d = denoise_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), both)
    d_cond, d_uncond = jnp.split(d, 2)
    w = jnp.full(t.shape, scale, jnp.float32)
    if interval is not None:
      level = schedule.sigma_tilde(t)
      w = jnp.where((level > interval[0]) & (level <= interval[1]), w, 1.0)
    return d_uncond + broadcast_to_rank(w, x_t) * (d_cond - d_uncond)

  return guided
