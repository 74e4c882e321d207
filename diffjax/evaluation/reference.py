"""Reference statistics of a real dataset split, stored with a fingerprint of their source.

A reference file (``.npz``) holds the feature mean [d] and covariance [d, d] over every image
of the split, up to ``max_features`` feature vectors for KID and precision/recall, and a JSON
fingerprint: the data (source kind, dataset name and version or file hashes, split), the
preprocessing (resolution, channels, centre crop), the number of images and the feature network
(name, weights hash, input protocol). Evaluation recomputes the fingerprint it expects from its
config and refuses a reference that differs, naming the fields, instead of printing an FID that
compares different things.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import numpy as np

from diffjax.data.convert import sha256_file
from diffjax.data.sources import resolve_record_paths
from diffjax.evaluation import metrics

# Fields that may legitimately differ between a reference and the evaluation that uses it.
_NOT_COMPARED = ("num_images", "created")


class ReferenceMismatch(ValueError):
  pass


def data_fingerprint(source_kind: str, *, name: str = "", split: str = "", path: str = "",
                     image_size: int, channels: int, source=None) -> dict[str, Any]:
  """What identifies the real images: origin, split and preprocessing."""
  fp: dict[str, Any] = {"source": source_kind, "split": split, "image_size": image_size,
                        "channels": channels, "crop": "center"}
  if source_kind == "tfds":
    fp["dataset"] = name
    info = getattr(getattr(source, "_source", None), "dataset_info", None)
    if info is not None:
      fp["dataset_version"] = str(info.version)
  elif source_kind == "array_record":
    fp["files_sha256"] = {pathlib.Path(p).name: sha256_file(p)
                          for p in resolve_record_paths(path)}
  elif source_kind == "digits" and source is not None:
    h = hashlib.sha256(np.ascontiguousarray(source.images).tobytes())
    h.update(np.ascontiguousarray(source.labels).tobytes())
    fp["content_sha256"] = h.hexdigest()
  return fp


def build(features: np.ndarray, fingerprint: dict[str, Any], *, max_features: int = 10_000,
          seed: int = 0) -> dict[str, Any]:
  mu, sigma = metrics.statistics(features)
  keep = features
  if len(features) > max_features:
    keep = features[np.random.default_rng(seed).choice(len(features), max_features,
                                                       replace=False)]
  return {"mu": mu, "sigma": sigma, "features": np.asarray(keep, np.float32),
          "fingerprint": {**fingerprint, "num_images": int(len(features))}}


def save(path: str | pathlib.Path, ref: dict[str, Any]) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, mu=ref["mu"], sigma=ref["sigma"], features=ref["features"],
           fingerprint=np.array(json.dumps(ref["fingerprint"], sort_keys=True)))
  tmp.replace(path)
  return path


def load(path: str | pathlib.Path) -> dict[str, Any]:
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no reference statistics at {path}")
  with np.load(path) as f:
    return {"mu": f["mu"], "sigma": f["sigma"], "features": f["features"],
            "fingerprint": json.loads(str(f["fingerprint"]))}


def check(stored: dict[str, Any], expected: dict[str, Any], path) -> None:
  """Raises ReferenceMismatch naming every differing fingerprint field."""
  keys = sorted((set(stored) | set(expected)) - set(_NOT_COMPARED))
  diffs = [f"{k}: reference has {stored.get(k, '<absent>')!r}, evaluation expects "
           f"{expected.get(k, '<absent>')!r}" for k in keys if stored.get(k) != expected.get(k)]
  if diffs:
    raise ReferenceMismatch(
        f"reference statistics {path} were computed for different data or features; "
        f"recompute them (--mode ref_stats) or point eval.ref_path at matching ones:\n  " +
        "\n  ".join(diffs))
