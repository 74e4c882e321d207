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


# Reference statistics papers publish, by format: what the file holds and the Inception input
# protocol (diffjax.evaluation.inception.PROTOCOLS) its statistics were computed with.
PUBLISHED = {
    # guided-diffusion's evaluator (ADM; DiT, whose FID 2.27 uses VIRTUAL_imagenet256_labeled):
    # "arr_0" uint8 images [N, H, W, 3] (a 10k sample for precision/recall), "mu" / "sigma" of
    # the Inception pool features of the whole training set, "mu_s" / "sigma_s" of the spatial
    # features (sFID, not computed by diffjax). Its features come from the TF Inception graph
    # fed 0..255 floats: resize_bilinear, then (x - 128) / 128.
    "adm": {"protocol": "tf", "arrays": ("mu", "sigma"), "images": "arr_0",
            "source": "guided-diffusion evaluations/ reference batch (VIRTUAL_*.npz)"},
    # EDM's fid.py ref (e.g. cifar10-32x32.npz): "mu", "sigma" from StyleGAN3's TorchScript
    # Inception, which takes uint8 NCHW and computes the TF graph's input protocol.
    "edm": {"protocol": "tf", "arrays": ("mu", "sigma"), "images": None,
            "source": "EDM fid.py ref (e.g. cifar10-32x32.npz)"},
    # TTUR's precomputed statistics (fid_stats_cifar10_train.npz; Ho et al.'s CIFAR-10 FID):
    # "mu", "sigma" from the TF graph.
    "ttur": {"protocol": "tf", "arrays": ("mu", "sigma"), "images": None,
             "source": "TTUR fid_stats_*.npz"},
    # pytorch-fid --save-stats: "mu", "sigma" with its own resize (half-pixel bilinear) and
    # x / 127.5 - 1.
    "pytorch_fid": {"protocol": "pytorch_fid", "arrays": ("mu", "sigma"), "images": None,
                    "source": "pytorch-fid --save-stats"},
}


def load_published(path: str | pathlib.Path, fmt: str) -> dict[str, Any]:
  """A published reference file as a reference: ``mu`` and ``sigma`` as stored (float64),
  ``images`` (uint8 [N, H, W, 3], ADM's batches) or None, ``features`` None (the evaluator
  computes them from ``images``), and a fingerprint naming the format, the file's SHA-256,
  the Inception protocol the statistics were computed with and, where known, the image size.

  Raises:
    FileNotFoundError: no file. ValueError: an unknown format or a file without its arrays.
  """
  if fmt not in PUBLISHED:
    raise ValueError(f"unknown reference format {fmt!r}; allowed: diffjax, "
                     f"{', '.join(PUBLISHED)}")
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no reference statistics at {path}")
  info = PUBLISHED[fmt]
  with np.load(path) as f:
    missing = [k for k in info["arrays"] if k not in f.files]
    if missing:
      raise ValueError(f"{path} is not a {fmt} reference ({info['source']}): no "
                       f"{', '.join(missing)}; it holds {', '.join(f.files)}")
    mu, sigma = (np.asarray(f[k], np.float64) for k in info["arrays"])
    images = np.asarray(f[info["images"]]) if info["images"] and info["images"] in f.files \
        else None
  if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
    raise ValueError(f"{path}: mu {mu.shape} / sigma {sigma.shape} are not a mean and its "
                     f"covariance")
  fingerprint = {"published": fmt, "source": info["source"], "file_sha256": sha256_file(path),
                 "feature_net": "inception", "protocol": info["protocol"],
                 "feature_dim": int(len(mu))}
  if images is not None:
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"{path}: {info['images']} is not uint8 images [N, H, W, C]")
    fingerprint.update(image_size=int(images.shape[1]), num_images=int(len(images)))
  return {"mu": mu, "sigma": sigma, "features": None, "images": images,
          "fingerprint": fingerprint}


def check_published(stored: dict[str, Any], net: dict[str, Any], image_size: int, path) -> None:
  """Raises ReferenceMismatch unless a published reference was computed with the evaluation's
  feature network and Inception input protocol (and, where the file shows it, at its image
  size): an FID against statistics of another protocol is another number."""
  problems = []
  if net.get("feature_net") != stored["feature_net"]:
    problems.append(f"feature_net: reference has {stored['feature_net']!r}, evaluation uses "
                    f"{net.get('feature_net')!r}")
  if net.get("protocol") != stored["protocol"]:
    problems.append(f"protocol: reference statistics were computed with the "
                    f"{stored['protocol']!r} Inception input protocol, the evaluation uses "
                    f"{net.get('protocol')!r} (eval.protocol)")
  if "image_size" in stored and stored["image_size"] != image_size:
    problems.append(f"image_size: reference images are {stored['image_size']}px, the samples "
                    f"{image_size}px")
  if problems:
    raise ReferenceMismatch(f"reference {path} ({stored['published']}: {stored['source']}) does "
                            f"not match this evaluation:\n  " + "\n  ".join(problems))


def load_any(path, fmt: str = "diffjax") -> dict[str, Any]:
  """`load` (diffjax's own files) or `load_published`."""
  if fmt == "diffjax":
    ref = load(path)
    return {**ref, "images": None}
  return load_published(path, fmt)


def fid_between(path_a, fmt_a: str, path_b, fmt_b: str) -> float:
  """FID between the stored statistics of two reference files (as pytorch-fid's ``fid_score``
  does for two ``.npz`` files). Raises ReferenceMismatch when they were computed with different
  feature networks or Inception protocols."""
  a, b = load_any(path_a, fmt_a), load_any(path_b, fmt_b)
  fa, fb = a["fingerprint"], b["fingerprint"]
  for key in ("feature_net", "protocol"):
    if fa.get(key) != fb.get(key):
      raise ReferenceMismatch(f"{path_a} and {path_b} differ in {key}: {fa.get(key)!r} vs "
                              f"{fb.get(key)!r}; their FID would compare different features")
  return metrics.frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])


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


def main(argv: list[str]) -> int:
  """``python -m diffjax.evaluation.reference A.npz[:format] B.npz[:format]``: the FID between
  two files' stored statistics (format: diffjax, the default, or a key of `PUBLISHED`)."""
  if len(argv) != 2:
    print(main.__doc__)
    return 2
  (pa, _, fa), (pb, _, fb) = (arg.partition(":") for arg in argv)
  print(f"FID {fid_between(pa, fa or 'diffjax', pb, fb or 'diffjax'):.6f}")
  return 0


if __name__ == "__main__":
  import sys
  sys.exit(main(sys.argv[1:]))
