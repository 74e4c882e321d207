"""The ArrayRecord record format shared by the converter, data preparation and training.

One record is a msgpack map: ``image`` (encoded PNG/JPEG/WebP bytes), ``label`` (int, -1 when
unlabelled) and optional string fields (``id``, ``caption``, ...). Encoded images keep shards
small and let JPEG sources pass through without re-compression.
"""

from __future__ import annotations

import io
from typing import Any

import msgpack
import numpy as np
from PIL import Image


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 image [H, W] or [H, W, C] (C in 1, 3)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {image.dtype}")
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
  """uint8 [H, W, C] (C = 1 for greyscale, 3 otherwise) from encoded image bytes."""
  with Image.open(io.BytesIO(data)) as img:
    if img.mode not in ("L", "RGB"):
      img = img.convert("RGB")
    arr = np.asarray(img)
  return arr[..., None] if arr.ndim == 2 else arr


def encode_record(image_bytes: bytes, label: int = -1, **fields: Any) -> bytes:
  return msgpack.packb({"image": image_bytes, "label": int(label), **fields}, use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
  """The record's fields, with ``image`` decoded to uint8 [H, W, C]."""
  record = msgpack.unpackb(data, raw=False)
  record["image"] = decode_image(record["image"])
  return record
