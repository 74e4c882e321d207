"""The train state: a set of named networks, each with its parameters and, where the method
trains it, its optimiser state and EMA, plus the run's counters. Method-agnostic: a diffusion
model holds one network (``denoiser``), a GAN two, latent diffusion a trained ``denoiser``
beside a frozen ``autoencoder`` (a network without an optimiser).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

# Bumped whenever the checkpointed layout of `TrainState` changes; recorded with every
# checkpoint so an incompatible one is refused by name instead of failing deep in orbax.
STATE_FORMAT = 2


@flax.struct.dataclass
class NetState:
  """One network's trainable state.

  Attributes:
    params: parameters (float32).
    ema_params: exponential moving average of ``params`` (None: the method keeps no EMA of
      this network).
    opt_state: optimiser state (None: a frozen network, never updated).
    collections: the network's other Flax variable collections (batch statistics,
      spectral-norm vectors; None when it has none), updated by the method, not by gradients.
    posthoc: the power-function EMA profiles of `diffjax.training.posthoc_ema` (a tuple of
      parameter trees, one per tracked relative standard deviation; None: not tracked).
  """

  params: Any
  ema_params: Any = None
  opt_state: Any = None
  collections: Any = None
  posthoc: Any = None

  @property
  def trainable(self) -> bool:
    return self.opt_state is not None

  @property
  def inference_variables(self) -> dict:
    """The Flax variables to sample and evaluate with: the EMA parameters where one is kept,
    and the other collections."""
    params = self.params if self.ema_params is None else self.ema_params
    return {"params": params, **(self.collections or {})}


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: checkpointed as one pytree.

  Attributes:
    step: int32 scalar, number of updates applied.
    nets: ``{role: NetState}``, the method's networks by role.
    rng: base PRNG key; step k uses ``fold_in(rng, k)``, so no key is ever carried forward.
    skipped: int32, updates skipped so far (non-finite metrics, loss spikes).
    streak: int32, consecutive skipped updates up to now.
    loss_avg: float32, running mean of accepted losses (loss-spike detection; 0 = unset).
  """

  step: jax.Array
  nets: Mapping[str, NetState]
  rng: jax.Array
  skipped: jax.Array
  streak: jax.Array
  loss_avg: jax.Array

  def with_net(self, role: str, net: NetState) -> "TrainState":
    return self.replace(nets={**self.nets, role: net})

  @property
  def inference_variables(self) -> dict[str, Any]:
    """``{role: Flax variables to sample with}`` (EMA parameters where kept)."""
    return {role: net.inference_variables for role, net in self.nets.items()}

  @property
  def params(self) -> dict[str, Any]:
    return {role: net.params for role, net in self.nets.items()}


def create_train_state(rng, networks: Mapping[str, Any], posthoc_profiles: int = 0) -> TrainState:
  """Initialises a state whose parameter leaves are still boxed with logical axis names.

  Call under ``jax.eval_shape`` to read shardings, then jit with ``nn.meta.unbox`` applied.

  Args:
    rng: PRNG key. The first network is initialised from its first split, the others from
      that key folded with their position, so adding a network leaves the first one's
      initial parameters unchanged.
    networks: ``{role: methods.Network}`` (``init``: rng -> Flax variables, ``optimizer``,
      ``ema``).
    posthoc_profiles: power-function EMA profiles each trained network with an EMA tracks.
  """
  init_rng, state_rng = jax.random.split(rng)
  nets = {}
  for i, (role, net) in enumerate(networks.items()):
    variables = dict(net.init(init_rng if i == 0 else jax.random.fold_in(init_rng, i)))
    params = variables.pop("params")
    nets[role] = NetState(
        params=params, ema_params=params if net.ema else None,
        opt_state=None if net.optimizer is None else net.optimizer.init(params),
        collections=variables or None,
        posthoc=(tuple(params for _ in range(posthoc_profiles))
                 if posthoc_profiles and net.ema and net.optimizer is not None else None))
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, nets=nets, rng=state_rng, skipped=zero, streak=zero,
                    loss_avg=jnp.zeros((), jnp.float32))


def parameter_count(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(nn.meta.unbox(params)))
