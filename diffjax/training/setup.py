"""Builds the model, optimiser and (sharded) train state of an experiment spec; shared by the
train, sample and evaluation jobs."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import optax

from diffjax import parallel
from diffjax.parallel import logical_shardings
from diffjax.spec import ExperimentSpec
from diffjax.training.optim import make_optimizer
from diffjax.training.state import TrainState, create_train_state
from diffjax.training.step import train_step


@dataclasses.dataclass
class StateSetup:
  model: nn.Module
  optimizer: optax.GradientTransformation
  lr_schedule: Callable
  abstract: TrainState  # ShapeDtypeStructs carrying their target shardings
  shardings: Any  # TrainState of NamedShardings: where the state lives between steps
  boxed: TrainState  # abstract state with logical axis names (for reporting)
  init: Callable  # jitted: rng -> TrainState, created directly in its shardings
  compute_shardings: Any  # the same in device memory (differs with host offload)


def image_shape(spec: ExperimentSpec) -> tuple[int, int, int]:
  return (spec.data.image_size, spec.data.image_size, spec.data.channels)


def setup_state(spec: ExperimentSpec, mesh, rules=None) -> StateSetup:
  """Model, optimiser and the sharded state's layout; ``rules`` default to ``mesh.rules``."""
  rules = parallel.get_rules(spec.mesh.rules) if rules is None else rules
  model = spec.model.build(spec.data.num_classes)
  optimizer, lr_schedule = make_optimizer(spec.optim)
  create = functools.partial(create_train_state, model=model, optimizer=optimizer,
                             example_shape=image_shape(spec), conditional=spec.model.conditional)
  boxed = jax.eval_shape(create, jax.random.PRNGKey(0))
  compute_shardings = logical_shardings(boxed, mesh, rules)
  shardings = compute_shardings
  if spec.train.offload_opt_state:
    shardings = compute_shardings.replace(opt_state=jax.tree.map(
        lambda s: s.with_memory_kind("pinned_host"), compute_shardings.opt_state))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  init = jax.jit(lambda rng: nn.meta.unbox(create(rng)), out_shardings=shardings)
  return StateSetup(model, optimizer, lr_schedule, abstract, shardings, boxed, init,
                    compute_shardings)


def jit_train_step(setup: StateSetup, spec: ExperimentSpec, mesh) -> Callable:
  """The experiment's train step, jitted once with explicit shardings and the state donated:
  ``(state, global_batch) -> (state, replicated metrics)``. With host offload the step copies
  the offloaded parts into device memory first and its outputs go back (``out_shardings``)."""
  step = functools.partial(
      train_step, model=setup.model, diffusion_spec=spec.diffusion, optimizer=setup.optimizer,
      lr_schedule=setup.lr_schedule, ema_decay=spec.train.ema_decay,
      ema_warmup=spec.train.ema_warmup, conditional=spec.model.conditional,
      loss_spike_factor=spec.faults.loss_spike_factor,
      inject_nan_steps=spec.faults.inject_nan_steps, grad_accum=spec.train.grad_accum)

  def fn(state, batch):
    if setup.compute_shardings is not setup.shardings:
      state = jax.device_put(state, setup.compute_shardings)
    return step(state, batch)

  return jax.jit(fn, in_shardings=(setup.shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(setup.shardings, parallel.replicated(mesh)), donate_argnums=0)
