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

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import data as data_lib
from diffjax import images, parallel, workdir as workdir_lib
from diffjax.faults import DataError, NumericalAbort, Preempted, PreemptionWatcher, RunFault
from diffjax.generate import Generator, grid_labels
from diffjax.spec import ConfigError, ExperimentSpec, build_spec, mesh_size
from diffjax.training import Checkpointer, MetricsWriter, Progress, parameter_count
from diffjax.training.feeder import DeviceFeeder
from diffjax.training.setup import image_shape, jit_train_step, setup_state

_AVERAGED = ("loss", "grad_norm")  # metrics averaged over a log interval; others: last value


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(f"[diffjax] {message}", flush=True)


def make_mesh(spec: ExperimentSpec):
  try:
    return parallel.make_mesh(mesh_size(spec.mesh, jax.device_count()), dcn=dict(spec.mesh.dcn))
  except ValueError as e:  # the dcn sizes do not match the slices / processes found
    raise ConfigError(f"mesh: {e}") from e


def _across_note(spec: ExperimentSpec) -> str:
  across = {axis: n for axis, n in spec.mesh.dcn if n > 1}
  return (f", {across} of it across {parallel.granules(jax.devices())[0]}" if across else "")


def data_source(spec: ExperimentSpec, split: str | None = None):
  d = spec.data
  try:
    source = data_lib.make_source(d.source, name=d.name, split=split or d.split,
                                  data_dir=d.data_dir, path=d.path, image_key=d.image_key,
                                  label_key=d.label_key)
  except ValueError as e:
    raise ConfigError(f"config.data: {e}") from e
  return data_lib.GuardedSource(source, spec.faults.bad_records,
                                name=f"{d.source} {d.name or d.path or ''} {split or d.split}")


def data_iterator(spec: ExperimentSpec, source, mesh, start_batch: int = 0):
  """This process's checkpointable batch iterator, starting at global batch ``start_batch``:
  the rows of every global batch that this process's devices on ``mesh`` hold."""
  d = spec.data
  options = data_lib.PipelineOptions(
      image_size=d.image_size, channels=d.channels, random_flip=d.random_flip,
      batch_size=d.batch_size, num_workers=d.num_workers, seed=spec.train.seed)
  rows = parallel.process_batch_rows(mesh.devices, d.batch_size)
  return iter(data_lib.make_dataset(source, options, process_count=jax.process_count(),
                                    rows=rows, start_batch=start_batch))


def make_sample_generator(setup, spec: ExperimentSpec, mesh) -> Generator:
  return Generator(setup.model, spec.diffusion, spec.sample, image_shape=image_shape(spec),
                   num_classes=spec.data.num_classes, conditional=spec.model.conditional,
                   mesh=mesh)


def write_sample_grid(generate: Generator, params, spec: ExperimentSpec, path: pathlib.Path,
                      rng) -> None:
  """Samples ``sample.num_images`` images from ``params`` and saves them as one PNG grid."""
  x = generate(params, rng, grid_labels(spec.sample.num_images, spec.data.num_classes))
  if jax.process_index() == 0:
    ncols = spec.data.num_classes if spec.model.conditional else None
    images.save_png(path, images.make_grid(images.to_uint8(x), ncols=ncols,
                                           upscale=spec.sample.upscale))


def run_periodic_eval(evaluator, generate: Generator, params, spec: ExperimentSpec,
                      step: int) -> dict[str, float]:
  """Scores ``eval.train_num_samples`` EMA samples; returns ``{"eval/<metric>": value}``."""
  from diffjax.evaluate import generate as generate_images
  n = spec.eval.train_num_samples
  x, labels = generate_images(generate, params, spec, n, jax.random.PRNGKey(spec.train.seed + 3))
  scores = evaluator.score(x, labels if spec.model.conditional else None)
  log(f"eval at step {step} ({n} samples): " +
      ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
  return {f"eval/{k}": v for k, v in scores.items()}


def compile_step(setup, spec: ExperimentSpec, mesh):
  """The train step compiled ahead of time for the run's shapes and shardings; logs XLA's
  memory estimate per device (arguments, outputs and temporaries of the compiled program)."""
  sharding = parallel.batch_sharding(mesh)
  s, c, b = spec.data.image_size, spec.data.channels, spec.data.batch_size
  batch = {"image": jax.ShapeDtypeStruct((b, s, s, c), np.float32, sharding=sharding),
           "label": jax.ShapeDtypeStruct((b,), np.int32, sharding=sharding)}
  t0 = time.time()
  compiled = jit_train_step(setup, spec, mesh).lower(setup.abstract, batch).compile()
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


def train(config, workdir: str) -> dict:
  """Trains (or resumes) the experiment described by ``config`` in ``workdir``.

  Returns:
    A summary: final step, last logged metrics, wall time, checkpoint steps.
  """
  start_time = time.time()
  spec = build_spec(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  is_main = jax.process_index() == 0
  workdir = workdir_lib.prepare(workdir, config, write=is_main)
  mesh = make_mesh(spec)
  setup = setup_state(spec, mesh)
  source = data_source(spec)
  iterator = data_iterator(spec, source, mesh)
  ckpt = Checkpointer(workdir / "checkpoints", spec.checkpoint,
                      verify=spec.faults.verify_checkpoints, log=log)
  log(f"experiment {spec.experiment!r}: {spec.model.name} with "
      f"{parameter_count(setup.abstract.params) / 1e6:.2f}M parameters, "
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
  if state is None:
    state = setup.init(jax.random.PRNGKey(spec.train.seed))
  else:
    log(f"resumed from checkpoint at step {restored_step} in {workdir}")
    if not data_restored:
      iterator = data_iterator(spec, source, mesh, start_batch=restored_step)

  batch_sharding = parallel.batch_sharding(mesh)

  def to_devices(local):
    return (int(np.sum(local.pop("bad_records", 0))),
            parallel.global_batch(local, batch_sharding))

  evaluator = None
  if spec.eval.every_steps:
    from diffjax.evaluate import Evaluator  # fails here, before any compile, if no reference
    evaluator = Evaluator(spec, workdir, mesh)
  feeder = DeviceFeeder(iterator, to_devices, spec.data.prefetch)
  feeder.start_prefetch()  # data workers start up while the step compiles
  try:
    step_fn = compile_step(setup, spec, mesh)
  except BaseException:
    feeder.close()
    raise
  generate = make_sample_generator(setup, spec, mesh)
  writer = MetricsWriter(workdir, enabled=is_main, tensorboard=spec.logging.tensorboard)
  total = spec.train.num_steps
  step = int(jax.device_get(state.step))
  progress = Progress(step, total, spec.data.batch_size, enabled=is_main)
  sample_rng = jax.random.PRNGKey(spec.train.seed + 1)
  watcher = PreemptionWatcher()
  sums, count, last, bad_records = None, 0, {}, 0

  try:
    while step < total:
      bad, batch = _next_batch(feeder, step)
      bad_records += bad
      state, metrics = step_fn(state, batch)
      step += 1
      if step < total:  # the host prepares the next batches while the devices compute
        _fill(feeder, step)
      # Sum metrics on device; read them back only at log steps.
      averaged = {k: metrics[k] for k in _AVERAGED}
      sums = averaged if sums is None else jax.tree.map(jnp.add, sums, averaged)
      count += 1
      if step % spec.logging.log_every == 0 or step == total:
        fetched = jax.device_get((sums, metrics))
        last = {k: float(v) / count for k, v in fetched[0].items()}
        last.update({k: float(v) for k, v in fetched[1].items() if k not in _AVERAGED})
        last["bad_records"] = float(bad_records)
        last.update(progress.update(step))
        writer.write(step, last)
        progress.line(step, last)
        sums, count = None, 0
        _check_numerics(spec, last, step, ckpt)
      if spec.sample.every_steps and step % spec.sample.every_steps == 0 and step != total:
        write_sample_grid(generate, state.ema_params, spec,
                          workdir / "samples" / f"step_{step:07d}.png", sample_rng)
      if evaluator and (step % spec.eval.every_steps == 0 or step == total):
        last.update(run_periodic_eval(evaluator, generate, state.ema_params, spec, step))
        writer.write(step, last)
      if watcher.should_stop(step):
        ckpt.save(step, state, feeder, force=True)
        ckpt.wait()
        raise Preempted(f"{watcher.signal_name} received: saved the checkpoint of step {step} "
                        f"in {ckpt.directory}; launch again with the same --workdir to resume")
      if step % spec.checkpoint.every_steps == 0 or step == total:
        ckpt.save(step, state, feeder, metrics=last or None)
    ckpt.wait()
    if spec.sample.at_end:
      write_sample_grid(generate, state.ema_params, spec,
                        workdir / "samples" / f"step_{step:07d}.png", sample_rng)
    checkpoints = ckpt.all_steps()
  finally:
    watcher.close()
    try:
      ckpt.close()
    finally:
      writer.close()
      feeder.close()
  summary = {"step": step, "metrics": last, "seconds": time.time() - start_time,
             "checkpoints": checkpoints, "workdir": str(workdir)}
  log(f"finished at step {step} in {summary['seconds']:.0f}s; outputs in {workdir}")
  return summary
