"""Random-access sources: ``len(source)`` and ``source[i] -> {"image": uint8 [H, W, C],
"label": int}``. Grain reads them by index, so shuffling, sharding and resuming are exact.

* `ArraySource`: in-memory arrays (scikit-learn's 8x8 digits ship inside the package).
* `TFDSSource`: any TFDS image dataset through ``tfds.data_source`` (ArrayRecord, no TF).
* `ArrayRecordSource`: shards written by `diffjax.data.convert` or the preparation pipeline.
* `diffjax.data.latents.LatentSource`: autoencoder latents written by ``--mode encode``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import Any

import numpy as np

from diffjax.data.records import decode_record
from diffjax.faults import DataError

SOURCE_KINDS = ("digits", "tfds", "array_record", "latents")


class ArraySource:
  """Images uint8 [N, H, W, C] and labels int [N] held in memory."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    self.images = np.asarray(images, np.uint8)
    self.labels = np.asarray(labels, np.int64)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self.images[index], "label": int(self.labels[index])}


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """The digits' pixel values [1797, 64] (0..16) and labels, read from the CSV file inside the
  scikit-learn package without importing scikit-learn (seconds at every start); through
  ``load_digits`` where the file is not where this expects it."""
  spec = importlib.util.find_spec("sklearn")
  path = os.path.join((spec.submodule_search_locations or [""])[0] if spec else "",
                      "datasets", "data", "digits.csv.gz")
  if not os.path.isfile(path):
    from sklearn.datasets import load_digits
    digits = load_digits()
    return digits.data, digits.target
  table = np.loadtxt(path, delimiter=",")
  return table[:, :-1], table[:, -1].astype(np.int64)


def digits_source(split: str = "train") -> ArraySource:
  """scikit-learn's 1,797 8x8 digits (values 0..16 scaled to 0..255).

  Splits: ``"train"`` (every index not divisible by 10: 1,617 images), ``"test"`` (the other
  180), ``"all"``.
  """
  pixels, labels = _digits_arrays()
  images = np.round(pixels.reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[..., None]
  index = np.arange(len(images))
  masks = {"train": index % 10 != 0, "test": index % 10 == 0, "all": np.ones_like(index, bool)}
  if split not in masks:
    raise ValueError(f"digits has splits {sorted(masks)}, got {split!r}")
  return ArraySource(images[masks[split]], labels[masks[split]])


class TFDSSource:
  """A TFDS dataset read through ``tfds.data_source`` (needs the prepared ArrayRecord files)."""

  def __init__(self, name: str, split: str, data_dir: str = "", image_key: str = "image",
               label_key: str = "label"):
    try:
      import tensorflow_datasets as tfds
    except ImportError as e:
      raise ValueError("data.source=tfds but tensorflow-datasets is not installed; "
                       "pip install -r requirements.txt") from e
    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir or None)
    except Exception as e:  # TFDS raises many types; the message must name the dataset
      raise ValueError(f"cannot open TFDS dataset {name!r} split {split!r} (data_dir="
                       f"{data_dir or 'TFDS default'}): {e}. Prepare it once on a machine with "
                       f"internet (tfds build {name} --file_format=array_record) or point "
                       f"data.data_dir at a prepared copy.") from e
    self.name, self.image_key, self.label_key = name, image_key, label_key

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    ex = self._source[index]
    label = ex.get(self.label_key, -1) if self.label_key else -1
    return {"image": np.asarray(ex[self.image_key]), "label": int(label)}


def resolve_record_paths(path: str) -> list[str]:
  """A folder (all ``*.array_record`` inside), a glob, or one file; sorted."""
  if os.path.isdir(path):
    paths = sorted(glob.glob(os.path.join(path, "*.array_record")))
  else:
    paths = sorted(glob.glob(path))
  if not paths:
    raise ValueError(f"no ArrayRecord files at data.path={path!r} (give a folder holding "
                     f"*.array_record files, a glob, or a file)")
  return paths


class ArrayRecordSource:
  """Records in `diffjax.data.records` format from one or more ArrayRecord shards."""

  def __init__(self, path: str):
    import grain
    self.paths = resolve_record_paths(path)
    self._source = grain.sources.ArrayRecordDataSource(self.paths)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = decode_record(self._source[index])
    return {"image": record["image"], "label": int(record.get("label", -1))}


class GuardedSource:
  """Applies the bad-record policy to any source.

  ``"skip"``: an unreadable or empty record is replaced by the next readable one (so batches
  keep their shape and the order stays deterministic) and ``bad_records`` in the returned
  example counts the records skipped for it. ``"stop"``: raise `DataError` naming the record.
  """

  def __init__(self, source, policy: str = "skip", name: str = "data source"):
    if policy not in ("skip", "stop"):
      raise ValueError(f"bad-record policy must be skip or stop, got {policy!r}")
    self.source, self.policy, self.name = source, policy, name

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    n = len(self.source)
    errors = []
    for offset in range(min(n, 100)):
      j = (index + offset) % n
      try:
        example = self.source[j]
        if np.asarray(example["image"]).size == 0:
          raise ValueError("empty image")
        return {**example, "bad_records": offset}
      except Exception as e:  # decoding raises many types; policy decides what happens
        if self.policy == "stop":
          raise DataError(f"record {j} of {self.name} is unreadable: {e}") from e
        errors.append(f"record {j}: {e}")
    raise DataError(f"{len(errors)} consecutive unreadable records in {self.name} from index "
                    f"{index}: {errors[:3]}")


def make_source(kind: str, *, name: str = "", split: str = "train", data_dir: str = "",
                path: str = "", image_key: str = "image", label_key: str = "label"):
  """Builds a source by kind (one of `SOURCE_KINDS`)."""
  if kind == "digits":
    return digits_source(split)
  if kind == "tfds":
    return TFDSSource(name, split, data_dir, image_key, label_key)
  if kind == "array_record":
    return ArrayRecordSource(path)
  if kind == "latents":
    from diffjax.data.latents import LatentSource
    return LatentSource(path, split, open_pixels=make_source)
  raise ValueError(f"unknown data source {kind!r}; allowed: {', '.join(SOURCE_KINDS)}")
