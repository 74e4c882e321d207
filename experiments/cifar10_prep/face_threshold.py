"""Face-detector operating point: recall on ORL faces (full size and shrunk to 32 px) against
the hit rate on CIFAR-10 test dogs (no people: every hit is a false positive that blurs an
animal), for detection upscaling (privacy.face_min_side) and score threshold
(privacy.face_score).

  python experiments/cifar10_prep/face_threshold.py   # writes face_threshold.md here
"""

import io
import pathlib
import sys
import tarfile

import numpy as np
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from diffjax.data.prep.privacy import FaceDetector  # noqa: E402
ASSETS = HERE.parents[2] / "shared" / "assets"


def best_scores(detector, images):
  return np.array([max([b[4] for b in detector.detect(x)] or [0.0]) for x in images])


def main():
  faces = np.load(ASSETS / "faces/orl_faces_400x112x92.npz")["images"][..., None]
  small = [np.asarray(Image.fromarray(f[..., 0]).resize((32, 39), Image.Resampling.BOX))[
      ..., None] for f in faces]
  dogs = []
  with tarfile.open(ASSETS / "data/cifar10_jpeg/cifar10-jpeg-q75.tar.gz") as tar:
    for m in tar:
      if m.isfile() and m.name.lstrip("./").startswith("test/dog/"):
        dogs.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")))
  rows = []
  for min_side in (64, 128):
    det = FaceDetector(str(ASSETS / "faces/face_detection_yunet_2023mar.onnx"), 0.3, min_side)
    f, s, d = best_scores(det, faces), best_scores(det, small), best_scores(det, dogs)
    for th in (0.7, 0.8, 0.85, 0.9, 0.93):
      rows.append(f"| {min_side} | {th} | {(f >= th).mean():.3f} | {(s >= th).mean():.3f} | "
                  f"{(d >= th).mean():.3f} |")
  text = "\n".join([
      "# Face detector operating point (measured)", "",
      f"YuNet (face_detection_yunet_2023mar.onnx); {len(faces)} ORL faces, {len(dogs)} CIFAR-10 "
      "test dogs. Command: `python experiments/cifar10_prep/face_threshold.py`.", "",
      "| face_min_side | face_score | ORL recall | ORL at 32 px recall | CIFAR dogs hit |",
      "|---|---|---|---|---|", *rows, ""])
  (HERE / "face_threshold.md").write_text(text)
  print(text)


if __name__ == "__main__":
  main()
