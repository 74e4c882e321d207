"""Per-image CPU cost of each preparation step, in one process on one core (no Beam, so no
shuffle or process overhead): what one worker can do at most, for CIFAR-10's 32 px JPEGs and
for 512 px scenes (ORL faces on textures, PNG).

  python experiments/cifar10_prep/stage_costs.py   # writes stage_costs.md here
"""

from __future__ import annotations

import io
import os
import pathlib
import sys
import tarfile
import time

import numpy as np
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from diffjax.data.pipeline import center_crop_resize  # noqa: E402
from diffjax.data.prep import checks, dedup, privacy  # noqa: E402
from diffjax.data.records import encode_png, encode_record  # noqa: E402
from diffjax.testing import planted  # noqa: E402

ASSETS = HERE.parents[2] / "shared" / "assets"


def costs(files: list[bytes], resolution: int) -> dict[str, float]:
  """Microseconds per image of each step, over ``files``."""
  det = privacy.FaceDetector(str(ASSETS / "faces/face_detection_yunet_2023mar.onnx"), 0.8, 64)
  out, images = {}, []

  def step(name, fn, items):
    t0 = time.perf_counter()
    res = [fn(x) for x in items]
    out[name] = (time.perf_counter() - t0) / len(items) * 1e6
    return res

  images = [x[0] for x in step("decode + validate", lambda d: checks.decode_validated(
      d, max_side=16384, max_pixels=10**8), files)]
  step("statistics (blur, contrast, outliers)", checks.image_stats, images)
  step("pixel hash", checks.pixel_hash, images)
  feats = step("similarity feature", checks.similarity_feature, images)
  step("perceptual hash", checks.perceptual_hash, images)
  step("LSH band keys (16 x 14 bits)", lambda f: dedup.band_keys(f, 16, 14), feats)
  step("face detection", det.detect, images)
  step("resize + PNG + record", lambda x: encode_record(encode_png(center_crop_resize(
      x, resolution)), 0, id="train/x/0001.jpg"), images)
  return out


def main():
  cifar = []
  with tarfile.open(ASSETS / planted.CIFAR_ARCHIVE) as tar:
    for m in tar:
      if m.isfile() and m.name.endswith(".jpg"):
        cifar.append(tar.extractfile(m).read())
        if len(cifar) >= 3000:
          break
  scenes = []
  for img, _ in planted.faces_in_clutter(ASSETS, 60, seed=3):
    buf = io.BytesIO()
    Image.fromarray(img[..., 0]).save(buf, "PNG")
    scenes.append(buf.getvalue())
  sets = {"CIFAR-10 JPEG, 32 px (3000)": costs(cifar, 32),
          "faces on textures, 512 px PNG (60)": costs(scenes, 256)}
  steps = list(next(iter(sets.values())))
  lines = ["# Per-image cost of each preparation step, one core (measured)", "",
           f"`python experiments/cifar10_prep/stage_costs.py`; in one process, no Beam; "
           f"1-minute load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the "
           f"end (other processes shared the machine).", "",
           "| step | " + " | ".join(f"{k} us" for k in sets) + " |",
           "|---|" + "---|" * len(sets)]
  lines += [f"| {s} | " + " | ".join(f"{v[s]:.0f}" for v in sets.values()) + " |"
            for s in steps]
  lines += ["| **images/s per worker (sum of steps)** | " + " | ".join(
      f"**{1e6 / sum(v.values()):.0f}**" for v in sets.values()) + " |", ""]
  (HERE / "stage_costs.md").write_text("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
