"""Model outputs to pictures: [-1, 1] floats to uint8, image grids, PNG files."""

from __future__ import annotations

import math
import pathlib

import numpy as np
from PIL import Image


def to_uint8(images, rounding: str = "round") -> np.ndarray:
  """float [..., H, W, C] in [-1, 1] -> uint8 in [0, 255], clipped.

  ``rounding``: ``"round"`` to the nearest value (EDM's and DiT's ``x * 127.5 + 128`` cast to
  uint8, diffusers' pipelines; ties aside, the same numbers) or ``"floor"``, truncation
  (guided-diffusion's ``((x + 1) * 127.5).clamp(0, 255).to(uint8)``, which ADM's FIDs used: on
  average half a level darker).
  """
  x = np.asarray(images, np.float32)
  if rounding == "round":
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
  if rounding == "floor":
    return np.clip(np.floor((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
  raise ValueError(f"unknown rounding {rounding!r}; allowed: round, floor")


def make_grid(images: np.ndarray, ncols: int | None = None, upscale: int = 1,
              pad: int = 1) -> np.ndarray:
  """Tiles uint8 images [N, H, W, C] into one uint8 image, row-major, with a dark border."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  if upscale > 1:
    images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    h, w = h * upscale, w * upscale
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 32, np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    grid[top:top + h, left:left + w] = images[i]
  return grid


def save_png(path: str | pathlib.Path, image: np.ndarray) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image = np.asarray(image)
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
  return path
