"""Per-image checks: decoding with validation, quality measures and content hashes.

Every function here is pure (bytes or pixels in, values out) so the pipeline's stages stay thin
and each measure can be tested against a hand computation.
"""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from diffjax.data.prep import containers

# Modes converted on decode; anything else (16-bit, float, CMYK, ...) is quarantined.
_CONVERTIBLE = {"L": "L", "RGB": "RGB", "P": "RGB", "RGBA": "RGB", "LA": "L", "1": "L",
                "PA": "RGB"}


class Rejected(Exception):
  """An image that fails validation; ``reason`` is a short key counted in the report."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason, self.detail = reason, detail


def decode_validated(data: bytes, *, max_side: int, max_pixels: int) -> tuple[np.ndarray, dict]:
  """Decodes encoded image bytes into uint8 [H, W, C] (C in 1, 3), EXIF orientation applied.

  Returns the pixels and what the file carried: ``{"format", "mode", "size", "had_exif",
  "had_gps", "had_xmp"}``. The pixels never carry metadata; encoders downstream write only
  pixels, which is how EXIF/XMP is removed.

  Every step that touches the file (open, frame count, pixel load, EXIF, conversion) runs
  inside one error boundary: whatever a format plugin raises on bad data becomes `Rejected`,
  so no file can end the run. A file whose container ends before its own structures say
  (`containers.is_truncated`) is ``truncated`` before any decoding.

  Raises:
    Rejected: ``empty_file``, ``too_large`` (checked from the header, before decoding, so a
      decompression bomb costs nothing), ``truncated``, ``corrupt``, ``unsupported_mode``,
      ``animated``.
  """
  if not data:
    raise Rejected("empty_file", "0 bytes")
  if containers.is_truncated(data):
    raise Rejected("truncated", f"{len(data)} bytes, fewer than the file's structure records")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      return _decode(data, max_side, max_pixels)
  except Rejected:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise Rejected("too_large", str(e)) from None
  except Exception as e:  # plugins raise OSError, SyntaxError, EOFError, struct.error, ...
    reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
    raise Rejected(reason, f"{type(e).__name__}: {e}") from None


def _decode(data: bytes, max_side: int, max_pixels: int) -> tuple[np.ndarray, dict]:
  with Image.open(io.BytesIO(data)) as img:
    w, h = img.size
    if max(w, h) > max_side or w * h > max_pixels:
      raise Rejected("too_large", f"{w}x{h} (limits: side {max_side}, {max_pixels} pixels)")
    if w == 0 or h == 0:
      raise Rejected("corrupt", f"size {w}x{h}")
    if getattr(img, "n_frames", 1) > 1:
      raise Rejected("animated", f"{img.n_frames} frames")
    if img.mode not in _CONVERTIBLE:
      raise Rejected("unsupported_mode", f"mode {img.mode}")
    img.load()  # pixels first: for PNG, reading EXIF would load them outside any check
    meta = {"format": img.format or "?", "mode": img.mode, "size": (h, w),
            "had_xmp": "xmp" in img.info or b"http://ns.adobe.com/xap" in data[:65536]}
    meta.update(_exif_flags(img))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
      img = img.convert("RGBA")
      background = Image.new("RGBA", img.size, (255, 255, 255, 255))
      img = Image.alpha_composite(background, img)  # transparent -> white
    if meta["had_exif"]:
      try:
        img = ImageOps.exif_transpose(img)
      except Exception:  # a damaged orientation tag: keep the stored orientation
        meta["exif_unreadable"] = True
    img = img.convert(_CONVERTIBLE.get(img.mode, "RGB"))
    pixels = np.asarray(img)
  return (pixels[..., None] if pixels.ndim == 2 else pixels), meta


def _exif_flags(img: Image.Image) -> dict:
  """EXIF presence and GPS; damaged EXIF (valid pixels) counts as present and unreadable, not
  as a bad image: the output is re-encoded from pixels and carries none of it anyway."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # Pillow warns on every damaged EXIF tag
      exif = img.getexif()
      return {"had_exif": len(exif) > 0, "had_gps": 0x8825 in exif}
  except Exception:
    return {"had_exif": True, "had_gps": False, "exif_unreadable": True}


def grey(image: np.ndarray) -> np.ndarray:
  """float32 [H, W] luma (ITU-R 601) in [0, 255]."""
  x = image.astype(np.float32)
  if x.shape[-1] == 1:
    return x[..., 0]
  return x[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)


def laplacian_variance(image: np.ndarray) -> float:
  """Variance of the 4-neighbour Laplacian of the luma (interior pixels): low means blurred."""
  g = grey(image)
  if min(g.shape) < 3:
    return 0.0
  lap = (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1])
  return float(lap.var())


def image_stats(image: np.ndarray) -> dict[str, float]:
  """Per-image statistics used for low-information and outlier filtering."""
  g = grey(image)
  if image.shape[-1] >= 3:
    x = image[..., :3].astype(np.float32)
    saturation = float((x.max(-1) - x.min(-1)).mean())
  else:
    saturation = 0.0
  return {"brightness": float(g.mean()), "contrast": float(g.std()),
          "saturation": saturation, "sharpness": laplacian_variance(image)}


def pixel_hash(image: np.ndarray) -> str:
  """SHA-256 of the decoded pixels and their shape: equal for byte-different encodings of the
  same image (PNG vs lossless WebP, metadata added or removed)."""
  h = hashlib.sha256(np.asarray(image.shape, np.int64).tobytes())
  h.update(np.ascontiguousarray(image).tobytes())
  return h.hexdigest()


SIMILARITY_SIDE = 16  # thumbnail side of the near-duplicate feature (256 values)


def similarity_feature(image: np.ndarray) -> bytes:
  """The near-duplicate feature: the luma resized (Lanczos, antialiased) to a 16x16 thumbnail,
  mean removed, as 256 int8 values (bytes; the largest magnitude scaled to 127).

  The cosine of two features is the normalised cross-correlation of the thumbnails: invariant
  to brightness and contrast, and to resizing and re-encoding because both images pass through
  the same antialiased resampling to one fixed size. A 64-bit DCT hash of the median-thresholded
  low frequencies loses this for small images: resizing 28 -> 25 pixels moves many of its
  coefficients across the median (experiments/prep_planted/neardup_study.md measures both).
  A blank image has no direction: its feature is all zeros and matches nothing.
  """
  g = Image.fromarray(grey(image))
  small = np.asarray(g.resize((SIMILARITY_SIDE, SIMILARITY_SIDE), Image.Resampling.LANCZOS,
                              reducing_gap=3.0), np.float32).ravel().copy()
  small -= small.mean()
  peak = float(np.abs(small).max())
  if peak < 0.5:  # within half a grey level of flat everywhere
    return bytes(SIMILARITY_SIDE * SIMILARITY_SIDE)
  return np.round(small * (127.0 / peak)).astype(np.int8).tobytes()


def similarity(a: bytes, b: bytes) -> float:
  """Cosine of two `similarity_feature` values (0 when either is blank)."""
  x = np.frombuffer(a, np.int8).astype(np.float32)
  y = np.frombuffer(b, np.int8).astype(np.float32)
  den = float(np.linalg.norm(x) * np.linalg.norm(y))
  return float(x @ y) / den if den else 0.0


def _dct_matrix(n: int) -> np.ndarray:
  k = np.arange(n)[:, None]
  m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
  m[0] /= np.sqrt(2.0)
  return m


_DCT32 = _dct_matrix(32)


def perceptual_hash(image: np.ndarray) -> int:
  """64-bit DCT perceptual hash: luma resized (Lanczos, antialiased) to 32x32, the 8x8
  lowest-frequency DCT coefficients, one bit each for "above their median".

  Tolerant of small shifts, re-crops and colour changes, which lower the thumbnail cosine of
  `similarity_feature`; the antialiased resize keeps small images' resized copies within a few
  bits (a box filter did not: 28 -> 25 pixels moved 6-10 bits).
  """
  g = Image.fromarray(grey(image))
  small = np.asarray(g.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=3.0), np.float64)
  coeffs = (_DCT32 @ small @ _DCT32.T)[:8, :8].ravel()
  bits = coeffs > np.median(coeffs[1:])
  return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
  return int(a ^ b).bit_count()
