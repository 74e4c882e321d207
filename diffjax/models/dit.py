"""Diffusion Transformer (Peebles & Xie 2023): patchify, adaLN-Zero blocks, unpatchify.

Maps ``(x [B, H, W, C], noise_level [B], labels [B] or None)`` to ``[B, H, W, out_channels]``.
The conditioning vector ``c = noise embedding + label embedding`` regresses per-block shift,
scale and gate; gates and the final projection are zero-initialised (adaLN-Zero), so each block
starts as the identity and the network outputs zeros at initialisation.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.layers import (NORM_STATISTICS, Conv, Dense, Dtype, LabelEmbedding,
                                   NoiseEmbedding, SelfAttention, gelu_tanh,
                                   layer_norm_no_affine, recompute_in_backward, remat_block,
                                   sincos_2d_position_embedding)


def _norm_modulate(x, shift, scale, epsilon: float = 1e-6):
  """adaLN: LayerNorm (float32 statistics) without affine, then the per-image shift and scale."""
  return layer_norm_no_affine(x, epsilon) * (1 + scale[:, None, :]) + shift[:, None, :]


# The same, keeping only x, shift, scale and the per-token statistics for the backward pass
# (not the normalised x in float32 and dtype): see `layers.recompute_in_backward`.
_norm_modulate_lean = recompute_in_backward(_norm_modulate, keep=(NORM_STATISTICS,))


def _norm_modulate_kept(x, shift, scale):
  """`_norm_modulate` for ``lean_residuals=False``, behind an optimisation barrier on x.

  Without the barrier XLA:CPU fuses each block's normalisation into the fusions of the blocks
  after it and, in the backward pass, the residual cotangent's whole chain from the output down:
  the optimised HLO grows quadratically with depth and the train step slows several times
  (experiments/benchmarks/throughput/results_cpu_dit_keepall_avx2.md). The barrier (an identity; its transpose is one on the cotangent) makes x a materialised
  value that later fusions read instead of recompute, which it is in memory anyway. The lean path
  does not need it: its custom VJP already cuts the chain.
  """
  return _norm_modulate(jax.lax.optimization_barrier(x), shift, scale)


@functools.lru_cache(maxsize=None)
def _norm_modulators(epsilon: float):
  """``(lean, kept)`` norm-modulate functions with another LayerNorm epsilon than 1e-6."""
  if epsilon == 1e-6:
    return _norm_modulate_lean, _norm_modulate_kept
  fn = functools.partial(_norm_modulate, epsilon=epsilon)
  lean = recompute_in_backward(fn, keep=(NORM_STATISTICS,))
  return lean, lambda x, shift, scale: fn(jax.lax.optimization_barrier(x), shift, scale)


class DiTBlock(nn.Module):
  """Pre-norm transformer block with adaLN-Zero conditioning."""

  hidden_size: int
  num_heads: int
  mlp_ratio: float = 4.0
  attention_implementation: str | None = None
  lean_residuals: bool = True
  mlp_norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    lean = self.lean_residuals
    norm_modulate = _norm_modulate_lean if lean else _norm_modulate_kept
    mlp_norm_modulate = _norm_modulators(float(self.mlp_norm_eps))[0 if lean else 1]
    gelu = gelu_tanh if lean else lambda h: nn.gelu(h, approximate=True)
    mod = Dense(6 * self.hidden_size, names=("embed", "mlp"), zero_init=True, name="adaln",
                **kw)(nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
    h = norm_modulate(x, shift_msa, scale_msa)
    h = SelfAttention(self.num_heads, implementation=self.attention_implementation,
                      recompute_probabilities=lean, name="attn", **kw)(h)
    x = x + gate_msa[:, None, :] * h
    h = mlp_norm_modulate(x, shift_mlp, scale_mlp)
    h = Dense(int(self.hidden_size * self.mlp_ratio), names=("embed", "mlp"), name="mlp_in",
              **kw)(h)
    h = Dense(self.hidden_size, names=("mlp", "embed"), name="mlp_out", **kw)(gelu(h))
    return x + gate_mlp[:, None, :] * h


class DiT(nn.Module):
  """Diffusion Transformer.

  Attributes:
    patch_size: side of the square patches.
    hidden_size: token width.
    depth: number of blocks.
    num_heads: attention heads.
    mlp_ratio: MLP hidden width / hidden_size.
    num_classes: classes for label conditioning (0 = unconditional).
    class_dropout: probability of the null label in training (DiT: 0.1).
    out_channels: output channels (default: input channels).
    attention_implementation: passed to ``jax.nn.dot_product_attention`` (None, "xla", "cudnn").
    remat: rematerialisation policy of every block ('' = off; ``layers.REMAT_POLICIES``).
    lean_residuals: recompute the blocks' norms, modulation, GELU and (XLA attention) softmax
      in the backward pass instead of keeping their intermediates: same values and gradients,
      a fraction of the activation memory without remat, for some step time (see
      `layers.recompute_in_backward`; measurements in experiments/benchmarks/memory/
      residuals_lean.md and throughput/ab_lean_residuals*.md). False keeps everything
      autodiff keeps.
    freq_shift: the noise level's sinusoidal frequencies (`layers.sinusoidal_embedding`): 0 in
      the DiT release, 1 in diffusers' ``DiTTransformer2DModel`` port of it.
    mlp_norm_eps: epsilon of the LayerNorm before each block's MLP: 1e-6 in the DiT release,
      1e-5 (its ``norm_eps``) in diffusers' port.
    dtype: compute dtype; param_dtype: parameter dtype.

  With ``out_channels = 2 * channels`` the second half is the learned-variance output of
  Nichol & Dhariwal (the DiT release's ``learn_sigma``), see
  `diffjax.diffusion.learned_variance`.
  """

  patch_size: int = 2
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  class_dropout: float = 0.1
  out_channels: int | None = None
  attention_implementation: str | None = None
  remat: str = ""
  lean_residuals: bool = True
  freq_shift: float = 0.0
  mlp_norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, noise_level, labels=None, *, train: bool = False):
    """Args: x [B, H, W, C]; noise_level [B]; labels [B] int or None; train enables label drop.

    Returns: [B, H, W, out_channels] in ``dtype``.
    """
    if x.ndim != 4:
      raise ValueError(f"DiT expects NHWC input, got shape {x.shape}")
    b, height, width, channels = x.shape
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(f"DiT with patch_size={p} needs H and W divisible by {p}, "
                       f"got {(height, width)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    gh, gw = height // p, width // p
    tokens = Conv(self.hidden_size, kernel_size=p, strides=p, padding="VALID", name="patch_embed",
                  **kw)(x.astype(self.dtype))
    tokens = tokens.reshape(b, gh * gw, self.hidden_size)
    pos = sincos_2d_position_embedding(gh, gw, self.hidden_size)
    tokens = tokens + jnp.asarray(pos, self.dtype)[None]

    std02 = nn.initializers.normal(0.02)
    c = NoiseEmbedding(self.hidden_size, 256, init=std02, freq_shift=self.freq_shift,
                       name="noise_embed", **kw)(noise_level)
    if self.num_classes:
      if labels is None:
        raise ValueError("this DiT is class-conditional (num_classes > 0): pass labels")
      c = c + LabelEmbedding(self.num_classes, self.hidden_size, self.class_dropout,
                             name="label_embed", **kw)(labels, train)

    block = remat_block(DiTBlock, self.remat)
    for i in range(self.depth):
      tokens = block(self.hidden_size, self.num_heads, self.mlp_ratio,
                     self.attention_implementation, self.lean_residuals, self.mlp_norm_eps,
                     name=f"block_{i}", **kw)(tokens, c)

    out_ch = self.out_channels or channels
    shift, scale = jnp.split(Dense(2 * self.hidden_size, names=("embed", "mlp"), zero_init=True,
                                   name="final_adaln", **kw)(nn.silu(c)), 2, axis=-1)
    norm_modulate = _norm_modulate_lean if self.lean_residuals else _norm_modulate_kept
    tokens = norm_modulate(tokens, shift, scale)
    tokens = Dense(p * p * out_ch, names=("embed", None), zero_init=True, name="final_proj",
                   **kw)(tokens)
    out = tokens.reshape(b, gh, gw, p, p, out_ch).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(b, height, width, out_ch)
