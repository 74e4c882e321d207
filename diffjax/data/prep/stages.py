"""The Beam stages of the preparation pipeline, one DoFn or CombineFn per step.

Each stage times itself into Beam metrics (``ms_<stage>``, ``n_<stage>``) so the report can
give images/s by stage; rejected examples leave through the ``rejected`` tagged output as
``{"id", "split", "source", "stage", "reason", "detail", "thumb"}`` (plus ``data``, the raw
bytes, for files that failed validation and are copied into quarantine).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from diffjax.data.convert import sha256_file
from diffjax.data.pipeline import _to_channels, center_crop_resize
from diffjax.data.prep import checks, dedup, inputs, privacy
from diffjax.data.records import encode_png, encode_record

REJECTED = "rejected"
THUMB = 48  # pixels, the longer side of thumbnails kept for the rejected grid


class _Timed:
  """Adds ``ms_<stage>`` and ``n_<stage>`` counters around a stage's work."""

  def __init__(self, stage: str):
    self._ms = Metrics.counter("prep", f"ms_{stage}")
    self._n = Metrics.counter("prep", f"n_{stage}")

  def __enter__(self):
    self._t = time.perf_counter()

  def __exit__(self, *exc):
    self._ms.inc(int(round((time.perf_counter() - self._t) * 1e3)))
    self._n.inc()


def thumbnail(image: np.ndarray) -> np.ndarray:
  from PIL import Image
  h, w = image.shape[:2]
  scale = THUMB / max(h, w)
  if scale >= 1:
    return image
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image).resize(
      (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
  arr = np.asarray(pil)
  return arr[..., None] if squeeze else arr


def reject(example: dict, stage: str, reason: str, detail: str = "", image=None,
           keep_data: bool = False) -> beam.pvalue.TaggedOutput:
  Metrics.counter("prep", f"rejected_{reason}").inc()
  out = {"id": example["id"], "split": example["split"], "source": example.get("source", ""),
         "stage": stage, "reason": reason, "detail": detail,
         "thumb": None if image is None else thumbnail(image)}
  if keep_data:
    out["data"] = example.get("data", b"")
  return beam.pvalue.TaggedOutput(REJECTED, out)


class ReadUnits(beam.DoFn):
  def __init__(self, captions: dict[str, str]):
    self._captions = captions

  def process(self, unit):
    with _Timed("read"):
      yield from inputs.read_unit(unit, self._captions)


class Progress:
  """Prints this worker's progress every ``every`` images: count, rate and an ETA for its
  share (``expected`` inputs spread over ``workers``)."""

  def __init__(self, expected: int, workers: int, every: int = 5000):
    self._share = expected / max(workers, 1) if expected else 0
    self._every, self._n, self._t0 = every, 0, None

  def tick(self) -> None:
    self._t0 = self._t0 or time.perf_counter()
    self._n += 1
    if self._n % self._every == 0:
      rate = self._n / max(time.perf_counter() - self._t0, 1e-9)
      eta = f", ETA {max(self._share - self._n, 0) / rate:.0f} s" if self._share else ""
      print(f"prep: worker {os.getpid()} validated {self._n} images, {rate:.0f}/s{eta}",
            file=sys.stderr, flush=True)


def opted_out(ex: dict, entries: frozenset[str], content_hash: str = "") -> str:
  """The kind of opt-out entry that names this example ("" when none does)."""
  if not entries:
    return ""
  prov = ex.get("provenance", {})
  for kind, value in (("id", ex["id"]), ("file", ex.get("file", "")),
                      ("source_id", prov.get("source_id", "")), ("url", prov.get("url", "")),
                      ("content hash", content_hash)):
    if value and value in entries:
      return kind
  return ""


class Validate(beam.DoFn):
  """Decodes and validates; adds ``image``, ``meta`` and ``label``. Examples named by the
  opt-out list leave as ``opted_out`` rejections without a thumbnail or a quarantine copy."""

  def __init__(self, max_side: int, max_pixels: int, class_names: list[str], labels: bool,
               expected: int = 0, workers: int = 1, opt_out: frozenset[str] = frozenset()):
    self._max_side, self._max_pixels = max_side, max_pixels
    self._index = {c: i for i, c in enumerate(class_names)} if labels else {}
    self._expected, self._workers = expected, workers
    self._opt_out = opt_out

  def setup(self):
    self._progress = Progress(self._expected, self._workers)

  def process(self, ex: dict[str, Any]):
    self._progress.tick()
    with _Timed("validate"):
      file_hash = (hashlib.sha256(ex["data"]).hexdigest()
                   if self._opt_out and ex.get("data") else "")
      kind = opted_out(ex, self._opt_out, file_hash)
      if kind:
        yield reject(ex, "validate", "opted_out", f"matched by {kind}")
        return
      if ex.get("read_error"):
        yield reject(ex, "validate", "unreadable_file", ex["read_error"], keep_data=False)
        return
      if "pixels" in ex:
        image = np.asarray(ex.pop("pixels"))
        image = image[..., None] if image.ndim == 2 else image
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
          yield reject(ex, "validate", "unsupported_mode", f"{image.dtype} {image.shape}")
          return
        meta = {"format": "array", "mode": "L" if image.shape[-1] == 1 else "RGB",
                "size": image.shape[:2], "had_exif": False, "had_gps": False,
                "had_xmp": False}
      else:
        try:
          image, meta = checks.decode_validated(ex["data"], max_side=self._max_side,
                                                max_pixels=self._max_pixels)
        except checks.Rejected as e:
          yield reject(ex, "validate", e.reason, e.detail, keep_data=True)
          return
        ex.pop("data")
      if self._opt_out and opted_out(ex, self._opt_out, checks.pixel_hash(image)):
        yield reject(ex, "validate", "opted_out", "matched by content hash")
        return
      label = self._index.get(ex.pop("class_name"), -1) if self._index else -1
      yield {**ex, "image": image, "meta": meta, "label": label}


class Measure(beam.DoFn):
  """Per-image statistics and hashes, then the size, aspect, blur and contrast filters."""

  def __init__(self, min_side, min_aspect, max_aspect, min_sharpness, min_contrast):
    self._min_side, self._min_aspect, self._max_aspect = min_side, min_aspect, max_aspect
    self._min_sharpness, self._min_contrast = min_sharpness, min_contrast

  def process(self, ex):
    with _Timed("measure"):
      image = ex["image"]
      h, w = image.shape[:2]
      if min(h, w) < self._min_side:
        yield reject(ex, "filter", "too_small", f"{w}x{h} < {self._min_side}", image)
        return
      aspect = w / h
      if not self._min_aspect <= aspect <= self._max_aspect:
        yield reject(ex, "filter", "aspect_ratio", f"{aspect:.2f}", image)
        return
      stats = checks.image_stats(image)
      if stats["contrast"] < self._min_contrast:
        yield reject(ex, "filter", "low_information", f"contrast {stats['contrast']:.2f}",
                     image)
        return
      if stats["sharpness"] < self._min_sharpness:
        yield reject(ex, "filter", "blurry", f"sharpness {stats['sharpness']:.1f}", image)
        return
      yield {**ex, "stats": stats, "pixhash": checks.pixel_hash(image),
             "feature": checks.similarity_feature(image),
             "phash": checks.perceptual_hash(image)}


def stat_values(ex, names):
  for name in names:
    yield name, ex["stats"][name]


class DropOutliers(beam.DoFn):
  """Robust z-score per statistic from its quartiles: (x - median) / (IQR / 1.349)."""

  def __init__(self, z: float):
    self._z = z

  def process(self, ex, quantiles):
    with _Timed("outliers"):
      for name, q in sorted(quantiles.items()):
        scale = (q[3] - q[1]) / 1.349
        if scale <= 0:
          continue
        z = (ex["stats"][name] - q[2]) / scale
        if abs(z) > self._z:
          yield reject(ex, "filter", "outlier", f"{name} z={z:+.1f}", ex["image"])
          return
      yield ex


def hash_key(ex) -> tuple:
  """An image's de-duplication key as a plain tuple (`dedup.HashKey` fields): Beam's coder
  encodes tuples of str/bytes/int natively, named tuples only through pickle (5x slower)."""
  return (ex["id"], ex["split"], ex["feature"], ex["phash"])


class ExactGroups(beam.DoFn):
  """One group per pixel hash: keeper downstream, the rest as drop decisions."""

  def __init__(self, split_priority):
    self._order = dedup.keeper_order(split_priority)

  def process(self, item):
    _, keys = item
    kept, dropped = dedup.resolve([dedup.HashKey(*k) for k in keys], self._order)
    for k in dropped:
      yield beam.pvalue.TaggedOutput("drops", (k.id, ("exact_duplicate", _dup_detail(k, kept))))
    yield tuple(kept)


def _dup_detail(dropped: dedup.HashKey, kept: dedup.HashKey) -> str:
  cross = " (cross-split)" if dropped.split != kept.split else ""
  return f"of {kept.id}{cross}"


def band_items(key: tuple, num_bands: int, band_bits: int, hash_bands: bool):
  """``((band, value), key)`` for each LSH band of an image (and each perceptual-hash band when
  the hash rule is on): one group per band value."""
  k = dedup.HashKey(*key)
  for band in dedup.band_keys(k.feature, num_bands, band_bits):
    yield band, key
  if hash_bands:
    for band in dedup.hash_band_keys(k.phash):
      yield band, key


def near_pairs(item, rule: dedup.NearRule):
  """Verified near-duplicate pairs of one band bucket (its size goes into the report)."""
  _, keys = item
  keys = [dedup.HashKey(*k) for k in keys]
  Metrics.distribution("prep", "bucket_size").update(len(keys))
  Metrics.counter("prep", "near_compared").inc(len(keys) * (len(keys) - 1) // 2)
  yield from dedup.close_pairs(keys, rule)


def keeper_of(candidates):
  """The highest-ranked verified copy among one image's ``(rank, detail)`` candidates."""
  return min(candidates)


def near_drop(item):
  dropped_id, (_, detail) = item
  return dropped_id, ("near_duplicate", detail)


class ApplyDrops(beam.DoFn):
  def process(self, ex, drops):
    hit = drops.get(ex["id"])
    if hit is None:
      yield ex
    else:
      yield reject(ex, "dedup", hit[0], hit[1], ex["image"])


class Anonymise(beam.DoFn):
  """Blurs or pixelates detected faces; scrubs personal data from captions."""

  def __init__(self, faces, model, score, min_side, margin, scrub, second_pass=True,
               verify_score=0.85, phone_regions=privacy.PHONE_REGIONS):
    self._faces, self._model, self._score = faces, model, score
    self._min_side, self._margin, self._scrub = min_side, margin, scrub
    self._second_pass, self._verify_score = second_pass, verify_score
    self._phone_regions = phone_regions
    self._detector = None

  def setup(self):
    if self._faces != "none":
      self._detector = privacy.FaceDetector(self._model, self._score, self._min_side,
                                            self._second_pass, self._verify_score)

  def process(self, ex):
    with _Timed("privacy"):
      boxes = self._detector.detect(ex["image"]) if self._detector else []
      image = privacy.anonymise(ex["image"], boxes, self._faces, self._margin)
      caption, pii = ex["caption"], {}
      if self._scrub and caption:
        caption, pii = privacy.scrub_caption(caption, self._phone_regions)
      yield {**ex, "image": image, "caption": caption, "faces": len(boxes), "pii": pii}


def shard_of(example_id: str, num_shards: int) -> int:
  return int.from_bytes(hashlib.sha1(example_id.encode()).digest()[:8], "big") % num_shards


class Encode(beam.DoFn):
  """One record per output resolution, keyed by its shard ``(res, split, index)``."""

  def __init__(self, resolutions, channels: int, num_shards: int, source_root: str = ""):
    self._resolutions, self._channels, self._num_shards = resolutions, channels, num_shards
    self._root = source_root

  def process(self, ex):
    with _Timed("encode"):
      image = ex["image"] if not self._channels else _to_channels(ex["image"], self._channels)
      shard = shard_of(ex["id"], self._num_shards)
      for res in self._resolutions:
        out = center_crop_resize(image, res)
        fields = {"id": ex["id"], "split": ex["split"], **provenance_fields(ex, self._root)}
        if ex["caption"]:
          fields["caption"] = ex["caption"]
        record = encode_record(encode_png(out), ex["label"], **fields)
        yield (res, ex["split"], shard), (ex["id"], record)
        if res == self._resolutions[0]:
          yield beam.pvalue.TaggedOutput("kept", _kept_summary(ex, out))


def provenance_fields(ex, root: str = "") -> dict[str, str]:
  """What a record keeps about where its image came from: ``source`` (the URL the input gave,
  else the file or archive member it was read from, relative to ``root``, the source path, so
  no local folder layout or user name is written into the dataset), and ``source_id``,
  ``licence`` and ``attribution`` when the input gave them."""
  prov = ex.get("provenance", {})
  source = ex.get("source", "")
  if root and source.startswith(root.rstrip("/") + ":"):  # archive member
    source = source[len(root.rstrip("/")) + 1:]
  elif root and source.startswith(root.rstrip("/") + "/"):
    source = os.path.relpath(source, root)
  out = {"source": prov.get("url") or source}
  out.update({k: prov[k] for k in ("source_id", "licence", "attribution") if prov.get(k)})
  return out


def _kept_summary(ex, out) -> dict:
  prov = ex.get("provenance", {})
  return {"id": ex["id"], "split": ex["split"], "label": ex["label"], "image": out,
          "licence": prov.get("licence", ""), "attribution": bool(prov.get("attribution")),
          "url": bool(prov.get("url")),
          "size": tuple(ex["meta"]["size"]), "had_exif": ex["meta"]["had_exif"],
          "had_gps": ex["meta"]["had_gps"], "had_xmp": ex["meta"]["had_xmp"],
          "faces": ex["faces"], "pii": ex["pii"], "caption": bool(ex["caption"])}


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


class WriteShard(beam.DoFn):
  """Writes one shard atomically with owner-only permissions, unless an identical one (same
  records, recorded in ``.done/``) is already there: finished shards are not redone."""

  def __init__(self, out_dir: str, num_shards: int):
    self._out, self._num_shards = out_dir, num_shards

  def process(self, item):
    (res, split, index), values = item
    with _Timed("write"):
      records = sorted(v for v in values if v is not None)
      content = hashlib.sha256()
      for rid, rec in records:
        content.update(rid.encode() + b"\0" + hashlib.sha256(rec).digest())
      fingerprint = content.hexdigest()
      folder = os.path.join(self._out, f"{res}px")
      done_dir = os.path.join(folder, ".done")
      os.makedirs(done_dir, mode=0o700, exist_ok=True)
      name = shard_name(split, index, self._num_shards)
      path, done = os.path.join(folder, name), os.path.join(done_dir, name + ".json")
      previous = _read_json(done)
      if (previous and previous.get("fingerprint") == fingerprint and os.path.exists(path)
          and sha256_file(path) == previous.get("sha256")):
        yield {**previous, "status": "unchanged"}
        return
      from array_record.python.array_record_module import ArrayRecordWriter
      tmp = f"{path}.tmp-{os.getpid()}"
      writer = ArrayRecordWriter(tmp, "group_size:1")
      for _, rec in records:
        writer.write(rec)
      writer.close()
      os.chmod(tmp, 0o600)
      os.replace(tmp, path)
      info = {"resolution": res, "split": split, "file": f"{res}px/{name}",
              "count": len(records), "sha256": sha256_file(path), "fingerprint": fingerprint}
      _write_json(done, info)
      yield {**info, "status": "rewritten" if previous else "written"}


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path: str, obj) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    json.dump(obj, f, indent=1, default=_json_default)
  os.replace(tmp, path)


def _json_default(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, (tuple, set)):
    return list(x)
  raise TypeError(f"not JSON serialisable: {type(x)}")


class Quarantine(beam.DoFn):
  """Copies files that failed validation into ``quarantine/<reason>/`` (owner-only)."""

  def __init__(self, out_dir: str):
    self._out = out_dir

  def process(self, rej):
    data = rej.pop("data", None)
    if data:
      folder = os.path.join(self._out, "quarantine", rej["reason"])
      os.makedirs(folder, mode=0o700, exist_ok=True)
      safe = rej["id"].replace("/", "__")
      path = os.path.join(folder, safe)
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      rej["quarantined_as"] = os.path.relpath(path, self._out)
    yield rej


class SummaryFn(beam.CombineFn):
  """Counts and per-channel moments of the kept images (at the first output resolution)."""

  def create_accumulator(self):
    return {"count": Counter(), "classes": Counter(), "sizes": Counter(), "meta": Counter(),
            "pii": Counter(), "sum": {}, "sumsq": {}, "pixels": Counter(),
            "face_classes": Counter(), "licences": Counter()}

  def add_input(self, acc, s):
    split = s["split"]
    acc["count"][split] += 1
    acc["classes"][f"{split}\t{s['label']}"] += 1
    acc["sizes"][f"{s['size'][0]}x{s['size'][1]}"] += 1
    for k in ("had_exif", "had_gps", "had_xmp", "caption"):
      acc["meta"][k] += int(bool(s[k]))
    acc["meta"]["faces"] += s["faces"]
    acc["meta"]["images_with_faces"] += int(s["faces"] > 0)
    if s["faces"]:
      acc["face_classes"][s["label"]] += 1
    acc["pii"].update(s["pii"])
    acc["licences"][s.get("licence") or "unknown"] += 1
    acc["meta"]["with_attribution"] += int(bool(s.get("attribution")))
    acc["meta"]["with_url"] += int(bool(s.get("url")))
    x = s["image"].astype(np.float64).reshape(-1, s["image"].shape[-1]) / 255.0
    acc["sum"][split] = acc["sum"].get(split, 0) + x.sum(0)
    acc["sumsq"][split] = acc["sumsq"].get(split, 0) + (x * x).sum(0)
    acc["pixels"][split] += x.shape[0]
    return acc

  def merge_accumulators(self, accs):
    out = self.create_accumulator()
    for a in accs:
      for k in ("count", "classes", "sizes", "meta", "pii", "pixels", "face_classes",
                "licences"):
        out[k].update(a[k])
      for k in ("sum", "sumsq"):
        for split, v in a[k].items():
          out[k][split] = out[k].get(split, 0) + v
    return out

  def extract_output(self, acc):
    channels = {}
    for split, n in acc["pixels"].items():
      mean = acc["sum"][split] / n
      std = np.sqrt(np.maximum(acc["sumsq"][split] / n - mean ** 2, 0))
      channels[split] = {"mean": [round(float(m), 5) for m in mean],
                         "std": [round(float(s), 5) for s in std]}
    return {"count": dict(acc["count"]), "classes": dict(acc["classes"]),
            "sizes": dict(acc["sizes"]), "meta": dict(acc["meta"]), "pii": dict(acc["pii"]),
            "face_classes": {str(k): v for k, v in acc["face_classes"].items()},
            "licences": dict(acc["licences"]), "channels": channels}


def grid_key(example_id: str) -> int:
  """A deterministic pseudo-random order for picking grid examples."""
  return int.from_bytes(hashlib.sha1(example_id.encode()).digest()[:8], "big")


def write_json(obj, path: str) -> None:
  _write_json(path, obj)


def write_pickle(obj, path: str) -> None:
  import pickle
  with open(path, "wb") as f:
    pickle.dump(obj, f)
