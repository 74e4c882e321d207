"""AutoencoderKL: the KL-regularised convolutional autoencoder of latent diffusion.

Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion Models") in the
layout of the Stable Diffusion VAEs as diffusers stores them (``AutoencoderKL``), so their
weights load one to one (`diffjax.models.vae_weights`):

* encoder: 3x3 ``conv_in``; per level of ``block_out_channels`` ``layers_per_block`` ResNet
  blocks (GroupNorm + SiLU + 3x3 conv, twice; a 1x1 shortcut when the width changes) and, but
  for the last level, a stride-2 3x3 convolution on the input padded by one row and column at
  the bottom and right; a mid block (ResNet, single-head self-attention over all positions,
  ResNet); GroupNorm, SiLU and a 3x3 conv to ``2 * latent_channels`` moments;
* optional 1x1 ``quant_conv`` on the moments and ``post_quant_conv`` on the latent (SD 1.x/2.x
  and SDXL have them, SD3 and FLUX do not);
* a diagonal Gaussian posterior: ``mean, logvar`` with ``logvar`` clipped to [-30, 20] as the
  reference implementation does;
* decoder: 3x3 ``conv_in``; mid block; per level (widest first) ``layers_per_block + 1`` ResNet
  blocks and, but for the last, 2x nearest-neighbour upsampling followed by a 3x3 conv;
  GroupNorm, SiLU, 3x3 ``conv_out``.

Images are NHWC in [-1, 1]. Latents are raw (unscaled): diffusion models train on
`normalize_latents` of them, the model's scaling and shift factors (``(z - shift) * scale``,
SD 0.18215, SDXL 0.13025, SD3 1.5305 / 0.0609, FLUX 0.3611 / 0.1159) or per-channel mean and
standard deviation as EDM2 uses them (Karras et al. 2024), ``(z - mean) / std * scale``.

Memory: `map_batches` runs a function over chunks of a batch in sequence (``lax.map``),
`tiled_encode` / `tiled_decode` cut large images into overlapping tiles whose results are
blended linearly where they overlap (the diffusers algorithm; not equal to the untiled result,
since every tile sees only its own context and GroupNorm statistics). ``remat`` rematerialises
every ResNet and attention block in training.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models import layers
from diffjax.models.layers import Dtype

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class ResnetBlock(nn.Module):
  """GroupNorm-SiLU-conv twice with a residual (1x1 conv shortcut when widths differ)."""

  out_channels: int
  groups: int = 32
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.GroupNorm(self.groups, self.eps, activation=nn.silu, name="norm1", **kw)(x)
    h = layers.Conv(self.out_channels, name="conv1", **kw)(h)
    h = layers.GroupNorm(self.groups, self.eps, activation=nn.silu, name="norm2", **kw)(h)
    h = layers.Conv(self.out_channels, name="conv2", **kw)(h)
    if x.shape[-1] != self.out_channels:
      x = layers.Conv(self.out_channels, kernel_size=1, name="conv_shortcut", **kw)(x)
    return x.astype(self.dtype) + h


class AttentionBlock(nn.Module):
  """GroupNorm, then single-head self-attention over every position, plus the input."""

  groups: int = 32
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = layers.GroupNorm(self.groups, self.eps, name="group_norm", **kw)(x)
    y = layers.SelfAttention(1, name="attention", **kw)(y.reshape(b, h * w, c))
    return x.astype(self.dtype) + y.reshape(b, h, w, c)


class Downsample(nn.Module):
  """Stride-2 3x3 convolution of the input padded at the bottom and right only."""

  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return layers.Conv(self.channels, strides=2, padding=((0, 1), (0, 1)), name="conv",
                       dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Upsample(nn.Module):
  """2x nearest-neighbour upsampling, then a 3x3 convolution."""

  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return layers.Conv(self.channels, name="conv", dtype=self.dtype,
                       param_dtype=self.param_dtype)(x)


def _blocks(remat: str):
  return (layers.remat_block(ResnetBlock, remat), layers.remat_block(AttentionBlock, remat))


class MidBlock(nn.Module):
  """ResNet, attention (optional), ResNet at the lowest resolution."""

  channels: int
  groups: int
  eps: float
  attention: bool = True
  remat: str = ""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    res, attn = _blocks(self.remat)
    x = res(self.channels, self.groups, self.eps, name="resnets_0", **kw)(x)
    if self.attention:
      x = attn(self.groups, self.eps, name="attentions_0", **kw)(x)
    return res(self.channels, self.groups, self.eps, name="resnets_1", **kw)(x)


class Encoder(nn.Module):
  """Images [B, H, W, C] -> moments [B, H / f, W / f, 2 * latent_channels] (f = 2^(levels-1))."""

  block_out_channels: Sequence[int]
  layers_per_block: int
  latent_channels: int
  groups: int
  eps: float
  mid_attention: bool
  remat: str = ""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    res, _ = _blocks(self.remat)
    h = layers.Conv(self.block_out_channels[0], name="conv_in", **kw)(x.astype(self.dtype))
    for i, ch in enumerate(self.block_out_channels):
      for j in range(self.layers_per_block):
        h = res(ch, self.groups, self.eps, name=f"down_blocks_{i}_resnets_{j}", **kw)(h)
      if i < len(self.block_out_channels) - 1:
        h = Downsample(ch, name=f"down_blocks_{i}_downsample", **kw)(h)
    h = MidBlock(self.block_out_channels[-1], self.groups, self.eps, self.mid_attention,
                 self.remat, name="mid_block", **kw)(h)
    h = layers.GroupNorm(self.groups, self.eps, activation=nn.silu, name="conv_norm_out",
                         **kw)(h)
    return layers.Conv(2 * self.latent_channels, name="conv_out", **kw)(h)


class DecoderTrunk(nn.Module):
  """Latents -> the last feature map before the decoder's output normalisation."""

  block_out_channels: Sequence[int]
  layers_per_block: int
  groups: int
  eps: float
  mid_attention: bool
  remat: str = ""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    res, _ = _blocks(self.remat)
    widths = tuple(reversed(self.block_out_channels))
    h = layers.Conv(widths[0], name="conv_in", **kw)(z.astype(self.dtype))
    h = MidBlock(widths[0], self.groups, self.eps, self.mid_attention, self.remat,
                 name="mid_block", **kw)(h)
    for i, ch in enumerate(widths):
      for j in range(self.layers_per_block + 1):
        h = res(ch, self.groups, self.eps, name=f"up_blocks_{i}_resnets_{j}", **kw)(h)
      if i < len(widths) - 1:
        h = Upsample(ch, name=f"up_blocks_{i}_upsample", **kw)(h)
    return h


class Decoder(nn.Module):
  """Latents -> images; `features` and `head` split off the last convolution (the
  discriminator's adaptive weight is computed from the gradients at that layer)."""

  block_out_channels: Sequence[int]
  layers_per_block: int
  out_channels: int
  groups: int
  eps: float
  mid_attention: bool
  remat: str = ""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.trunk = DecoderTrunk(self.block_out_channels, self.layers_per_block, self.groups,
                              self.eps, self.mid_attention, self.remat, **kw)
    self.conv_norm_out = layers.GroupNorm(self.groups, self.eps, activation=nn.silu, **kw)
    self.conv_out = layers.Conv(self.out_channels, **kw)

  def features(self, z):
    return self.conv_norm_out(self.trunk(z))

  def head(self, h):
    return self.conv_out(h)

  def __call__(self, z):
    return self.head(self.features(z))


class AutoencoderKL(nn.Module):
  """The Stable Diffusion VAE family (see the module docstring).

  Attributes:
    in_channels: image channels the encoder takes (checked against the input).
    out_channels: image channels the decoder makes.
    block_out_channels: width per level (SD: 128, 256, 512, 512; downsampling 2^(levels-1)).
    layers_per_block: ResNet blocks per encoder level (decoder levels have one more).
    latent_channels: 4 (SD 1.x/2.x, SDXL) or 16 (SD3, FLUX).
    norm_num_groups: GroupNorm groups (32).
    norm_eps: GroupNorm epsilon (1e-6).
    use_quant_conv, use_post_quant_conv: the 1x1 convolutions around the latent.
    mid_block_add_attention: self-attention in the mid blocks.
    scaling_factor, shift_factor: latent normalisation ``(z - shift) * scale``.
    latents_mean, latents_std: per-channel statistics; when given, normalisation is
      ``(z - mean) / std * scaling_factor`` instead (EDM2 uses scaling_factor 0.5).
    remat: rematerialisation policy of every ResNet / attention block ('' = off).
    dtype: compute dtype; param_dtype: parameter dtype. Moments are returned in float32.
  """

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  norm_eps: float = 1e-6
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  scaling_factor: float = 0.18215
  shift_factor: float = 0.0
  latents_mean: tuple[float, ...] | None = None
  latents_std: tuple[float, ...] | None = None
  remat: str = ""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    for name in ("latents_mean", "latents_std"):
      value = getattr(self, name)
      if value is not None and len(value) != self.latent_channels:
        raise ValueError(f"AutoencoderKL.{name} has {len(value)} entries for "
                         f"{self.latent_channels} latent channels")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    blocks = tuple(self.block_out_channels)
    self.encoder = Encoder(blocks, self.layers_per_block, self.latent_channels,
                           self.norm_num_groups, self.norm_eps, self.mid_block_add_attention,
                           self.remat, **kw)
    self.decoder = Decoder(blocks, self.layers_per_block, self.out_channels,
                           self.norm_num_groups, self.norm_eps, self.mid_block_add_attention,
                           self.remat, **kw)
    if self.use_quant_conv:
      self.quant_conv = layers.Conv(2 * self.latent_channels, kernel_size=1, **kw)
    if self.use_post_quant_conv:
      self.post_quant_conv = layers.Conv(self.latent_channels, kernel_size=1, **kw)

  @property
  def downsampling(self) -> int:
    """Pixels per latent position along each side."""
    return 2 ** (len(self.block_out_channels) - 1)

  def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(h, w, latent_channels)`` of images ``(H, W, C)``; raises on sizes it cannot take."""
    height, width, channels = image_shape
    f = self.downsampling
    if channels != self.in_channels:
      raise ValueError(f"the autoencoder takes {self.in_channels}-channel images, the data "
                       f"has {channels}")
    if height % f or width % f:
      raise ValueError(f"the autoencoder downsamples by {f}: image sides must be multiples of "
                       f"{f}, got {height}x{width}")
    return (height // f, width // f, self.latent_channels)

  # --- encoding -----------------------------------------------------------------------------
  def moments(self, x):
    """Raw moments ``[B, h, w, 2 * latent_channels]`` (float32) of images in [-1, 1]."""
    if x.shape[-1] != self.in_channels:
      raise ValueError(f"AutoencoderKL takes {self.in_channels}-channel images, got shape "
                       f"{x.shape}")
    h = self.encoder(x)
    if self.use_quant_conv:
      h = self.quant_conv(h)
    return h.astype(jnp.float32)

  def encode(self, x):
    """The posterior ``(mean, logvar)`` of images ``x`` [B, H, W, C] in [-1, 1], each
    float32 [B, h, w, latent_channels]."""
    return posterior(self.moments(x))

  # --- decoding -----------------------------------------------------------------------------
  def decode_features(self, z):
    """Raw latents -> the decoder's features before its last convolution."""
    z = z.astype(self.dtype)
    if self.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder.features(z)

  def decode_head(self, h):
    return self.decoder.head(h).astype(jnp.float32)

  def decode(self, z):
    """Raw latents [B, h, w, latent_channels] -> images float32 [B, H, W, out_channels]."""
    return self.decode_head(self.decode_features(z))

  def __call__(self, x):
    """Reconstruction from the posterior mean (also what ``init`` traces)."""
    mean, _ = self.encode(x)
    return self.decode(mean)

  # --- latent normalisation (no parameters) ---------------------------------------------------
  def normalize_latents(self, z):
    """Raw latents -> the space a diffusion model is trained in (see the class docstring)."""
    return normalize_latents(z, self.scaling_factor, self.shift_factor, self.latents_mean,
                             self.latents_std)

  def denormalize_latents(self, z):
    return denormalize_latents(z, self.scaling_factor, self.shift_factor, self.latents_mean,
                               self.latents_std)


def posterior(moments):
  """``(mean, logvar)`` of raw moments, ``logvar`` clipped to [-30, 20]."""
  mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
  return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)


def sample_posterior(mean, logvar, rng):
  """``mean + exp(logvar / 2) * eps``, eps standard normal."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def kl_divergence(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over every latent element: [B]."""
  kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)


def _channel_stats(mean, std, z):
  shape = (1,) * (z.ndim - 1) + (-1,)
  return (jnp.asarray(mean, jnp.float32).reshape(shape),
          jnp.asarray(std, jnp.float32).reshape(shape))


def normalize_latents(z, scaling_factor: float, shift_factor: float = 0.0,
                      latents_mean=None, latents_std=None):
  """``(z - shift) * scale``, or ``(z - mean_c) / std_c * scale`` with per-channel stats."""
  if latents_mean is not None:
    mean, std = _channel_stats(latents_mean, latents_std, z)
    return (z - mean) / std * scaling_factor
  return (z - shift_factor) * scaling_factor


def denormalize_latents(z, scaling_factor: float, shift_factor: float = 0.0,
                        latents_mean=None, latents_std=None):
  """The inverse of `normalize_latents`."""
  if latents_mean is not None:
    mean, std = _channel_stats(latents_mean, latents_std, z)
    return z / scaling_factor * std + mean
  return z / scaling_factor + shift_factor


# --- memory: chunks of a batch, tiles of an image ---------------------------------------------
def map_batches(fn: Callable, x, chunk: int):
  """``fn(x)`` computed ``chunk`` examples at a time in sequence (``lax.map``), so only one
  chunk's activations are live; equal to ``fn(x)`` (to rounding) for per-example functions.
  The batch is padded to a multiple of ``chunk`` (the padding's results are dropped)."""
  n = x.shape[0]
  if chunk <= 0 or chunk >= n:
    return fn(x)
  padded = -(-n // chunk) * chunk
  xp = jnp.concatenate([x, jnp.zeros((padded - n, *x.shape[1:]), x.dtype)]) if padded > n else x
  out = jax.lax.map(fn, xp.reshape(padded // chunk, chunk, *x.shape[1:]))
  return jax.tree.map(lambda y: y.reshape(padded, *y.shape[2:])[:n], out)


def _blend(a, b, extent: int, axis: int):
  """``b`` with its first ``extent`` rows (``axis``) faded in from ``a``'s last ones."""
  extent = min(a.shape[axis], b.shape[axis], extent)
  if extent <= 0:
    return b
  w = jnp.arange(extent, dtype=jnp.float32) / extent
  shape = [1] * b.ndim
  shape[axis] = extent
  w = w.reshape(shape)
  a_tail = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis)
  b_head = jax.lax.slice_in_dim(b, 0, extent, axis=axis)
  mixed = a_tail * (1.0 - w) + b_head * w
  rest = jax.lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)
  return jnp.concatenate([mixed, rest], axis=axis)


def tiled(fn: Callable, x, tile_in: int, tile_out: int, overlap: float = 0.25):
  """``fn`` (a spatial map whose output is ``tile_out / tile_in`` times the size of its input)
  applied to overlapping ``tile_in`` x ``tile_in`` tiles of ``x`` [B, H, W, C], each result
  faded linearly into the tiles above and to its left over ``tile_out * overlap`` rows and
  columns, then cropped and joined. The tile order and blending are those of diffusers'
  ``AutoencoderKL.tiled_encode`` / ``tiled_decode`` (whose blends read tiles already blended
  with their own neighbours), so the two agree to rounding.

  Called outside ``jit`` with a jitted ``fn``, only one tile's activations are live at a time.
  """
  stride = int(tile_in * (1 - overlap))
  extent = int(tile_out * overlap)
  limit = tile_out - extent
  height, width = x.shape[1], x.shape[2]
  rows = []
  for i in range(0, height, stride):
    rows.append([fn(x[:, i:i + tile_in, j:j + tile_in]) for j in range(0, width, stride)])
  out_rows = []
  for i, row in enumerate(rows):
    for j in range(len(row)):
      t = row[j]
      if i > 0:
        t = _blend(rows[i - 1][j], t, extent, axis=1)
      if j > 0:
        t = _blend(row[j - 1], t, extent, axis=2)
      row[j] = t  # later tiles blend with this blended tile, as the reference does
    out_rows.append(jnp.concatenate([t[:, :limit, :limit] for t in row], axis=2))
  return jnp.concatenate(out_rows, axis=1)


def tiled_encode(moments_fn: Callable, x, tile: int, downsampling: int,
                 overlap: float = 0.25):
  """The posterior ``(mean, logvar)`` of ``x`` encoded tile by tile (`tiled`);
  ``moments_fn``: images -> raw moments (e.g. ``AutoencoderKL.moments`` bound to variables).
  Images no larger than ``tile`` are encoded whole."""
  if x.shape[1] <= tile and x.shape[2] <= tile:
    return posterior(moments_fn(x))
  return posterior(tiled(moments_fn, x, tile, tile // downsampling, overlap))


def tiled_decode(decode_fn: Callable, z, tile: int, downsampling: int, overlap: float = 0.25):
  """Images decoded from latents ``z`` tile by tile; ``tile`` is the image tile size
  (latent tiles are ``tile / downsampling``). Latents no larger than a tile decode whole."""
  latent_tile = tile // downsampling
  if z.shape[1] <= latent_tile and z.shape[2] <= latent_tile:
    return decode_fn(z)
  return tiled(decode_fn, z, latent_tile, tile, overlap)


def architecture(module: AutoencoderKL) -> dict[str, Any]:
  """The fields that define the function the parameters compute (not dtype, remat or the
  latent normalisation): what a weight file and a latent dataset are matched on."""
  keys = ("in_channels", "out_channels", "block_out_channels", "layers_per_block",
          "latent_channels", "norm_num_groups", "norm_eps", "use_quant_conv",
          "use_post_quant_conv", "mid_block_add_attention")
  out = {k: getattr(module, k) for k in keys}
  out["block_out_channels"] = list(out["block_out_channels"])
  return out


def normalization(module: AutoencoderKL) -> dict[str, Any]:
  """The latent normalisation fields of ``module``."""
  return {"scaling_factor": module.scaling_factor, "shift_factor": module.shift_factor,
          "latents_mean": None if module.latents_mean is None else list(module.latents_mean),
          "latents_std": None if module.latents_std is None else list(module.latents_std)}


# --- networks that train an autoencoder ---------------------------------------------------------
class PatchDiscriminator(nn.Module):
  """PatchGAN discriminator (Isola et al. 2017) as the latent-diffusion autoencoders use it
  (taming-transformers' ``NLayerDiscriminator``): 4x4 convolutions, stride 2 for the first
  ``num_layers``, LeakyReLU(0.2), widths doubling to at most 8x ``channels``, one logit per
  patch. GroupNorm replaces the reference's batch normalisation (no running statistics; the
  logits of an example do not depend on the rest of its batch).

  Returns logits float32 [B, h, w, 1].
  """

  channels: int = 64
  num_layers: int = 3
  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pad = ((1, 1), (1, 1))
    h = layers.Conv(self.channels, kernel_size=4, strides=2, padding=pad, name="conv_0",
                    **kw)(x.astype(self.dtype))
    h = nn.leaky_relu(h, 0.2)
    width = self.channels
    for i in range(1, self.num_layers + 1):
      width = self.channels * min(2 ** i, 8)
      stride = 2 if i < self.num_layers else 1
      h = layers.Conv(width, kernel_size=4, strides=stride, padding=pad, name=f"conv_{i}",
                      **kw)(h)
      h = layers.GroupNorm(self.norm_groups, 1e-5, name=f"norm_{i}", **kw)(h)
      h = nn.leaky_relu(h, 0.2)
    out = layers.Conv(1, kernel_size=4, padding=pad, name="conv_out", **kw)(h)
    return out.astype(jnp.float32)


class ConvStack(nn.Module):
  """A feed-forward feature network described by data (`diffjax.models.vae_weights`'s feature
  files): perceptual losses take any such network, e.g. VGG's or the FID Inception's first
  layers. Images in [-1, 1] are mapped to the network's input range and channels first.

  Attributes:
    ops: ``("conv", name, kernel, stride, padding, relu)``, ``("maxpool", window, stride)``,
      ``("avgpool", window, stride)`` or ``("tap",)`` (a feature map the loss compares).
    in_channels: channels of the first convolution (grey images are repeated to it).
    input_size: resize images to this side first (bilinear; 0 keeps their size).
    mean, std: per-channel normalisation of images in [0, 1] before the first layer.

  Returns the list of tapped feature maps, float32.
  """

  ops: tuple[tuple[Any, ...], ...]
  in_channels: int = 3
  input_size: int = 0
  mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  std: tuple[float, ...] = (0.5, 0.5, 0.5)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    if x.shape[-1] != self.in_channels:
      x = jnp.repeat(x, self.in_channels // x.shape[-1], axis=-1)
    if self.input_size and x.shape[1:3] != (self.input_size, self.input_size):
      x = jax.image.resize(x, (x.shape[0], self.input_size, self.input_size, x.shape[-1]),
                           "bilinear")
    shape = (1, 1, 1, -1)
    x = ((x + 1.0) / 2.0 - jnp.asarray(self.mean).reshape(shape)) / jnp.asarray(
        self.std).reshape(shape)
    h, taps = x.astype(self.dtype), []
    for op in self.ops:
      if op[0] == "conv":
        _, name, features, kernel, stride, padding, relu = op
        h = layers.Conv(features, kernel_size=kernel, strides=stride, padding=padding,
                        name=name, dtype=self.dtype, param_dtype=self.param_dtype)(h)
        h = nn.relu(h) if relu else h
      elif op[0] in ("maxpool", "avgpool"):
        pool = nn.max_pool if op[0] == "maxpool" else nn.avg_pool
        h = pool(h, (op[1], op[1]), strides=(op[2], op[2]), padding="VALID")
      elif op[0] == "tap":
        taps.append(h.astype(jnp.float32))
      else:
        raise ValueError(f"unknown feature-network op {op[0]!r}")
    return taps
