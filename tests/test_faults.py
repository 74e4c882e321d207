"""Fault injection: preemption, kills mid-save, damaged checkpoints, NaNs, bad records, a full
disk, resharded restores. Every interrupted run must end bit-identical to an uninterrupted one.
(experiments/reliability/run.py runs more cases of the same scenarios for the README.)"""

import errno

import jax
import numpy as np
import pytest

from diffjax import parallel
from diffjax.faults import CheckpointError
from diffjax.parallel.rules import DATA_PARALLEL_RULES
from diffjax.experiment import build_spec
from diffjax.jobs.common import checkpointer, state_setup
from diffjax.jobs.train import train
from diffjax.testing import fault_injection as fi
from diffjax.training import read_metrics
from dit_tiny_config import DIT
from launch_util import launch, tiny_config

# The tiny default on DiT-tiny: the scenarios test the training system, not the network.
SCENARIO = fi.Scenario("tests/dit_tiny_config.py")


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
  w = tmp_path_factory.mktemp("reference") / "run"
  SCENARIO.reference_run(w)
  return w


@pytest.fixture(scope="module")
def reference(reference_dir):
  return fi.final_arrays(reference_dir)


def test_sigterm_saves_the_current_step_and_resumes_exactly(tmp_path, reference, reference_dir):
  """Preempted twice (the second time with a doubled signal while it saves), resumed each
  time from the step it stopped at, and the end state (parameters, EMA, optimiser state, step,
  RNG, data iterator position) and every logged loss equal an uninterrupted run's."""
  first = SCENARIO.interrupt(tmp_path / "run", 7)
  second = SCENARIO.interrupt(tmp_path / "run", 15, second_signal=True)
  for result in (first, second):
    assert result["exit_code"] == fi.EXIT_PREEMPTED, result["stderr"]
    assert "saved the checkpoint of step" in result["stderr"]
    assert result["steps_lost"] == 0
  assert second["resumed_from_at_start"] == first["saved_step"]
  resume = launch(*SCENARIO.base_args(tmp_path / "run"))
  assert fi.resumed_from(resume.stdout) == second["saved_step"]
  assert fi.identical(fi.final_arrays(tmp_path / "run"), reference)
  losses = lambda w: {m["step"]: m["loss"] for m in read_metrics(w)}  # a relaunch's rows win
  assert losses(tmp_path / "run") == losses(reference_dir) and len(losses(reference_dir)) == 24


def _rows(workdir):
  """metrics.jsonl without its timing fields (a relaunch's rows win)."""
  timing = ("steps_per_sec", "images_per_sec")
  return {m["step"]: {k: v for k, v in m.items() if k not in timing}
          for m in read_metrics(workdir)}


def test_logs_after_preemptions_equal_an_uninterrupted_runs(tmp_path):
  """Logging every 5 steps, preempted right after a log step (5), one step after it (6), and
  right before one (14): the resumed runs log the same rows and values as an uninterrupted
  run, the steps summed before each preemption included."""
  args = lambda w, *extra: SCENARIO.base_args(w, steps=20, every=10, extra=[
      "--config.logging.log_every=5", *extra])
  launch(*args(tmp_path / "whole"))
  cut = tmp_path / "cut"
  exits = [launch(*args(cut, "--config.faults.inject_preemption_steps=(5,6,14)"), check=False)
           for _ in range(4)]
  assert [e.returncode for e in exits] == [fi.EXIT_PREEMPTED] * 3 + [0], exits[-1].stderr
  assert "injected preemption received: saved the checkpoint of step 14" in exits[2].stderr
  whole = _rows(tmp_path / "whole")
  assert sorted(whole) == [5, 10, 15, 20] and _rows(cut) == whole


def test_sigkill_in_the_middle_of_a_save(tmp_path, reference):
  result = SCENARIO.sigkill_mid_save(tmp_path / "run", nth_save=3)
  assert result["killed_during_save"]
  assert result["resumed_from"] is not None
  # The half-written folder the kill left (if the save had not just finished) is named on the
  # next start and gone once it saves.
  assert result["reported_incomplete"] == result["partial_folder_left"]
  assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir()
              if ".orbax-checkpoint-tmp" in p.name]
  assert fi.identical(fi.final_arrays(tmp_path / "run"), reference)


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, reference):
  # One altered byte here; truncation too in experiments/reliability/run.py.
  w = tmp_path / "run"
  launch(*SCENARIO.base_args(w, steps=16))
  result = SCENARIO.damage_latest(w, "alter")
  assert result["warned"] and result["resumed_from"] == result["damaged_step"] - 4
  assert result["warnings"] == 1  # printed once (it also went through `logging` before)
  assert fi.identical(fi.final_arrays(w), reference)


def test_nan_updates_are_skipped_and_a_streak_aborts_naming_the_last_good_checkpoint(tmp_path):
  """Two NaN updates (the 4th and 5th) are skipped and counted and training goes on; a streak
  of three from the 10th ends the run naming the step and the last good checkpoint."""
  w = tmp_path / "run"
  result = launch(*SCENARIO.base_args(w, steps=20, extra=[
      "--config.faults.inject_nan_steps=(3,4,9,10,11,12,13,14)",
      "--config.faults.max_consecutive_skips=3"]), check=False)
  rows = {r["step"]: r for r in read_metrics(w)}
  assert np.isnan(rows[4]["loss"]) and rows[4]["skipped"] == 1 and rows[4]["streak"] == 1
  assert rows[5]["skipped"] == 2 and rows[5]["streak"] == 2
  assert rows[6]["streak"] == 0 and np.isfinite(rows[8]["loss"]) and rows[8]["skipped"] == 2
  assert result.returncode == 3, result.stderr
  assert "training aborted at step 12: 3 consecutive update(s) skipped" in result.stderr
  assert "since step 10" in result.stderr and "Last good checkpoint: step 8" in result.stderr
  assert rows[12]["skipped"] == 5 and max(rows) == 12
  steps = sorted(int(p.name) for p in (w / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == 8


def test_bad_records_are_skipped_and_counted_or_stop_the_run(tmp_path):
  result = SCENARIO.bad_records(tmp_path)
  # 24 steps of 16 draw 384 records in grain's seeded per-epoch permutations of the 180; each
  # draw of one of the 3 corrupt records (5, 77, 150) is replaced by the next and counted.
  import grain
  order = grain.MapDataset.range(180).seed(0).shuffle().repeat()
  expected = sum(int(order[i]) in (5, 77, 150) for i in range(384))
  assert 6 <= expected <= 9  # twice each in two whole epochs, then some of the third
  assert result["skip_exit_code"] == 0 and result["counted"] == expected
  assert result["stop_exit_code"] == 4 and result["stop_named_the_record"], result["stderr"]


def test_full_disk_during_a_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  real_save = ocp.CheckpointManager.save

  def failing_save(self, step, *args, **kwargs):
    if step >= 8:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
  with pytest.raises(CheckpointError, match="Last good checkpoint: step 4 in .*left untouched"):
    train(tiny_config(**DIT, **{"train.num_steps": 12, "checkpoint.every_steps": 4}),
          str(tmp_path / "run"))
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  spec = build_spec(tiny_config(**DIT), num_devices=8)
  mesh = parallel.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  ckpt = checkpointer(spec, tmp_path / "run")
  assert ckpt.verify(4) == (True, "")
  state, step, _ = ckpt.restore_latest(state_setup(spec, mesh, DATA_PARALLEL_RULES).abstract)
  ckpt.close()
  assert step == 4 and int(state.step) == 4


def test_unwritable_workdir_is_a_clear_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  result = launch(*SCENARIO.base_args(blocker / "run", steps=2), check=False)
  assert result.returncode == 2 and "cannot write to workdir" in result.stderr


def test_checkpoint_restores_onto_a_different_device_count(tmp_path):
  train(tiny_config(**DIT, **{"train.num_steps": 4}), str(tmp_path / "run"))
  spec = build_spec(tiny_config(**DIT), num_devices=8)
  states = []
  for devices in (jax.devices()[:8], jax.devices()[:1], jax.devices()[:2]):
    mesh = parallel.make_mesh({"data": len(devices), "fsdp": 1, "tensor": 1}, devices)
    ckpt = checkpointer(spec, tmp_path / "run")
    state, step, _ = ckpt.restore_latest(state_setup(spec, mesh, DATA_PARALLEL_RULES).abstract)
    ckpt.close()
    assert len(jax.tree.leaves(state.nets)[0].sharding.device_set) == len(devices)
    states.append(jax.device_get(state))
  for other in states[1:]:
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(other)):
      np.testing.assert_array_equal(a, b)


def test_missing_dependency_is_named(tmp_path):
  # `python -c CODE launch.py ARGS` puts '-c' in argv[0]; pop it so launch.py sees its own argv.
  wrapper = ["-c", "import sys; sys.modules['tensorflow_datasets'] = None; sys.argv.pop(0); "
             "import runpy; runpy.run_path('launch.py', run_name='__main__')"]
  args = SCENARIO.base_args(tmp_path / "run", steps=2,
                            extra=["--config.data.source=tfds", "--config.data.name=mnist"])
  result = launch(*args, check=False, prefix=wrapper)
  assert result.returncode == 2, result.stderr
  assert "tensorflow-datasets is not installed" in result.stderr


# --- checkpoint policies in process (issue 34) --------------------------------------------------
def _checkpointer(directory, keep=2, best_metric="", best_mode="min", meta=None):
  from diffjax.spec import CheckpointSpec
  from diffjax.training import Checkpointer
  return Checkpointer(directory, CheckpointSpec(1, keep, best_metric, best_mode, False),
                      meta or {"format": 0}, log=lambda m: None)


def test_incomplete_temporary_folders_are_reported_and_removed(tmp_path, capsys):
  """A save killed mid-way leaves orbax's temporary folder: the next start names it on stderr
  and removes it; the complete checkpoint beside it restores."""
  state = {"w": np.arange(6, dtype=np.float32)}
  ckpt = _checkpointer(tmp_path)
  ckpt.save(3, state)
  ckpt.close()
  partial = tmp_path / "5.orbax-checkpoint-tmp-1712345678901234"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "half_written").write_bytes(b"\0" * 100)
  capsys.readouterr()
  ckpt = _checkpointer(tmp_path)
  err = capsys.readouterr().err
  assert "incomplete checkpoint folder(s) ['5.orbax-checkpoint-tmp-1712345678901234']" in err
  assert ckpt.all_steps() == [3]
  restored, step, _ = ckpt.restore_latest({"w": jax.ShapeDtypeStruct((6,), np.float32)})
  assert step == 3
  np.testing.assert_array_equal(restored["w"], state["w"])
  # orbax removes it in the background; the run's next save waits for that.
  ckpt.save(4, state)
  ckpt.close()
  assert not partial.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["3", "4"]


@pytest.mark.parametrize("mode,kept", [("min", [2, 5]), ("max", [3, 5])])
def test_best_checkpoint_is_kept_beside_the_latest(tmp_path, mode, kept):
  """checkpoint.keep=1 with best_metric: the newest checkpoint and the best by the metric
  (lowest for min, highest for max) survive, the others are deleted."""
  ckpt = _checkpointer(tmp_path, keep=1, best_metric="loss", best_mode=mode)
  for step, loss in zip(range(1, 6), [3.0, 1.0, 9.0, 4.0, 5.0]):
    ckpt.save(step, {"w": np.full(2, step, np.float32)}, metrics={"loss": loss})
  ckpt.wait()
  assert ckpt.all_steps() == kept
  ckpt.close()
  assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == kept


def test_checkpoint_restores_across_rule_sets(tmp_path):
  """Saved with the parameters split over fsdp (8 ways), restored replicated (data parallel)
  and split Megatron-style (fsdp x tensor): the same values, in the target layout."""
  spec = build_spec(tiny_config(**DIT), num_devices=8)
  fsdp = parallel.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
  setup = state_setup(spec, fsdp, parallel.get_rules("fsdp"))
  state = setup.init(jax.random.PRNGKey(0))
  saved = jax.device_get(state)
  ckpt = checkpointer(spec, tmp_path)
  ckpt.save(1, state)
  ckpt.close()
  for shape, rules in (({"data": 8, "fsdp": 1, "tensor": 1}, "data_parallel"),
                       ({"data": 2, "fsdp": 2, "tensor": 2}, "fsdp_tensor")):
    target = state_setup(spec, parallel.make_mesh(shape), parallel.get_rules(rules))
    ckpt = checkpointer(spec, tmp_path)
    restored, step, _ = ckpt.restore_latest(target.abstract)
    ckpt.close()
    assert step == 1
    for a, b, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved),
                          jax.tree.leaves(target.shardings)):
      np.testing.assert_array_equal(a, b)
      assert a.sharding.spec == want.spec, rules
    q = restored.nets["denoiser"].params["block_0"]["attn"]["query"]["dense"]["kernel"]
    assert tuple(q.sharding.spec) == (("fsdp", "tensor") if rules == "fsdp_tensor" else (None, None))


def test_unreadable_checkpoints_end_the_run_with_exit_code_5(tmp_path):
  """Every checkpoint damaged: launch.py names them and exits with 5 (checkpoint or disk
  error), before compiling anything."""
  from diffjax import workdir as workdir_lib
  w = tmp_path / "run"
  config = tiny_config(**DIT, **{"train.num_steps": 4})
  workdir_lib.prepare(w, config)  # the workdir launch.py would make for the same experiment
  spec = build_spec(config, num_devices=8)
  mesh = parallel.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  ckpt = checkpointer(spec, w)
  ckpt.save(2, state_setup(spec, mesh).init(jax.random.PRNGKey(0)))
  ckpt.close()
  victim = max((p for p in (w / "checkpoints" / "2" / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
  victim.write_bytes(victim.read_bytes()[:10])
  result = launch(*SCENARIO.base_args(w, steps=4), check=False)
  assert result.returncode == 5, result.stderr[-2000:]
  assert "no checkpoint in" in result.stderr and "could be restored" in result.stderr
  assert "step 2:" in result.stderr and (w / "checkpoints" / "2.damaged").exists()
