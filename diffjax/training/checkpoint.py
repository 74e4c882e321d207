"""Checkpoints: one orbax ``CheckpointManager`` holding the train state and the data
iterator's position, saved asynchronously, keeping the latest K (and optionally the best by a
logged metric)."""

from __future__ import annotations

import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from diffjax.spec import CheckpointSpec


class Checkpointer:
  """Saves and restores ``{"state": TrainState, "data": grain iterator}`` under a folder."""

  def __init__(self, directory: str | pathlib.Path, spec: CheckpointSpec):
    self.directory = pathlib.Path(directory).absolute()
    policies = [checkpoint_managers.LatestN(spec.keep)]
    if spec.best_metric:
      metric = spec.best_metric
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[metric], reverse=spec.best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=spec.async_save, create=True, cleanup_tmp_directories=True,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies))
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_iterator=None, metrics: dict | None = None,
           force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                              force=force)

  def restore(self, step: int, abstract_state, data_iterator=None) -> Any:
    """Restores the state (onto ``abstract_state``'s shardings) and, if given, the iterator."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying the target shardings (restoring onto a new mesh reshards)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)
