"""Faults a run can meet, each with an exit code of its own, and the preemption watcher.

Exit codes of ``launch.py``: 0 done, 2 bad config or input, 3 numerical abort, 4 data error,
5 checkpoint or disk error, 42 preempted (a checkpoint of the current step was saved; launch
again to resume).
"""

from __future__ import annotations

import signal
import threading

import jax

EXIT_CONFIG = 2
EXIT_NUMERICAL = 3
EXIT_DATA = 4
EXIT_CHECKPOINT = 5
EXIT_PREEMPTED = 42


class RunFault(Exception):
  """A fault that ends a run with a clear message and a distinct exit code."""

  exit_code = 1


class NumericalAbort(RunFault):
  exit_code = EXIT_NUMERICAL


class DataError(RunFault):
  exit_code = EXIT_DATA


class CheckpointError(RunFault):
  exit_code = EXIT_CHECKPOINT


class Preempted(RunFault):
  exit_code = EXIT_PREEMPTED


class PreemptionWatcher:
  """Tells the training loop when to save and stop.

  Single process: SIGTERM (and SIGINT) set a flag; further signals while the run saves are
  ignored, so a second SIGTERM cannot interrupt the save. Several processes: JAX's preemption
  sync point (the coordination service receives the SIGTERM / preemption notice) makes every
  process stop at the same step, so all save the same checkpoint.
  """

  def __init__(self, inject_steps: tuple[int, ...] = ()):
    self._inject = frozenset(inject_steps)  # fault injection (tests): preempted at these steps
    self._flag = threading.Event()
    self.signal_name = ""
    self._multi = jax.process_count() > 1
    self._previous = {}
    if not self._multi and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    if not self._flag.is_set():
      self.signal_name = signal.Signals(signum).name
    self._flag.set()

  def should_stop(self, step: int) -> bool:
    if step in self._inject:
      self.signal_name = "injected preemption"
      return True
    if self._multi:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = "preemption notice"
        return True
      return False
    return self._flag.is_set()

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
