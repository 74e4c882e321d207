"""The standard FID Inception-v3 (TF ``inception-2015-12-05``) as a Flax module.

Layer for layer the network that pytorch-fid, torch-fidelity, clean-fid, StyleGAN3 and EDM use:
convolutions without bias followed by batch normalisation with epsilon 1e-3 (no scale in the
TF graph) and ReLU; the FID-specific blocks (average pooling that does not count padding in
the A/C/E blocks, max pooling in the last E block); 2048-d features from the final 8x8 average
pool. Convolutions run at ``Precision.HIGHEST`` so features do not depend on TF32 / bf16
matmul defaults. Module names follow pytorch-fid (``Mixed_5b/branch1x1``), see
`inception_weights` for how the weight files map onto them.

Input protocol (`preprocess`): uint8 images of any size are resized to 299x299 with bilinear
interpolation and scaled to [-1, 1]. ``"tf"`` (default; the original TF graph, StyleGAN, EDM)
uses TF1's ``resize_bilinear`` (no half-pixel centres) and ``(x - 128) / 128``;
``"pytorch_fid"`` uses half-pixel bilinear resizing and ``x / 127.5 - 1``.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PROTOCOLS = ("tf", "pytorch_fid")
FEATURE_DIM = 2048
NUM_LOGITS = 1008


def resize_matrix(in_size: int, out_size: int, half_pixel: bool) -> np.ndarray:
  """[out_size, in_size] bilinear interpolation weights along one axis.

  ``half_pixel=False`` is TF1's ``resize_bilinear(align_corners=False)``: source coordinate
  ``dst * in / out``. ``half_pixel=True`` is PyTorch's ``interpolate(align_corners=False)``:
  ``(dst + 0.5) * in / out - 0.5``, clamped at 0.
  """
  scale = in_size / out_size
  dst = np.arange(out_size, dtype=np.float64)
  src = (dst + 0.5) * scale - 0.5 if half_pixel else dst * scale
  src = np.clip(src, 0.0, in_size - 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  m = np.zeros((out_size, in_size), np.float64)
  m[np.arange(out_size), lo] += 1.0 - frac
  m[np.arange(out_size), hi] += frac
  return m


def preprocess(images_uint8, protocol: str = "tf", size: int = 299):
  """uint8 (or 0..255 float) images [N, H, W, 3] -> float32 [N, size, size, 3] in [-1, 1]."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown Inception protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
  x = jnp.asarray(images_uint8).astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  _, h, w, _ = x.shape
  half = protocol == "pytorch_fid"
  if (h, w) != (size, size):
    mh = jnp.asarray(resize_matrix(h, size, half), jnp.float32)
    mw = jnp.asarray(resize_matrix(w, size, half), jnp.float32)
    x = jnp.einsum("oh,nhwc,pw->nopc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)
  if protocol == "tf":
    return (x - 128.0) / 128.0
  return x / 127.5 - 1.0


class BasicConv(nn.Module):
  """Conv (no bias) -> batch norm (inference, eps 1e-3) -> ReLU."""

  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (kh, kw, x.shape[-1], self.features))
    beta = self.param("beta", nn.initializers.zeros, (self.features,))
    gamma = self.param("gamma", nn.initializers.ones, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    ph, pw = self.padding
    y = jax.lax.conv_general_dilated(
        x, kernel, (self.strides, self.strides), ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    y = (y - mean) * jax.lax.rsqrt(var + 1e-3) * gamma + beta
    return nn.relu(y)


def _avg_pool_3x3(x):
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """The last blocks; FID's graph pools with average (Mixed_7b) then max (Mixed_7c)."""

  max_pool: bool

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """``(x [N, 299, 299, 3] in [-1, 1]) -> {"pool": [N, 2048], "logits": [N, 1008]}``.

  ``logits`` exists only with ``with_logits=True`` (weights that carry the 1008-way ``fc``
  layer, such as pytorch-fid's file); the TorchScript FID network has none.
  """

  with_logits: bool = False

  @nn.compact
  def __call__(self, x):
    x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(False, name="Mixed_7b")(x)
    x = InceptionE(True, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    out = {"pool": pool}
    if self.with_logits:
      out["logits"] = nn.Dense(NUM_LOGITS, name="fc",
                               precision=jax.lax.Precision.HIGHEST)(pool)
    return out


@functools.lru_cache(maxsize=None)
def _abstract_params(with_logits: bool):
  x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
  return jax.eval_shape(FIDInceptionV3(with_logits).init, jax.random.PRNGKey(0), x)["params"]


def parameter_shapes(with_logits: bool = False) -> dict:
  """Nested dict of the module's parameter shapes (for checking converted weights)."""
  return jax.tree.map(lambda a: tuple(a.shape), _abstract_params(with_logits))
