"""Converts image files users already have into ArrayRecord shards the pipeline reads.

Two inputs:

* ``idx``: MNIST-style idx files (``*-images-idx3-ubyte[.gz]`` + ``*-labels-idx1-ubyte[.gz]``),
  e.g. MNIST or Fashion-MNIST.
* ``folder``: ``<root>/<class name>/<image>`` folders, or a ``.tar.gz`` archive holding them
  (``--subdir`` picks e.g. ``train`` inside), labels by sorted class name. JPEG/PNG/WebP bytes
  are stored as they are; other formats (PGM, BMP, ...) are re-encoded as PNG.

Each call writes ``<output>/<split>-NNNNN-of-MMMMM.array_record`` and ``<output>/<split>.json``
(counts, classes, image shape, SHA-256 of every input and shard). Example::

  python -m diffjax.data.convert idx --output data/fashion_mnist --split train \\
      --images ../shared/assets/data/fashion_mnist/train-images-idx3-ubyte.gz \\
      --labels ../shared/assets/data/fashion_mnist/train-labels-idx1-ubyte.gz

For cleaning, de-duplication and privacy filtering use the preparation pipeline instead.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pathlib
import tarfile
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from diffjax.data.records import decode_image, encode_png, encode_record

_PASS_THROUGH = {"JPEG", "PNG", "WEBP"}


def sha256_file(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an idx file (optionally gzipped): uint8 images [N, H, W] or labels [N]."""
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f"{path}: not an unsigned-byte idx file (bad magic {data[:4]!r})")
  ndim = data[3]
  dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
  expected = 4 + 4 * ndim + int(np.prod(dims))
  if len(data) != expected:
    raise ValueError(f"{path}: idx header promises {expected} bytes, file has {len(data)}")
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_shards(records: Iterable[bytes], output: str | os.PathLike, split: str,
                 num_shards: int) -> list[dict]:
  """Writes records into ``num_shards`` contiguous shards; returns per-shard info."""
  from array_record.python.array_record_module import ArrayRecordWriter
  records = list(records)
  out = pathlib.Path(output)
  out.mkdir(parents=True, exist_ok=True)
  bounds = np.linspace(0, len(records), num_shards + 1).astype(int)
  shards = []
  for i in range(num_shards):
    path = out / f"{split}-{i:05d}-of-{num_shards:05d}.array_record"
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for rec in records[bounds[i]:bounds[i + 1]]:
      writer.write(rec)
    writer.close()
    shards.append({"file": path.name, "count": int(bounds[i + 1] - bounds[i]),
                   "sha256": sha256_file(path)})
  return shards


def _write_info(output, split, info: dict) -> dict:
  path = pathlib.Path(output) / f"{split}.json"
  path.write_text(json.dumps(info, indent=1))
  return info


def convert_idx(images: str, labels: str, output: str, split: str = "train",
                num_shards: int = 1) -> dict:
  """idx images + labels -> ArrayRecord shards. Returns the split's info dict."""
  x, y = read_idx(images), read_idx(labels)
  if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
    raise ValueError(f"idx files disagree: images {x.shape} from {images}, labels {y.shape} "
                     f"from {labels}")
  records = (encode_record(encode_png(img), int(lbl), id=f"{split}/{i}")
             for i, (img, lbl) in enumerate(zip(x, y)))
  shards = write_shards(records, output, split, num_shards)
  classes = sorted(int(c) for c in np.unique(y))
  return _write_info(output, split, {
      "split": split, "num_examples": int(len(x)), "num_classes": len(classes),
      "class_names": [str(c) for c in classes], "image_shape": [*x.shape[1:], 1],
      "inputs": {os.path.basename(p): sha256_file(p) for p in (images, labels)},
      "shards": shards})


def _iter_folder(root: pathlib.Path) -> Iterator[tuple[str, str, bytes]]:
  for path in sorted(root.rglob("*")):
    if path.is_file():
      rel = path.relative_to(root)
      if len(rel.parts) >= 2:
        yield rel.parts[0], str(rel), path.read_bytes()


def _iter_tar(archive: str, subdir: str) -> Iterator[tuple[str, str, bytes]]:
  prefix = subdir.strip("/") + "/" if subdir else ""
  with tarfile.open(archive, "r:*") as tar:
    members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
    for m in members:
      name = m.name.lstrip("./")
      if not name.startswith(prefix):
        continue
      rel = name[len(prefix):].split("/")
      if len(rel) >= 2:
        yield rel[0], "/".join(rel), tar.extractfile(m).read()


def _normalise_bytes(data: bytes) -> tuple[bytes, tuple[int, ...]]:
  """Keeps JPEG/PNG/WebP bytes as they are, re-encodes anything else PIL reads as PNG."""
  with Image.open(io.BytesIO(data)) as img:
    fmt = img.format
  if fmt in _PASS_THROUGH:
    return data, decode_image(data).shape
  image = decode_image(data)
  return encode_png(image), image.shape


def convert_folder(input_path: str, output: str, split: str = "train", subdir: str = "",
                   num_shards: int = 1) -> dict:
  """Class-folder images (a directory or a tar archive) -> ArrayRecord shards."""
  if not os.path.exists(input_path):
    raise ValueError(f"input {input_path!r} does not exist")
  if os.path.isdir(input_path):
    root = pathlib.Path(input_path) / subdir if subdir else pathlib.Path(input_path)
    if not root.is_dir():
      raise ValueError(f"{root} is not a folder")
    items = list(_iter_folder(root))
  else:
    items = list(_iter_tar(input_path, subdir))
  if not items:
    raise ValueError(f"no <class>/<image> files under {input_path!r} (subdir={subdir!r})")
  class_names = sorted({c for c, _, _ in items})
  index = {c: i for i, c in enumerate(class_names)}
  records, shapes, unreadable = [], set(), []
  for cls, rel, data in items:
    try:
      encoded, shape = _normalise_bytes(data)
    except Exception:  # PIL raises several types for bad files; count them, don't crash
      unreadable.append(rel)
      continue
    shapes.add(tuple(int(s) for s in shape))
    records.append(encode_record(encoded, index[cls], id=f"{split}/{rel}"))
  shards = write_shards(records, output, split, num_shards)
  info = {"split": split, "num_examples": len(records), "num_classes": len(class_names),
          "class_names": class_names, "image_shapes": sorted(list(s) for s in shapes),
          "unreadable": unreadable, "shards": shards}
  if os.path.isfile(input_path):
    info["inputs"] = {os.path.basename(input_path): sha256_file(input_path)}
  return _write_info(output, split, info)


def main(argv):
  from absl import app, flags
  if len(argv) != 2 or argv[1] not in ("idx", "folder"):
    raise app.UsageError("usage: python -m diffjax.data.convert {idx,folder} --output DIR ...")
  f = flags.FLAGS
  if argv[1] == "idx":
    if not (f.images and f.labels):
      raise app.UsageError("idx needs --images and --labels")
    info = convert_idx(f.images, f.labels, f.output, f.split, f.num_shards)
  else:
    if not f.input:
      raise app.UsageError("folder needs --input (a class-folder root or a .tar.gz archive)")
    info = convert_folder(f.input, f.output, f.split, f.subdir, f.num_shards)
  print(f"wrote {info['num_examples']} examples ({info['num_classes']} classes) in "
        f"{len(info['shards'])} shard(s) to {f.output}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("output", None, "output folder")
  flags.DEFINE_string("split", "train", "split name used in the shard file names")
  flags.DEFINE_integer("num_shards", 1, "number of output shards")
  flags.DEFINE_string("images", None, "idx images file (kind=idx)")
  flags.DEFINE_string("labels", None, "idx labels file (kind=idx)")
  flags.DEFINE_string("input", None, "class-folder root or .tar.gz archive (kind=folder)")
  flags.DEFINE_string("subdir", "", "sub-folder inside --input, e.g. train (kind=folder)")
  flags.mark_flags_as_required(["output"])
  app.run(main)
