"""BigGAN (Brock, Donahue & Simonyan 2019, "Large Scale GAN Training for High Fidelity Natural
Image Synthesis"), the residual architecture of its Appendix B as in the authors' PyTorch code
(BigGAN-PyTorch).

Generator: hierarchical latents (``z`` split into one chunk per residual block plus one for
the input layer), a shared class embedding concatenated with each block's chunk and mapped by
bias-free linear layers to the gains (``1 + .``) and biases of class-conditional batch norms;
residual up-blocks (BN-ReLU-upsample-conv3x3-BN-ReLU-conv3x3, learned 1x1 shortcut), SAGAN
self-attention at one resolution, then BN-ReLU-conv3x3-tanh. Discriminator: residual
down-blocks (pre-activation after the first, average-pool downsampling), self-attention,
ReLU, global sum pooling, a linear output plus the projection ``<embed(y), h>`` (Miyato &
Koyama 2018). Spectral normalisation on every layer of both networks except the generator's
shared embedding; orthogonal initialisation.

Widths ``ch * multiplier`` per block; the named 128x128 ImageNet variant uses ``ch = 96``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.gan.layers import (BatchNorm, SNConv, SNDense, SNEmbed, SNSelfAttention,
                                       downsample_avg, upsample_nearest)
from diffjax.models.layers import Dtype, partitioned

# Channel multipliers per resolution (BigGAN-PyTorch's G_arch / D_arch): generator block
# inputs/outputs, discriminator block outputs.
G_MULTIPLIERS = {
    256: (16, 16, 8, 8, 4, 2, 1), 128: (16, 16, 8, 4, 2, 1), 64: (16, 16, 8, 4, 2),
    32: (4, 4, 4, 4), 16: (4, 4, 4)}
D_MULTIPLIERS = {
    256: (1, 2, 4, 8, 8, 16, 16), 128: (1, 2, 4, 8, 16, 16), 64: (1, 2, 4, 8, 16),
    32: (4, 4, 4, 4), 16: (4, 4, 4)}


class CondBatchNorm(nn.Module):
  """Class-conditional batch norm: normalised ``x`` times ``1 + gain(y)`` plus ``bias(y)``,
  both bias-free spectrally normalised linear maps of the conditioning vector."""

  spectral: bool = True
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, y, train: bool):
    c = x.shape[-1]
    kw = dict(use_bias=False, spectral=self.spectral, dtype=self.dtype,
              param_dtype=self.param_dtype)
    gain = 1.0 + SNDense(c, name="gain", **kw)(y, train)
    bias = SNDense(c, name="bias", **kw)(y, train)
    h = BatchNorm(epsilon=self.epsilon, use_affine=False, name="bn")(x, train)
    return h * gain[:, None, None, :] + bias[:, None, None, :]


class GBlock(nn.Module):
  features: int
  spectral: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, y, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    sn = dict(spectral=self.spectral, **kw)
    h = nn.relu(CondBatchNorm(self.spectral, name="bn1", **kw)(x, y, train))
    h = upsample_nearest(h)
    h = SNConv(self.features, 3, name="conv1", **sn)(h, train)
    h = nn.relu(CondBatchNorm(self.spectral, name="bn2", **kw)(h, y, train))
    h = SNConv(self.features, 3, name="conv2", **sn)(h, train)
    return h + SNConv(self.features, 1, name="conv_sc", **sn)(upsample_nearest(x), train)


class BigGANGenerator(nn.Module):
  """``(z [B, z_dim], labels [B]) -> images [B, R, R, channels]`` in [-1, 1].

  Attributes:
    resolution: 16, 32, 64, 128 or 256 (the block layout of each from the reference code).
    ch: base width (96 for the paper's 128x128 model).
    z_dim: latent size, split evenly over the blocks + 1 when ``hierarchical``.
    shared_dim: width of the shared class embedding (128).
    hierarchical: hierarchical latents (else the whole ``z`` goes to the input layer and each
      block sees only the class embedding).
    attention: resolution of the self-attention block (0: none).
    spectral: spectral normalisation (on in the paper).
    num_classes: classes (BigGAN is class-conditional; 0 gives an unconditional variant with
      the embedding removed).
  """

  resolution: int = 128
  channels: int = 3
  ch: int = 96
  z_dim: int = 120
  shared_dim: int = 128
  hierarchical: bool = True
  attention: int = 64
  spectral: bool = True
  num_classes: int = 1000
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z, labels=None, train: bool = False):
    if self.resolution not in G_MULTIPLIERS:
      raise ValueError(f"BigGAN has layouts for {sorted(G_MULTIPLIERS)}, got {self.resolution}")
    mult = G_MULTIPLIERS[self.resolution]
    blocks = len(mult) - 1
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    sn = dict(spectral=self.spectral, **kw)
    z = z.astype(self.dtype)
    if self.hierarchical:
      if self.z_dim % (blocks + 1):
        raise ValueError(f"z_dim {self.z_dim} does not split into {blocks + 1} equal chunks")
      chunks = jnp.split(z, blocks + 1, axis=-1)
      z0, zs = chunks[0], chunks[1:]
    else:
      z0, zs = z, [None] * blocks
    if self.num_classes:
      table = self.param("shared", partitioned(nn.initializers.normal(0.02), ("vocab", "embed")),
                         (self.num_classes, self.shared_dim), self.param_dtype)
      shared = jnp.take(table, labels, axis=0).astype(self.dtype)
    else:
      shared = jnp.zeros((z.shape[0], 0), self.dtype)
    h = SNDense(4 * 4 * mult[0] * self.ch, name="linear", **sn)(z0, train)
    h = h.reshape(z.shape[0], 4, 4, mult[0] * self.ch)
    for i in range(blocks):
      y = shared if zs[i] is None else jnp.concatenate([shared, zs[i]], axis=-1)
      h = GBlock(mult[i + 1] * self.ch, self.spectral, name=f"block{i}", **kw)(h, y, train)
      if h.shape[1] == self.attention:
        h = SNSelfAttention(self.spectral, name=f"attention{h.shape[1]}", **kw)(h, train)
    h = nn.relu(BatchNorm(name="out_bn")(h, train))
    h = SNConv(self.channels, 3, name="out_conv", **sn)(h, train)
    return jnp.tanh(h.astype(jnp.float32))


class DBlock(nn.Module):
  features: int
  preactivation: bool
  downsample: bool
  spectral: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    sn = dict(spectral=self.spectral, dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.relu(x) if self.preactivation else x
    h = SNConv(self.features, 3, name="conv1", **sn)(h, train)
    h = SNConv(self.features, 3, name="conv2", **sn)(nn.relu(h), train)
    if self.downsample:
      h = downsample_avg(h)
    sc = x
    if x.shape[-1] != self.features or self.downsample:  # learnable shortcut
      if self.preactivation:
        sc = SNConv(self.features, 1, name="conv_sc", **sn)(sc, train)
        sc = downsample_avg(sc) if self.downsample else sc
      else:
        sc = downsample_avg(sc) if self.downsample else sc
        sc = SNConv(self.features, 1, name="conv_sc", **sn)(sc, train)
    return h + sc


class BigGANDiscriminator(nn.Module):
  """``(images [B, R, R, C], labels [B]) -> logits [B]`` (see the module docstring)."""

  ch: int = 96
  attention: int = 64
  spectral: bool = True
  num_classes: int = 1000
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, labels=None, train: bool = False):
    res = x.shape[1]
    if res not in D_MULTIPLIERS:
      raise ValueError(f"BigGAN has layouts for {sorted(D_MULTIPLIERS)}, got {res}")
    mult = D_MULTIPLIERS[res]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = x.astype(self.dtype)
    for i, m in enumerate(mult):
      down = i < len(mult) - 1 if res >= 64 else i < 2
      h = DBlock(m * self.ch, preactivation=i > 0, downsample=down, spectral=self.spectral,
                 name=f"block{i}", **kw)(h, train)
      if h.shape[1] == self.attention and i == _first_at(res, mult, self.attention):
        h = SNSelfAttention(self.spectral, name=f"attention{h.shape[1]}", **kw)(h, train)
    h = jnp.sum(nn.relu(h), axis=(1, 2))
    out = SNDense(1, spectral=self.spectral, name="linear", **kw)(h, train)[:, 0]
    if self.num_classes:
      e = SNEmbed(self.num_classes, h.shape[-1], self.spectral, self.param_dtype,
                  name="embed")(labels, train)
      out = out + jnp.sum(e * h, axis=-1)
    return out.astype(jnp.float32)


def _first_at(res: int, mult, attention: int) -> int:
  """Index of the first discriminator block whose output has ``attention`` pixels a side."""
  r = res
  for i in range(len(mult)):
    if res >= 64:
      r = r // 2 if i < len(mult) - 1 else r
    else:
      r = r // 2 if i < 2 else r
    if r == attention:
      return i
  return -1


def orthogonal_penalty(params, skip=("shared",)) -> jax.Array:
  """BigGAN's orthogonal regularisation ``1/2 sum_W ||W W^T * (1 - I)||_F^2`` over every
  weight with two or more axes (reshaped to ``[out, -1]``), leaving out the named ones (the
  shared embedding). Its gradient is ``2 (W W^T * (1 - I)) W``, the update BigGAN-PyTorch's
  ``ortho`` adds, so ``beta`` times this term is the paper's regulariser."""
  total = jnp.zeros((), jnp.float32)
  flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]
  for path, w in flat:
    keys = [getattr(p, "key", "") for p in path]
    if w.ndim < 2 or any(k in skip for k in keys):
      continue
    m = jnp.moveaxis(w, -1, 0).reshape(w.shape[-1], -1).astype(jnp.float32)  # [out, -1]
    gram = m @ m.T
    total = total + 0.5 * jnp.sum(jnp.square(gram * (1.0 - jnp.eye(m.shape[0]))))
  return total


def truncated_normal(rng, shape, threshold: float):
  """Latents from a standard normal truncated to ``|z| <= threshold`` (BigGAN's truncation
  trick; 0 or less: no truncation)."""
  if threshold <= 0:
    return jax.random.normal(rng, shape)
  return jax.random.truncated_normal(rng, -threshold, threshold, shape)

