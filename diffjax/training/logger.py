"""Metrics output: ``metrics.jsonl``, TensorBoard event files (tensorboardX, no TensorFlow),
sample grids as PNG files and TensorBoard images, and a progress line with throughput and
ETA. Only process 0 writes."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import images
from diffjax.training.step import is_averaged


class LogWindow:
  """A step's metrics summed on device until the next log step (no host sync in between), with
  the count of unreadable records. Its `state` goes into every checkpoint, so a run resumed
  after a preemption logs exactly the rows and values an uninterrupted run logs."""

  def __init__(self, state: dict | None = None):
    state = state or {}
    self.sums = ({k: jnp.asarray(v, jnp.float32) for k, v in state["sums"].items()}
                 if state.get("sums") else None)
    self.count = int(state.get("count", 0))
    self.bad_records = int(state.get("bad_records", 0))
    self._last = None

  def add(self, metrics: Mapping[str, jax.Array], bad_records: int = 0) -> None:
    averaged = {k: v for k, v in metrics.items() if is_averaged(k)}
    self.sums = averaged if self.sums is None else jax.tree.map(jnp.add, self.sums, averaged)
    self.count += 1
    self.bad_records += bad_records
    self._last = metrics

  def read(self) -> dict[str, float]:
    """The window's averages and the last values of the other metrics; starts a new window.
    A pair ``<name>@sum`` / ``<name>@count`` is logged as their ratio ``<name>`` (a mean over
    the examples of the window, e.g. per noise level), or not at all without examples."""
    sums, last = jax.device_get((self.sums, self._last))
    row = {k: float(v) / self.count for k, v in sums.items() if "@" not in k}
    for key, total in sums.items():
      if key.endswith("@sum") and float(sums[key[:-4] + "@count"]) > 0:
        row[key[:-4]] = float(total) / float(sums[key[:-4] + "@count"])
    row.update({k: float(v) for k, v in last.items() if not is_averaged(k)})
    row["bad_records"] = float(self.bad_records)
    self.sums, self.count = None, 0
    return row

  def state(self) -> dict:
    """JSON-ready: the device sums (exact float32 values), count and bad records."""
    sums = jax.device_get(self.sums) if self.sums is not None else {}
    return {"sums": {k: float(v) for k, v in sums.items()}, "count": self.count,
            "bad_records": self.bad_records}


class MetricsWriter:
  """Appends ``{"step": k, name: value, ...}`` lines to ``<workdir>/metrics.jsonl`` and writes
  the same scalars (and images, see `image`) to ``<workdir>/tensorboard``."""

  def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True,
               tensorboard: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
    if tensorboard:
      # Imported here: tensorboardX imports PyTorch when it is installed, which only runs
      # that write events need to pay for.
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(workdir / "tensorboard"), flush_secs=30)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(name, float(value), int(step))
      self._tb.flush()

  def image(self, step: int, tag: str, image: np.ndarray, folder: pathlib.Path | None = None):
    """A uint8 ``[H, W, C]`` image (a sample grid) to TensorBoard and, with ``folder``, to
    ``<folder>/step_<step>.png``."""
    if not self.enabled:
      return
    if folder is not None:
      images.save_png(pathlib.Path(folder) / f"step_{step:07d}.png", image)
    if self._tb is not None:
      self._tb.add_image(tag, np.asarray(image), int(step), dataformats="HWC")
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """Throughput between calls and the time left to ``total`` steps."""

  def __init__(self, start_step: int, total: int, batch_size: int, *, enabled: bool = True,
               stream=None):
    self.total, self.batch_size, self.enabled = total, batch_size, enabled
    self.stream = stream or sys.stdout
    self._last_step, self._last_time = start_step, time.perf_counter()

  def update(self, step: int) -> dict[str, float]:
    """Returns ``steps_per_sec`` and ``images_per_sec`` since the previous update."""
    now = time.perf_counter()
    dt = max(now - self._last_time, 1e-9)
    rate = (step - self._last_step) / dt
    self._last_step, self._last_time = step, now
    return {"steps_per_sec": rate, "images_per_sec": rate * self.batch_size}

  def line(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    rate = scalars.get("steps_per_sec", float("nan"))
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    shown = " ".join(f"{k} {v:.4g}" for k, v in scalars.items()  # grouped ones: files only
                     if k not in ("steps_per_sec", "images_per_sec") and "/" not in k)
    print(f"step {step}/{self.total} {shown} | {rate:.2f} steps/s "
          f"{scalars.get('images_per_sec', float('nan')):.0f} img/s | ETA {format_duration(eta)}",
          file=self.stream, flush=True)
