"""Pre-encoded latent datasets: ArrayRecord shards of autoencoder posteriors plus a manifest.

``--mode encode`` (`diffjax.jobs.encode`) writes, per split, shards named
``<split>-<i>-of-<n>.array_record`` holding one record per image (a msgpack map: ``moments``,
the posterior's mean and log-variance ``[F, h, w, 2c]`` as raw float16/float32 bytes, with F = 2
when flipped copies were encoded (the second is the image flipped left-right), ``label`` and
``index`` in the source), each shard with a ``.done.json`` beside it (its SHA-256, count and
per-channel sums), and when every shard is done ``manifest.json``:

  format, version; autoencoder: fingerprint (architecture + parameter SHA-256), variant,
  architecture, normalisation (scaling / shift factors, per-channel mean / std), weights file;
  latent_shape [h, w, c], image_size, channels, dtype, flips; per split: count, shards (file,
  count, SHA-256), the source dataset (how to open it, its fingerprint) and the per-channel
  mean and standard deviation of the latents (of the posterior mixture: E[mu] and
  sqrt(E[mu^2] + E[sigma^2] - E[mu]^2) over images, flips and positions).

`LatentSource` reads a split for Grain (``data.source=latents``, ``data.path`` the folder);
`preprocess` draws each example's latent from its posterior with the pipeline's per-example
generator (so resumed runs see the same draws) and picks the flipped copy with
``data.random_flip``. Normalisation (scaling factors or channel statistics) is the model's.
`dataset_info` checks a config's data section against the manifest before any compute.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

import msgpack
import numpy as np

FORMAT, VERSION = "diffjax-latents", 1
MANIFEST = "manifest.json"
STORAGE_DTYPES = ("float16", "float32")


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


def encode_record(moments: np.ndarray, label: int, index: int) -> bytes:
  """One record: ``moments`` [F, h, w, 2c] (float16 or float32), label, source index."""
  return msgpack.packb({"moments": np.ascontiguousarray(moments).tobytes(),
                        "label": int(label), "index": int(index)}, use_bin_type=True)


def decode_record(data: bytes, shape, dtype: str) -> dict[str, Any]:
  record = msgpack.unpackb(data, raw=False)
  record["moments"] = np.frombuffer(record["moments"], dtype).reshape(shape)
  return record


class ManifestError(ValueError):
  """A folder that is not a complete latent dataset, or one that does not fit the config."""


def read_manifest(path) -> dict[str, Any]:
  folder = pathlib.Path(path)
  file = folder / MANIFEST
  if not file.is_file():
    partial = sorted(folder.glob("*.done.json")) if folder.is_dir() else []
    hint = (f" ({len(partial)} shard(s) done: the encoding is incomplete; launch --mode encode "
            f"again to finish it)" if partial else " (write one with --mode encode)")
    raise ManifestError(f"{folder} is not a latent dataset: no {MANIFEST}{hint}")
  try:
    manifest = json.loads(file.read_text())
  except json.JSONDecodeError as e:
    raise ManifestError(f"{file} is not valid JSON ({e})") from None
  if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
    raise ManifestError(f"{file}: format {manifest.get('format')!r} version "
                        f"{manifest.get('version')!r}, expected {FORMAT!r} version {VERSION}")
  return manifest


@dataclasses.dataclass(frozen=True)
class LatentDataInfo:
  """What a config needs to know of a latent dataset's split (hashable)."""

  path: str
  split: str
  latent_shape: tuple[int, int, int]
  pixel_shape: tuple[int, int, int]
  autoencoder: str  # fingerprint
  autoencoder_name: str
  channel_mean: tuple[float, ...]
  channel_std: tuple[float, ...]
  flips: bool
  count: int
  autoencoder_weights: str = ""  # the weight file the manifest names


def dataset_info(path: str, split: str, *, image_size: int, channels: int,
                 random_flip: bool) -> LatentDataInfo:
  """The manifest's record of ``split``, checked against the data section.

  Raises:
    ManifestError: no (complete) manifest, no such split, pixel sizes other than the data
      section's, or ``random_flip`` without encoded flipped copies.
  """
  m = read_manifest(path)
  splits = m["splits"]
  if split not in splits:
    raise ManifestError(f"{path} holds latents of split(s) {sorted(splits)}, not {split!r}")
  s = splits[split]
  problems = []
  if (m["image_size"], m["channels"]) != (image_size, channels):
    problems.append(f"its latents are of {m['image_size']}x{m['image_size']}x{m['channels']} "
                    f"images; data.image_size / data.channels say {image_size}x{image_size}x"
                    f"{channels}")
  if random_flip and not m["flips"]:
    problems.append("data.random_flip=True, but no flipped copies were encoded (latents "
                    "cannot be flipped: encode with encode.flip=True)")
  if problems:
    raise ManifestError(f"{path}: " + "; ".join(problems))
  ae = m["autoencoder"]
  return LatentDataInfo(str(path), split, tuple(m["latent_shape"]),
                        (m["image_size"], m["image_size"], m["channels"]), ae["fingerprint"],
                        ae.get("variant", ""), tuple(s["channel_mean"]), tuple(s["channel_std"]),
                        bool(m["flips"]), int(s["count"]), ae.get("weights", ""))


class LatentSource:
  """A split of a latent dataset: ``source[i] -> {"image": moments float32 [F, h, w, 2c],
  "label": int, "latent": 1}`` (`preprocess` turns it into a latent).

  ``open_pixels(kind, **fields)`` (`diffjax.data.sources.make_source`) opens the images the
  split was encoded from (`pixel_source`): evaluation compares samples with those.
  """

  def __init__(self, path: str, split: str, open_pixels: Callable | None = None):
    import grain
    self.manifest = read_manifest(path)
    self.folder, self.split, self._open_pixels = pathlib.Path(path), split, open_pixels
    splits = self.manifest["splits"]
    if split not in splits:
      raise ManifestError(f"{path} holds latents of split(s) {sorted(splits)}, not {split!r}")
    self.info = splits[split]
    h, w, c = self.manifest["latent_shape"]
    self.shape = (2 if self.manifest["flips"] else 1, h, w, 2 * c)
    self.dtype = self.manifest["dtype"]
    paths = [str(self.folder / s["file"]) for s in self.info["shards"]]
    missing = [p for p in paths if not pathlib.Path(p).is_file()]
    if missing:
      raise ManifestError(f"{path}: shard(s) listed in its manifest are missing: {missing[:3]}")
    self._source = grain.sources.ArrayRecordDataSource(paths)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = decode_record(self._source[index], self.shape, self.dtype)
    return {"image": record["moments"].astype(np.float32), "label": int(record["label"]),
            "latent": 1}

  def pixel_source(self):
    """The image source this split was encoded from (as recorded in the manifest)."""
    if self._open_pixels is None:
      raise ManifestError("this LatentSource was opened without a way to open images")
    fields = dict(self.info["source"]["open"])
    return self._open_pixels(fields.pop("kind"), **fields)


def preprocess(example: dict[str, Any], rng: np.random.Generator, *,
               random_flip: bool) -> dict[str, np.ndarray]:
  """A latent example -> ``{"image": float32 [h, w, c] raw latent, "label", "bad_records"}``:
  the flipped copy with probability 1/2 when ``random_flip`` (and one was encoded), then a
  draw from the posterior ``mean + exp(logvar / 2) * eps``."""
  moments = example["image"]
  copy = 1 if random_flip and moments.shape[0] > 1 and rng.random() < 0.5 else 0
  mean, logvar = np.split(moments[copy], 2, axis=-1)
  z = mean + np.exp(0.5 * logvar) * rng.standard_normal(mean.shape, dtype=np.float32)
  return {"image": z.astype(np.float32), "label": np.int32(example.get("label", -1)),
          "bad_records": np.int32(example.get("bad_records", 0))}


class ChannelSums:
  """Running per-channel sums of posterior means and variances (float64) for the manifest's
  statistics; mergeable across shards."""

  def __init__(self, channels: int, n: float = 0.0, s1=None, s2=None, sv=None):
    self.n = n
    self.s1 = np.zeros(channels) if s1 is None else np.asarray(s1, np.float64)
    self.s2 = np.zeros(channels) if s2 is None else np.asarray(s2, np.float64)
    self.sv = np.zeros(channels) if sv is None else np.asarray(sv, np.float64)

  def add(self, mean: np.ndarray, logvar: np.ndarray) -> None:
    """``mean``, ``logvar`` [..., c]."""
    m = mean.reshape(-1, mean.shape[-1]).astype(np.float64)
    v = np.exp(logvar.reshape(-1, logvar.shape[-1]).astype(np.float64))
    self.n += m.shape[0]
    self.s1 += m.sum(0)
    self.s2 += np.square(m).sum(0)
    self.sv += v.sum(0)

  def merge(self, other: "ChannelSums") -> "ChannelSums":
    return ChannelSums(len(self.s1), self.n + other.n, self.s1 + other.s1, self.s2 + other.s2,
                       self.sv + other.sv)

  def to_json(self) -> dict[str, Any]:
    return {"n": self.n, "s1": self.s1.tolist(), "s2": self.s2.tolist(), "sv": self.sv.tolist()}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "ChannelSums":
    return cls(len(d["s1"]), d["n"], d["s1"], d["s2"], d["sv"])

  def mean_std(self) -> tuple[list[float], list[float]]:
    mean = self.s1 / max(self.n, 1)
    var = self.s2 / max(self.n, 1) + self.sv / max(self.n, 1) - np.square(mean)
    return mean.tolist(), np.sqrt(np.maximum(var, 0.0)).tolist()
