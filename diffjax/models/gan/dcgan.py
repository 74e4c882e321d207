"""DCGAN (Radford, Metz & Chintala 2016, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks").

Generator: the latent ``z`` (``[B, z_dim]``) is projected to a 4x4 map by a 4x4 transposed
convolution, then stride-2 transposed convolutions (kernel 4, padding 1) double the resolution,
each followed by batch norm and ReLU, ending in ``tanh``. Discriminator: stride-2 convolutions
(kernel 4, padding 1) with leaky ReLU (slope 0.2), batch norm on every layer but the first,
and a final 4x4 valid convolution to one logit. No biases where batch norm follows (the
PyTorch reference example, whose 64x64 widths ``ngf = ndf = 64`` the named variant uses).
Weights N(0, 0.02), batch-norm scales N(1, 0.02), as in the paper.

Class-conditional variants concatenate a learned label embedding to ``z`` in the generator
and add a projection term (Miyato & Koyama 2018) to the discriminator's logit: DCGAN itself
is unconditional.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.gan.layers import (CONV_NAMES, BatchNorm, conv2d, conv_transpose2d,
                                       dcgan_bn_scale_init)
from diffjax.models.layers import Dtype, partitioned

_init = nn.initializers.normal(0.02)


def _levels(resolution: int) -> int:
  n = int(math.log2(resolution))
  if 2 ** n != resolution or resolution < 8:
    raise ValueError(f"DCGAN needs a power-of-two resolution >= 8, got {resolution}")
  return n - 2  # stride-2 layers between 4x4 and the output


class _ConvT(nn.Module):
  features: int
  stride: int
  padding: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", partitioned(_init, CONV_NAMES), (4, 4, x.shape[-1],
                                                                  self.features),
                        self.param_dtype)
    return conv_transpose2d(x, kernel.astype(x.dtype), stride=self.stride, padding=self.padding)


class _Conv(nn.Module):
  features: int
  stride: int
  padding: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", partitioned(_init, CONV_NAMES), (4, 4, x.shape[-1],
                                                                  self.features),
                        self.param_dtype)
    return conv2d(x, kernel.astype(x.dtype), stride=self.stride, padding=self.padding)


class DCGANGenerator(nn.Module):
  """DCGAN generator: ``(z [B, z_dim], labels [B] or None) -> images [B, R, R, channels]``.

  Attributes:
    resolution: output size (power of two >= 8).
    channels: output channels.
    width: ``ngf``, the channels of the last hidden layer; layer ``i`` from the output has
      ``width * 2^i``.
    z_dim: latent size.
    num_classes: labels to condition on (0: unconditional).
  """

  resolution: int = 64
  channels: int = 3
  width: int = 64
  z_dim: int = 100
  num_classes: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z, labels=None, train: bool = False):
    n = _levels(self.resolution)
    bn = lambda name: BatchNorm(scale_init=dcgan_bn_scale_init, param_dtype=self.param_dtype,
                                name=name)
    h = z.astype(self.dtype)
    if self.num_classes:
      table = self.param("label_embedding", partitioned(_init, ("vocab", "embed")),
                         (self.num_classes, self.z_dim), self.param_dtype)
      h = jnp.concatenate([h, jnp.take(table, labels, axis=0).astype(self.dtype)], axis=-1)
    h = h[:, None, None, :]
    h = _ConvT(self.width * 2 ** (n - 1), 1, 0, self.param_dtype, name="project")(h)  # 4x4
    h = nn.relu(bn("bn_project")(h, train))
    for i in range(n - 1):
      h = _ConvT(self.width * 2 ** (n - 2 - i), 2, 1, self.param_dtype, name=f"up{i}")(h)
      h = nn.relu(bn(f"bn_up{i}")(h, train))
    h = _ConvT(self.channels, 2, 1, self.param_dtype, name="to_image")(h)
    return jnp.tanh(h.astype(jnp.float32))


class DCGANDiscriminator(nn.Module):
  """DCGAN discriminator: ``(images [B, R, R, C], labels [B] or None) -> logits [B]``.

  Attributes:
    width: ``ndf``, the channels of the first layer; layer ``i`` has ``width * 2^i``.
    num_classes: labels for the projection term (0: unconditional).
  """

  width: int = 64
  num_classes: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, labels=None, train: bool = False):
    n = _levels(x.shape[1])
    h = x.astype(self.dtype)
    for i in range(n):
      h = _Conv(self.width * 2 ** i, 2, 1, self.param_dtype, name=f"down{i}")(h)
      if i:
        h = BatchNorm(scale_init=dcgan_bn_scale_init, param_dtype=self.param_dtype,
                      name=f"bn_down{i}")(h, train)
      h = nn.leaky_relu(h, 0.2)
    logit = _Conv(1, 1, 0, self.param_dtype, name="to_logit")(h)[:, 0, 0, 0]  # 4x4 valid
    if self.num_classes:
      table = self.param("label_projection", partitioned(_init, ("vocab", "embed")),
                         (self.num_classes, h.shape[-1]), self.param_dtype)
      logit = logit + jnp.sum(jnp.take(table, labels, axis=0) * jnp.mean(h, axis=(1, 2)),
                              axis=-1)
    return logit.astype(jnp.float32)
