"""Checkpoints: one orbax ``CheckpointManager`` holding the train state and the data iterator's
position, saved asynchronously, keeping the latest K (and optionally the best by a logged
metric), with integrity manifests.

Crash safety: orbax writes each checkpoint into a temporary folder and renames it when
complete, so a process killed at any moment leaves only complete checkpoints plus temporary
folders, which are reported and removed on the next start. After a save completes, a manifest
(``diffjax_integrity.json``: size and SHA-256 of every file) is written beside it; restoring
verifies it and falls back to the previous checkpoint, loudly, when files were truncated or
altered. A failed save (disk full, permissions) raises `CheckpointError` naming the last good
checkpoint, which stays untouched.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any, Callable

import grain
from absl import logging as absl_logging
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from diffjax.faults import CheckpointError
from diffjax.spec import CheckpointSpec
from diffjax.training.state import STATE_FORMAT

MANIFEST = "diffjax_integrity.json"
_TMP_MARK = ".orbax-checkpoint-tmp"


def _warn(message: str) -> None:
  """One line on stderr, from process 0 (not through `logging` as well: it would print twice)."""
  if jax.process_index() == 0:
    print(f"[diffjax] WARNING: {message}", file=sys.stderr, flush=True)


def _hash_file(path: epath.Path) -> str:
  h = hashlib.sha256()
  with path.open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _files(root: epath.Path) -> list[epath.Path]:
  """Every file under ``root`` (walked level by level: epath has no recursive glob on GCS)."""
  out, stack = [], [root]
  while stack:
    for p in sorted(stack.pop().iterdir()):
      if p.is_dir():
        stack.append(p)
      elif p.name != MANIFEST:
        out.append(p)
  return sorted(out)


def _register_array_handler() -> None:
  """Replicated arrays are written in slices by all their replicas in parallel; below 4 MiB per
  slice the per-slice dispatch costs more than it saves (a model of many small tensors on 8
  CPU devices saved several times slower), so small arrays are written by one replica."""
  handler = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=4 << 20)
  previous = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns about any override
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logging.set_verbosity(previous)


def state_meta(networks, posthoc_ema_stds=()) -> dict:
  """What a checkpoint records of its state's layout: the format version and, per network
  role, whether it trains and keeps an EMA (``networks``: a method's ``{role: Network}``),
  and the post-hoc EMA profiles tracked (when any)."""
  meta = {"format": STATE_FORMAT,
          "networks": {role: {"trainable": net.optimizer is not None, "ema": bool(net.ema)}
                       for role, net in networks.items()}}
  if posthoc_ema_stds:
    meta["posthoc_ema_stds"] = [float(s) for s in posthoc_ema_stds]
  return meta


class Checkpointer:
  """Saves and restores ``{"state": TrainState, "data": grain iterator, "meta": layout}``
  under a folder. ``meta`` (see `state_meta`) is checked before a restore: a checkpoint of
  another layout is refused with one line naming the difference, and left untouched."""

  def __init__(self, directory, spec: CheckpointSpec, meta: dict, *, verify: bool = True,
               log: Callable[[str], None] = print):
    _register_array_handler()
    self.directory = epath.Path(directory)
    self.meta = meta
    self.verify_files = verify
    self._log = log
    self._pending: list[int] = []
    self._report_incomplete()
    policies = [checkpoint_managers.LatestN(spec.keep)]
    if spec.best_metric:
      metric = spec.best_metric
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[metric], reverse=spec.best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=spec.async_save, create=True, cleanup_tmp_directories=True,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies))
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_names=("state", "data", "meta", "log_window"))
    except OSError as e:
      raise CheckpointError(f"cannot use checkpoint folder {self.directory}: {e}") from e

  def _report_incomplete(self) -> None:
    if jax.process_index() != 0 or not self.directory.exists():
      return
    partial = sorted(p.name for p in self.directory.iterdir() if _TMP_MARK in p.name)
    if partial:
      _warn(f"found incomplete checkpoint folder(s) {partial} in {self.directory} (a save "
            f"was interrupted); removing them, the complete checkpoints are unaffected")

  # --- saving -----------------------------------------------------------------------------
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_iterator=None, metrics: dict | None = None,
           force: bool = False, log_window: dict | None = None) -> bool:
    """Starts an asynchronous save (after the previous one has finished). ``log_window``: the
    training loop's metrics since its last log step (JSON), so a resumed run logs the same."""
    self.wait()
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(self.meta)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if log_window is not None:
      items["log_window"] = ocp.args.JsonSave(log_window)
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                                 force=force)
    except Exception as e:  # orbax surfaces OS, tensorstore and value errors alike
      raise self._save_error(step, e) from e
    if saved:
      self._pending.append(step)
    return saved

  def wait(self) -> None:
    """Waits for the running save, then writes its integrity manifest."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      step = self._pending[-1] if self._pending else -1
      self._pending = []
      raise self._save_error(step, e) from e
    for step in self._pending:
      if self.verify_files and jax.process_index() == 0:
        self._write_manifest(step)
    self._pending = []

  def _save_error(self, step: int, error: Exception) -> CheckpointError:
    good = [s for s in self.all_steps() if s != step]
    where = f"step {good[-1]} in {self.directory}" if good else "none"
    return CheckpointError(f"saving the checkpoint of step {step} failed: {error}. "
                           f"Last good checkpoint: {where} (left untouched)")

  def _write_manifest(self, step: int) -> None:
    root = self.directory / str(step)
    if not root.exists():  # already removed by the keep policy
      return
    manifest = {str(p.relative_to(root)): [p.stat().length, _hash_file(p)]
                for p in _files(root)}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=0, sort_keys=True))
    tmp.rename(root / MANIFEST)

  # --- restoring ----------------------------------------------------------------------------
  def verify(self, step: int) -> tuple[bool | None, str]:
    """``(True, "")`` if every file matches its manifest, ``(False, why)`` if not, ``(None,
    why)`` when there is no manifest (a save finished but the run died before recording it)."""
    root = self.directory / str(step)
    path = root / MANIFEST
    if not path.exists():
      return None, "no integrity manifest"
    try:
      manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
      return False, f"{path} is damaged"
    for rel, (size, digest) in manifest.items():
      f = root / rel
      if not f.exists():
        return False, f"file {rel} is missing"
      if f.stat().length != size:
        return False, f"file {rel} has {f.stat().length} bytes, expected {size} (truncated?)"
      if _hash_file(f) != digest:
        return False, f"file {rel} does not match its SHA-256 (altered)"
    return True, ""

  def restore(self, step: int, abstract_state, data_iterator=None) -> Any:
    """Restores the state (onto ``abstract_state``'s shardings, resharding if the mesh
    changed) and, if given and recorded for this process layout, the data iterator.

    Returns:
      ``(state, data_restored)``.
    """
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    data_restored = False
    if data_iterator is not None:
      try:
        self._manager.restore(step, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
        data_restored = True
      except (ValueError, FileNotFoundError, KeyError) as e:
        self._log(f"data iterator position of step {step} not restored ({e}); positioning "
                  f"the data stream by step instead")
    return restored["state"], data_restored

  def restore_latest(self, abstract_state, data_iterator=None):
    """The newest checkpoint that verifies and restores, falling back to older ones.

    Returns:
      ``(state, step, data_restored)``, or ``(None, None, False)`` when there is none.

    Raises:
      CheckpointError: checkpoints exist but none can be restored.
    """
    steps = self.all_steps()
    if steps:
      self._check_layout(steps[-1])
    problems = []
    for step in reversed(steps):
      if self.verify_files:
        ok, why = self.verify(step)
        if ok is False:
          _warn(f"checkpoint {self.directory / str(step)} is damaged ({why}); using the "
                f"previous checkpoint instead")
          problems.append(f"step {step}: {why}")
          self._set_aside(step)
          continue
      try:
        state, data_restored = self.restore(step, abstract_state, data_iterator)
        return state, step, data_restored
      except Exception as e:  # any failure to read a checkpoint means: try the previous one
        _warn(f"checkpoint {self.directory / str(step)} could not be restored ({e}); using "
              f"the previous checkpoint instead")
        problems.append(f"step {step}: {e}")
        self._set_aside(step)
    if problems:
      raise CheckpointError(f"no checkpoint in {self.directory} could be restored:\n  " +
                            "\n  ".join(problems) + "\nMove the folder away to start afresh.")
    return None, None, False

  def restore_variables(self, abstract_state, step: int | None = None
                        ) -> tuple[dict | None, int]:
    """What inference needs and nothing more: ``{role: Flax variables}`` (the EMA parameters
    where the network keeps one, and its other collections) of checkpoint ``step`` (default:
    the newest whose files verify); optimiser states and the data position are not read.
    Damaged checkpoints are skipped, not moved.

    Returns:
      ``(variables_by_role, step)``, or ``(None, None)`` when the folder holds no checkpoint.

    Raises:
      CheckpointError: ``step`` is not there, its layout differs, or none can be read.
    """
    steps = self.all_steps()
    if not steps:
      return None, None
    if step is not None and step not in steps:
      raise CheckpointError(f"no checkpoint of step {step} in {self.directory}; it holds "
                            f"steps {steps}")
    candidates = [step] if step is not None else list(reversed(steps))
    self._check_layout(candidates[0])
    keys = {role: ["params" if net.ema_params is None else "ema_params"] +
            (["collections"] if net.collections is not None else [])
            for role, net in abstract_state.nets.items()}
    want = {"nets": {role: {key: getattr(abstract_state.nets[role], key) for key in names}
                     for role, names in keys.items()}}
    problems = []
    for s in candidates:
      ok, why = self.verify(s) if self.verify_files else (None, "")
      if ok is False:
        _warn(f"checkpoint {self.directory / str(s)} is damaged ({why}); skipping it")
        problems.append(f"step {s}: {why}")
        continue
      restored = self._manager.restore(s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=want, restore_args=ocp.checkpoint_utils.construct_restore_args(want),
          partial_restore=True)))["state"]["nets"]
      return {role: {"params": restored[role][names[0]], **restored[role].get("collections", {})}
              for role, names in keys.items()}, s
    raise CheckpointError(f"no checkpoint in {self.directory} could be read: "
                          f"{'; '.join(problems)}")

  def log_window(self, step: int) -> dict | None:
    """The ``log_window`` saved with checkpoint ``step`` (None if it has none)."""
    if not (self.directory / str(step) / "log_window").exists():
      return None
    return self._manager.restore(step, args=ocp.args.Composite(
        log_window=ocp.args.JsonRestore()))["log_window"]

  def _check_layout(self, step: int) -> None:
    """Refuses a checkpoint whose state layout differs from this run's (`CheckpointError`)."""
    where = f"the checkpoint of step {step} in {self.directory}"
    if not (self.directory / str(step) / "meta").exists():
      raise CheckpointError(
          f"{where} was written by diffjax before its method layer (format 1: one network, "
          f"no layout record) and cannot be read by this version (format {STATE_FORMAT}); "
          f"train in a new --workdir")
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # a damaged record: let the verified restore path handle it
      self._log(f"layout record of step {step} unreadable ({e}); trying the restore anyway")
      return
    if meta != self.meta:
      raise CheckpointError(f"{where} holds another state layout: {meta} (this run: "
                            f"{self.meta}); use the workdir's own config or a new --workdir")

  def _set_aside(self, step: int) -> None:
    """Renames a bad checkpoint to ``<step>.damaged`` (kept for inspection, no longer a step)."""
    if jax.process_index() == 0:
      src = self.directory / str(step)
      dst = self.directory / f"{step}.damaged"
      n = 1
      while dst.exists():
        dst, n = self.directory / f"{step}.damaged{n}", n + 1
      src.rename(dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"diffjax_set_aside_{step}")
    self._manager.reload()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()

