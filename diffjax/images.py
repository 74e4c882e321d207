"""Model outputs to pictures: [-1, 1] floats to uint8, image grids, PNG files."""

from __future__ import annotations

import math
import pathlib

import numpy as np
from PIL import Image


def to_uint8(images) -> np.ndarray:
  """float [..., H, W, C] in [-1, 1] -> uint8 in [0, 255] (clipped, rounded)."""
  x = np.asarray(images, np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


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
