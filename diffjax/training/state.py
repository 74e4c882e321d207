"""The train state and its creation."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: checkpointed as one pytree.

  Attributes:
    step: int32 scalar, number of updates applied.
    params: network parameters (float32).
    ema_params: exponential moving average of ``params``, used for sampling.
    opt_state: optimiser state.
    rng: base PRNG key; step k uses ``fold_in(rng, k)``, so no key is ever carried forward.
    skipped: int32, updates skipped so far (non-finite loss or gradients, loss spikes).
    streak: int32, consecutive skipped updates up to now.
    loss_avg: float32, running mean of accepted losses (loss-spike detection; 0 = unset).
  """

  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  skipped: jax.Array
  streak: jax.Array
  loss_avg: jax.Array


def create_train_state(rng, *, model: nn.Module, optimizer: optax.GradientTransformation,
                       example_shape: tuple[int, ...], conditional: bool) -> TrainState:
  """Initialises a state whose parameter leaves are still boxed with logical axis names.

  Call under ``jax.eval_shape`` to read shardings, then jit with ``nn.meta.unbox`` applied.
  """
  init_rng, state_rng = jax.random.split(rng)
  x = jnp.zeros((1, *example_shape), jnp.float32)
  labels = jnp.zeros((1,), jnp.int32) if conditional else None
  params = model.init({"params": init_rng, "dropout": init_rng}, x, jnp.zeros((1,)), labels)[
      "params"]
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, ema_params=params,
                    opt_state=optimizer.init(params), rng=state_rng, skipped=zero, streak=zero,
                    loss_avg=jnp.zeros((), jnp.float32))


def parameter_count(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(nn.meta.unbox(params)))
