"""The diffusion UNet: DDPM (Ho et al. 2020), ADM (Dhariwal & Nichol 2021) and DDPM++
(Song et al. 2021 / Karras et al. 2022) as options of one module.

* DDPM: GroupNorm-Swish-Conv residual blocks with an additive noise embedding, single-head
  attention at chosen resolutions, strided-conv downsampling, nearest+conv upsampling.
* ADM: ``scale_shift_norm`` (the embedding scales and shifts the second GroupNorm),
  ``resblock_updown`` (BigGAN-style residual blocks that resample), multi-head attention
  (``num_heads`` or ``head_channels``), attention at several resolutions, class embedding.
* DDPM++: ``resblock_updown`` plus ``skip_rescale`` (residual sums scaled by 1/sqrt(2)).

The network maps ``(x [B, H, W, C], noise_level [B], labels [B] or None)`` to an array shaped
like ``x`` (``out_channels`` defaults to C). Output layers of every residual branch and of the
network are zero-initialised, as in all three papers, so a fresh network outputs zeros.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.layers import (Conv, Dense, Dtype, GroupNorm, LabelEmbedding, NoiseEmbedding,
                                   SelfAttention, remat_block)


def _upsample_nearest(x):
  """2x nearest-neighbour upsampling by broadcasting (its gradient is a 2x2 sum; a resize's
  would be a scatter-add, several times slower on GPU)."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


def _downsample_avg(x):
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ResBlock(nn.Module):
  """Residual block conditioned on the embedding; optionally resamples (BigGAN style)."""

  out_channels: int
  dropout: float = 0.0
  scale_shift_norm: bool = False
  skip_rescale: bool = False
  resample: str | None = None  # None, "up" or "down"
  norm_groups: int = 32
  lean_residuals: bool = False
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name, **a: GroupNorm(self.norm_groups, self.norm_eps, lean=self.lean_residuals,
                                       name=name, **a, **kw)
    h = norm("norm1", activation=nn.silu)(x)
    if self.resample == "up":
      h, x = _upsample_nearest(h), _upsample_nearest(x)
    elif self.resample == "down":
      h, x = _downsample_avg(h), _downsample_avg(x)
    h = Conv(self.out_channels, name="conv1", **kw)(h)
    e = Dense(self.out_channels * (2 if self.scale_shift_norm else 1), names=("embed", "conv_out"),
              name="emb_proj", **kw)(nn.silu(emb))[:, None, None, :]
    if self.scale_shift_norm:
      scale, shift = jnp.split(e, 2, axis=-1)
      h = nn.silu(norm("norm2")(h) * (1 + scale) + shift)
    else:
      h = norm("norm2", activation=nn.silu)(h + e)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = Conv(self.out_channels, zero_init=True, name="conv2", **kw)(h)
    if x.shape[-1] != self.out_channels:
      x = Conv(self.out_channels, kernel_size=1, name="skip", **kw)(x)
    out = x + h
    return out / math.sqrt(2.0) if self.skip_rescale else out


class AttentionBlock(nn.Module):
  """GroupNorm then multi-head self-attention over all pixels, residual."""

  num_heads: int
  skip_rescale: bool = False
  norm_groups: int = 32
  lean_residuals: bool = False
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = GroupNorm(self.norm_groups, self.norm_eps, lean=self.lean_residuals, name="norm", **kw)(x)
    y = SelfAttention(self.num_heads, zero_init_out=True,
                      recompute_probabilities=self.lean_residuals, name="attn",
                      **kw)(y.reshape(b, h * w, c))
    out = x + y.reshape(b, h, w, c)
    return out / math.sqrt(2.0) if self.skip_rescale else out


class UNet(nn.Module):
  """Configurable diffusion UNet (see module docstring for the paper presets).

  Attributes:
    ch: base width; level i has ``ch * ch_mult[i]`` channels.
    ch_mult: width multiplier per resolution level.
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    attn_resolutions: feature-map sizes (height) that get an attention block.
    dropout: dropout rate inside residual blocks.
    num_heads: attention heads (ignored if ``head_channels`` is set).
    head_channels: channels per attention head (ADM), or None.
    resblock_updown: resample inside residual blocks (BigGAN/ADM/DDPM++) instead of
      conv resampling layers.
    scale_shift_norm: ADM's adaptive group norm.
    skip_rescale: scale residual sums by 1/sqrt(2) (DDPM++).
    num_classes: number of classes for label conditioning (0 = unconditional).
    class_dropout: probability of replacing a label by the null class in training.
    out_channels: output channels (default: input channels).
    emb_mult: embedding width is ``ch * emb_mult``.
    norm_groups: GroupNorm groups.
    remat: rematerialisation policy of every residual and attention block ('' = off; see
      ``layers.REMAT_POLICIES``): less activation memory, same results.
    lean_residuals: recompute GroupNorm (+SiLU) and the XLA attention's softmax in the backward
      pass instead of keeping their float32 intermediates (`layers.recompute_in_backward`):
      about a third of the residuals. Off by default: it costs step time (measurements in
      experiments/benchmarks/memory/residuals_lean.md and
      throughput/ab_lean_residuals_unet_cpu.md); turn it on where activations limit the batch.
    norm_eps: GroupNorm epsilon (1e-6: DDPM and diffusers' DDPM checkpoints; ADM: 1e-5).
    embedding_freq_shift, embedding_sin_first: the noise level's sinusoidal features
      (`layers.sinusoidal_embedding`): ``(0, False)`` is ADM's [cos, sin]; Ho et al.'s DDPM
      (and its diffusers checkpoints) is ``(1, True)``.
    augment_dim: width of EDM's augmentation labels (Karras et al. 2022, non-leaky
      augmentation; 9 for its geometric pipeline), fed through ``augment_labels`` onto the
      noise features before the embedding MLP (0 = none).
    stem_width: output channels of the input convolution (default ``ch``; ADM uses
      ``ch * ch_mult[0]``, which differs for its 512x512 model).
    dtype: compute dtype; param_dtype: parameter dtype.

  ``ch_mult`` may hold fractions where ``ch * mult`` is a whole number (ADM 512x512: 0.5).
  """

  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  num_heads: int = 1
  head_channels: int | None = None
  resblock_updown: bool = False
  scale_shift_norm: bool = False
  skip_rescale: bool = False
  num_classes: int = 0
  class_dropout: float = 0.0
  out_channels: int | None = None
  emb_mult: int = 4
  norm_groups: int = 32
  remat: str = ""
  lean_residuals: bool = False
  norm_eps: float = 1e-6
  embedding_freq_shift: float = 0.0
  embedding_sin_first: bool = False
  augment_dim: int = 0
  stem_width: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _heads(self, channels: int) -> int:
    return channels // self.head_channels if self.head_channels else self.num_heads

  def _width(self, mult) -> int:
    width = self.ch * mult
    if width != int(width):
      raise ValueError(f"ch * ch_mult must be whole numbers, got {self.ch} * {mult}")
    return int(width)

  @nn.compact
  def __call__(self, x, noise_level, labels=None, *, train: bool = False, augment_labels=None):
    """Args: x [B, H, W, C]; noise_level [B]; labels [B] int or None; train enables dropout;
    augment_labels [B, augment_dim] float or None (zeros: no augmentation; only with
    ``augment_dim``).

    Returns: [B, H, W, out_channels] in ``dtype``.
    """
    if x.ndim != 4:
      raise ValueError(f"UNet expects NHWC input, got shape {x.shape}")
    levels = len(self.ch_mult)
    if x.shape[1] % 2 ** (levels - 1) or x.shape[2] % 2 ** (levels - 1):
      raise ValueError(f"UNet with {levels} levels needs H and W divisible by "
                       f"{2 ** (levels - 1)}, got {x.shape[1:3]}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    emb_dim = self.ch * self.emb_mult
    if augment_labels is not None and augment_labels.shape[-1] != self.augment_dim:
      raise ValueError(f"augment_labels of width {augment_labels.shape[-1]} for a UNet with "
                       f"augment_dim={self.augment_dim}")
    if self.augment_dim and augment_labels is None:  # sampling: no augmentation
      augment_labels = jnp.zeros((x.shape[0], self.augment_dim), jnp.float32)
    emb = NoiseEmbedding(emb_dim, self.ch, freq_shift=self.embedding_freq_shift,
                         sin_first=self.embedding_sin_first, name="noise_embed",
                         **kw)(noise_level, augment_labels if self.augment_dim else None)
    if self.num_classes:
      if labels is None:
        raise ValueError("this UNet is class-conditional (num_classes > 0): pass labels")
      emb = emb + LabelEmbedding(self.num_classes, emb_dim, self.class_dropout,
                                 name="label_embed", **kw)(labels, train)
    block = dict(dropout=self.dropout, scale_shift_norm=self.scale_shift_norm,
                 skip_rescale=self.skip_rescale, norm_groups=self.norm_groups,
                 lean_residuals=self.lean_residuals, norm_eps=self.norm_eps, **kw)
    attn = dict(skip_rescale=self.skip_rescale, norm_groups=self.norm_groups,
                lean_residuals=self.lean_residuals, norm_eps=self.norm_eps, **kw)
    res_block = remat_block(ResBlock, self.remat, static_argnums=(3,))
    attn_block = remat_block(AttentionBlock, self.remat)

    h = Conv(self.stem_width or self.ch, name="conv_in", **kw)(x.astype(self.dtype))
    skips = [h]
    res = x.shape[1]
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = res_block(self._width(mult), name=f"down_{level}_{i}", **block)(h, emb, train)
        if res in self.attn_resolutions:
          h = attn_block(self._heads(h.shape[-1]), name=f"down_{level}_{i}_attn", **attn)(h)
        skips.append(h)
      if level != levels - 1:
        if self.resblock_updown:
          h = res_block(h.shape[-1], resample="down", name=f"down_{level}_resample",
                       **block)(h, emb, train)
        else:
          h = Conv(h.shape[-1], strides=2, name=f"down_{level}_resample", **kw)(h)
        skips.append(h)
        res //= 2

    h = res_block(h.shape[-1], name="mid_0", **block)(h, emb, train)
    h = attn_block(self._heads(h.shape[-1]), name="mid_attn", **attn)(h)
    h = res_block(h.shape[-1], name="mid_1", **block)(h, emb, train)

    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res_block(self._width(mult), name=f"up_{level}_{i}", **block)(h, emb, train)
        if res in self.attn_resolutions:
          h = attn_block(self._heads(h.shape[-1]), name=f"up_{level}_{i}_attn", **attn)(h)
      if level != 0:
        if self.resblock_updown:
          h = res_block(h.shape[-1], resample="up", name=f"up_{level}_resample",
                       **block)(h, emb, train)
        else:
          h = Conv(h.shape[-1], name=f"up_{level}_resample", **kw)(_upsample_nearest(h))
        res *= 2

    h = GroupNorm(self.norm_groups, self.norm_eps, activation=nn.silu, lean=self.lean_residuals,
                  name="norm_out", **kw)(h)
    return Conv(self.out_channels or x.shape[-1], zero_init=True, name="conv_out", **kw)(h)
