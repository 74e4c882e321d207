"""EDM's non-leaky geometric augmentation (Karras et al. 2022, Appendix F.2; the geometric part
of Karras et al. 2020's ADA pipeline) for the input pipeline.

Each image is transformed with probability ``p`` x each transform's multiplier, per transform:

======================  ==================================================  ====================
transform               parameter                                           augmentation labels
======================  ==================================================  ====================
x-flip                  ``w ~ U{0, 1}``                                     ``w``
y-flip                  ``w ~ U{0, 1}``                                     ``w``
isotropic scale         ``w ~ N(0, 1)``, ``s = 2^(0.2 w)``                  ``w``
rotation                ``w ~ U(-pi, pi)`` (x ``rotate_frac_max``)          ``cos w - 1, sin w``
anisotropic scale       ``w ~ N(0, 1)``, ``s = 2^(0.2 w)`` along a random   ``w cos r, w sin r``
                        direction, ``r ~ U(-pi, pi)``: ``G^-1 = R(-r)
                        S(1/s, s) R(r)``
translation             ``w ~ N(0, 1)^2``, ``t = 0.125 w (W, H)`` pixels     ``w_x, w_y``
======================  ==================================================  ====================

Inverse matrices as EDM composes them: ``G^-1 = S(1/s, 1/s) R(w) [R(-r) S(1/s, s) R(r)]
T(-t)`` (``R`` rotates by its angle, ``S`` scales, ``T`` translates); a transform not drawn
has ``w = 0``, so its labels are zero and it is the identity. The
network sees the labels (``augment_dim = 9`` with every transform enabled) and is sampled with
zero labels, which is what keeps the augmentation from leaking into the samples: the model
learns the augmented distributions as separate, labelled ones. EDM's CIFAR-10 setting is
``p = 0.12`` with multipliers ``xflip = 1e8`` (always a 50% flip), and 1 for the others.

The geometric transforms are composed into one inverse matrix ``G^-1`` (output pixel ->
source position, about the image centre) and executed as EDM does: reflect padding, 2x
upsampling with the sym6 wavelet, bilinear sampling at the transformed positions, and 2x
downsampling with sym6 (an orthonormal filter pair, so the identity reproduces the image
exactly). Flips are pixel blits. Images that draw no transform are returned unchanged. The
code is diffjax's own: the 2x grid sits at the filter's low-frequency delay, so whole-pixel
shifts are exact; it is not checked sample for sample against EDM's PyTorch implementation
(which has no PyPI release).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.ndimage

# The sym6 wavelet's low-pass filter (orthonormal, six vanishing moments), as ADA and EDM use it.
SYM6 = np.array([0.015404109327027373, 0.0034907120842174702, -0.11799011114819057,
                 -0.048311742585633, 0.4910559419267466, 0.787641141030194, 0.3379294217276218,
                 -0.07263752278646252, -0.021060292512300564, 0.04472490177066578,
                 0.0017677118642428036, -0.007800708325034148])
# The order of the label vector; each transform's labels sit at a fixed place.
# The filter's delay at low frequencies (its centroid, about 5.1 taps): supersample m of the 2x
# grid sits at position (m - DELAY) / 2, which is where smooth content lands.
DELAY = float(np.sum(np.arange(len(SYM6)) * SYM6) / np.sum(SYM6))
LABELS = ("xflip", "yflip", "scale", "rotate_cos", "rotate_sin", "aniso_cos", "aniso_sin",
          "translate_x", "translate_y")
AUGMENT_DIM = len(LABELS)


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """``p`` (0: off) and each transform's probability multiplier; EDM's spreads."""

  p: float = 0.0
  xflip: float = 1e8
  yflip: float = 1.0
  scale: float = 1.0
  rotate_frac: float = 1.0
  aniso: float = 1.0
  translate_frac: float = 1.0
  scale_std: float = 0.2
  rotate_frac_max: float = 1.0
  aniso_std: float = 0.2
  translate_frac_std: float = 0.125

  @property
  def enabled(self) -> bool:
    return self.p > 0

  def __post_init__(self):
    for name in ("p", "xflip", "yflip", "scale", "rotate_frac", "aniso", "translate_frac"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"augmentation {name} must be >= 0, got {getattr(self, name)}")
    if self.p > 1:
      raise ValueError(f"augmentation p must be in [0, 1], got {self.p}")


# --- 3x3 homogeneous matrices (x, y, 1) -------------------------------------------------------
def translate2d(tx, ty) -> np.ndarray:
  return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], np.float64)


def scale2d(sx, sy) -> np.ndarray:
  return np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], np.float64)


def rotate2d(theta) -> np.ndarray:
  c, s = math.cos(theta), math.sin(theta)
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)


def translate2d_inv(tx, ty) -> np.ndarray:
  return translate2d(-tx, -ty)


def scale2d_inv(sx, sy) -> np.ndarray:
  return scale2d(1 / sx, 1 / sy)


def rotate2d_inv(theta) -> np.ndarray:
  return rotate2d(-theta)


@dataclasses.dataclass(frozen=True)
class Draw:
  """One image's transform: the flips, the inverse geometric matrix and the labels."""

  xflip: int
  yflip: int
  g_inv: np.ndarray  # [3, 3], output position -> source position, about the centre
  labels: np.ndarray  # float32 [AUGMENT_DIM]

  @property
  def identity(self) -> bool:
    return not self.xflip and not self.yflip and np.array_equal(self.g_inv, np.eye(3))


def draw(rng: np.random.Generator, options: AugmentOptions, height: int, width: int) -> Draw:
  """Draws one image's transforms (EDM's order and parameterisation, see the module table)."""
  o = options
  chance = lambda mult: rng.random() < mult * o.p

  xflip = int(rng.integers(2)) if chance(o.xflip) else 0
  yflip = int(rng.integers(2)) if chance(o.yflip) else 0
  g_inv = np.eye(3)
  labels = np.zeros(AUGMENT_DIM, np.float64)
  labels[0:2] = xflip, yflip
  w = rng.standard_normal() if chance(o.scale) else 0.0
  s = 2.0 ** (w * o.scale_std)
  g_inv = g_inv @ scale2d_inv(s, s)
  labels[2] = w
  w = (rng.random() * 2 - 1) * math.pi * o.rotate_frac_max if chance(o.rotate_frac) else 0.0
  g_inv = g_inv @ rotate2d_inv(-w)
  labels[3:5] = math.cos(w) - 1, math.sin(w)
  apply = chance(o.aniso)
  w, r = (rng.standard_normal(), (rng.random() * 2 - 1) * math.pi) if apply else (0.0, 0.0)
  s = 2.0 ** (w * o.aniso_std)
  g_inv = g_inv @ rotate2d_inv(r) @ scale2d_inv(s, 1 / s) @ rotate2d_inv(-r)
  labels[5:7] = w * math.cos(r), w * math.sin(r)
  wx, wy = rng.standard_normal(2) if chance(o.translate_frac) else (0.0, 0.0)
  g_inv = g_inv @ translate2d_inv(wx * width * o.translate_frac_std,
                                  wy * height * o.translate_frac_std)
  labels[7:9] = wx, wy
  if np.allclose(g_inv, np.eye(3), rtol=0, atol=0):
    g_inv = np.eye(3)
  return Draw(xflip, yflip, g_inv, labels.astype(np.float32))


def _upsample(x: np.ndarray, axis: int) -> np.ndarray:
  """``U[m] = sum_n x[n] h[m - 2n]`` along ``axis`` (a full convolution of the zero-stuffed
  signal): sample m sits at position ``(m - DELAY) / 2`` of x's samples."""
  x = np.moveaxis(x, axis, 0)
  stuffed = np.zeros((2 * x.shape[0] - 1,) + x.shape[1:], np.float64)
  stuffed[::2] = x
  full = np.zeros((stuffed.shape[0] + len(SYM6) - 1,) + x.shape[1:], np.float64)
  for k, h in enumerate(SYM6):
    full[k:k + stuffed.shape[0]] += h * stuffed
  return np.moveaxis(full, 0, axis)


def _downsample(u: np.ndarray, n: int, axis: int) -> np.ndarray:
  """``y[i] = sum_m h[m - 2i] u[m]`` for i < n along ``axis``."""
  u = np.moveaxis(u, axis, 0)
  out = np.zeros((n,) + u.shape[1:], np.float64)
  for k, h in enumerate(SYM6):
    out += h * u[k:k + 2 * n:2]
  return np.moveaxis(out, 0, axis)


def execute(image: np.ndarray, d: Draw) -> np.ndarray:
  """``image`` [H, W, C] (float) transformed by ``d``: flips, then the geometric matrix."""
  x = np.asarray(image)
  if d.xflip:
    x = x[:, ::-1]
  if d.yflip:
    x = x[::-1]
  if np.array_equal(d.g_inv, np.eye(3)):
    return np.ascontiguousarray(x)
  return resample(x, d.g_inv).astype(np.asarray(image).dtype)


def resample(x: np.ndarray, g_inv: np.ndarray) -> np.ndarray:
  """``out(p) = x(G^-1 p)`` about the image centre (pixel centres at integers), float64: 2x
  sym6 upsampling of the reflect-padded image, bilinear sampling, 2x sym6 downsampling."""
  h, w, c = x.shape
  taps = len(SYM6)
  cy, cx = (h - 1) / 2, (w - 1) / 2
  # Output supersamples: index m of the 2x grid that the downsampling filter reads, at
  # position (m - DELAY) / 2 in output pixels.
  my = (np.arange(2 * h + taps - 2) - DELAY) / 2
  mx = (np.arange(2 * w + taps - 2) - DELAY) / 2
  gy, gx = np.meshgrid(my - cy, mx - cx, indexing="ij")
  sx = g_inv[0, 0] * gx + g_inv[0, 1] * gy + g_inv[0, 2] + cx
  sy = g_inv[1, 0] * gx + g_inv[1, 1] * gy + g_inv[1, 2] + cy
  # Reflect padding wide enough for every source position and the filter's reach.
  reach = max(-sx.min(), -sy.min(), sx.max() - (w - 1), sy.max() - (h - 1), 0.0)
  pad = int(math.ceil(reach)) + taps
  padded = np.pad(np.asarray(x, np.float64), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
  up = _upsample(_upsample(padded, 0), 1)
  rows = 2 * (sy + pad) + DELAY
  cols = 2 * (sx + pad) + DELAY
  sampled = np.stack([scipy.ndimage.map_coordinates(up[..., k], [rows, cols], order=1,
                                                    mode="nearest") for k in range(c)], -1)
  return _downsample(_downsample(sampled, h, 0), w, 1)


def augment(image: np.ndarray, rng: np.random.Generator,
            options: AugmentOptions) -> tuple[np.ndarray, np.ndarray]:
  """``(augmented image [H, W, C], labels float32 [AUGMENT_DIM])`` of one image."""
  d = draw(rng, options, image.shape[0], image.shape[1])
  return (image if d.identity else execute(image, d)), d.labels
