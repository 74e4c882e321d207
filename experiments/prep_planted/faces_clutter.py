"""Faces in cluttered scenes and animal faces: YuNet at one scale (the detector before issue
32) against the two-pass detector with verification (`privacy.FaceDetector` now), at the
default operating point (score 0.8, min_side 64, verify 0.85).

  python experiments/prep_planted/faces_clutter.py   # writes faces_clutter.md here

Real images only: ORL face photographs pasted on scikit-image's texture photographs (grass,
gravel, brick) at 22-50 and 34-67 pixels high; the ORL photographs alone (92x112, and shrunk to
32 px); CIFAR-10 test cats and dogs (32 px, no people: every hit is a false one); the same
animals enlarged 3-4x and pasted on the textures; scikit-image's cat photographs.
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from diffjax.data.prep.privacy import FaceDetector, _iou  # noqa: E402
from diffjax.testing import planted  # noqa: E402

ASSETS = HERE.parents[2] / "shared" / "assets"
MODEL = str(ASSETS / "faces" / "face_detection_yunet_2023mar.onnx")


def animals_in_clutter(n, seed=0):
  rng = np.random.default_rng(seed)
  animals = planted.cifar_images(ASSETS, n, classes=("cat", "dog"))
  tex = {t: planted.texture(t) for t in planted.TEXTURES}
  out = []
  for i, (_, a) in enumerate(animals):
    bg = tex[planted.TEXTURES[i % 3]]
    y0, x0 = (int(rng.integers(0, s - 512 + 1)) for s in bg.shape)
    canvas = np.repeat(bg[y0:y0 + 512, x0:x0 + 512, None], 3, -1).copy()
    side = int(rng.integers(96, 129))
    big = np.asarray(Image.fromarray(a).resize((side, side), Image.Resampling.BICUBIC))
    y, x = int(rng.integers(0, 512 - side)), int(rng.integers(0, 512 - side))
    canvas[y:y + side, x:x + side] = big
    out.append(canvas)
  return out


def main():
  import skimage.data
  detectors = {"one scale (before)": FaceDetector(MODEL, 0.8, 64, second_pass=False),
               "two passes + verify (now)": FaceDetector(MODEL, 0.8, 64)}
  orl = np.load(ASSETS / planted.ORL_FACES)["images"][..., None]
  orl_small = [np.asarray(Image.fromarray(f[..., 0]).resize((32, 39), Image.Resampling.BOX))[
      ..., None] for f in orl]
  sets = {
      "faces on textures, 22-50 px high (300)": ("recall", planted.faces_in_clutter(
          ASSETS, 300, seed=7)),
      "faces on textures, 34-67 px high (300)": ("recall", planted.faces_in_clutter(
          ASSETS, 300, seed=8, scale=(0.3, 0.6))),
      "ORL photographs alone (400)": ("recall", [(f, (0, 0, 92, 112)) for f in orl]),
      "ORL shrunk to 32 px (400)": ("any", orl_small),
      "CIFAR-10 test cats and dogs, 32 px (2000)": ("false", [
          a for _, a in planted.cifar_images(ASSETS, 2000, classes=("cat", "dog"))]),
      "cats and dogs enlarged on textures, 512 px (300)": ("false", animals_in_clutter(300)),
      "scikit-image cat photographs (2)": ("false", [skimage.data.chelsea(),
                                                     skimage.data.cat()]),
  }
  header = ["| set | measure | " + " | ".join(detectors) + " |", "|---|---|---|---|"]
  rows, times = [], {}
  for name, (kind, items) in sets.items():
    cells = []
    for dname, det in detectors.items():
      t0 = time.perf_counter()
      if kind == "recall":
        v = np.mean([any(_iou(box, b) > 0.3 for b in det.detect(img)) for img, box in items])
      else:
        v = np.mean([bool(det.detect(img)) for img in items])
      times[(name, dname)] = (time.perf_counter() - t0) / len(items) * 1e3
      cells.append(f"{v:.3f}")
    measure = {"recall": "face found (IoU > 0.3)", "any": "image with a face found",
               "false": "false hits (images with any box)"}[kind]
    rows.append(f"| {name} | {measure} | " + " | ".join(cells) + " |")
    print(rows[-1], flush=True)
  cost = ["", "Detection time per image, one core (ms): " + "; ".join(
      f"{n.split(',')[0]} {times[(n, d1)]:.1f} -> {times[(n, d2)]:.1f}"
      for n in sets for d1, d2 in [tuple(detectors)])]
  text = "\n".join(["# Faces in cluttered scenes and animal faces (measured)", "",
                    "`python experiments/prep_planted/faces_clutter.py`; YuNet "
                    "(face_detection_yunet_2023mar.onnx), score 0.8, min_side 64; the second "
                    "pass keeps a new box only when YuNet scores a crop around it >= 0.85.",
                    "", *header, *rows, *cost, ""])
  (HERE / "faces_clutter.md").write_text(text)
  print(text)


if __name__ == "__main__":
  main()
