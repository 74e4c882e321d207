"""Building blocks shared by the networks.

Every parameter carries logical axis names (flax ``nn.with_logical_partitioning``), which the
parallel layer maps to mesh axes by rules from the config, so sharding changes never touch
model code. The names used:

  ``embed``     model width (DiT hidden size, embedding width)
  ``mlp``       MLP hidden width
  ``heads``     attention projection width (heads x head_dim)
  ``conv_in``   convolution input channels;  ``conv_out`` convolution output channels
  ``vocab``     rows of the class-label table
  ``norm``      normalisation scales and biases

Compute runs in ``dtype``; parameters are stored in ``param_dtype`` (float32). Normalisation
statistics and softmax are computed in float32 whatever ``dtype`` is.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

Dtype = Any

xavier_uniform = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros

# Rematerialisation policies per block (``remat`` field of the networks): what the backward
# pass may keep from the forward pass; everything else is recomputed.
REMAT_POLICIES = {
    "": None,  # off: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only block inputs
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul/conv outputs
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_block(module_class, policy: str, static_argnums: tuple[int, ...] = ()):
  """``module_class`` wrapped in ``nn.remat`` with a named policy ('' returns it unchanged).

  ``static_argnums`` count ``self`` as 0 (flax's convention), e.g. ``(3,)`` for a ``train`` flag
  in ``__call__(self, x, emb, train)``.
  """
  if policy not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {policy!r}; allowed: {sorted(REMAT_POLICIES)}")
  if not policy:
    return module_class
  return nn.remat(module_class, policy=REMAT_POLICIES[policy], static_argnums=static_argnums)


# Name of the per-example normalisation statistics that a lean norm keeps for its backward pass.
NORM_STATISTICS = "norm_statistics"


def recompute_in_backward(fn, keep: tuple[str, ...] = ()):
  """``fn`` whose backward pass recomputes its intermediates from its inputs.

  For cheap chains (normalisation, modulation, GELU, softmax) whose autodiff would otherwise keep
  several full-size intermediates, some in float32, until the backward pass: a ``jax.checkpoint``
  that saves only the values named (``jax.ad_checkpoint.checkpoint_name``) in ``keep``, so the
  residuals are ``fn``'s inputs (usually kept anyway by the layer before) and those values.
  Norms keep their per-example statistics (`NORM_STATISTICS`, a few numbers per example or
  token), so the recompute is elementwise work that XLA fuses into the backward pass's own
  kernels, with no second reduction over the activation. Same values and gradients.
  """
  policy = (jax.checkpoint_policies.save_only_these_names(*keep) if keep
            else jax.checkpoint_policies.nothing_saveable)
  return jax.checkpoint(fn, policy=policy)


def partitioned(init, names: Sequence[str | None]):
  """An initialiser whose parameter carries logical axis names."""
  return nn.with_logical_partitioning(init, tuple(names))


class Dense(nn.Module):
  """``nn.Dense`` with logical axis names ``(in_name, out_name)``."""

  features: int
  names: tuple[str | None, str | None] = ("embed", "mlp")
  zero_init: bool = False
  kernel_init: Any = xavier_uniform
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = zeros if self.zero_init else self.kernel_init
    return nn.Dense(self.features, use_bias=self.use_bias, dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    kernel_init=partitioned(init, self.names),
                    bias_init=partitioned(zeros, self.names[1:]), name="dense")(x)


class Conv(nn.Module):
  """NHWC ``nn.Conv`` with logical names ``(None, None, "conv_in", "conv_out")``."""

  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Any = "SAME"
  zero_init: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = zeros if self.zero_init else xavier_uniform
    k = self.kernel_size
    return nn.Conv(self.features, (k, k), strides=(self.strides, self.strides),
                   padding=self.padding, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=partitioned(init, (None, None, "conv_in", "conv_out")),
                   bias_init=partitioned(zeros, ("conv_out",)), name="conv")(x)


def _group_norm(x, scale, bias, groups: int, epsilon: float, dtype, activation=None):
  """Group normalisation of NHWC (or [..., C]) input from per-channel statistics.

  The statistics are reduced over the spatial axes per channel first (a reduction that keeps the
  channel axis minor, which XLA runs as one fused pass on GPU and TPU) and only then pooled over
  the channels of each group; normalisation is then one multiply-add per element with
  per-(example, channel) coefficients. Same function as ``nn.GroupNorm`` (fast variance,
  E[x^2] - E[x]^2, in float32), without its [..., groups, channels/group] reshape, whose
  reduction over non-adjacent axes costs an extra transpose of the activation. ``activation``
  (e.g. SiLU) is applied to the result, in ``dtype``.
  """
  channels = x.shape[-1]
  x32 = x.astype(jnp.float32)
  spatial = tuple(range(1, x.ndim - 1))
  mean_c = jnp.mean(x32, axis=spatial)  # [B, C]
  meansq_c = jnp.mean(jnp.square(x32), axis=spatial)
  group = lambda s: jnp.mean(s.reshape(s.shape[0], groups, channels // groups), axis=-1)
  mean, meansq = group(mean_c), group(meansq_c)  # [B, G]
  inv = jax.lax.rsqrt(jnp.maximum(meansq - jnp.square(mean), 0.0) + epsilon)
  expand = lambda g: jnp.repeat(g, channels // groups, axis=-1)  # [B, G] -> [B, C]
  mean, inv = checkpoint_name(mean, NORM_STATISTICS), checkpoint_name(inv, NORM_STATISTICS)
  a = expand(inv) * scale.astype(jnp.float32)
  b = bias.astype(jnp.float32) - expand(mean) * a
  bcast = (x.shape[0],) + (1,) * len(spatial) + (channels,)
  out = (x32 * a.reshape(bcast) + b.reshape(bcast)).astype(dtype)
  return activation(out) if activation else out


class _GroupNormCore(nn.Module):
  """`_group_norm` with its scale and bias; ``lean`` recomputes it in the backward pass."""

  num_groups: int
  epsilon: float
  dtype: Dtype
  param_dtype: Dtype
  activation: Any = None
  lean: bool = True

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = self.param("scale", partitioned(nn.initializers.ones, ("norm",)), (channels,),
                       self.param_dtype)
    bias = self.param("bias", partitioned(zeros, ("norm",)), (channels,), self.param_dtype)
    norm = functools.partial(_group_norm, groups=self.num_groups, epsilon=self.epsilon,
                             dtype=self.dtype, activation=self.activation)
    return (recompute_in_backward(norm, keep=(NORM_STATISTICS,)) if self.lean else norm)(
        x, scale, bias)


class GroupNorm(nn.Module):
  """Group normalisation computed in float32, returned in ``dtype`` (see `_group_norm`), then
  ``activation`` if given. With ``lean`` (default) the backward pass keeps only the input and
  recomputes the rest (`recompute_in_backward`) instead of keeping float32 copies of the
  activation and the normalised one."""

  num_groups: int = 32
  epsilon: float = 1e-6
  activation: Any = None
  lean: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    groups = math.gcd(self.num_groups, x.shape[-1])  # tiny test widths need fewer groups
    return _GroupNormCore(groups, self.epsilon, self.dtype, self.param_dtype, self.activation,
                          self.lean, name="norm")(x)


def layer_norm_no_affine(x, epsilon: float = 1e-6):
  """LayerNorm without scale and bias (DiT's adaLN blocks), in float32."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  mean = checkpoint_name(mean, NORM_STATISTICS)
  inv = checkpoint_name(jax.lax.rsqrt(var + epsilon), NORM_STATISTICS)
  return ((x32 - mean) * inv).astype(x.dtype)


# tanh-approximated GELU (DiT's MLP) keeping only its input for the backward pass; its autodiff
# keeps five more activations of the MLP's hidden size (see `recompute_in_backward`).
gelu_tanh = recompute_in_backward(functools.partial(nn.gelu, approximate=True))


def sinusoidal_embedding(noise_level, dim: int, max_period: float = 10000.0,
                         freq_shift: float = 0.0, sin_first: bool = False):
  """Transformer-style embedding of a per-example scalar (ADM/DiT layout: [cos, sin]).

  Frequencies are ``max_period ** (-i / (dim / 2 - freq_shift))`` for ``i < dim / 2``.
  ``freq_shift=1`` with ``sin_first`` is Ho et al.'s DDPM embedding (diffusers
  ``freq_shift=1, flip_sin_to_cos=False``); diffusers' DiT port uses ``freq_shift=1`` with
  [cos, sin] where the DiT release uses 0.

  Args:
    noise_level: [batch] float.
    dim: embedding width (even).
    max_period: the longest period.
    freq_shift: subtracted from ``dim / 2`` in the frequency exponent's denominator.
    sin_first: [sin, cos] instead of [cos, sin].

  Returns:
    [batch, dim] float32.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) /
                  (half - freq_shift))
  args = jnp.asarray(noise_level, jnp.float32)[:, None] * freqs[None]
  parts = [jnp.sin(args), jnp.cos(args)] if sin_first else [jnp.cos(args), jnp.sin(args)]
  emb = jnp.concatenate(parts, axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class NoiseEmbedding(nn.Module):
  """Sinusoidal features of the noise level followed by a two-layer MLP.

  ``augment`` [batch, k] (EDM's augmentation labels, Karras et al. 2022) is mapped linearly,
  without bias, onto the sinusoidal features before the MLP, as EDM's ``map_augment``; None
  (sampling) adds nothing, which equals all-zero labels.
  """

  features: int
  frequency_dim: int
  init: Any = xavier_uniform
  freq_shift: float = 0.0
  sin_first: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, noise_level, augment=None):
    h = sinusoidal_embedding(noise_level, self.frequency_dim, freq_shift=self.freq_shift,
                             sin_first=self.sin_first).astype(self.dtype)
    if augment is not None:
      h = h + Dense(self.frequency_dim, names=(None, "mlp"), use_bias=False, name="augment",
                    dtype=self.dtype, param_dtype=self.param_dtype)(
                        jnp.asarray(augment, self.dtype))
    kw = dict(kernel_init=self.init, dtype=self.dtype, param_dtype=self.param_dtype)
    h = Dense(self.features, names=(None, "mlp"), name="fc1", **kw)(h)
    return Dense(self.features, names=("mlp", "embed"), name="fc2", **kw)(nn.silu(h))


class LabelEmbedding(nn.Module):
  """Class-label table with one extra "null" row (index ``num_classes``) for classifier-free
  guidance. In training, labels are replaced by the null class with probability
  ``dropout_prob`` (rng stream ``"dropout"``)."""

  num_classes: int
  features: int
  dropout_prob: float = 0.0
  param_dtype: Dtype = jnp.float32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, labels, train: bool):
    labels = jnp.asarray(labels, jnp.int32)
    if train and self.dropout_prob > 0:
      drop = jax.random.bernoulli(self.make_rng("dropout"), self.dropout_prob, labels.shape)
      labels = jnp.where(drop, self.num_classes, labels)
    table = self.param("embedding", partitioned(nn.initializers.normal(0.02), ("vocab", "embed")),
                       (self.num_classes + 1, self.features), self.param_dtype)
    return jnp.take(table, labels, axis=0).astype(self.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention over tokens [batch, tokens, width].

  Uses ``jax.nn.dot_product_attention`` so XLA/cuDNN can pick a fused kernel
  (``implementation`` None lets JAX choose; "cudnn" forces flash attention on GPU). cuDNN's
  kernel keeps only the output and the softmax statistics for its backward pass; the XLA
  version would keep the [batch, heads, tokens, tokens] probabilities in float32 and again in
  ``dtype``, so with ``recompute_probabilities`` (default) its backward pass recomputes them
  from q and k (one more q.k product, a small share of a transformer block's FLOPs when tokens
  are fewer than ~6x the width).
  """

  num_heads: int
  zero_init_out: bool = False
  implementation: str | None = None
  recompute_probabilities: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, tokens, width = x.shape
    if width % self.num_heads:
      raise ValueError(f"attention width {width} is not divisible by num_heads={self.num_heads}")
    head_dim = width // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    split = lambda y: y.reshape(batch, tokens, self.num_heads, head_dim)
    q = split(Dense(width, names=("embed", "heads"), name="query", **kw)(x))
    k = split(Dense(width, names=("embed", "heads"), name="key", **kw)(x))
    v = split(Dense(width, names=("embed", "heads"), name="value", **kw)(x))
    attend = functools.partial(jax.nn.dot_product_attention, implementation=self.implementation)
    if self.recompute_probabilities and self.implementation != "cudnn":
      attend = recompute_in_backward(attend)
    out = attend(q, k, v)
    out = out.reshape(batch, tokens, width)
    return Dense(width, names=("heads", "embed"), zero_init=self.zero_init_out, name="out",
                 **kw)(out)


def sincos_2d_position_embedding(height: int, width: int, dim: int) -> np.ndarray:
  """Fixed 2-D sine-cosine position embedding [height * width, dim] (MAE/DiT layout)."""
  if dim % 4:
    raise ValueError(f"2-D position embedding needs a width divisible by 4, got {dim}")

  def one_axis(positions, d):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = positions.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  gy, gx = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                       indexing="ij")
  # DiT builds the grid with w first; keep the same half order (x then y).
  return np.concatenate([one_axis(gx, dim // 2), one_axis(gy, dim // 2)], axis=1).astype(
      np.float32)
