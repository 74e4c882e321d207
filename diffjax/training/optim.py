"""Optimiser and learning-rate schedule from the optimiser spec (optax)."""

from __future__ import annotations

from typing import Callable

import optax

from diffjax.spec import OptimSpec


def learning_rate_schedule(spec: OptimSpec) -> Callable:
  """Linear warm-up from 0 to ``lr``, then constant or cosine decay to 0 at ``total_steps``."""
  if spec.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, spec.lr, spec.warmup_steps, max(spec.total_steps, spec.warmup_steps + 1), 0.0)
  if spec.warmup_steps:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, spec.lr, spec.warmup_steps), optax.constant_schedule(spec.lr)],
        [spec.warmup_steps])
  return optax.constant_schedule(spec.lr)


def make_optimizer(spec: OptimSpec) -> tuple[optax.GradientTransformation, Callable]:
  """``(optimizer, lr_schedule)``: global-norm clipping (when ``grad_clip > 0``) then Adam/AdamW."""
  lr = learning_rate_schedule(spec)
  if spec.name == "adamw":
    opt = optax.adamw(lr, b1=spec.b1, b2=spec.b2, eps=spec.eps, weight_decay=spec.weight_decay)
  else:
    opt = optax.adam(lr, b1=spec.b1, b2=spec.b2, eps=spec.eps)
  if spec.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(spec.grad_clip), opt)
  return opt, lr
