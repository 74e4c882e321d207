"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"),
config F: a mapping network, modulated/demodulated convolutions with noise inputs, a skip
("output skips") generator and a residual discriminator with minibatch standard deviation.

Layer for layer as the official implementation (and rosinality's port, which the tests load
weights into for comparison): equalised learning rate everywhere, ``lr_mul = 0.01`` in the
mapping network, bias + leaky ReLU x sqrt(2) activations, anti-aliased resampling with the
``[1, 3, 3, 1]`` FIR filter (transposed convolution then blur when going up, blur then strided
convolution when going down), residual sums scaled by ``1/sqrt(2)``. Channel widths
``min(channel_base / resolution, channel_max)`` (config F: 32768 and 512).

Non-parameter state: ``w_avg`` (collection ``mapping_stats``), the running mean of mapped
latents that truncation pulls towards; updated when the generator runs with ``train=True``.
Class-conditional variants embed the label into the mapping network's input and use a
projection discriminator (the StyleGAN2-ADA code's ``cmap``); the paper is unconditional.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.gan.layers import (CONV_NAMES, Bias, EqualConv, EqualDense, conv2d,
                                       conv_transpose2d, fir_kernel, lrelu_gain, minibatch_std,
                                       upfirdn2d)
from diffjax.models.layers import Dtype, partitioned

BLUR = (1, 3, 3, 1)


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
  return min(channel_base // resolution, channel_max)


def normalize_2nd_moment(x, eps: float = 1e-8):
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def modulated_conv2d(x, weight, styles, *, demodulate: bool = True, up: bool = False,
                     eps: float = 1e-8):
  """StyleGAN2's modulated convolution, computed without per-sample weights.

  The paper's per-sample kernel is ``w'_ijk = s_i w_ijk`` (input channel i), demodulated by
  ``1 / sqrt(sum_ik w'_ijk^2 + eps)`` per output channel j. Because convolution is linear,
  scaling the input channels by ``s`` before one shared convolution and the output channels by
  the demodulation factors after it gives the same result (the official code's non-fused
  path); the tests check it against the explicit per-sample convolution.

  Args:
    x: ``[B, H, W, in]``.
    weight: ``[k, k, in, out]``, already multiplied by its equalised-lr scale.
    styles: ``[B, in]``.
    up: 2x upsampling by a stride-2 transposed convolution (its blur is applied by the caller).

  Returns:
    ``[B, H', W', out]``: ``H' = H`` (padding k // 2) or ``2H + 1`` with ``up`` (before the blur).
  """
  k = weight.shape[0]
  x = x * styles[:, None, None, :].astype(x.dtype)
  if up:
    y = conv_transpose2d(x, weight, stride=2, padding=0)
  else:
    y = conv2d(x, weight, padding=k // 2)
  if demodulate:
    w2 = jnp.einsum("hwio,bi->bo", jnp.square(weight.astype(jnp.float32)),
                    jnp.square(styles.astype(jnp.float32)))
    y = y * jax.lax.rsqrt(w2 + eps)[:, None, None, :].astype(y.dtype)
  return y


class ModConv(nn.Module):
  """A modulated convolution layer: style affine (bias initialised at 1), weight, optional
  2x upsampling with blur, noise input with learned strength, bias and leaky ReLU."""

  features: int
  kernel_size: int = 3
  up: bool = False
  demodulate: bool = True
  use_noise: bool = True
  activate: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, w, noise_rng=None):
    in_ch, k = x.shape[-1], self.kernel_size
    styles = EqualDense(in_ch, bias_init=1.0, names=("embed", "conv_in"), dtype=self.dtype,
                        param_dtype=self.param_dtype, name="affine")(w)
    weight = self.param("weight", partitioned(nn.initializers.normal(1.0), CONV_NAMES),
                        (k, k, in_ch, self.features), self.param_dtype)
    weight = (weight / math.sqrt(in_ch * k * k)).astype(self.dtype)
    y = modulated_conv2d(x.astype(self.dtype), weight, styles, demodulate=self.demodulate,
                         up=self.up)
    if self.up:  # blur after the transposed convolution: [1,3,3,1] x 4 with pad (1, 1)
      p = len(BLUR) - 2 - (k - 1)
      y = upfirdn2d(y, fir_kernel(BLUR, 4.0), pad=((p + 1) // 2 + 1, p // 2 + 1))
    if self.use_noise:
      strength = self.param("noise_strength", partitioned(nn.initializers.zeros, (None,)), (),
                            self.param_dtype)
      if noise_rng is not None:
        b, h, wd, _ = y.shape
        noise = jax.random.normal(noise_rng, (b, h, wd, 1), jnp.float32)
        y = y + (strength * noise).astype(y.dtype)
    bias = Bias(self.param_dtype, name="bias")(self.features)
    return lrelu_gain(y, bias) if self.activate else y + bias.astype(y.dtype)


class ToRGB(nn.Module):
  """1x1 modulated convolution without demodulation to the image channels, plus bias."""

  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, w):
    return ModConv(self.channels, kernel_size=1, demodulate=False, use_noise=False,
                   activate=False, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="conv")(x, w)


class StyleGAN2Generator(nn.Module):
  """StyleGAN2's generator: ``(z [B, z_dim], labels) -> images [B, R, R, channels]``.

  ``mapping`` and ``synthesis`` are exposed for style mixing, path-length regularisation and
  truncation (``module.apply(variables, ..., method="mapping")``).

  Attributes:
    resolution: output size (power of two >= 4).
    channels: image channels.
    z_dim, w_dim: latent sizes (512 in the paper).
    mapping_layers: depth of the mapping MLP (8).
    mapping_lr_mul: its learning-rate multiplier (0.01).
    channel_base, channel_max: widths ``min(channel_base / res, channel_max)``.
    w_avg_beta: decay of the running mean of ``w`` used by truncation (0.995).
    num_classes: labels to condition on (0: unconditional).
  """

  resolution: int = 1024
  channels: int = 3
  z_dim: int = 512
  w_dim: int = 512
  mapping_layers: int = 8
  mapping_lr_mul: float = 0.01
  channel_base: int = 32768
  channel_max: int = 512
  w_avg_beta: float = 0.995
  num_classes: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def num_ws(self) -> int:
    return 2 * int(math.log2(self.resolution)) - 2

  def setup(self):
    levels = int(math.log2(self.resolution))
    if 2 ** levels != self.resolution or levels < 2:
      raise ValueError(f"StyleGAN2 needs a power-of-two resolution >= 4, got {self.resolution}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.fcs = [EqualDense(self.w_dim, lr_mul=self.mapping_lr_mul, name=f"mapping_fc{i}", **kw)
                for i in range(self.mapping_layers)]
    if self.num_classes:
      self.embed = EqualDense(self.w_dim, name="label_embed", **kw)
    self.w_avg = self.variable("mapping_stats", "w_avg", lambda: jnp.zeros((self.w_dim,)))
    ch = lambda r: channels_at(r, self.channel_base, self.channel_max)
    self.const = self.param("const", partitioned(nn.initializers.normal(1.0),
                                                 (None, None, "conv_out")), (4, 4, ch(4)),
                            self.param_dtype)
    convs, ups, rgbs = [], [], []
    for lvl in range(2, levels + 1):
      r = 2 ** lvl
      if lvl > 2:
        ups.append(ModConv(ch(r), up=True, name=f"b{r}_conv0", **kw))
      convs.append(ModConv(ch(r), name=f"b{r}_conv1", **kw))
      rgbs.append(ToRGB(self.channels, name=f"b{r}_torgb", **kw))
    self.convs, self.ups, self.rgbs = convs, ups, rgbs

  def mapping(self, z, labels=None, *, psi: float | jax.Array = 1.0, train: bool = False):
    """``z [B, z_dim] -> w [B, w_dim]``; with ``train`` updates ``w_avg``; ``psi < 1`` pulls
    ``w`` towards ``w_avg`` (the truncation trick)."""
    x = normalize_2nd_moment(z.astype(jnp.float32))
    if self.num_classes:
      onehot = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
      x = jnp.concatenate([x, normalize_2nd_moment(self.embed(onehot))], axis=-1)
    for fc in self.fcs:
      x = lrelu_gain(fc(x))
    x = x.astype(jnp.float32)
    if train and not self.is_initializing():
      self.w_avg.value = (jnp.mean(x, axis=0) * (1 - self.w_avg_beta)
                          + self.w_avg.value * self.w_avg_beta)
    if not (isinstance(psi, float) and psi == 1.0):
      x = self.w_avg.value + psi * (x - self.w_avg.value)
    return x

  def synthesis(self, ws, noise_rng=None):
    """``ws [B, num_ws, w_dim] -> images [B, R, R, channels]`` (not clipped); layer ``i``'s
    convolutions use ``ws[:, 2i - 1]`` (upsampling) and ``ws[:, 2i]``, its ToRGB
    ``ws[:, 2i + 1]`` (the reference code's indexing). ``noise_rng`` None: no noise."""
    b = ws.shape[0]
    x = jnp.broadcast_to(self.const[None].astype(self.dtype), (b, *self.const.shape))
    rngs = (jax.random.split(noise_rng, 2 * len(self.convs)) if noise_rng is not None
            else [None] * (2 * len(self.convs)))
    img = None
    for i, (conv, rgb) in enumerate(zip(self.convs, self.rgbs)):
      if i:
        x = self.ups[i - 1](x, ws[:, 2 * i - 1], rngs[2 * i - 1])
      x = conv(x, ws[:, 2 * i], rngs[2 * i])
      y = rgb(x, ws[:, 2 * i + 1])
      if img is not None:  # skip generator: upsampled previous image + this level's
        img = upfirdn2d(img, fir_kernel(BLUR, 4.0), up=2, pad=(2, 1))
        y = y + img
      img = y
    return img.astype(jnp.float32)

  def __call__(self, z, labels=None, train: bool = False, noise_rng=None,
               psi: float | jax.Array = 1.0):
    w = self.mapping(z, labels, psi=psi, train=train)
    ws = jnp.broadcast_to(w[:, None], (w.shape[0], self.num_ws, self.w_dim))
    return self.synthesis(ws, noise_rng)


class _DConv(nn.Module):
  """Equalised conv (no bias) + bias inside leaky ReLU x sqrt(2) (``activate``)."""

  features: int
  kernel_size: int = 3
  down: int = 1
  activate: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = EqualConv(self.features, self.kernel_size, use_bias=False, down=self.down,
                  dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
    if not self.activate:
      return y
    return lrelu_gain(y, Bias(self.param_dtype, name="act")(self.features))


class StyleGAN2Discriminator(nn.Module):
  """StyleGAN2's residual discriminator: ``(images [B, R, R, C], labels) -> logits [B]``.

  fromRGB (1x1) at the input resolution, then per level a 3x3 conv, a blurred stride-2 3x3
  conv and a blurred stride-2 1x1 skip (no bias), summed and scaled by ``1/sqrt(2)``; at 4x4
  minibatch std (group 4, 1 feature), a 3x3 conv, a dense layer and the output layer (a
  projection onto the label's embedding when conditional).
  """

  channel_base: int = 32768
  channel_max: int = 512
  mbstd_group: int = 4
  mbstd_features: int = 1
  num_classes: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, labels=None, train: bool = False):
    del train  # no state to update
    res = x.shape[1]
    ch = lambda r: channels_at(r, self.channel_base, self.channel_max)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _DConv(ch(res), 1, name="fromrgb", **kw)(x.astype(self.dtype))
    r = res
    while r > 4:
      y = _DConv(ch(r), name=f"b{r}_conv0", **kw)(h)
      y = _DConv(ch(r // 2), down=2, name=f"b{r}_conv1", **kw)(y)
      skip = _DConv(ch(r // 2), 1, down=2, activate=False, name=f"b{r}_skip", **kw)(h)
      h = (y + skip) * (1 / math.sqrt(2))
      r //= 2
    h = minibatch_std(h, self.mbstd_group, self.mbstd_features)
    h = _DConv(ch(4), name="b4_conv", **kw)(h)
    h = h.reshape(h.shape[0], -1)
    h = lrelu_gain(EqualDense(ch(4), name="b4_fc", **kw)(h))
    if self.num_classes:
      cmap = EqualDense(ch(4), name="label_embed", **kw)(
          jax.nn.one_hot(labels, self.num_classes, dtype=h.dtype))
      out = EqualDense(ch(4), name="b4_out", **kw)(h)
      return (jnp.sum(out * cmap, axis=-1) / math.sqrt(ch(4))).astype(jnp.float32)
    return EqualDense(1, name="b4_out", **kw)(h)[:, 0].astype(jnp.float32)
