"""The pure train step, for any method: ``train_step(state, batch) -> (state, metrics)``.

`train_step` wraps a method's update ``update(state, batch, rng) -> (state, metrics)`` with
what every objective shares: the step's randomness (``fold_in(state.rng, state.step)``, so
resumed runs are exact), the non-finite / loss-spike policy (a rejected update leaves every
network as it was), EMA of the networks that keep one, the counters and the learning rates.
Methods build their updates from `value_and_grad` (gradient accumulation over micro-batches)
and `apply_gradients` (one optimiser step of one network).

Bind the static pieces with ``functools.partial`` and jit once with explicit shardings and
``donate_argnums=0`` (`diffjax.training.setup.jit_train_step` does).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from diffjax.spec import FaultSpec, TrainSpec
from diffjax.training import posthoc_ema
from diffjax.training.state import NetState, TrainState


def ema_decay_at(step, decay: float, warmup: bool):
  """EMA decay for the update at ``step``; with warm-up ``min(decay, (1 + n) / (10 + n))``."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  n = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_update(ema, params, decay):
  """``decay * ema + (1 - decay) * params``, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def split_micro_batches(tree, k: int):
  """``[B, ...] -> [k, B / k, ...]``; micro-batch ``i`` holds examples ``i, i + k, ...``, so
  each one stays spread over every device of a batch-sharded array."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1),
                      tree)


def value_and_grad(loss_fn: Callable, params, batch, per_example=None, *, grad_accum: int = 1):
  """``((loss, aux), grads)`` of ``loss_fn(params, batch, per_example) -> (loss, aux)``.

  With ``grad_accum > 1`` the batch and ``per_example`` (a tree of per-example random draws,
  leading axis the batch, made once for the whole batch) are split into micro-batches whose
  gradients are summed in a ``lax.scan`` (peak activation memory of one micro-batch); the
  result equals one call on the whole batch when the loss is a mean over examples. ``aux`` is
  the last micro-batch's.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum == 1:
    return grad_fn(params, batch, per_example)

  def accumulate(carry, micro):
    (loss, aux), grads = grad_fn(params, *micro)
    total_loss, total_grads = carry
    return (total_loss + loss, jax.tree.map(jnp.add, total_grads, grads)), aux

  zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  (loss, grads), aux = jax.lax.scan(
      accumulate, zero, split_micro_batches((batch, per_example), grad_accum))
  loss, grads = jax.tree.map(lambda x: x / grad_accum, (loss, grads))
  return (loss, jax.tree.map(lambda a: a[-1], aux)), grads


def apply_gradients(net: NetState, optimizer: optax.GradientTransformation, grads) -> NetState:
  """One optimiser step of one network (its EMA is updated by `train_step`)."""
  updates, opt_state = optimizer.update(grads, net.opt_state, net.params)
  return net.replace(params=optax.apply_updates(net.params, updates), opt_state=opt_state)


def train_step(state: TrainState, batch, *, method, train: TrainSpec, faults: FaultSpec):
  """One step of ``method``'s update under the shared policies.

  The update is rejected when any metric it reports is not finite (its losses and gradient
  norms), or, with ``faults.loss_spike_factor > 0``, when its ``loss`` exceeds that factor
  times the running mean of accepted losses: every network stays as it was, the step counter
  still advances, and ``skipped`` / ``streak`` count it. The host decides whether to abort
  (see the training job).

  Args:
    state: the current `TrainState`.
    batch: ``{"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B]}``.
    method: a `diffjax.methods.Method`; its networks' optimisers and EMA flags apply.
    train: EMA decay and warm-up.
    faults: the loss-spike threshold and, for tests, ``inject_nan_steps`` (steps whose
      ``loss`` metric is replaced by NaN, so their update is rejected).

  Returns:
    ``(new_state, metrics)``: the method's scalar metrics plus ``lr`` (``lr/<role>`` when
    several networks train), ``skipped`` (total so far) and ``streak`` (consecutive skips).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  updated, metrics = method.update(state, batch, rng)
  metrics = dict(metrics)
  if faults.inject_nan_steps:
    injected = jnp.isin(state.step, jnp.asarray(faults.inject_nan_steps))
    metrics["loss"] = jnp.where(injected, jnp.nan, metrics["loss"])
  ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
  loss = metrics.get("loss")
  if faults.loss_spike_factor > 0 and loss is not None:
    ok &= (state.loss_avg == 0) | (loss <= faults.loss_spike_factor * state.loss_avg)

  decay = ema_decay_at(state.step, train.ema_decay, train.ema_warmup)
  gammas = tuple(posthoc_ema.std_to_gamma(s) for s in train.posthoc_ema_stds)
  nets = {}
  for role, net in updated.nets.items():
    if net.ema_params is not None and net.trainable:
      net = net.replace(ema_params=ema_update(net.ema_params, net.params, decay))
    if net.posthoc is not None:
      net = net.replace(posthoc=posthoc_ema.update(net.posthoc, net.params, state.step, gammas))
    nets[role] = jax.tree.map(lambda n, o: jnp.where(ok, n, o), net, state.nets[role])
  loss_avg = state.loss_avg
  if loss is not None:
    new_avg = jnp.where(state.loss_avg == 0, loss, 0.99 * state.loss_avg + 0.01 * loss)
    loss_avg = jnp.where(ok, new_avg, state.loss_avg)
  new_state = state.replace(
      step=state.step + 1, nets=nets, skipped=state.skipped + (~ok).astype(jnp.int32),
      streak=jnp.where(ok, 0, state.streak + 1), loss_avg=loss_avg)
  trained = {role: net for role, net in method.networks.items() if net.optimizer is not None}
  for role, net in trained.items():
    metrics["lr" if len(trained) == 1 else f"lr/{role}"] = net.lr_schedule(state.step)
  metrics.update(skipped=new_state.skipped, streak=new_state.streak)
  return new_state, metrics


def is_averaged(metric: str) -> bool:
  """Whether the training loop averages ``metric`` over a log interval (a method's losses and
  gradient norms) or reports its last value (learning rates, skip counters)."""
  return not (metric in ("lr", "skipped", "streak") or metric.startswith("lr/"))
