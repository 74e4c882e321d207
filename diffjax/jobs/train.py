"""The training job: config -> validated spec -> mesh, data, state -> loop.

The loop logs only at log steps (metrics are summed on device in between, no host syncs),
writes sample grids from the EMA parameters, and checkpoints state and data position
asynchronously. A second launch on the same workdir resumes from its latest complete, verified
checkpoint and continues exactly as an uninterrupted run would. Faults follow the config's
policies (see diffjax/faults.py for the exit codes): SIGTERM saves the current step and exits,
non-finite updates are skipped and counted (abort after a streak), unreadable records are
skipped and counted or stop the run, a failed save names the last good checkpoint.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from diffjax import parallel, workdir as workdir_lib
from diffjax.experiment import ExperimentSpec
from diffjax.faults import DataError, NumericalAbort, Preempted, PreemptionWatcher, RunFault
from diffjax.jobs.common import (abstract_batch, checkpointer, data_iterator, data_source,
                                 experiment_spec, generate_images, import_init, log,
                                 make_generator, make_mesh, sample_grid, state_setup)
from diffjax.training import (Checkpointer, LogWindow, MetricsWriter, Progress, parameter_count,
                              posthoc_ema)
from diffjax.training.feeder import DeviceFeeder
from diffjax.training.setup import jit_train_step


def _across_note(spec: ExperimentSpec) -> str:
  across = {axis: n for axis, n in spec.mesh.dcn if n > 1}
  return (f", {across} of it across {parallel.granules(jax.devices())[0]}" if across else "")


def run_periodic_eval(evaluator, generate, params, spec: ExperimentSpec,
                      step: int) -> dict[str, float]:
  """Scores ``eval.train_num_samples`` EMA samples; returns ``{"eval/<metric>": value}``."""
  n = spec.eval.train_num_samples
  x, labels = generate_images(generate, params, spec, n, jax.random.PRNGKey(spec.train.seed + 3),
                              spec.eval.batch_size, rounding=spec.eval.sample_uint8)
  scores = evaluator.score(x, labels if spec.method.conditional else None)
  log(f"eval at step {step} ({n} samples): " +
      ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
  return {f"eval/{k}": v for k, v in scores.items()}


def compile_step(setup, spec: ExperimentSpec, mesh):
  """The train step compiled ahead of time for the run's shapes and shardings; logs XLA's
  memory estimate per device (arguments, outputs and temporaries of the compiled program)."""
  batch = abstract_batch(spec, parallel.batch_sharding(mesh))
  t0 = time.time()
  compiled = jit_train_step(setup, mesh, spec.train, spec.faults).lower(
      setup.abstract, batch).compile()
  memory = compiled.memory_analysis()
  if memory is not None:
    mb = lambda n: f"{n / 2**20:.1f} MB"
    log(f"train step compiled in {time.time() - t0:.1f}s; memory per device: arguments "
        f"{mb(memory.argument_size_in_bytes)}, temporaries {mb(memory.temp_size_in_bytes)}, "
        f"outputs {mb(memory.output_size_in_bytes)} (aliased with donated arguments "
        f"{mb(memory.alias_size_in_bytes)})")
  return compiled


def _next_batch(feeder: DeviceFeeder, step: int):
  return _data_call(feeder.next, step)


def _fill(feeder: DeviceFeeder, step: int) -> None:
  _data_call(feeder.fill, step)


def _data_call(fn, step: int):
  try:
    return fn()
  except RunFault:
    raise
  except Exception as e:  # a worker's error arrives as whatever grain wraps it in
    if "unreadable" in str(e) or isinstance(e, DataError):
      raise DataError(f"at step {step}: {e}") from e
    raise


def _check_numerics(spec: ExperimentSpec, logged: dict, step: int, ckpt: Checkpointer):
  streak = int(logged.get("streak", 0))
  f = spec.faults
  if streak and (f.nonfinite == "abort" or
                 (f.max_consecutive_skips and streak >= f.max_consecutive_skips)):
    good = ckpt.all_steps()
    raise NumericalAbort(
        f"training aborted at step {step}: {streak} consecutive update(s) skipped "
        f"(non-finite or spiking loss; last logged loss {logged.get('loss')!r}, grad_norm "
        f"{logged.get('grad_norm')!r}) since step {step - streak + 1}. Last good checkpoint: "
        f"{'step %d in %s' % (good[-1], ckpt.directory) if good else 'none'}. Lower "
        f"optim.lr, raise optim.grad_clip or check the data, then relaunch to resume.")


def _posthoc_snapshots(spec: ExperimentSpec, setup, workdir):
  """The post-hoc EMA snapshot writer (None when off); logs its storage cost up front."""
  t = spec.train
  if not t.posthoc_ema_stds:
    return None
  per = sum(parameter_count(net.params) * 4 for net in setup.abstract.nets.values()
            if net.posthoc is not None) * len(t.posthoc_ema_stds)
  count = t.num_steps // t.posthoc_ema_every
  log(f"post-hoc EMA: profiles sigma_rel {list(t.posthoc_ema_stds)}, a snapshot every "
      f"{t.posthoc_ema_every} steps: {count} snapshots of {per / 2**20:.1f} MB = "
      f"{count * per / 2**30:.2f} GB in {workdir / 'posthoc_ema'}")
  return posthoc_ema.Snapshots(workdir / "posthoc_ema", t.posthoc_ema_stds)


def train(config, workdir: str) -> dict:
  """Trains (or resumes) the experiment described by ``config`` in ``workdir``.

  Returns:
    A summary: final step, last logged metrics, wall time, checkpoint steps.
  """
  start_time = time.time()
  spec = experiment_spec(config)
  is_main = jax.process_index() == 0
  workdir = workdir_lib.prepare(workdir, config, write=is_main)
  mesh = make_mesh(spec)
  setup = state_setup(spec, mesh)
  source = data_source(spec)
  iterator = data_iterator(spec, source, mesh)
  ckpt = checkpointer(spec, workdir)
  networks = ", ".join(
      f"{role} {parameter_count(net.params) / 1e6:.3g}M" + ("" if net.opt_state is not None
                                                            else " frozen")
      for role, net in setup.abstract.nets.items())
  log(f"experiment {spec.experiment!r}: method {spec.method.name} ({networks} parameters), "
      f"{len(source)} training examples, mesh {dict(mesh.shape)} over {jax.device_count()} "
      f"device(s) in {jax.process_count()} process(es)" + _across_note(spec))
  table, sizes = parallel.sharding_report(setup.abstract, setup.shardings)
  if is_main:
    (workdir / "sharding.txt").write_text(parallel.mesh_layout(mesh) + "\n\n" + table + "\n")
  offloaded = (f" (+ {sizes['host_mb']:.1f} MB of optimiser state in host memory)"
               if sizes["host_mb"] else "")
  log(f"train state ({spec.mesh.rules} rules): {sizes['total_mb']:.1f} MB in all, "
      f"{sizes['per_device_mb']:.1f} MB per device{offloaded}; the mesh's devices and every "
      f"array's split in {workdir / 'sharding.txt'}")

  state, restored_step, data_restored = ckpt.restore_latest(setup.abstract, iterator)
  window = LogWindow()
  if state is None:
    state = setup.init(jax.random.PRNGKey(spec.train.seed))
    if spec.init.path:  # fine-tuning: start from the imported checkpoint (and its EMA)
      role, params = import_init(spec, setup.abstract)
      net = state.nets[role]
      copy = lambda: jax.tree.map(lambda a: a.copy(), params)  # own buffers: state is donated
      state = state.with_net(role, net.replace(
          params=params, ema_params=copy() if net.ema_params is not None else None,
          posthoc=None if net.posthoc is None else tuple(copy() for _ in net.posthoc)))
  else:
    log(f"resumed from checkpoint at step {restored_step} in {workdir}")
    window = LogWindow(ckpt.log_window(restored_step))
    if not data_restored:
      iterator = data_iterator(spec, source, mesh, start_batch=restored_step)

  batch_sharding = parallel.batch_sharding(mesh)

  def to_devices(local):
    return (int(np.sum(local.pop("bad_records", 0))),
            parallel.global_batch(local, batch_sharding))

  evaluator = None
  if spec.eval.every_steps:
    from diffjax.evaluation.evaluator import Evaluator  # fails here, before any compile
    evaluator = Evaluator(spec.data, spec.eval, workdir, mesh)
  feeder = DeviceFeeder(iterator, to_devices, spec.data.prefetch)
  feeder.start_prefetch()  # data workers start up while the step compiles
  try:
    step_fn = compile_step(setup, spec, mesh)
  except BaseException:
    feeder.close()
    raise
  generate = make_generator(spec, mesh)
  writer = MetricsWriter(workdir, enabled=is_main, tensorboard=spec.logging.tensorboard)
  total = spec.train.num_steps
  step = int(jax.device_get(state.step))
  progress = Progress(step, total, spec.data.batch_size, enabled=is_main)
  sample_rng = jax.random.PRNGKey(spec.train.seed + 1)
  watcher = PreemptionWatcher(spec.faults.inject_preemption_steps)
  snapshots = _posthoc_snapshots(spec, setup, workdir)
  last = {}

  try:
    while step < total:
      bad, batch = _next_batch(feeder, step)
      state, metrics = step_fn(state, batch)
      step += 1
      if step < total:  # the host prepares the next batches while the devices compute
        _fill(feeder, step)
      window.add(metrics, bad)  # summed on device; read back only at log steps
      if step % spec.logging.log_every == 0 or step == total:
        last = window.read()
        last.update(progress.update(step))
        writer.write(step, last)
        progress.line(step, last)
        _check_numerics(spec, last, step, ckpt)
      if spec.sample.every_steps and step % spec.sample.every_steps == 0 and step != total:
        writer.image(step, "samples", sample_grid(generate, state.inference_variables, spec,
                                                  sample_rng), workdir / "samples")
      if evaluator and (step % spec.eval.every_steps == 0 or step == total):
        last.update(run_periodic_eval(evaluator, generate, state.inference_variables, spec, step))
        writer.write(step, last)
      if watcher.should_stop(step):
        ckpt.save(step, state, feeder, force=True, log_window=window.state())
        ckpt.wait()
        raise Preempted(f"{watcher.signal_name} received: saved the checkpoint of step {step} "
                        f"in {ckpt.directory}; launch again with the same --workdir to resume")
      if step % spec.checkpoint.every_steps == 0 or step == total:
        ckpt.save(step, state, feeder, metrics=last or None, log_window=window.state())
      if snapshots and step % spec.train.posthoc_ema_every == 0:
        snapshots.save(step, state)
    ckpt.wait()
    if spec.sample.at_end:
      writer.image(step, "samples", sample_grid(generate, state.inference_variables, spec,
                                                sample_rng), workdir / "samples")
    checkpoints = ckpt.all_steps()
  finally:
    watcher.close()
    if snapshots:
      snapshots.close()
    try:
      ckpt.close()
    finally:
      writer.close()
      feeder.close()
  summary = {"step": step, "metrics": last, "seconds": time.time() - start_time,
             "checkpoints": checkpoints, "workdir": str(workdir)}
  log(f"finished at step {step} in {summary['seconds']:.0f}s; outputs in {workdir}")
  return summary
