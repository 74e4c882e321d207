"""Layers the GAN families share: spectral normalisation, equalised learning rate, FIR
resampling (upfirdn2d), modulated convolution, minibatch standard deviation, pixel norm,
conditional batch norm, PyTorch-semantics transposed convolution and SAGAN attention.

Non-parameter state lives in Flax collections beside ``params`` (the method stores them in
``NetState.collections`` and updates them, never by gradients):

  ``spectral``     power-iteration vectors ``u`` of spectrally normalised weights
  ``batch_stats``  running means and variances of batch norms

Every parameter carries logical axis names (see `diffjax.models.layers`). Layouts are NHWC;
convolution kernels are ``[kh, kw, in, out]``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.layers import Dtype, partitioned

SPECTRAL = "spectral"
CONV_NAMES = (None, None, "conv_in", "conv_out")
DENSE_NAMES = ("embed", "mlp")


# --- spectral normalisation (Miyato et al. 2018) -----------------------------------------------
def _l2_normalize(x, eps: float = 1e-12):
  return x / (jnp.sqrt(jnp.sum(jnp.square(x))) + eps)


def power_iteration(matrix, u, n_steps: int = 1, eps: float = 1e-12):
  """``(sigma, u, v)`` after ``n_steps`` power iterations on ``matrix`` ``[in, out]``.

  ``u`` is ``[out]``; the iteration is PyTorch's ``spectral_norm`` on ``W = matrix.T``
  (``v = normalise(W^T u)``, ``u = normalise(W v)``, ``sigma = u . W v``), so with the same
  starting ``u`` both give the same numbers. ``u`` and ``v`` are constants for gradients, as in
  the paper: the gradient flows through ``sigma = u^T W v`` only.
  """
  v = None
  for _ in range(n_steps):
    v = _l2_normalize(matrix @ u, eps)  # [in]   = W^T u
    u = _l2_normalize(v @ matrix, eps)  # [out]  = W v
  u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  sigma = v @ matrix @ u
  return sigma, u, v


def spectral_normalize(module: nn.Module, kernel, *, update: bool, n_steps: int = 1,
                       eps: float = 1e-12):
  """``kernel / sigma(kernel)`` with the power-iteration vector in the ``spectral`` collection.

  With ``update`` (training) the new ``u`` is stored; otherwise the stored one is used as is
  (its one matrix-vector product still gives sigma), so sampling never changes the state.
  """
  matrix = kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)
  u_var = module.variable(SPECTRAL, "u", lambda: _l2_normalize(
      jax.random.normal(module.make_rng("params"), (matrix.shape[-1],), jnp.float32)))
  sigma, u, _ = power_iteration(matrix, u_var.value, n_steps, eps)
  if update and not module.is_initializing():
    u_var.value = u
  return (kernel / sigma.astype(kernel.dtype))


class SNDense(nn.Module):
  """Dense layer whose kernel is divided by its largest singular value (when ``spectral``)."""

  features: int
  use_bias: bool = True
  spectral: bool = True
  kernel_init: Any = nn.initializers.orthogonal()
  names: tuple[str | None, str | None] = DENSE_NAMES
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, update_stats: bool = False):
    kernel = self.param("kernel", partitioned(self.kernel_init, self.names),
                        (x.shape[-1], self.features), self.param_dtype)
    if self.spectral:
      kernel = spectral_normalize(self, kernel, update=update_stats)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", partitioned(nn.initializers.zeros, self.names[1:]),
                         (self.features,), self.param_dtype).astype(self.dtype)
    return y


class SNConv(nn.Module):
  """NHWC convolution (``SAME`` padding) with an optionally spectrally normalised kernel."""

  features: int
  kernel_size: int = 3
  use_bias: bool = True
  spectral: bool = True
  kernel_init: Any = nn.initializers.orthogonal()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, update_stats: bool = False):
    k = self.kernel_size
    kernel = self.param("kernel", partitioned(self.kernel_init, CONV_NAMES),
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    if self.spectral:
      kernel = spectral_normalize(self, kernel, update=update_stats)
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), padding=k // 2)
    if self.use_bias:
      y = y + self.param("bias", partitioned(nn.initializers.zeros, ("conv_out",)),
                         (self.features,), self.param_dtype).astype(self.dtype)
    return y


class SNEmbed(nn.Module):
  """Class embedding table, spectrally normalised as a ``[classes, features]`` matrix
  (BigGAN's projection discriminator)."""

  num_classes: int
  features: int
  spectral: bool = True
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, labels, update_stats: bool = False):
    table = self.param("embedding", partitioned(nn.initializers.orthogonal(), ("vocab", "embed")),
                       (self.num_classes, self.features), self.param_dtype)
    if self.spectral:
      table = spectral_normalize(self, table, update=update_stats)
    return jnp.take(table, labels, axis=0)


# --- convolutions ------------------------------------------------------------------------------
def conv2d(x, kernel, *, stride: int = 1, padding: int | Sequence[tuple[int, int]] = 0,
           lhs_dilation: int = 1, groups: int = 1):
  """Cross-correlation of NHWC ``x`` with ``[kh, kw, in / groups, out]`` ``kernel``."""
  if isinstance(padding, int):
    padding = [(padding, padding)] * 2
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), padding, lhs_dilation=(lhs_dilation, lhs_dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def _zero_insert(x, factor: int):
  """``factor - 1`` zeros after every sample of NHWC ``x`` on both spatial axes (reshape and
  pad: cheap to differentiate to any order, unlike a convolution's ``lhs_dilation``, which
  XLA:CPU runs on a slow path)."""
  if factor == 1:
    return x
  n, h, w, c = x.shape
  x = x.reshape(n, h, 1, w, 1, c)
  x = jnp.pad(x, ((0, 0), (0, 0), (0, factor - 1), (0, 0), (0, factor - 1), (0, 0)))
  return x.reshape(n, h * factor, w * factor, c)


def conv_transpose2d(x, kernel, *, stride: int, padding: int):
  """``torch.nn.functional.conv_transpose2d`` semantics for a kernel stored ``[kh, kw, in,
  out]`` (PyTorch's ``[in, out, kh, kw]`` permuted): zeros inserted between inputs, then a
  correlation with the spatially flipped kernel; output ``(H - 1) * stride - 2 * padding + k``."""
  k = kernel.shape[0]
  pad = k - 1 - padding
  x = _zero_insert(x, stride)
  if stride > 1:  # no zeros after the last sample
    x = x[:, :x.shape[1] - stride + 1, :x.shape[2] - stride + 1]
  return conv2d(x, kernel[::-1, ::-1], padding=[(pad, pad)] * 2)


def fir_kernel(taps: Sequence[float], gain: float = 1.0) -> np.ndarray:
  """Separable 2-D FIR filter from 1-D taps, normalised to sum ``gain``."""
  k = np.asarray(taps, np.float64)
  k = np.outer(k, k)
  return (k / k.sum() * gain).astype(np.float32)


def upfirdn2d(x, kernel: np.ndarray, *, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)):
  """Upsample (zero insertion), FIR filter, downsample: StyleGAN2's ``upfirdn2d`` on NHWC.

  Each input sample is followed by ``up - 1`` zeros, the result is padded by ``pad`` on both
  spatial axes, convolved with ``kernel`` per channel and every ``down``-th sample kept:
  output size ``(H * up + pad0 + pad1 - kh) // down + 1``. A separable (rank-one) kernel, as
  every FIR filter of `fir_kernel` is, runs as weighted sums of shifted slices, one axis at a
  time (elementwise work XLA fuses, and cheap to differentiate twice for R1 and path length);
  others as a depthwise convolution.
  """
  p0, p1 = pad
  if p0 < 0 or p1 < 0:
    raise ValueError(f"upfirdn2d: negative padding {pad} is not supported")
  kernel = np.asarray(kernel, np.float64)
  u, sv, vt = np.linalg.svd(kernel)
  x = _zero_insert(x, up)
  x = jnp.pad(x, ((0, 0), (p0, p1), (p0, p1), (0, 0)))
  if len(sv) > 1 and sv[1] > 1e-6 * sv[0]:  # not separable
    channels = x.shape[-1]
    k = jnp.tile(jnp.asarray(kernel[::-1, ::-1], x.dtype)[:, :, None, None], (1, 1, 1, channels))
    return conv2d(x, k, stride=down, groups=channels)
  col, row = u[:, 0] * np.sqrt(sv[0]), vt[0] * np.sqrt(sv[0])
  for axis, taps in ((1, col[::-1]), (2, row[::-1])):  # true convolution: flipped taps
    length = x.shape[axis] - len(taps) + 1
    x = sum(float(t) * jax.lax.slice_in_dim(x, i, i + length, axis=axis)
            for i, t in enumerate(taps))
  return x[:, ::down, ::down]


# --- equalised learning rate (Karras et al. 2018) ----------------------------------------------
def equalized_scale(fan_in: int, gain: float = math.sqrt(2.0), lr_mul: float = 1.0) -> float:
  """The run-time weight scale ``gain * lr_mul / sqrt(fan_in)``: weights are stored N(0, 1/
  lr_mul^2) and scaled at every use, so Adam's per-parameter step size is the same for every
  layer (He's constant applied dynamically)."""
  return gain * lr_mul / math.sqrt(fan_in)


def _normal_over(lr_mul: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) / lr_mul
  return init


class EqualDense(nn.Module):
  """Dense layer with equalised learning rate (weights N(0, 1) scaled at run time).

  Attributes:
    gain: He gain (sqrt(2) for ProGAN layers followed by leaky ReLU; 1 for StyleGAN2, whose
      activations carry the gain).
    lr_mul: learning-rate multiplier (StyleGAN's mapping network uses 0.01).
    bias_init: initial bias (1 for StyleGAN2's style affines).
  """

  features: int
  gain: float = 1.0
  lr_mul: float = 1.0
  use_bias: bool = True
  bias_init: float = 0.0
  names: tuple[str | None, str | None] = DENSE_NAMES
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    w = self.param("kernel", partitioned(_normal_over(self.lr_mul), self.names),
                   (fan_in, self.features), self.param_dtype)
    scale = equalized_scale(fan_in, self.gain, self.lr_mul)
    y = jnp.dot(x.astype(self.dtype), (w * scale).astype(self.dtype))
    if self.use_bias:
      b = self.param("bias", partitioned(nn.initializers.constant(self.bias_init / self.lr_mul),
                                         self.names[1:]), (self.features,), self.param_dtype)
      y = y + (b * self.lr_mul).astype(self.dtype)
    return y


class EqualConv(nn.Module):
  """Convolution with equalised learning rate; ``down=2`` blurs with ``blur`` first and then
  strides (StyleGAN2's anti-aliased downsampling), ``SAME`` padding otherwise."""

  features: int
  kernel_size: int = 3
  gain: float = 1.0
  use_bias: bool = True
  down: int = 1
  blur: tuple[float, ...] = (1, 3, 3, 1)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    w = self.param("kernel", partitioned(_normal_over(1.0), CONV_NAMES),
                   (k, k, x.shape[-1], self.features), self.param_dtype)
    w = (w * equalized_scale(k * k * x.shape[-1], self.gain)).astype(self.dtype)
    x = x.astype(self.dtype)
    if self.down > 1:
      p = len(self.blur) - self.down + k - 1
      x = upfirdn2d(x, fir_kernel(self.blur), pad=((p + 1) // 2, p // 2))
      y = conv2d(x, w, stride=self.down)
    else:
      y = conv2d(x, w, padding=k // 2)
    if self.use_bias:
      y = y + self.param("bias", partitioned(nn.initializers.zeros, ("conv_out",)),
                         (self.features,), self.param_dtype).astype(self.dtype)
    return y


def lrelu_gain(x, bias=None, slope: float = 0.2, gain: float = math.sqrt(2.0)):
  """StyleGAN2's ``fused_leaky_relu``: ``leaky_relu(x + bias) * sqrt(2)``."""
  if bias is not None:
    x = x + bias.astype(x.dtype)
  return nn.leaky_relu(x, slope) * gain


class Bias(nn.Module):
  """A learned per-channel bias (StyleGAN2 adds it inside the activation)."""

  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, channels: int):
    return self.param("bias", partitioned(nn.initializers.zeros, ("conv_out",)), (channels,),
                      self.param_dtype)


# --- normalisations ---------------------------------------------------------------------------
def pixel_norm(x, eps: float = 1e-8):
  """ProGAN's pixelwise feature normalisation: ``x / sqrt(mean_c(x^2) + eps)`` (last axis)."""
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)).astype(
      x.dtype)


def minibatch_std(x, group_size: int = 4, num_features: int = 1, eps: float = 1e-8):
  """Minibatch standard deviation (Karras et al. 2018; StyleGAN2's variant with
  ``num_features`` groups of channels), appended as ``num_features`` channels.

  Samples ``n`` and ``n + N / G`` (``G = min(group_size, N)``) share a group, as in the
  reference code's ``reshape(G, -1, ...)``: per group and channel the standard deviation over
  the group's samples, averaged over channels (of each feature group) and pixels.

  Args:
    x: ``[N, H, W, C]`` with ``N`` divisible by the group size.
  """
  n, h, w, c = x.shape
  g = min(group_size, n)
  if n % g:
    raise ValueError(f"minibatch std: batch {n} is not divisible by the group size {g}")
  f = num_features
  y = x.astype(jnp.float32).reshape(g, n // g, h, w, f, c // f)
  y = y - jnp.mean(y, axis=0)
  y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + eps)  # [n/g, h, w, f, c/f]
  y = jnp.mean(y, axis=(1, 2, 4))  # [n/g, f]
  y = jnp.tile(y, (g, 1))[:, None, None, :]  # sample i gets group i % (n/g)
  y = jnp.broadcast_to(y, (n, h, w, f)).astype(x.dtype)
  return jnp.concatenate([x, y], axis=-1)


class BatchNorm(nn.Module):
  """Batch normalisation with running statistics in ``batch_stats`` (PyTorch's convention:
  ``momentum`` is the weight of the new batch, biased variance for normalising, unbiased for
  the running estimate), optionally without affine parameters (conditional BN adds its own)."""

  momentum: float = 0.1
  epsilon: float = 1e-5
  use_affine: bool = True
  scale_init: Any = nn.initializers.ones
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    mean_v = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    var_v = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    x32 = x.astype(jnp.float32)
    if train:
      mean = jnp.mean(x32, axis=axes)
      var = jnp.mean(jnp.square(x32 - mean), axis=axes)
      if not self.is_initializing():
        n = math.prod(x.shape[:-1])
        m = self.momentum
        mean_v.value = (1 - m) * mean_v.value + m * mean
        var_v.value = (1 - m) * var_v.value + m * var * n / max(n - 1, 1)
    else:
      mean, var = mean_v.value, var_v.value
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    if self.use_affine:
      scale = self.param("scale", partitioned(self.scale_init, ("norm",)), (c,),
                         self.param_dtype)
      bias = self.param("bias", partitioned(nn.initializers.zeros, ("norm",)), (c,),
                        self.param_dtype)
      y = y * scale + bias
    return y.astype(x.dtype)


def dcgan_bn_scale_init(key, shape, dtype=jnp.float32):
  """DCGAN's batch-norm scale initialisation: N(1, 0.02)."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


# --- attention (SAGAN, Zhang et al. 2019, as BigGAN uses it) -----------------------------------
class SNSelfAttention(nn.Module):
  """Self-attention over pixels with spectrally normalised 1x1 convolutions: theta/phi at
  ``C/8`` channels, g at ``C/2``, phi and g max-pooled 2x2, output scaled by a learned
  ``gamma`` initialised at 0 (the block starts as the identity)."""

  spectral: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, update_stats: bool = False):
    b, h, w, c = x.shape
    kw = dict(kernel_size=1, use_bias=False, spectral=self.spectral, dtype=self.dtype,
              param_dtype=self.param_dtype)
    theta = SNConv(c // 8, name="theta", **kw)(x, update_stats)
    pool = lambda y: nn.max_pool(y, (2, 2), strides=(2, 2))
    phi = pool(SNConv(c // 8, name="phi", **kw)(x, update_stats))
    g = pool(SNConv(c // 2, name="g", **kw)(x, update_stats))
    theta = theta.reshape(b, h * w, c // 8)
    phi = phi.reshape(b, -1, c // 8)
    g = g.reshape(b, -1, c // 2)
    beta = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", theta, phi).astype(jnp.float32), axis=-1)
    o = jnp.einsum("bqk,bkc->bqc", beta.astype(g.dtype), g).reshape(b, h, w, c // 2)
    o = SNConv(c, name="o", **kw)(o, update_stats)
    gamma = self.param("gamma", partitioned(nn.initializers.zeros, (None,)), (), self.param_dtype)
    return x + gamma.astype(x.dtype) * o


def upsample_nearest(x, factor: int = 2):
  """Nearest-neighbour upsampling of NHWC by broadcasting."""
  if factor == 1:
    return x
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
  return x.reshape(b, h * factor, w * factor, c)


def downsample_avg(x, factor: int = 2):
  """Average pooling by ``factor`` (box filter)."""
  if factor == 1:
    return x
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def count_params(variables) -> int:
  """Parameters (the ``params`` collection only) of Flax ``variables``."""
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nn.meta.unbox(
      variables["params"] if "params" in variables else variables)))
