"""Device prefetch: the next batches are assembled and sent to the devices while the current
step runs, so the devices do not wait for the host at log and checkpoint steps (where the loop
blocks on a device value).

The feeder stands in for the data iterator in checkpoints: its state is the wrapped iterator's
state *before* the batches it holds, so a resumed run starts at the first batch no step has
consumed, exactly as without prefetching.
"""

from __future__ import annotations

import collections
import json
from typing import Any, Callable


class DeviceFeeder:
  """Holds up to ``depth`` batches already transferred by ``put`` (host batch -> device batch).

  Use: ``batch = feeder.next()``, dispatch the step, then ``feeder.fill()`` so the host prepares
  the following batches while the devices compute.
  """

  def __init__(self, iterator, put: Callable[[Any], Any], depth: int = 1):
    if depth < 0:
      raise ValueError(f"prefetch depth must be >= 0, got {depth}")
    self._it, self._put, self._depth = iterator, put, depth
    self._held: collections.deque = collections.deque()  # (state before, device batch)

  def _fetch(self) -> None:
    before = self._it.get_state()
    self._held.append((before, self._put(next(self._it))))

  def next(self):
    if not self._held:
      self._fetch()
    return self._held.popleft()[1]

  def fill(self) -> None:
    while len(self._held) < self._depth:
      self._fetch()

  # The iterator protocol orbax/grain's checkpoint handler uses for non-Grain iterators.
  def get_state(self) -> bytes:
    state = self._held[0][0] if self._held else self._it.get_state()
    return json.dumps(state, indent=4).encode()

  def set_state(self, state: bytes) -> None:
    self._held.clear()
    self._it.set_state(json.loads(state.decode() if isinstance(state, bytes) else state))

  def start_prefetch(self) -> None:
    """Starts the wrapped iterator's background work (Grain's worker processes), e.g. so the
    workers start up while the train step compiles."""
    start = getattr(self._it, "start_prefetch", None)
    if start is not None:
      start()

  def close(self) -> None:
    """Stops the wrapped iterator's worker processes (if it has any)."""
    self._held.clear()
    close = getattr(self._it, "close", None)
    if close is not None:
      close()
