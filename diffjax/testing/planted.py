"""A dirty image folder with known answers, built from real images, for testing and measuring
the preparation pipeline (the way scikit-learn's ``make_*`` functions build data with known
structure).

`build_planted` writes ``<root>/{train,test}/<class>/<file>`` from CIFAR-10 JPEGs, MNIST digits,
Fashion-MNIST, ORL faces and scikit-image's texture photographs, and plants: corrupt, empty,
wrong-mode and oversized files, and files of every supported format (animated ones too)
truncated at 50% and 90%; exact and near duplicates within and across splits, including 0.9x
resizes of 28 px images; tiny, blurred and blank images; JPEGs with EXIF GPS tags; faces at
known boxes, whole, pasted into photos and into cluttered textures; captions with personal data
in international formats. It returns the truth: the reason each planted file must be dropped
for, the face boxes, and the personal data in captions.
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

FASHION_IMAGES = "data/fashion_mnist/t10k-images-idx3-ubyte.gz"

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
# Phone numbers and addresses in international formats: (caption, string that must not
# survive).
INTERNATIONAL_PII = [
    ("call 07700 900461 after six", "07700 900461"),  # UK mobile, national format
    ("ring +14155550199 for prints", "+14155550199"),  # E.164 without separators
    ("meet at 221 W 42nd Street tonight", "221 W 42nd Street"),
    ("appelez le 01 42 68 53 00", "01 42 68 53 00"),  # France
    ("Tel. 030 901820 (Berlin)", "030 901820"),  # Germany, national
    ("call +81 3-1234-5678 in Tokyo", "3-1234-5678"),  # Japan
    ("WhatsApp +91 98765 43210", "98765 43210"),  # India
    ("office (02) 9374 4000 Sydney", "9374 4000"),  # Australia, national
    ("cel +55 11 91234-5678", "91234-5678"),  # Brazil
    ("phone 0049 30 901820", "30 901820"),  # international prefix 00
    ("US office (415) 555-0199", "555-0199"),
    ("office: 1600 Pennsylvania Ave NW, Washington, DC 20500", "1600 Pennsylvania Ave"),
    ("350 Fifth Avenue, New York, NY 10118 at night", "350 Fifth Avenue"),
    ("sent to 10 Downing St, London SW1A 2AA", "10 Downing St"),
    ("123 Main St, Toronto, ON M5V 2T6 in winter", "123 Main St"),
    ("1 Martin Place, Sydney NSW 2000", "1 Martin Place"),
    ("PO Box 123, Springfield, IL 62701", "PO Box 123"),
    ("Hauptstraße 5, 10115 Berlin", "Hauptstraße 5"),
    ("12 rue de la Paix, 75002 Paris", "12 rue de la Paix"),
    ("Calle Mayor 10, 28013 Madrid", "Calle Mayor 10"),
    ("Via Roma 12, 00184 Roma", "Via Roma 12"),
    ("Keizersgracht 123, 1015 CJ Amsterdam", "Keizersgracht 123"),
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
  ``min_contrast`` 2, ``validate.max_side`` 4096 (tests/test_prep.py: planted_config).
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

  # Faces of 22-50 pixels on real textures (grass, gravel, brick): cluttered scenes.
  for i, (scene, box) in enumerate(faces_in_clutter(assets, 12, seed=seed + 1, size=256)):
    ident = put("train", "person", f"clutter_{i:02d}.png", scene[..., 0])
    t.faces[ident] = box

  # Small-image near duplicates: Fashion-MNIST (28 px) originals in test, 0.9x resizes
  # (28 -> 25 px) in train.
  for i, img in enumerate(fashion_mnist(assets, 12, seed=seed + 2)):
    ident = put("test", "fashion", f"f{i:03d}.png", img[..., 0])
    dup = put("train", "fashion", f"zz_small_{i:03d}.png", resized(img, 0.9)[..., 0],
              "near_duplicate")
    t.duplicate_of[dup] = ident

  # Truncated files of every supported format (animated ones too), cut at 50% and 90%.
  for name, data in truncated_files(originals["train"][3][1]).items():
    cut, ext = name.split("_", 1)
    path = root / "train" / "bad" / f"trunc_{cut}.{ext}"
    path.write_bytes(data)
    t.reasons[f"train/bad/{path.name}"] = "truncated"

  # Captions (sidecar .txt) with and without personal data, on clean images.
  clean = [c for c in t.clean if c.startswith("test/") and "gps" not in c
           and "/fashion/" not in c]
  pii = PII_CAPTIONS + [(text, [secret]) for text, secret in INTERNATIONAL_PII]
  for (text, secrets), ident in zip(pii, clean):
    (root / ident).with_suffix(".txt").write_text(text)
    t.pii[ident] = secrets
  for text, ident in zip(BENIGN_CAPTIONS, clean[len(pii):]):
    (root / ident).with_suffix(".txt").write_text(text)
    t.benign[ident] = text
  return t


# Formats the folder source accepts, each with the Pillow save arguments that make a valid file.
# Animated variants are listed separately: they are rejected as "animated" when whole.
FORMATS = {
    "png": ("PNG", {}), "jpg": ("JPEG", {"quality": 90}), "webp": ("WEBP", {"quality": 90}),
    "lossless.webp": ("WEBP", {"lossless": True}), "gif": ("GIF", {}), "tif": ("TIFF", {}),
    "lzw.tif": ("TIFF", {"compression": "tiff_lzw"}), "bmp": ("BMP", {}), "pgm": ("PPM", {}),
}
ANIMATED = {"anim.gif": "GIF", "anim.png": "PNG", "anim.webp": "WEBP"}


def encode(image: np.ndarray, ext: str) -> bytes:
  """``image`` (uint8 [H, W, C]) encoded as the format of ``ext`` (a key of FORMATS or
  ANIMATED; animated files get a second, inverted frame)."""
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  buf = io.BytesIO()
  if ext in ANIMATED:
    pil.save(buf, ANIMATED[ext], save_all=True,
             append_images=[Image.fromarray(255 - np.asarray(pil))])
    return buf.getvalue()
  fmt, kwargs = FORMATS[ext]
  (pil.convert("L") if fmt == "PPM" else pil).save(buf, fmt, **kwargs)
  return buf.getvalue()


def truncated_files(image: np.ndarray, cuts=(0.5, 0.9)) -> dict[str, bytes]:
  """``{"<cut>_<ext>": bytes}``: ``image`` in every supported format (animated ones too), cut
  after each fraction ``cuts`` of its bytes."""
  out = {}
  for ext in [*FORMATS, *ANIMATED]:
    data = encode(image, ext)
    for cut in cuts:
      out[f"cut{round(cut * 100)}_{ext}"] = data[:int(len(data) * cut)]
  return out


def damaged_files(image: np.ndarray, seed: int = 0, per_format: int = 4) -> dict[str, bytes]:
  """Files whose header is intact but whose data is not: a random stretch after the first
  tenth of each encoding overwritten with random bytes (same length as the original)."""
  rng = np.random.default_rng(seed)
  out = {}
  for ext in [*FORMATS, *ANIMATED]:
    data = encode(image, ext)
    for i in range(per_format):
      b = bytearray(data)
      lo = int(len(b) * rng.uniform(0.1, 0.8))
      n = max(1, int(len(b) * rng.uniform(0.01, 0.15)))
      b[lo:lo + n] = rng.bytes(len(b[lo:lo + n]))
      out[f"damaged{i}_{ext}"] = bytes(b)
  return out


def fashion_mnist(assets: str | os.PathLike, n: int, seed: int = 0) -> list[np.ndarray]:
  """``n`` distinct random Fashion-MNIST test images (uint8 [28, 28, 1])."""
  with gzip.open(pathlib.Path(assets) / FASHION_IMAGES) as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
  picks = np.random.default_rng(seed).choice(len(images), n, replace=False)
  return [images[i][..., None] for i in sorted(picks)]


def cifar_images(assets: str | os.PathLike, n: int, split: str = "test",
                 classes: tuple[str, ...] = ()) -> list[tuple[str, np.ndarray]]:
  """The first ``n`` CIFAR-10 JPEGs of ``split`` (optionally only ``classes``), as
  ``(class, uint8 [32, 32, 3])``, spread evenly over the classes asked for."""
  out, seen = [], {}
  per_class = -(-n // (len(classes) or 10))
  with tarfile.open(pathlib.Path(assets) / CIFAR_ARCHIVE, "r:gz") as tar:
    for m in tar:
      parts = m.name.lstrip("./").split("/")
      if not m.isfile() or len(parts) != 3 or parts[0] != split:
        continue
      cls = parts[1]
      if (classes and cls not in classes) or seen.get(cls, 0) >= per_class:
        continue
      seen[cls] = seen.get(cls, 0) + 1
      out.append((cls, np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read()))
                                  .convert("RGB"))))
      if len(out) >= n:
        break
  return out


def resized(image: np.ndarray, factor: float,
            resample=Image.Resampling.BICUBIC) -> np.ndarray:
  """``image`` scaled by ``factor`` (each side rounded), as uint8 [H', W', C]."""
  h, w = image.shape[:2]
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  out = np.asarray(pil.resize((max(1, round(w * factor)), max(1, round(h * factor))), resample))
  return out[..., None] if out.ndim == 2 else out


TEXTURES = ("grass", "gravel", "brick")


def texture(name: str) -> np.ndarray:
  """A real texture photograph shipped inside scikit-image (uint8 [512, 512])."""
  import skimage.data
  return np.asarray(getattr(skimage.data, name)())


def faces_in_clutter(assets: str | os.PathLike, n: int, seed: int = 0, size: int = 512,
                     scale: tuple[float, float] = (0.2, 0.45),
                     textures: tuple[str, ...] = TEXTURES
                     ) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
  """``n`` ORL face photographs (92x112, scaled by a random factor in ``scale``: faces of
  about 22-50 pixels high) pasted at random places on ``size``-pixel crops of real textures
  (scikit-image's grass, gravel, brick, in turn). Returns ``(uint8 [size, size, 1], face box
  (x, y, w, h))`` pairs."""
  rng = np.random.default_rng(seed)
  faces = np.load(pathlib.Path(assets) / ORL_FACES)["images"]
  picks = rng.choice(len(faces), n, replace=n > len(faces))
  tex = {t: texture(t) for t in textures}
  out = []
  for i, j in enumerate(picks):
    bg_full = tex[textures[i % len(textures)]]
    y0, x0 = (int(rng.integers(0, s - size + 1)) for s in bg_full.shape[:2])
    canvas = bg_full[y0:y0 + size, x0:x0 + size].copy()
    s = rng.uniform(*scale)
    face = np.asarray(Image.fromarray(faces[j]).resize(
        (round(92 * s), round(112 * s)), Image.Resampling.BICUBIC))
    fh, fw = face.shape
    y, x = int(rng.integers(0, size - fh)), int(rng.integers(0, size - fw))
    canvas[y:y + fh, x:x + fw] = face
    out.append((canvas[..., None], (x, y, fw, fh)))
  return out
