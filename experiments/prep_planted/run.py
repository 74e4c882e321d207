"""The preparation pipeline on the planted dirty dataset (diffjax/testing/planted.py): each
filter's precision and recall on the planted cases, face recall, metadata and caption checks.
The same assertions run in tests/test_prep.py; this writes the numbers to results.md here.

  python experiments/prep_planted/run.py
"""

from __future__ import annotations

import io
import json
import pathlib
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
ASSETS = ROOT.parent / "shared" / "assets"

REASONS = {
    "invalid (corrupt, empty, 16-bit/CMYK, too large)": (
        "corrupt", "empty_file", "unsupported_mode", "too_large"),
    "truncated (JPEG, and every format at 50%/90%)": ("truncated",),
    "too small": ("too_small",), "blurry": ("blurry",), "blank": ("low_information",),
    "exact duplicate": ("exact_duplicate",), "near duplicate": ("near_duplicate",),
}


def main():
  from PIL import Image

  from configs import prep_base
  from diffjax.jobs.prep import prepare
  from diffjax.testing.planted import build_planted
  from diffjax.data.records import decode_record

  tmp = pathlib.Path(tempfile.mkdtemp(prefix="planted-"))
  truth = build_planted(tmp / "raw", ASSETS)
  c = prep_base.get_prep_config()
  c.dataset, c.source.kind, c.source.path = "planted", "folder", str(tmp / "raw")
  c.source.splits, c.source.captions = "train,test", "sidecar"
  c.validate.max_side, c.filters.min_side, c.filters.min_sharpness = 4096, 24, 10.0
  c.output.resolutions, c.output.num_shards = "32,64", 2
  t0 = time.time()
  manifest = prepare(c, str(tmp / "out"))
  wall = time.time() - t0
  rejected = {}
  for line in (tmp / "out" / "rejected.jsonl").read_text().splitlines():
    r = json.loads(line)
    rejected[r["id"]] = r["reason"]
  from array_record.python.array_record_module import ArrayRecordReader
  kept = {}
  for path in sorted((tmp / "out" / "32px").glob("*.array_record")):
    reader = ArrayRecordReader(str(path))
    for raw in reader.read_all():
      rec = decode_record(raw)
      import msgpack
      kept[rec["id"]] = (rec, msgpack.unpackb(raw, raw=False)["image"])
    reader.close()

  rows = []
  small = {i for i in truth.reasons if "/zz_small_" in i}
  found_small = {i for i, r in rejected.items() if r == "near_duplicate" and "/fashion/" in i}
  for name, reasons in REASONS.items():
    planted = {i for i, r in truth.reasons.items() if r in reasons}
    found = {i for i, r in rejected.items() if r in reasons}
    hit = len(planted & found)
    rows.append(f"| {name} | {len(planted)} | {len(found)} | {hit / max(len(found), 1):.3f} | "
                f"{hit / max(len(planted), 1):.3f} |")
  hit = len(small & found_small)
  rows.append(f"| of which 0.9x resizes of 28 px images | {len(small)} | {len(found_small)} | "
              f"{hit / max(len(found_small), 1):.3f} | {hit / max(len(small), 1):.3f} |")
  exact_reason = sum(rejected.get(i) == r for i, r in truth.reasons.items())
  clean_dropped = len(set(truth.clean) & set(rejected))
  with_exif = sum(len(Image.open(io.BytesIO(img)).getexif()) > 0 for _, img in kept.values())
  leaks = sum(any(s in kept[i][0].get("caption", "") for s in secrets)
              for i, secrets in truth.pii.items())
  benign_changed = sum(kept[i][0].get("caption") != text for i, text in truth.benign.items())
  faces_found = manifest["privacy"]["images_with_faces"]
  from diffjax.data.prep.privacy import FaceDetector, _iou
  from diffjax.data.prep.checks import decode_validated
  det = FaceDetector(c.privacy.face_model, c.privacy.face_score, c.privacy.face_min_side)
  face_hits = {}
  for ident, box in truth.faces.items():
    img = decode_validated((tmp / "raw" / ident).read_bytes(), max_side=4096,
                           max_pixels=10**8)[0]
    face_hits[ident] = any(_iou(box, b) > 0.3 for b in det.detect(img))
  clutter = [i for i in truth.faces if "clutter" in i]
  lines = [
      "# Preparation on the planted dirty dataset (measured)", "",
      f"`python experiments/prep_planted/run.py`: {manifest['counts']['inputs']} files built "
      f"from CIFAR-10 JPEGs, MNIST digits, Fashion-MNIST, ORL faces and scikit-image textures "
      f"by `diffjax/testing/planted.py`, prepared in {wall:.1f} s (2 DirectRunner workers, "
      f"2 cores), no crash.", "",
      "| planted defect | planted | flagged | precision | recall |", "|---|---|---|---|---|",
      *rows, "",
      f"- Planted files dropped for exactly the planted reason: {exact_reason} of "
      f"{len(truth.reasons)}; clean files dropped: {clean_dropped} of {len(truth.clean)}.",
      f"- Cross-split duplicates (test images copied into train) removed from train: "
      f"{manifest['counts']['cross_split_duplicates']} (tests/test_prep.py asserts that the "
      f"test copy is the one kept).",
      f"- Clean files kept: {len(truth.clean) - clean_dropped} of {len(truth.clean)} "
      f"({(len(truth.clean) - clean_dropped) / len(truth.clean):.1%}).",
      f"- Faces: {len(truth.faces)} ORL faces planted (12 pasted into 200x200 photos, 4 whole, "
      f"{len(clutter)} of 22-50 px on grass/gravel/brick textures); planted boxes detected "
      f"(IoU > 0.3): {sum(face_hits.values())} of {len(truth.faces)}, in clutter "
      f"{sum(face_hits[i] for i in clutter)} of {len(clutter)}; images with faces "
      f"anonymised: {faces_found} (tests/test_prep.py checks each planted box is blurred).",
      f"- Inputs with EXIF GPS tags: {len(truth.exif_gps)}; output images carrying any EXIF: "
      f"{with_exif} of {len(kept)}.",
      f"- Captions with planted personal data: {len(truth.pii)} (10 earlier cases, "
      f"{len(truth.pii) - 10} phone numbers and addresses in international formats); with any "
      f"of it left: {leaks}. "
      f"Benign captions changed: {benign_changed} of {len(truth.benign)}.", ""]
  (HERE / "results.md").write_text("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
