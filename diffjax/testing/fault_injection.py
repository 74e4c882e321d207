"""Fault-injection scenarios on real launch.py runs, shared by the test suite (a few cases, in
CI) and experiments/reliability/run.py (many cases, recorded in the README).

Every scenario trains a small config into a workdir, interrupts or damages it, relaunches until
the run completes, and compares the final checkpoint with an uninterrupted run's, array by array
and bit for bit. A `Scenario` holds the config the runs use (the caller's choice: the tests use a
DiT-tiny config, the reliability experiment the UNet of its recorded results); the helpers that
need no config (`final_arrays`, `identical`, `two_process_sigterm`, ...) are plain functions.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from diffjax.testing.launching import ROOT, launch, subprocess_env

EXIT_PREEMPTED = 42


@dataclasses.dataclass(frozen=True)
class Scenario:
  """The fault-injection scenarios on one config.

  Attributes:
    config: the ``--config`` value of every launch.py run, relative to the repository root
      (``"path/to/config.py"`` or ``"path/to/config.py:arg"``).
    steps: training steps of a complete run.
  """

  config: str
  steps: int = 24

  def base_args(self, workdir, steps: int | None = None, every: int = 4, extra=()) -> list[str]:
    """launch.py arguments of a run into ``workdir`` of ``steps`` steps (default: the
    scenario's), checkpointed every ``every``, with ``extra`` arguments last."""
    return ["--config", self.config, "--workdir", str(workdir),
            f"--config.train.num_steps={self.steps if steps is None else steps}",
            f"--config.checkpoint.every_steps={every}", "--config.logging.log_every=1",
            "--config.sample.at_end=False", "--config.data.num_workers=2", *extra]

  def reference_run(self, workdir) -> dict:
    """An uninterrupted run; returns its `final_arrays`."""
    launch(*self.base_args(workdir))
    return final_arrays(workdir)

  def sigterm_at(self, workdir, at_step: int, second_signal: bool = False) -> dict:
    """SIGTERM once the run has logged ``at_step`` (and optionally again right away while it
    saves); relaunch to completion. Returns what happened."""
    result = self.interrupt(workdir, at_step, second_signal)
    resume = launch(*self.base_args(workdir))
    result["resumed_from"] = resumed_from(resume.stdout)
    return result

  def interrupt(self, workdir, at_step: int, second_signal: bool = False) -> dict:
    """Starts (or resumes) the run and SIGTERMs it once it has logged ``at_step``."""
    proc = _start(self.base_args(workdir))
    logged, seen = 0, []
    for line in proc.stdout:
      seen.append(line)
      m = re.match(r"step (\d+)/", line)
      if m:
        logged = int(m.group(1))
        if logged >= at_step:
          proc.send_signal(signal.SIGTERM)
          if second_signal:
            time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
          break
    out, err = proc.communicate(timeout=300)
    saved = [int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
             if p.name.isdigit()]
    result = {"exit_code": proc.returncode, "signal_step": logged,
              "saved_step": max(saved) if saved else 0, "stderr": err[-2000:]}
    # Steps lost = progress beyond the newest checkpoint (0 when the preempted save happened).
    result["steps_lost"] = max(0, logged - result["saved_step"])
    result["resumed_from_at_start"] = resumed_from("".join(seen) + out)
    return result

  def sigkill_mid_save(self, workdir, nth_save: int) -> dict:
    """SIGKILL the moment the nth checkpoint's temporary folder appears (a save in progress)."""
    proc = _start(self.base_args(workdir, every=2), quiet=True)
    ckpt = pathlib.Path(workdir) / "checkpoints"
    seen, killed_during_save = set(), False
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
      if ckpt.exists():
        tmp = {p.name for p in ckpt.iterdir() if ".orbax-checkpoint-tmp" in p.name}
        seen |= tmp
        if len(seen) >= nth_save and tmp:
          proc.send_signal(signal.SIGKILL)
          killed_during_save = True
          break
      time.sleep(0.002)
    proc.communicate(timeout=120)
    partial_left = any(".orbax-checkpoint-tmp" in p.name for p in ckpt.iterdir())
    resume = launch(*self.base_args(workdir))
    return {"killed_during_save": killed_during_save, "partial_folder_left": partial_left,
            "reported_incomplete": "incomplete checkpoint folder" in resume.stderr,
            "resumed_from": resumed_from(resume.stdout)}

  def sigkill_after(self, workdir, seconds: float) -> dict:
    """SIGKILL at a given time after start (anywhere: compiling, stepping or saving)."""
    proc = _start(self.base_args(workdir, every=3), quiet=True)
    try:
      proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    resume = launch(*self.base_args(workdir))
    return {"resumed_from": resumed_from(resume.stdout)}

  def damage_latest(self, workdir, mode: str) -> dict:
    """Truncate or alter a file of the newest checkpoint, then relaunch: the previous checkpoint
    must be used, with a warning, and the run must still end identical."""
    ckpt = pathlib.Path(workdir) / "checkpoints"
    latest = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    files = sorted((p for p in (ckpt / str(latest) / "state").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
    victim = files[-1]
    raw = victim.read_bytes()
    if mode == "truncate":
      victim.write_bytes(raw[: len(raw) // 2])
    else:
      mid = len(raw) // 2
      victim.write_bytes(raw[:mid] + bytes([raw[mid] ^ 0xFF]) + raw[mid + 1:])
    resume = launch(*self.base_args(workdir))
    return {"damaged_step": latest, "warned": "is damaged" in resume.stderr,
            "warnings": resume.stderr.count("is damaged"),
            "resumed_from": resumed_from(resume.stdout)}

  def bad_records(self, root) -> dict:
    """ArrayRecord shards of the 180 digits test images with 3 replaced by garbage: the default
    policy skips and counts them, ``faults.bad_records=stop`` ends the run (exit 4) naming one."""
    from diffjax.data import convert, digits_source, records
    from diffjax.training import read_metrics
    root = pathlib.Path(root)
    src = digits_source("test")
    recs = [records.encode_record(records.encode_png(src[i]["image"]), src[i]["label"])
            for i in range(len(src))]
    for i in (5, 77, 150):
      recs[i] = b"\x00garbage"
    convert.write_shards(recs, root / "shards", "train", num_shards=2)
    # 24 steps of 16 (the batch every tiny run compiles for): 384 draws, over two epochs.
    args = ["--config.data.source=array_record", f"--config.data.path={root / 'shards'}"]
    skip = launch(*self.base_args(root / "skip", steps=24, extra=args), check=False)
    stop = launch(*self.base_args(root / "stop", steps=24, extra=args + [
        "--config.faults.bad_records=stop", "--config.data.num_workers=0"]), check=False)
    counted = read_metrics(root / "skip")[-1]["bad_records"] if skip.returncode == 0 else None
    return {"records": len(recs), "corrupt": 3, "skip_exit_code": skip.returncode,
            "counted": counted, "stop_exit_code": stop.returncode,
            "stop_named_the_record": "is unreadable" in stop.stderr and "record" in stop.stderr,
            "stderr": stop.stderr[-2000:]}


def final_arrays(workdir) -> dict[str, np.ndarray]:
  """Every array of the newest checkpoint's train state, plus the data iterator state text."""
  import jax
  import orbax.checkpoint as ocp
  ckpt_dir = pathlib.Path(workdir) / "checkpoints"
  step = max(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
  path = ckpt_dir / str(step) / "state"
  checkpointer = ocp.StandardCheckpointer()
  # Restore onto this process's first device, whatever devices the run saved from.
  on_device0 = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=on_device0),
                        checkpointer.metadata(path).item_metadata.tree)
  restored = checkpointer.restore(path, target)
  flat = {}

  def walk(tree, prefix):
    if isinstance(tree, dict):
      for k, v in tree.items():
        walk(v, f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
      for k, v in enumerate(tree):
        walk(v, f"{prefix}/{k}")
    else:
      flat[prefix] = np.asarray(tree)

  walk(restored, "")
  flat["__step__"] = np.asarray(step)
  data = sorted((ckpt_dir / str(step) / "data").glob("*.json"))
  flat["__data__"] = np.asarray([p.read_text() for p in data])
  return flat


def identical(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _start(args, quiet: bool = False):
  """Starts launch.py; ``quiet`` discards its output (nobody drains the pipes then)."""
  out = subprocess.DEVNULL if quiet else subprocess.PIPE
  return subprocess.Popen([sys.executable, "launch.py", *args], cwd=ROOT, env=subprocess_env(),
                          stdout=out, stderr=out, text=True)


def two_process_sigterm(workdir, args, at_step: int, port: int, devices_each: int) -> dict:
  """Two processes (``devices_each`` CPU devices each) run ``launch.py *args`` into
  ``workdir`` as one job; SIGTERM reaches process 1 only, once process 0 has logged
  ``at_step``. JAX's preemption sync point must stop both at the same step, both save it and
  exit 42; a relaunch of both resumes from it and finishes."""
  env = subprocess_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}")

  def start(i, out):
    return subprocess.Popen(
        [sys.executable, "launch.py", *args, f"--workdir={workdir}", "--distributed=on",
         f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.PIPE, text=True)

  procs = [start(0, subprocess.PIPE), start(1, subprocess.DEVNULL)]
  seen = []
  for line in procs[0].stdout:
    seen.append(line)
    m = re.match(r"step (\d+)/", line)
    if m and int(m.group(1)) >= at_step:
      procs[1].send_signal(signal.SIGTERM)
      break
  outs = [p.communicate(timeout=300) for p in procs]
  saved = [re.search(r"saved the checkpoint of step (\d+)", err or "") for _, err in outs]
  result = {"exit_codes": [p.returncode for p in procs],
            "saved_steps": [int(m.group(1)) if m else None for m in saved],
            "stdout": "".join(seen) + outs[0][0], "stderr": outs[1][1][-2000:]}
  procs = [start(0, subprocess.PIPE), start(1, subprocess.DEVNULL)]
  outs = [p.communicate(timeout=300) for p in procs]
  result["resume_exit_codes"] = [p.returncode for p in procs]
  result["resume_stderr"] = outs[1][1][-2000:]
  result["resumed_from"] = resumed_from(outs[0][0])
  return result


def resumed_from(stdout: str) -> int | None:
  m = re.search(r"resumed from checkpoint at step (\d+)", stdout)
  return int(m.group(1)) if m else None


def fresh(path) -> pathlib.Path:
  path = pathlib.Path(path)
  if path.exists():
    shutil.rmtree(path)
  return path
