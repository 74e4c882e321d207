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
            train: bool = True, noise=None):
  """Mean denoising loss of a batch; also returns the per-example losses.

  ``noise``: optional ``(t, eps)`` for the batch, as `draw_noise` makes them (micro-batches of
  one step take their slices of the whole batch's draw); by default they are drawn from ``rng``.
  """
  rng_loss, rng_dropout = jax.random.split(rng)
  labels = batch["label"] if conditional else None

  def net_fn(x, level, cond):
    return model.apply({"params": params}, x, level, cond, train=train,
                       rngs={"dropout": rng_dropout})

  t, eps = noise if noise is not None else (None, None)
  per_example, _ = diffusion.denoising_loss(
      net_fn, batch["image"], rng_loss, spec.schedule, spec.parameterization, cond=labels,
      weighting=spec.weighting, t_sampler=spec.t_sampler,
      t_sampler_options=dict(spec.t_sampler_options), min_snr_gamma=spec.min_snr_gamma,
      sigma_data=spec.sigma_data, t=t, eps=eps)
  return jnp.mean(per_example), per_example


def draw_noise(rng, shape, spec: DiffusionSpec):
  """The ``(t, eps)`` that `loss_fn` would draw from ``rng`` for a batch of ``shape``."""
  rng_loss, _ = jax.random.split(rng)
  rng_t, rng_eps = jax.random.split(rng_loss)
  t = diffusion.sample_t(rng_t, shape[0], spec.schedule, spec.t_sampler,
                         **dict(spec.t_sampler_options))
  return t, jax.random.normal(rng_eps, shape, jnp.float32)


def split_micro_batches(tree, k: int):
  """``[B, ...] -> [k, B / k, ...]``; micro-batch ``i`` holds examples ``i, i + k, ...``, so
  each one stays spread over every device of a batch-sharded array."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1),
                      tree)


def train_step(state: TrainState, batch, *, model: nn.Module, diffusion_spec: DiffusionSpec,
               optimizer: optax.GradientTransformation, lr_schedule: Callable,
               ema_decay: float, ema_warmup: bool, conditional: bool,
               loss_spike_factor: float = 0.0, inject_nan_steps: tuple[int, ...] = (),
               grad_accum: int = 1):
  """One optimisation step.

  An update whose loss or gradients are not finite (or, with ``loss_spike_factor > 0``, whose
  loss exceeds that factor times the running mean of accepted losses) is skipped: parameters,
  EMA and optimiser state stay as they were, the step counter still advances, and
  ``skipped`` / ``streak`` count it. The host decides whether to abort (see the training job).

  Args:
    state: the current `TrainState`.
    batch: ``{"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B]}``.
    loss_spike_factor: loss-spike threshold (0 disables).
    inject_nan_steps: fault injection for tests: steps whose loss is replaced by NaN.
    grad_accum: micro-batches per step. Their gradients are summed in a ``lax.scan`` (peak
      activation memory of one micro-batch) and the step equals one on the whole batch: the
      micro-batches take their slices of the whole batch's times and noise. Dropout masks
      (and label dropout) are drawn per micro-batch.

  Returns:
    ``(new_state, metrics)`` with scalar metrics ``loss``, ``grad_norm``, ``lr``, ``skipped``
    (total so far) and ``streak`` (consecutive skips).
  """
  rng = jax.random.fold_in(state.rng, state.step)

  def objective(params, batch, noise=None):
    loss, per_example = loss_fn(params, batch, rng, model=model, spec=diffusion_spec,
                                conditional=conditional, noise=noise)
    if inject_nan_steps:
      loss = loss * jnp.where(jnp.isin(state.step, jnp.asarray(inject_nan_steps)), jnp.nan, 1.0)
    return loss, per_example

  grad_fn = jax.value_and_grad(objective, has_aux=True)
  if grad_accum == 1:
    (loss, _), grads = grad_fn(state.params, batch)
  else:
    noise = draw_noise(rng, batch["image"].shape, diffusion_spec)

    def accumulate(carry, micro):
      micro_batch, micro_noise = micro
      (loss, _), grads = grad_fn(state.params, micro_batch, micro_noise)
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
    (loss, grads), _ = jax.lax.scan(
        accumulate, zero, split_micro_batches((batch, noise), grad_accum))
    loss, grads = jax.tree.map(lambda x: x / grad_accum, (loss, grads))
  grad_norm = optax.tree.norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if loss_spike_factor > 0:
    ok &= (state.loss_avg == 0) | (loss <= loss_spike_factor * state.loss_avg)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay_at(state.step, ema_decay, ema_warmup)
  ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  loss_avg = jnp.where(state.loss_avg == 0, loss, 0.99 * state.loss_avg + 0.01 * loss)
  new_state = state.replace(
      step=state.step + 1, params=keep(params, state.params),
      ema_params=keep(ema, state.ema_params), opt_state=keep(opt_state, state.opt_state),
      skipped=state.skipped + (~ok).astype(jnp.int32),
      streak=jnp.where(ok, 0, state.streak + 1),
      loss_avg=jnp.where(ok, loss_avg, state.loss_avg))
  metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr_schedule(state.step),
             "skipped": new_state.skipped, "streak": new_state.streak}
  return new_state, metrics
