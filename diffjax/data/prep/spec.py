"""The validated view of a preparation config, and the fingerprint that identifies a dataset.

`build_prep_spec` checks every field (and that the input exists and its manifest parses) and
raises one `ConfigError` naming each problem before any work starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from diffjax.data.prep.privacy import FACE_MODES
from diffjax.fields import ConfigError, FieldChecker

SOURCE_KINDS = ("folder", "archive", "idx", "tfds")
RUNNER_MODES = ("in_memory", "multi_threading", "multi_processing")
OUTLIER_STATS = ("brightness", "contrast", "saturation", "sharpness")
# Sections that define the dataset's content; the runner only decides how it is computed.
CONTENT_SECTIONS = ("source", "validate", "filters", "dedup", "privacy", "output")


@dataclasses.dataclass(frozen=True)
class PrepSpec:
  dataset: str
  licence: str
  description: str
  kind: str
  path: str
  splits: str
  captions: str
  opt_out: str
  labels: bool
  limit: int
  tfds_name: str
  tfds_data_dir: str
  max_side: int
  max_pixels: int
  min_side: int
  min_aspect: float
  max_aspect: float
  min_sharpness: float
  min_contrast: float
  outlier_z: float
  outlier_stats: tuple[str, ...]
  exact_dedup: bool
  near_dedup: bool
  min_similarity: float
  num_bands: int
  band_bits: int
  max_hamming: int
  hash_min_similarity: float
  split_priority: tuple[str, ...]
  faces: str
  face_model: str
  face_score: float
  face_min_side: int
  face_margin: float
  face_second_pass: bool
  face_verify_score: float
  phone_regions: tuple[str, ...]
  scrub_captions: bool
  resolutions: tuple[int, ...]
  channels: int
  num_shards: int
  grid_size: int
  runner: str
  num_workers: int
  runner_mode: str
  runner_options: tuple[str, ...]
  fingerprint: str  # of the content sections: equal fingerprints = the same dataset
  content: dict  # the content sections, for the manifest and for naming what differs


def is_prep_config(config) -> bool:
  return "job" in config and config.job == "prep"


def content_of(config) -> dict:
  return {s: config[s].to_dict() for s in CONTENT_SECTIONS}


def fingerprint_of(content: dict) -> str:
  return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _csv(text: str) -> tuple[str, ...]:
  return tuple(p.strip() for p in str(text).split(",") if p.strip())


def _number(ck: FieldChecker, value, field: str, lo: float, hi: float = float("inf")) -> bool:
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
  return ck.require(ok, field, f"must be a number in [{lo}, {hi}], got {value!r}")


def build_prep_spec(config) -> PrepSpec:
  """Validates a preparation config (see configs/prep_base.py). Raises ConfigError."""
  if not is_prep_config(config):
    raise ConfigError("--mode prep needs a preparation config (configs/prep_*.py, with "
                      "job='prep'); this looks like a training config")
  ck = FieldChecker()
  s, v, f, d, p, o, r = (config.source, config.validate, config.filters, config.dedup,
                         config.privacy, config.output, config.runner)
  ck.one_of(s.kind, SOURCE_KINDS, "source.kind")
  if s.kind == "tfds":
    ck.require(bool(s.tfds_name), "source.tfds_name", "kind=tfds needs a TFDS dataset name")
  elif ck.require(bool(s.path), "source.path", f"kind={s.kind} needs a path"):
    ck.require(os.path.exists(s.path), "source.path", f"{s.path!r} does not exist")
  ck.require(bool(_csv(s.splits)), "source.splits", "give at least one split, e.g. 'train'")
  if s.captions and s.captions != "sidecar":
    ck.require(os.path.isfile(s.captions), "source.captions",
               f"manifest {s.captions!r} does not exist (or use '' / 'sidecar')")
  if s.opt_out:
    from diffjax.data.prep.inputs import InputError, read_opt_out
    try:
      read_opt_out(s.opt_out)
    except InputError as e:
      ck.require(False, "source.opt_out", str(e))
  ck.positive_int(s.limit, "source.limit", minimum=0)
  ck.positive_int(v.max_side, "validate.max_side")
  ck.positive_int(v.max_pixels, "validate.max_pixels")
  ck.positive_int(f.min_side, "filters.min_side", minimum=0)
  _number(ck, f.min_aspect, "filters.min_aspect", 0.0)
  if _number(ck, f.max_aspect, "filters.max_aspect", 0.0):
    ck.require(f.max_aspect >= f.min_aspect, "filters.max_aspect",
               f"{f.max_aspect} is below filters.min_aspect={f.min_aspect}")
  _number(ck, f.min_sharpness, "filters.min_sharpness", 0.0)
  _number(ck, f.min_contrast, "filters.min_contrast", 0.0)
  _number(ck, f.outlier_z, "filters.outlier_z", 0.0)
  for stat in _csv(f.outlier_stats):
    ck.one_of(stat, OUTLIER_STATS, "filters.outlier_stats")
  _number(ck, d.min_similarity, "dedup.min_similarity", 0.5, 1.0)
  if ck.positive_int(d.max_hamming, "dedup.max_hamming", minimum=0):
    ck.require(d.max_hamming <= 8, "dedup.max_hamming",
               f"{d.max_hamming} of 64 bits would join unrelated images (use <= 8; 0 = off)")
  _number(ck, d.hash_min_similarity, "dedup.hash_min_similarity", -1.0, 1.0)
  ck.positive_int(d.num_bands, "dedup.num_bands")
  if ck.positive_int(d.band_bits, "dedup.band_bits"):
    ck.require(d.band_bits <= 62, "dedup.band_bits", f"{d.band_bits} > 62 bits per band")
  ck.one_of(p.faces, FACE_MODES, "privacy.faces")
  if p.faces != "none":
    ck.require(os.path.isfile(p.face_model), "privacy.face_model",
               f"face detector {p.face_model!r} not found (YuNet ONNX: opencv_zoo's "
               f"face_detection_yunet_2023mar.onnx), or set privacy.faces=none")
  _number(ck, p.face_score, "privacy.face_score", 0.0, 1.0)
  ck.positive_int(p.face_min_side, "privacy.face_min_side")
  _number(ck, p.face_margin, "privacy.face_margin", 0.0, 2.0)
  _number(ck, p.face_verify_score, "privacy.face_verify_score", 0.0, 1.0)
  regions = tuple(r.upper() for r in _csv(p.phone_regions))
  try:
    import phonenumbers
    unknown = sorted(set(regions) - phonenumbers.SUPPORTED_REGIONS)
    ck.require(not unknown, "privacy.phone_regions",
               f"unknown region codes {unknown} (ISO 3166 alpha-2, e.g. 'US,GB,DE')")
  except ImportError:
    pass  # reported with the other prep requirements when the job starts
  resolutions = ()
  try:
    resolutions = tuple(int(x) for x in _csv(o.resolutions))
  except ValueError:
    pass
  ck.require(bool(resolutions) and all(x > 0 for x in resolutions), "output.resolutions",
             f"want a comma list of positive sizes, e.g. '32' or '64,256', got "
             f"{o.resolutions!r}")
  ck.require(o.channels in (0, 1, 3), "output.channels", f"must be 0, 1 or 3, got "
             f"{o.channels!r}")
  ck.positive_int(o.num_shards, "output.num_shards")
  ck.positive_int(o.grid_size, "output.grid_size", minimum=0)
  ck.require(isinstance(r.name, str) and r.name.endswith("Runner"), "runner.name",
             f"want a Beam runner name such as DirectRunner, got {r.name!r}")
  ck.positive_int(r.num_workers, "runner.num_workers")
  ck.one_of(r.mode, RUNNER_MODES, "runner.mode")
  if ck.errors:
    raise ConfigError("invalid preparation config:\n  " + "\n  ".join(ck.errors))
  content = content_of(config)
  return PrepSpec(
      dataset=config.dataset, licence=config.licence, description=config.description,
      kind=s.kind, path=s.path, splits=s.splits, captions=s.captions, opt_out=s.opt_out,
      labels=bool(s.labels),
      limit=s.limit, tfds_name=s.tfds_name, tfds_data_dir=s.tfds_data_dir,
      max_side=v.max_side,
      max_pixels=v.max_pixels, min_side=f.min_side, min_aspect=float(f.min_aspect),
      max_aspect=float(f.max_aspect), min_sharpness=float(f.min_sharpness),
      min_contrast=float(f.min_contrast), outlier_z=float(f.outlier_z),
      outlier_stats=_csv(f.outlier_stats), exact_dedup=bool(d.exact), near_dedup=bool(d.near),
      min_similarity=float(d.min_similarity), num_bands=d.num_bands, band_bits=d.band_bits,
      max_hamming=d.max_hamming, hash_min_similarity=float(d.hash_min_similarity),
      split_priority=_csv(d.split_priority), faces=p.faces,
      face_model=p.face_model, face_score=float(p.face_score), face_min_side=p.face_min_side,
      face_margin=float(p.face_margin), face_second_pass=bool(p.face_second_pass),
      face_verify_score=float(p.face_verify_score), phone_regions=regions,
      scrub_captions=bool(p.scrub_captions),
      resolutions=resolutions, channels=o.channels, num_shards=o.num_shards,
      grid_size=o.grid_size, runner=r.name, num_workers=r.num_workers, runner_mode=r.mode,
      runner_options=tuple(str(r.options).split()), fingerprint=fingerprint_of(content),
      content=content)


def differing_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
  """``section.field: old -> new`` for every content field that differs."""
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += differing_fields(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: {a!r} -> {b!r}")
  return out
