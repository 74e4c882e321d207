"""The pure train step: ``train_step(state, batch) -> (state, metrics)``.

Bind the static pieces with ``functools.partial`` and jit once with explicit shardings and
``donate_argnums=0``. Randomness is ``fold_in(state.rng, state.step)``: a step's noise, times
and dropout depend only on the base key and the step number, so resumed runs are exact.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from diffjax import diffusion
from diffjax.spec import DiffusionSpec
from diffjax.training.state import TrainState


def ema_decay_at(step, decay: float, warmup: bool):
  """EMA decay for the update at ``step``; with warm-up ``min(decay, (1 + n) / (10 + n))``."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  n = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def loss_fn(params, batch, rng, *, model: nn.Module, spec: DiffusionSpec, conditional: bool,
            train: bool = True):
  """Mean denoising loss of a batch; also returns the per-example losses."""
  rng_loss, rng_dropout = jax.random.split(rng)
  labels = batch["label"] if conditional else None

  def net_fn(x, level, cond):
    return model.apply({"params": params}, x, level, cond, train=train,
                       rngs={"dropout": rng_dropout})

  per_example, _ = diffusion.denoising_loss(
      net_fn, batch["image"], rng_loss, spec.schedule, spec.parameterization, cond=labels,
      weighting=spec.weighting, t_sampler=spec.t_sampler,
      t_sampler_options=dict(spec.t_sampler_options), min_snr_gamma=spec.min_snr_gamma,
      sigma_data=spec.sigma_data)
  return jnp.mean(per_example), per_example


def train_step(state: TrainState, batch, *, model: nn.Module, diffusion_spec: DiffusionSpec,
               optimizer: optax.GradientTransformation, lr_schedule: Callable,
               ema_decay: float, ema_warmup: bool, conditional: bool):
  """One optimisation step.

  Args:
    state: the current `TrainState`.
    batch: ``{"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B]}``.

  Returns:
    ``(new_state, metrics)`` with scalar metrics ``loss``, ``grad_norm``, ``lr``.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, _), grads = grad_fn(state.params, batch, rng, model=model, spec=diffusion_spec,
                             conditional=conditional)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay_at(state.step, ema_decay, ema_warmup)
  ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                            opt_state=opt_state)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_schedule(state.step)}
  return new_state, metrics
