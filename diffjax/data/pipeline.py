"""Grain input pipelines: source -> per-process shard -> seeded shuffle (reshuffled every epoch)
-> decode/crop/resize/flip/normalise -> batches, with a checkpointable iterator.

The iterator's position is part of every checkpoint (`iterator.get_state()`), and all
randomness (shuffle order, flips) is a function of the seed and the element index, so a resumed
run sees exactly the batches an uninterrupted one would, with any number of worker processes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image

from diffjax.data import augment as augment_lib
from diffjax.data import latents


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
  image_size: int
  channels: int
  random_flip: bool
  batch_size: int  # global for make_dataset, per call for iterate_once
  num_workers: int = 0
  seed: int = 0
  augment: Any = None  # diffjax.data.augment.AugmentOptions (EDM's augmentation), or None


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == channels:
    return image
  if channels == 3 and image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  if channels == 1 and image.shape[-1] in (3, 4):  # ITU-R 601 luma
    luma = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.round(luma).astype(np.uint8)[..., None]
  raise ValueError(f"cannot convert an image with {image.shape[-1]} channels to {channels}")


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
  """Centre-crops to a square and resizes to ``size`` (PIL bicubic; box filter when shrinking
  by a large factor, which avoids aliasing)."""
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  image = image[top:top + side, left:left + side]
  if side == size:
    return image
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  method = Image.Resampling.BOX if side >= 2 * size else Image.Resampling.BICUBIC
  out = np.asarray(pil.resize((size, size), method))
  return out[..., None] if squeeze else out


def preprocess(example: dict[str, Any], rng: np.random.Generator, *, image_size: int,
               channels: int, random_flip: bool, augment=None) -> dict[str, np.ndarray]:
  """uint8 image -> float32 [H, W, C] in [-1, 1]; label -> int32. Examples of a latent
  dataset become latents (`diffjax.data.latents.preprocess`). With ``augment`` (enabled
  `diffjax.data.augment.AugmentOptions`) the image is augmented after normalisation and
  ``augment_labels`` float32 [9] is added; without it nothing else is drawn from ``rng``."""
  if "latent" in example:
    return latents.preprocess(example, rng, random_flip=random_flip)
  image = center_crop_resize(_to_channels(np.asarray(example["image"]), channels), image_size)
  if random_flip and rng.random() < 0.5:
    image = image[:, ::-1]
  out = {"image": image.astype(np.float32) / 127.5 - 1.0,
         "label": np.int32(example.get("label", -1)),
         "bad_records": np.int32(example.get("bad_records", 0))}
  if augment is not None and augment.enabled:
    out["image"], out["augment_labels"] = augment_lib.augment(out["image"], rng, augment)
  return out


def _ensure_absl_flags_parsed() -> None:
  # Grain's worker processes read absl flags; outside an absl app nothing has parsed them.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _exit_with_parent(worker_index: int, worker_count: int, *, parent: int,
                      poll_s: float = 1.0) -> None:
  """Runs in each Grain worker process at start: the worker exits once ``parent``, the
  process that started it, is gone (already at start, when it died while the worker was still
  starting). A training process killed outright (SIGKILL: the OOM killer, a scheduler's last
  resort) cannot stop its workers, which otherwise live on, holding their memory, until
  someone finds them."""
  del worker_index, worker_count

  def watch():
    while os.getppid() == parent:
      time.sleep(poll_s)
    os._exit(0)

  threading.Thread(target=watch, name="diffjax-exit-with-parent", daemon=True).start()


def _worker_prefetch(ds: grain.IterDataset, num_workers: int) -> grain.IterDataset:
  _ensure_absl_flags_parsed()
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                        worker_init_fn=functools.partial(_exit_with_parent, parent=os.getpid()))


class _ProcessSlice(grain.MapDataset):
  """This process's rows of every global batch of a (globally ordered) parent dataset.

  Element ``k * local + j`` is the parent's element ``k * global + rows[j]``: every process
  walks the same global order and reads only the rows its devices hold, so the global batch,
  and hence training, does not depend on how many processes share it or how the mesh places
  them.
  """

  def __init__(self, parent: grain.MapDataset, global_batch: int, rows: Sequence[int]):
    super().__init__(parent)
    self._global = global_batch
    self._rows = tuple(int(r) for r in rows)

  def __len__(self) -> int:
    return len(self._parent) // self._global * len(self._rows)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, len(self._rows))
    return self._parent[batch * self._global + self._rows[row]]

  def __str__(self) -> str:
    return f"ProcessSlice({len(self._rows)} rows of {self._global})"


def make_dataset(source, options: PipelineOptions, *, process_index: int = 0,
                 process_count: int = 1, rows: Sequence[int] | None = None,
                 start_batch: int = 0) -> grain.IterDataset:
  """The batched, infinitely repeating dataset for one process.

  Args:
    source: a random-access source (see `diffjax.data.sources`).
    options: image and batch options; ``batch_size`` is the global batch.
    process_index, process_count: which rows of each global batch this process reads (the
      ``process_index``-th of ``process_count`` equal runs), unless ``rows`` names them.
    rows: the rows of each global batch this process reads, ascending: those its devices
      hold (`diffjax.parallel.process_batch_rows`), which need not be one run.
    start_batch: index of the first global batch (to resume by position when no iterator
      state fits, e.g. after the number of processes changed).

  Returns:
    A Grain ``IterDataset`` of ``{"image": float32 [b, H, W, C], "label": int32 [b],
    "bad_records": int32 [b]}`` with ``b = batch_size / process_count`` (or ``len(rows)``);
    ``bad_records`` counts unreadable records skipped (see `GuardedSource`).
  """
  if options.batch_size % process_count:
    raise ValueError(f"global batch {options.batch_size} is not divisible by the "
                     f"{process_count} processes")
  if rows is None:
    local = options.batch_size // process_count
    rows = range(process_index * local, (process_index + 1) * local)
  rows = list(rows)
  if not rows or rows != sorted(set(rows)) or not 0 <= rows[0] <= rows[-1] < options.batch_size:
    raise ValueError(f"rows must be distinct, ascending rows of the global batch of "
                     f"{options.batch_size}, got {rows[:8]}{'...' if len(rows) > 8 else ''}")
  ds = grain.MapDataset.source(source).seed(options.seed).shuffle().repeat()
  ds = ds.random_map(functools.partial(preprocess, image_size=options.image_size,
                                       channels=options.channels,
                                       random_flip=options.random_flip,
                                       augment=options.augment))
  if len(rows) < options.batch_size:
    ds = _ProcessSlice(ds, options.batch_size, rows)
  local = len(rows)
  if start_batch:
    ds = ds[start_batch * local:]
  ds = ds.batch(local, drop_remainder=True).to_iter_dataset()
  if options.num_workers > 0:
    ds = _worker_prefetch(ds, options.num_workers)
  return ds


def iterate_once(source, options: PipelineOptions, *, process_index: int = 0,
                 process_count: int = 1):
  """One ordered pass over this process's shard in batches (the last batch may be short);
  for evaluation and statistics, not training: a latent dataset's images are read instead of
  its latents."""
  if hasattr(source, "pixel_source"):
    source = source.pixel_source()
  ds = grain.MapDataset.source(source)
  if process_count > 1:
    ds = ds[process_index::process_count]
  ds = ds.seed(options.seed).random_map(functools.partial(
      preprocess, image_size=options.image_size, channels=options.channels, random_flip=False))
  ds = ds.batch(options.batch_size, drop_remainder=False).to_iter_dataset()
  if options.num_workers > 0:
    ds = _worker_prefetch(ds, options.num_workers)
  return ds
