"""De-duplication decisions: which images are near copies, and which copy is kept.

Exact duplicates share a pixel hash (grouped by key). Near duplicates are pairs whose
similarity features (`checks.similarity_feature`, 16x16 antialiased thumbnails) have a cosine
of at least ``min_similarity`` (resized, re-encoded, brightened copies), or, when
``max_hamming`` > 0, whose 64-bit perceptual hashes (`checks.perceptual_hash`) differ in at most
``max_hamming`` bits while their cosine is at least ``hash_min_similarity`` (re-crops, shifts,
colour changes of one photograph, which lower the cosine but keep the low frequencies).

Comparing all pairs is quadratic, so candidates come from locality-sensitive hashing:
``num_bands`` bands of ``band_bits`` random-hyperplane signs of the feature (SimHash). Two
features at angle ``theta`` agree on one hyperplane with probability ``1 - theta / pi``, on a
whole band with that to the ``band_bits``, and share at least one band with probability
`candidate_recall`. The hash rule adds the perceptual hash cut into 4 bands of 16 bits: hashes
within 3 bits always share one (pigeonhole), within 4 bits with probability 0.90. Only images
that share a band value are compared, and every candidate pair is verified on the exact rule.
Each band value is its own group, so the work spreads over as many workers as there are band
values.

The keeper rule is local, so no worker ever needs the whole pair graph: an image is dropped
when it has a verified near copy that ranks before it (by split priority, test before train, so
a test image never leaks into training; then by id, so the decision is deterministic). The
first-ranked image of every group of copies is always kept. Unlike joining chains of pairs into
one group (A~B, B~C, A and C apart), two images that are only linked through a third one that
ranks after both are both kept.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator, NamedTuple

import numpy as np

DEFAULT_MIN_SIMILARITY = 0.985  # calibrated in experiments/prep_planted/neardup_study.md
NUM_BANDS = 12
BAND_BITS = 16
_PLANES_SEED = 32  # fixed: band keys must agree across workers and runs
_BLOCK = 2048  # rows per block when verifying a large bucket (bounds memory)


HASH_BANDS = 4  # of 16 bits each


class HashKey(NamedTuple):
  id: str
  split: str
  feature: bytes
  phash: int = 0


class NearRule(NamedTuple):
  min_similarity: float = DEFAULT_MIN_SIMILARITY
  max_hamming: int = 0  # 0: no hash rule
  hash_min_similarity: float = 0.5


def keeper_order(split_priority: tuple[str, ...]):
  """Sort key: lower sorts first and is kept."""
  rank = {s: i for i, s in enumerate(split_priority)}
  return lambda key: (rank.get(key.split, len(rank)), key.id)


@functools.lru_cache(maxsize=4)
def _planes(count: int, dim: int) -> np.ndarray:
  return np.random.default_rng(_PLANES_SEED).standard_normal((count, dim)).astype(np.float32)


def band_keys(feature: bytes, num_bands: int, band_bits: int) -> list[tuple[int, int]]:
  """``(band index, band value)`` of a feature; none for a blank feature (it matches
  nothing)."""
  x = np.frombuffer(feature, np.int8).astype(np.float32)
  if not x.any():
    return []
  bits = (_planes(num_bands * band_bits, x.size) @ x) > 0
  weights = 1 << np.arange(band_bits, dtype=np.int64)
  values = bits.reshape(num_bands, band_bits).astype(np.int64) @ weights
  return [(i, int(v)) for i, v in enumerate(values)]


def hash_band_keys(phash: int) -> list[tuple[int, int]]:
  """``(band index, value)`` of the perceptual hash in `HASH_BANDS` 16-bit slices (indices
  after the feature's bands: ``-1 - i``)."""
  return [(-1 - i, (phash >> (16 * i)) & 0xFFFF) for i in range(HASH_BANDS)]


def candidate_recall(similarity: float, num_bands: int, band_bits: int) -> float:
  """Probability that two features with this cosine share at least one band."""
  agree = 1.0 - math.acos(max(-1.0, min(1.0, similarity))) / math.pi
  return 1.0 - (1.0 - agree ** band_bits) ** num_bands


def close_pairs(keys: list[HashKey], rule: NearRule
                ) -> Iterator[tuple[HashKey, HashKey, float]]:
  """``(a, b, cosine)`` for every pair of ``keys`` (one bucket) that `rule` calls near copies,
  ``a`` before ``b`` by id."""
  keys = sorted(set(keys))
  if len(keys) < 2:
    return
  f = np.stack([np.frombuffer(k.feature, np.int8) for k in keys]).astype(np.float32)
  f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-9)
  hashes = np.array([k.phash for k in keys], dtype=np.uint64)
  for lo in range(0, len(keys) - 1, _BLOCK):
    sims = f[lo:lo + _BLOCK] @ f.T
    near = sims >= rule.min_similarity
    if rule.max_hamming:
      bits = np.bitwise_count(hashes[lo:lo + _BLOCK, None] ^ hashes[None, :])
      near |= (bits <= rule.max_hamming) & (sims >= rule.hash_min_similarity)
    rows, cols = np.nonzero(near)
    for i, j in zip(rows + lo, cols):
      if j > i:
        yield keys[i], keys[j], float(sims[i - lo, j])


def drop_candidate(pair: tuple[HashKey, HashKey, float], order):
  """``(dropped id, (keeper's rank, detail))`` for one verified pair: the later-ranked image is
  the one that may go. Combined per id with `min`, the highest-ranked copy names the keeper."""
  a, b, sim = pair
  keep, drop = (a, b) if order(a) <= order(b) else (b, a)
  cross = " (cross-split)" if keep.split != drop.split else ""
  bits = (a.phash ^ b.phash).bit_count()
  return drop.id, (order(keep), f"of {keep.id}{cross}, similarity {sim:.3f}, hash {bits} bits")


def resolve(members: list, order) -> tuple[object, list]:
  """(kept member, dropped members) of one exact-duplicate group."""
  members = sorted(set(members), key=order)
  return members[0], members[1:]
