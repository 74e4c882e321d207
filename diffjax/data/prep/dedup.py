"""De-duplication decisions: which member of each duplicate group is kept.

Exact duplicates share a pixel hash (grouped by key). Near duplicates are pairs of perceptual
hashes within a Hamming distance ``k``; all-pairs comparison is quadratic, so hashes are cut
into ``k + 1`` bands: two hashes that differ in at most ``k`` bits agree exactly on at least one
band (pigeonhole), so only hashes sharing a band value are compared. Pairs are joined into
groups (union-find: chains A~B~C form one group) and one member per group is kept.

The keeper is the member of the highest-priority split (by default test before train, so a test
image never leaks into training), then the smallest id, which makes the decision deterministic.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

import numpy as np

from diffjax.data.prep.checks import hamming


class HashKey(NamedTuple):
  id: str
  split: str
  phash: int


def keeper_order(split_priority: tuple[str, ...]):
  """Sort key: lower sorts first and is kept."""
  rank = {s: i for i, s in enumerate(split_priority)}
  return lambda key: (rank.get(key.split, len(rank)), key.id)


def bands(phash: int, num_bands: int) -> list[tuple[int, int]]:
  """``(band index, band value)`` pairs covering the 64 bits in ``num_bands`` slices."""
  edges = np.linspace(0, 64, num_bands + 1).astype(int)
  return [(i, (phash >> int(lo)) & ((1 << int(hi - lo)) - 1))
          for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]


def close_pairs(keys: list[HashKey], max_distance: int) -> Iterator[tuple[HashKey, HashKey]]:
  """Pairs (ordered by id) within ``max_distance`` bits among keys that share a band."""
  keys = sorted(set(keys))
  if len(keys) < 2:
    return
  hashes = np.array([k.phash for k in keys], np.uint64)
  for i in range(len(keys) - 1):
    x = np.bitwise_xor(hashes[i + 1:], hashes[i])
    dist = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(1)
    for j in np.nonzero(dist <= max_distance)[0]:
      yield keys[i], keys[i + 1 + int(j)]


def groups(pairs: Iterable[tuple[HashKey, HashKey]]) -> list[list[HashKey]]:
  """Connected components of the pair graph (union-find with path halving)."""
  parent: dict[HashKey, HashKey] = {}

  def find(x):
    parent.setdefault(x, x)
    while parent[x] != x:
      parent[x] = parent[parent[x]]
      x = parent[x]
    return x

  for a, b in pairs:
    ra, rb = find(a), find(b)
    if ra != rb:
      parent[max(ra, rb)] = min(ra, rb)
  out: dict[HashKey, list[HashKey]] = {}
  for x in list(parent):
    out.setdefault(find(x), []).append(x)
  return list(out.values())


def resolve(members: list, order) -> tuple[object, list]:
  """(kept member, dropped members) of one duplicate group."""
  members = sorted(set(members), key=order)
  return members[0], members[1:]


def distance(a: HashKey, b: HashKey) -> int:
  return hamming(a.phash, b.phash)
