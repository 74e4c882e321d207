"""A dirty image folder with known answers, built from real images, for testing and measuring
the preparation pipeline (the way scikit-learn's ``make_*`` functions build data with known
structure).

`build_planted` writes ``<root>/{train,test}/<class>/<file>`` from CIFAR-10 JPEGs, MNIST digits
and ORL faces, and plants: corrupt, truncated, empty, wrong-mode and oversized files; exact and
near duplicates within and across splits; tiny, blurred and blank images; JPEGs with EXIF GPS
tags; faces at known boxes; captions with personal data. It returns the truth: the reason each
planted file must be dropped for, the face boxes, and the personal data in captions.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pathlib
import tarfile

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

CIFAR_ARCHIVE = "data/cifar10_jpeg/cifar10-jpeg-q75.tar.gz"
MNIST_IMAGES = "data/mnist_t10k/t10k-images-idx3-ubyte.gz"
MNIST_LABELS = "data/mnist_t10k/t10k-labels-idx1-ubyte.gz"
ORL_FACES = "faces/orl_faces_400x112x92.npz"

# Captions with personal data (each listed string must not survive) and benign ones that must
# come out unchanged.
PII_CAPTIONS = [
    ("a dog on the beach, contact jane.doe@example.com for prints", ["jane.doe@example.com"]),
    ("my cat, call +1 (555) 123-4567 if found", ["555) 123-4567"]),
    ("photo by @tom, see https://twitter.com/tom_smith_77", ["twitter.com/tom_smith_77"]),
    ("paid with 4111 1111 1111 1111 at the market", ["4111 1111 1111 1111"]),
    ("our house at 221B Baker Street, London", ["221B Baker Street"]),
    ("lives at 42 Elm Road, Apt 3, ring 020 7946 0958", ["42 Elm Road", "020 7946 0958"]),
    ("profile https://example.org/users/alice.smith and bob@mail.co.uk", [
        "users/alice.smith", "bob@mail.co.uk"]),
    ("card 5500-0000-0000-0004, SSN 123-45-6789", ["5500-0000-0000-0004", "123-45-6789"]),
    ("sent from https://carol:hunter2@files.example.net/album", ["carol:hunter2"]),
    ("Hauptstraße 5, 10115 Berlin, Tel. +49 30 901820", ["Hauptstraße 5", "30 901820"]),
]
BENIGN_CAPTIONS = [
    "a red car with 2 doors parked outside",
    "three horses in a field, summer 2019",
    "airplane at 30000 feet, 1024 x 768 pixels",
    "a frog on a leaf, see https://example.com/frogs/leaf.jpg",
    "a ship in harbour on 2021-06-12",
    "truck model 3500 with 18 wheels",
]


@dataclasses.dataclass
class PlantedTruth:
  root: str
  reasons: dict[str, str]  # id -> the reason it must be dropped for
  duplicate_of: dict[str, str]  # planted duplicate id -> id of the copy that must stay
  faces: dict[str, tuple[int, int, int, int]]  # id -> planted face box (x, y, w, h)
  pii: dict[str, list[str]]  # id -> strings that must not appear in its caption
  benign: dict[str, str]  # id -> caption that must come through unchanged
  exif_gps: list[str]  # ids of kept images whose input carried EXIF GPS tags
  clean: list[str]  # ids that must be kept


def _cifar(assets: pathlib.Path, per_class: int) -> dict[str, list[tuple[str, np.ndarray]]]:
  """{split: [(class, uint8 image)]} with ``per_class`` images per class and split."""
  out: dict[str, list] = {"train": [], "test": []}
  counts: dict[tuple[str, str], int] = {}
  with tarfile.open(assets / CIFAR_ARCHIVE, "r:gz") as tar:
    for m in tar:
      parts = m.name.lstrip("./").split("/")
      if not m.isfile() or len(parts) != 3:
        continue
      split, cls, _ = parts
      if counts.get((split, cls), 0) >= per_class:
        continue
      counts[(split, cls)] = counts.get((split, cls), 0) + 1
      img = np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"))
      out[split].append((cls, img))
  return out


def _mnist(assets: pathlib.Path, n: int) -> list[tuple[int, np.ndarray]]:
  with gzip.open(assets / MNIST_IMAGES) as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
  with gzip.open(assets / MNIST_LABELS) as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
  return [(int(labels[i]), images[i]) for i in range(n)]


def _save(path: pathlib.Path, image, fmt: str | None = None, **kwargs) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
  pil.save(path, format=fmt, **kwargs)


def _gps_exif() -> Image.Exif:
  exif = Image.Exif()
  exif[0x010F] = "PlantedCam"  # Make
  exif[0x8825] = {1: "N", 2: (51.0, 30.0, 26.0), 3: "W", 4: (0.0, 7.0, 39.0)}  # GPS IFD
  return exif


def build_planted(root: str | os.PathLike, assets: str | os.PathLike, per_class: int = 12,
                  seed: int = 0) -> PlantedTruth:
  """Writes the planted folder under ``root``; returns what the pipeline must find.

  Meant for a config with ``filters.min_side`` 24, ``min_sharpness`` 60,
  ``min_contrast`` 2, ``validate.max_side`` 4096, ``dedup.max_hamming`` 6.
  """
  rng = np.random.default_rng(seed)
  root, assets = pathlib.Path(root), pathlib.Path(assets)
  t = PlantedTruth(str(root), {}, {}, {}, {}, {}, [], [])
  cifar = _cifar(assets, per_class + 6)

  def put(split, cls, name, image, reason=None, fmt=None, **kw):
    ident = f"{split}/{cls}/{name}"
    _save(root / split / cls / name, image, fmt, **kw)
    if reason:
      t.reasons[ident] = reason
    else:
      t.clean.append(ident)
    return ident

  # Clean CIFAR images (64x64, so tiny and blurred variants are unambiguous), as JPEG, PNG
  # and WebP. The first `per_class` of each class are the clean set; the spares feed the
  # blurred plants, so no blurred image is also a near duplicate of a kept one.
  originals: dict[str, list[tuple[str, np.ndarray]]] = {"train": [], "test": []}
  spares: list[tuple[str, np.ndarray]] = []
  for split in ("train", "test"):
    seen: dict[str, int] = {}
    for cls, img in cifar[split]:
      k = seen[cls] = seen.get(cls, -1) + 1
      big = np.asarray(Image.fromarray(img).resize((64, 64), Image.Resampling.BICUBIC))
      if k >= per_class:
        spares.append((cls, big))
        continue
      fmt = ("jpg", "png", "webp")[k % 3]
      kw = {"quality": 95} if fmt == "jpg" else ({"lossless": True} if fmt == "webp" else {})
      ident = put(split, cls, f"{k:03d}.{fmt}", big, **kw)
      stored = np.asarray(Image.open(root / ident).convert("RGB"))  # as decoded (JPEG: lossy)
      originals[split].append((ident, stored))

  # MNIST digits (grey, 28x28) as PNG and PGM in a "digit" class of train.
  for i, (label, img) in enumerate(_mnist(assets, 24)):
    ext = "pgm" if i % 2 else "png"
    put("train", "digit", f"d{i:03d}_{label}.{ext}", img, fmt="PPM" if ext == "pgm" else None)

  # Validation failures.
  put("train", "bad", "random_bytes.jpg", Image.new("L", (1, 1)), "corrupt")
  (root / "train/bad/random_bytes.jpg").write_bytes(rng.bytes(2048))
  (root / "train/bad/empty.png").write_bytes(b"")
  t.reasons["train/bad/empty.png"] = "empty_file"
  jpeg = io.BytesIO()
  Image.fromarray(originals["train"][0][1]).save(jpeg, "JPEG", quality=95)
  for i, cut in enumerate((0.3, 0.6)):
    (root / f"train/bad/truncated_{i}.jpg").write_bytes(jpeg.getvalue()[:int(len(
        jpeg.getvalue()) * cut)])
    t.reasons[f"train/bad/truncated_{i}.jpg"] = "truncated"
  put("train", "bad", "sixteen_bit.png", Image.fromarray(
      (rng.random((40, 40)) * 60000).astype(np.uint16)), "unsupported_mode")
  put("train", "bad", "cmyk.jpg", Image.fromarray(originals["train"][1][1]).convert("CMYK"),
      "unsupported_mode")
  put("train", "bad", "huge.png", Image.new("L", (5000, 30), 128), "too_large")

  # Quality failures: tiny, blurred, blank.
  for i, (_, img) in enumerate(originals["train"][2:6]):
    put("train", "airplane", f"tiny_{i}.png", Image.fromarray(img).resize(
        (16, 16), Image.Resampling.BOX), "too_small")
  for i, (cls, img) in enumerate(spares[:8]):
    put("train", cls, f"blurred_{i}.png", Image.fromarray(img).filter(
        ImageFilter.GaussianBlur(2.5 + i % 3)), "blurry")
  for i, level in enumerate((0, 128, 250)):
    put("train", "ship", f"blank_{i}.png", Image.new("RGB", (64, 64), (level,) * 3),
        "low_information")

  # Exact duplicates (pixel-identical, different encodings) and near duplicates (re-encoded
  # JPEG, brightened, resized), within train and from test into train.
  for i, (ident, img) in enumerate(originals["train"][6:12]):
    cls = ident.split("/")[1]
    dup = put("train", cls, f"zz_exact_{i}.png", img, "exact_duplicate")
    t.duplicate_of[dup] = ident
  for i, (ident, img) in enumerate(originals["test"][:6]):
    cls = ident.split("/")[1]
    dup = put("train", cls, f"zz_leak_exact_{i}.png", img, "exact_duplicate")
    t.duplicate_of[dup] = ident
  for i, (ident, img) in enumerate(originals["train"][12:18] + originals["test"][6:12]):
    cls = ident.split("/")[1]
    pil = Image.fromarray(img)
    if i % 3 == 0:
      buf = io.BytesIO()
      pil.save(buf, "JPEG", quality=70)
      variant = Image.open(buf).convert("RGB")
    elif i % 3 == 1:
      variant = ImageEnhance.Brightness(pil).enhance(1.06)
    else:
      variant = pil.resize((48, 48), Image.Resampling.LANCZOS)
    dup = put("train", cls, f"zz_near_{i}.png", variant, "near_duplicate")
    t.duplicate_of[dup] = ident

  # EXIF with GPS on clean JPEGs (kept: their output must carry no metadata).
  for i, (cls, img) in enumerate(spares[8:12]):
    t.exif_gps.append(put("test", cls, f"gps_{i}.jpg", img, quality=95, exif=_gps_exif()))

  # Faces: ORL faces pasted at known places into larger CIFAR backgrounds, and some whole.
  faces = np.load(assets / ORL_FACES)["images"]
  picks = rng.choice(len(faces), 16, replace=False)
  for i, j in enumerate(picks):
    face = faces[j]
    if i < 12:
      _, bg = spares[(12 + i) % len(spares)]
      canvas = np.asarray(Image.fromarray(bg).resize((200, 200), Image.Resampling.BICUBIC))
      canvas = canvas.copy()
      fh, fw = face.shape
      y, x = int(rng.integers(0, 200 - fh)), int(rng.integers(0, 200 - fw))
      canvas[y:y + fh, x:x + fw] = face[..., None]
      ident = put("train", "person", f"face_{i:02d}.png", canvas)
      t.faces[ident] = (x, y, fw, fh)
    else:
      ident = put("train", "person", f"face_{i:02d}.png", face)
      t.faces[ident] = (0, 0, face.shape[1], face.shape[0])

  # Captions (sidecar .txt) with and without personal data, on clean images.
  clean = [c for c in t.clean if c.startswith("test/") and "gps" not in c]
  for (text, secrets), ident in zip(PII_CAPTIONS, clean):
    (root / ident).with_suffix(".txt").write_text(text)
    t.pii[ident] = secrets
  for text, ident in zip(BENIGN_CAPTIONS, clean[len(PII_CAPTIONS):]):
    (root / ident).with_suffix(".txt").write_text(text)
    t.benign[ident] = text
  return t
