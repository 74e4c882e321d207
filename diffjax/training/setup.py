"""The sharded train state of a method's networks and its jitted train step; shared by the
train, sample, evaluation and estimate jobs. Knows no method: it reads only the method's
``networks`` (init functions, optimisers, EMA flags) and hands ``update`` to `train_step`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax

from diffjax import parallel
from diffjax.parallel import logical_shardings
from diffjax.spec import FaultSpec, TrainSpec
from diffjax.training.state import TrainState, create_train_state
from diffjax.training.step import train_step


@dataclasses.dataclass
class StateSetup:
  method: Any  # diffjax.methods.Method
  abstract: TrainState  # ShapeDtypeStructs carrying their target shardings
  shardings: Any  # TrainState of NamedShardings: where the state lives between steps
  boxed: TrainState  # abstract state with logical axis names (for reporting)
  init: Callable  # jitted: rng -> TrainState, created directly in its shardings
  compute_shardings: Any  # the same in device memory (differs with host offload)


def _offload_opt_state(shardings: TrainState) -> TrainState:
  """Every optimiser state in pinned host memory; parameters and EMA stay on the devices."""
  to_host = lambda tree: jax.tree.map(lambda s: s.with_memory_kind("pinned_host"), tree)
  return shardings.replace(nets={role: net.replace(opt_state=to_host(net.opt_state))
                                 for role, net in shardings.nets.items()})


def setup_state(method, mesh, rules, *, offload_opt_state: bool = False,
                posthoc_profiles: int = 0) -> StateSetup:
  """The layout of ``method``'s state on ``mesh`` under the logical-axis ``rules``."""
  create = functools.partial(create_train_state, networks=method.networks,
                             posthoc_profiles=posthoc_profiles)
  boxed = jax.eval_shape(create, jax.random.PRNGKey(0))
  compute_shardings = logical_shardings(boxed, mesh, rules)
  shardings = _offload_opt_state(compute_shardings) if offload_opt_state else compute_shardings
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  init = jax.jit(lambda rng: nn.meta.unbox(create(rng)), out_shardings=shardings)
  return StateSetup(method, abstract, shardings, boxed, init, compute_shardings)


def jit_train_step(setup: StateSetup, mesh, train: TrainSpec, faults: FaultSpec) -> Callable:
  """The train step, jitted once with explicit shardings and the state donated:
  ``(state, global_batch) -> (state, replicated metrics)``. With host offload the step copies
  the offloaded parts into device memory first and its outputs go back (``out_shardings``)."""
  step = functools.partial(train_step, method=setup.method, train=train, faults=faults)

  def fn(state, batch):
    if setup.compute_shardings is not setup.shardings:
      state = jax.device_put(state, setup.compute_shardings)
    return step(state, batch)

  return jax.jit(fn, in_shardings=(setup.shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(setup.shardings, parallel.replicated(mesh)), donate_argnums=0)
