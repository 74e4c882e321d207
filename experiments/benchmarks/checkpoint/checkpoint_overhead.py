"""Overhead of checkpointing on training time at a config's save interval (async orbax save).

Runs the real training loop pieces of a config (Grain data pipeline, jitted sharded train step,
`Checkpointer` with integrity manifests) for ``checkpoint.every_steps`` steps, once without a
save and once with the one save that interval holds, alternating the two arms ``--repeats``
times so that drift of a shared machine hits both alike. Reports the median wall time of each
arm, the relative overhead, and the time the loop spent blocked inside ``save()``. Writes
``checkpoint_<backend>.json`` / ``.md`` beside this file.

  python experiments/benchmarks/checkpoint/checkpoint_overhead.py           # default config
  python experiments/benchmarks/checkpoint/checkpoint_overhead.py --config mnist:cpu --steps 200
"""

import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("config", "default", "config module[:arg] under configs/")
flags.DEFINE_integer("steps", 0, "steps per arm (0: the config's checkpoint.every_steps)")
flags.DEFINE_integer("repeats", 3, "alternations of the two arms")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if os.environ.get("JAX_PLATFORMS", "") in ("", "cpu"):
    from diffjax.parallel.distributed import split_host_into_devices
    split_host_into_devices(16)
  import importlib

  import jax

  from diffjax import parallel
  from diffjax.experiment import build_spec
  from diffjax.jobs.common import (checkpointer, data_iterator, data_source, make_mesh,
                                   state_setup)
  from diffjax.training import parameter_count
  from diffjax.training.setup import jit_train_step

  module, _, arg = FLAGS.config.partition(":")
  config = importlib.import_module(f"configs.{module}").get_config(arg or None)
  spec = build_spec(config, num_devices=jax.device_count())
  steps = FLAGS.steps or spec.checkpoint.every_steps
  mesh = make_mesh(spec)
  setup = state_setup(spec, mesh)
  step_fn = jit_train_step(setup, mesh, spec.train, spec.faults)
  batch_sharding = parallel.batch_sharding(mesh)
  source = data_source(spec)
  scratch = pathlib.Path(tempfile.mkdtemp(prefix="diffjax-ckpt-bench-"))

  def run(save: bool, tag: str, steps: int = steps) -> tuple[float, float]:
    """Wall time of ``steps`` steps (one save in the middle if ``save``), and time in save()."""
    iterator = data_iterator(spec, source, mesh)
    state = setup.init(jax.random.PRNGKey(0))
    for _ in range(3):  # compile (first call and donated-state call), start data workers
      local = next(iterator)
      local.pop("bad_records", None)
      state, metrics = step_fn(state, parallel.global_batch(local, batch_sharding))
    jax.block_until_ready(metrics)
    ckpt = checkpointer(spec, scratch / tag)  # writes to scratch/tag/checkpoints
    blocked = 0.0
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
      local = next(iterator)
      local.pop("bad_records", None)
      state, metrics = step_fn(state, parallel.global_batch(local, batch_sharding))
      if save and i == steps // 2:
        s0 = time.perf_counter()
        ckpt.save(i, state, iterator)
        blocked += time.perf_counter() - s0
    jax.block_until_ready(metrics)
    s0 = time.perf_counter()
    ckpt.wait()  # a save still writing at the end of the window is charged to the window
    blocked += time.perf_counter() - s0
    wall = time.perf_counter() - t0
    ckpt.close()
    return wall, blocked

  run(True, "warmup", steps=20)  # first-use costs (orbax threads, file caches) in neither arm
  rows = {"no_save": [], "save": [], "blocked": []}
  for r in range(FLAGS.repeats):
    for save in ((False, True) if r % 2 == 0 else (True, False)):
      wall, blocked = run(save, f"r{r}_{save}")
      rows["save" if save else "no_save"].append(wall)
      if save:
        rows["blocked"].append(blocked)
      print(f"repeat {r} {'save' if save else 'no save'}: {wall:.2f}s for {steps} steps"
            + (f" ({blocked * 1e3:.0f} ms blocked in save/wait)" if save else ""), flush=True)
  shutil.rmtree(scratch, ignore_errors=True)
  base, with_save = statistics.median(rows["no_save"]), statistics.median(rows["save"])
  result = {
      "config": FLAGS.config, "model": spec.method.model.name,
      "params_M": round(parameter_count(setup.abstract.params) / 1e6, 2),
      "steps_per_save": steps, "repeats": FLAGS.repeats,
      "backend": jax.default_backend(), "devices": jax.device_count(),
      "median_s_without_save": round(base, 3), "median_s_with_save": round(with_save, 3),
      "overhead_pct": round(100 * (with_save - base) / base, 2),
      "blocked_ms_median": round(1e3 * statistics.median(rows["blocked"]), 1),
      "blocked_pct": round(100 * statistics.median(rows["blocked"]) / base, 3),
      "walls_without": [round(w, 3) for w in rows["no_save"]],
      "walls_with": [round(w, 3) for w in rows["save"]]}
  out = pathlib.Path(__file__).parent
  name = f"checkpoint_{result['backend']}"
  (out / f"{name}.json").write_text(json.dumps(result, indent=1))
  (out / f"{name}.md").write_text(
      "| config | params | steps per save | without save (s) | with save (s) | overhead | "
      "blocked in save |\n|---|---|---|---|---|---|---|\n"
      f"| {result['config']} | {result['params_M']}M | {steps} | {base:.2f} | {with_save:.2f} | "
      f"{result['overhead_pct']}% | {result['blocked_ms_median']} ms "
      f"({result['blocked_pct']}%) |\n")
  print(json.dumps(result))


if __name__ == "__main__":
  from diffjax.host import reexec_with_huge_pages
  reexec_with_huge_pages()  # huge pages for XLA:CPU's buffers (see diffjax/host.py)
  app.run(main)
