"""ProGAN (Karras, Aila, Laine & Lehtinen 2018, "Progressive Growing of GANs for Improved
Quality, Stability, and Variation").

The networks of the paper's Table 2: equalised learning rate (weights N(0, 1) scaled by He's
constant at run time), pixelwise feature normalisation after every generator convolution,
nearest-neighbour upsampling and average-pool downsampling, minibatch standard deviation at
the discriminator's 4x4 stage; widths ``min(fmap_base / 2^stage, fmap_max)``.

Progressive growing without a change of state layout: both networks hold every resolution's
layers from the start and take ``growth = (level, alpha)``, the current level (0 = 4x4) and the
fade-in weight of its newest layers, as traced values. The level picks a branch of a
``lax.switch``, so only the layers of the current resolution run; the generator's image at
level ``k`` (the previous level's image upsampled, blended with weight ``alpha``) is
nearest-upsampled to the full resolution, and the discriminator average-pools its full-
resolution input back to level ``k``'s. `growth_at` gives ``(level, alpha)`` as a function of
the training step only, so a run resumes mid-fade-in exactly.

Class-conditional variants concatenate a label embedding to the latent (as the reference code
concatenates one-hot labels) and add a projection term to the discriminator's logit.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.gan.layers import (EqualConv, EqualDense, downsample_avg, minibatch_std,
                                       pixel_norm, upsample_nearest)
from diffjax.models.layers import Dtype, partitioned

SQRT2 = math.sqrt(2.0)


def growth_at(step, num_levels: int, stable_steps: int, fade_steps: int):
  """``(level int32, alpha float32)`` at a training step (traced or not).

  Level 0 trains for ``stable_steps``; each later level first fades in over ``fade_steps``
  (``alpha`` rising linearly from 0 to 1) and then trains for ``stable_steps``; the last level
  stays. (The paper: 600k images each; here counted in steps.)
  """
  step = jnp.asarray(step, jnp.int32)
  period = stable_steps + fade_steps
  phase = step // period
  into = step - phase * period
  fading = into >= stable_steps
  level = phase + fading.astype(jnp.int32)
  alpha = jnp.where(fading, (into - stable_steps).astype(jnp.float32) / max(fade_steps, 1), 1.0)
  grown = phase >= num_levels - 1  # the last level stays, fully faded in
  level = jnp.where(grown, num_levels - 1, level)
  alpha = jnp.where(grown, 1.0, alpha)
  return level.astype(jnp.int32), alpha.astype(jnp.float32)


def _num_levels(resolution: int) -> int:
  n = int(math.log2(resolution))
  if 2 ** n != resolution or n < 2:
    raise ValueError(f"ProGAN needs a power-of-two resolution >= 4, got {resolution}")
  return n - 1  # 4x4 is level 0


class _Levels:
  """What both ProGAN networks derive from their ``resolution``, ``fmap_base``, ``fmap_max``:
  the number of 2x levels from 4x4 and each stage's width."""

  progressive = True  # the gan method grows (and fades in) networks that say so

  @property
  def num_levels(self) -> int:
    return _num_levels(self.resolution)

  def nf(self, stage: int) -> int:
    return min(self.fmap_base // 2 ** stage, self.fmap_max)


class ProGANGenerator(_Levels, nn.Module):
  """``(z [B, z_dim], labels, growth=(level, alpha)) -> images [B, R, R, channels]``
  (linear output; at levels below the last, nearest-upsampled from that level's size).

  Attributes:
    resolution: final output size.
    z_dim: latent size (512).
    fmap_base, fmap_max: widths ``min(fmap_base / 2^stage, fmap_max)`` (8192, 512).
    num_classes: labels to condition on (0: unconditional).
  """

  resolution: int = 1024
  channels: int = 3
  z_dim: int = 512
  fmap_base: int = 8192
  fmap_max: int = 512
  num_classes: int = 0
  structure: str = "switch"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n = self.num_levels
    if self.num_classes:
      self.embed = self.param("label_embedding", partitioned(nn.initializers.normal(1.0),
                                                             ("vocab", "embed")),
                              (self.num_classes, self.z_dim), self.param_dtype)
    # 4x4: the "Conv 4x4" of Table 2 is a dense layer from the latent (gain sqrt(2)/4).
    self.dense0 = EqualDense(16 * self.nf(1), gain=SQRT2 / 4, name="b4_dense", **kw)
    self.conv0 = EqualConv(self.nf(1), 3, gain=SQRT2, name="b4_conv", **kw)
    self.up_convs = [(EqualConv(self.nf(k + 1), 3, gain=SQRT2, name=f"b{4 * 2 ** k}_conv0", **kw),
                      EqualConv(self.nf(k + 1), 3, gain=SQRT2, name=f"b{4 * 2 ** k}_conv1",
                                **kw)) for k in range(1, n)]
    self.torgb = [EqualConv(self.channels, 1, gain=1.0, name=f"torgb{4 * 2 ** k}", **kw)
                  for k in range(n)]

  def _features(self, z, labels, level: int):
    act = lambda h: pixel_norm(nn.leaky_relu(h, 0.2))
    x = z.astype(self.dtype)
    if self.num_classes:
      x = jnp.concatenate([x, jnp.take(self.embed, labels, axis=0).astype(self.dtype)], -1)
    x = pixel_norm(x)
    h = act(self.dense0(x).reshape(x.shape[0], 4, 4, self.nf(1)))
    h = act(self.conv0(h))
    feats = [h]
    for k in range(1, level + 1):
      c0, c1 = self.up_convs[k - 1]
      h = act(c1(act(c0(upsample_nearest(h)))))
      feats.append(h)
    return feats

  def _at_level(self, level: int, z, labels, alpha):
    feats = self._features(z, labels, level)
    img = self.torgb[level](feats[-1])
    if level:
      prev = upsample_nearest(self.torgb[level - 1](feats[-2]))
      img = prev + (img - prev) * alpha.astype(img.dtype)
    return upsample_nearest(img, self.resolution // img.shape[1]).astype(jnp.float32)

  def __call__(self, z, labels=None, train: bool = False, growth=None):
    del train
    n = self.num_levels
    if growth is None:  # the fully grown network
      return self._at_level(n - 1, z, labels, jnp.ones((), jnp.float32))
    return _grown(self, growth, z, labels)


class ProGANDiscriminator(_Levels, nn.Module):
  """``(images [B, R, R, C], labels, growth=(level, alpha)) -> logits [B]`` (the WGAN critic
  of the paper).

  Attributes:
    resolution: the input size.
    fmap_base, fmap_max: widths as the generator's.
    mbstd_group: minibatch-std group size (4).
    num_classes: labels for the projection term (0: unconditional).
  """

  resolution: int = 1024
  fmap_base: int = 8192
  fmap_max: int = 512
  mbstd_group: int = 4
  num_classes: int = 0
  structure: str = "switch"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n = self.num_levels
    # level k (resolution 4 * 2^k) reads images through fromrgb[k] into nf(k + 1) channels
    self.fromrgb = [EqualConv(self.nf(k + 1), 1, gain=SQRT2, name=f"fromrgb{4 * 2 ** k}", **kw)
                    for k in range(n)]
    self.down_convs = [(EqualConv(self.nf(k + 1), 3, gain=SQRT2, name=f"b{4 * 2 ** k}_conv0",
                                  **kw),
                        EqualConv(self.nf(k), 3, gain=SQRT2, name=f"b{4 * 2 ** k}_conv1", **kw))
                       for k in range(1, n)]
    self.conv4 = EqualConv(self.nf(1), 3, gain=SQRT2, name="b4_conv", **kw)
    self.dense4 = EqualDense(self.nf(0), gain=SQRT2, name="b4_dense", **kw)
    self.out = EqualDense(1, gain=1.0, name="b4_out", **kw)
    if self.num_classes:
      self.embed = self.param("label_projection", partitioned(nn.initializers.normal(1.0),
                                                              ("vocab", "embed")),
                              (self.num_classes, self.nf(0)), self.param_dtype)

  def _block(self, k: int, h):
    act = lambda y: nn.leaky_relu(y, 0.2)
    c0, c1 = self.down_convs[k - 1]
    return downsample_avg(act(c1(act(c0(h)))))

  def _at_level(self, level: int, x, labels, alpha):
    act = lambda y: nn.leaky_relu(y, 0.2)
    img = downsample_avg(x.astype(self.dtype), self.resolution // (4 * 2 ** level))
    h = act(self.fromrgb[level](img))
    if level:
      h = self._block(level, h)
      prev = act(self.fromrgb[level - 1](downsample_avg(img)))
      h = prev + (h - prev) * alpha.astype(h.dtype)
    for k in range(level - 1, 0, -1):
      h = self._block(k, h)
    h = minibatch_std(h, self.mbstd_group)
    h = act(self.conv4(h))
    h = act(self.dense4(h.reshape(h.shape[0], -1)))
    out = self.out(h)[:, 0]
    if self.num_classes:
      out = out + jnp.sum(jnp.take(self.embed, labels, axis=0) * h, axis=-1)
    return out.astype(jnp.float32)

  def __call__(self, x, labels=None, train: bool = False, growth=None):
    del train
    n = self.num_levels
    if growth is None:
      return self._at_level(n - 1, x, labels, jnp.ones((), jnp.float32))
    return _grown(self, growth, x, labels)


STRUCTURES = ("switch", "blend")


def _grown(module, growth, x, labels):
  """``module._at_level(level, x, labels, alpha)`` for a traced ``growth = (level, alpha)``.

  ``switch``: a ``lax.switch`` over the levels, only the current one runs (the reference
  code's "recursive" structure). ``blend``: every level runs and the current one's output is
  selected by a one-hot weight (its "linear" structure); the other levels' parameters get
  exactly zero gradients. On CPU at small sizes ``blend`` compiles and runs much faster (the
  gradient penalty differentiates twice through the switch), on accelerators at full size
  ``switch`` saves the lower levels' work. Initialisation creates every level's parameters.
  """
  if module.structure not in STRUCTURES:
    raise ValueError(f"structure must be one of {STRUCTURES}, got {module.structure!r}")
  level, alpha = growth
  alpha = jnp.asarray(alpha, jnp.float32)
  n = module.num_levels
  if module.is_initializing() or module.structure == "blend":
    outs = [module._at_level(k, x, labels, alpha) for k in range(n)]
    weights = jax.nn.one_hot(jnp.asarray(level, jnp.int32), n, dtype=outs[0].dtype)
    return sum(w * o for w, o in zip(weights, outs))
  branches = [lambda m, x_, y_, a_, k=k: m._at_level(k, x_, y_, a_) for k in range(n)]
  return nn.switch(jnp.asarray(level, jnp.int32), branches, module, x, labels, alpha)


def fade_reals(x, growth, resolution: int):
  """Real images as the networks see them at ``growth = (level, alpha)``: average-pooled to
  the level's size and, while it fades in, blended with the previous level's (pooled once
  more and upsampled), then nearest-upsampled back to ``resolution`` (the reference code's
  ``process_reals``)."""
  level, alpha = growth
  n = _num_levels(resolution)

  def at(k):
    def f(x):
      y = downsample_avg(x, resolution // (4 * 2 ** k))
      if k:
        y = upsample_nearest(downsample_avg(y)) + (y - upsample_nearest(downsample_avg(y))) * alpha
      return upsample_nearest(y, resolution // y.shape[1])
    return f

  outs = [at(k)(x) for k in range(n)]  # cheap: pooling only
  weights = jax.nn.one_hot(jnp.asarray(level, jnp.int32), n, dtype=x.dtype)
  return sum(w * o for w, o in zip(weights, outs))
