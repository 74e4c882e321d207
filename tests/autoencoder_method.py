"""A second method that exists only for the tests: a plain autoencoder with an MSE objective,
registered as ``test_autoencoder``. It proves that the training system (train job, state of
named networks, checkpoints, sharding, EMA, resume, sampling) needs no change for a new
objective: this file is all it takes.

Two networks by role: ``encoder`` (image -> latent) and ``decoder`` (latent -> image, with
EMA, and batch normalisation: a variable collection besides the parameters, updated by the
method). With ``method.frozen_encoder=True`` the encoder is a frozen network (no optimiser,
never updated) and only the decoder trains. ``generate`` decodes standard-normal latents.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from diffjax.methods import Method, Network, register_method
from diffjax.models import layers
from diffjax.spec import OptimSpec
from diffjax.training import apply_gradients, value_and_grad


class Encoder(nn.Module):
  latent_channels: int = 4

  @nn.compact
  def __call__(self, x):
    h = nn.silu(layers.Conv(16, strides=2)(x))  # 8x8 -> 4x4
    return layers.Conv(self.latent_channels)(h)


class Decoder(nn.Module):
  channels: int = 1

  @nn.compact
  def __call__(self, z, train: bool = False):
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(layers.Conv(16)(z))
    h = nn.silu(h)
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # 4x4 -> 8x8
    return layers.Conv(self.channels)(h)


@register_method("test_autoencoder")
class AutoencoderMethod(Method):

  def __init__(self, image_shape, latent_channels: int, frozen_encoder: bool, optim: OptimSpec):
    self.image_shape = image_shape
    self.latent_shape = (image_shape[0] // 2, image_shape[1] // 2, latent_channels)
    self.encoder, self.decoder = Encoder(latent_channels), Decoder(image_shape[-1])
    init_encoder = lambda rng: self.encoder.init(rng, jnp.zeros((1, *image_shape)))
    init_decoder = lambda rng: self.decoder.init(rng, jnp.zeros((1, *self.latent_shape)))
    self.networks = {
        "encoder": (Network.frozen(self.encoder, init_encoder) if frozen_encoder else
                    Network.trained(self.encoder, init_encoder, optim, ema=False)),
        "decoder": Network.trained(self.decoder, init_decoder, optim, ema=True)}

  @classmethod
  def from_config(cls, config, ck, ctx):
    optim = OptimSpec.from_config(config.optim, ck, total_steps=ctx.train.num_steps)
    ck.positive_int(config.method.latent_channels, "method.latent_channels")
    return cls(ctx.data.image_shape, config.method.latent_channels,
               bool(config.method.frozen_encoder), optim)

  def update(self, state, batch, rng):
    del rng  # a deterministic objective
    trained = [r for r, n in self.networks.items() if n.optimizer is not None]
    fixed = {r: state.nets[r].params for r in self.networks if r not in trained}

    stats = state.nets["decoder"].collections

    def loss(params, batch, _):
      p = {**fixed, **params}
      z = self.encoder.apply({"params": p["encoder"]}, batch["image"])
      x_hat, updated = self.decoder.apply({"params": p["decoder"], **stats}, z, train=True,
                                          mutable=["batch_stats"])
      return jnp.mean(jnp.square(x_hat - batch["image"])), updated

    (value, stats), grads = value_and_grad(loss, {r: state.nets[r].params for r in trained},
                                           batch)
    for role in trained:
      state = state.with_net(role, apply_gradients(state.nets[role],
                                                   self.networks[role].optimizer, grads[role]))
    state = state.with_net("decoder", state.nets["decoder"].replace(collections=dict(stats)))
    return state, {"loss": value, "grad_norm": optax.tree.norm(grads)}

  def generate(self, variables, rng, labels):
    z = jax.random.normal(rng, (labels.shape[0], *self.latent_shape))
    return jnp.clip(self.decoder.apply(variables["decoder"], z), -1.0, 1.0)
