"""The training job: config -> validated spec -> mesh, data, state -> loop.

The loop logs only at log steps (metrics are summed on device in between, no host syncs),
writes sample grids from the EMA parameters, and checkpoints state and data position
asynchronously. A second launch on the same workdir resumes from its latest checkpoint and
continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import functools
import pathlib
import time

import jax
import jax.numpy as jnp

from diffjax import data as data_lib
from diffjax import images, parallel, workdir as workdir_lib
from diffjax.generate import Generator, grid_labels
from diffjax.parallel.rules import DATA_PARALLEL_RULES
from diffjax.spec import ExperimentSpec, build_spec, mesh_size
from diffjax.training import (Checkpointer, MetricsWriter, Progress, parameter_count,
                              train_step)
from diffjax.training.setup import image_shape, setup_state


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(f"[diffjax] {message}", flush=True)


def make_mesh(spec: ExperimentSpec):
  return parallel.make_mesh(mesh_size(spec.mesh, jax.device_count()))


def data_iterator(spec: ExperimentSpec):
  """This process's checkpointable batch iterator."""
  d = spec.data
  source = data_lib.make_source(d.source, name=d.name, split=d.split, data_dir=d.data_dir,
                                path=d.path, image_key=d.image_key, label_key=d.label_key)
  options = data_lib.PipelineOptions(
      image_size=d.image_size, channels=d.channels, random_flip=d.random_flip,
      batch_size=d.batch_size, num_workers=d.num_workers,
      seed=spec.train.seed)
  dataset = data_lib.make_dataset(source, options, process_index=jax.process_index(),
                                  process_count=jax.process_count())
  return iter(dataset), len(source)


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
  setup = setup_state(spec, mesh, DATA_PARALLEL_RULES)
  iterator, num_examples = data_iterator(spec)
  ckpt = Checkpointer(workdir / "checkpoints", spec.checkpoint)
  log(f"experiment {spec.experiment!r}: {spec.model.name} with "
      f"{parameter_count(setup.abstract.params) / 1e6:.2f}M parameters, "
      f"{num_examples} training examples, mesh {dict(mesh.shape)} over {jax.device_count()} "
      f"device(s) in {jax.process_count()} process(es)")

  latest = ckpt.latest_step()
  if latest is not None:
    state = ckpt.restore(latest, setup.abstract, iterator)
    log(f"resumed from checkpoint at step {latest} in {workdir}")
  else:
    state = setup.init(jax.random.PRNGKey(spec.train.seed))

  batch_sharding = parallel.batch_sharding(mesh)
  step_fn = jax.jit(
      functools.partial(train_step, model=setup.model, diffusion_spec=spec.diffusion,
                        optimizer=setup.optimizer, lr_schedule=setup.lr_schedule,
                        ema_decay=spec.train.ema_decay, ema_warmup=spec.train.ema_warmup,
                        conditional=spec.model.conditional),
      in_shardings=(setup.shardings, batch_sharding),
      out_shardings=(setup.shardings, parallel.replicated(mesh)), donate_argnums=0)
  generate = make_sample_generator(setup, spec, mesh)
  evaluator = None
  if spec.eval.every_steps:
    from diffjax.evaluate import Evaluator  # fails here, before training, if no reference
    evaluator = Evaluator(spec, workdir, mesh)
  writer = MetricsWriter(workdir, enabled=is_main, tensorboard=spec.logging.tensorboard)
  total = spec.train.num_steps
  step = int(jax.device_get(state.step))
  progress = Progress(step, total, spec.data.batch_size, enabled=is_main)
  sample_rng = jax.random.PRNGKey(spec.train.seed + 1)
  sums, count, last = None, 0, {}

  try:
    while step < total:
      batch = parallel.global_batch(next(iterator), batch_sharding)
      state, metrics = step_fn(state, batch)
      step += 1
      # Sum metrics on device; read them back only at log steps.
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
      count += 1
      if step % spec.logging.log_every == 0 or step == total:
        last = {k: float(v) / count for k, v in jax.device_get(sums).items()}
        last["lr"] = float(jax.device_get(metrics["lr"]))
        last.update(progress.update(step))
        writer.write(step, last)
        progress.line(step, last)
        sums, count = None, 0
      if spec.sample.every_steps and step % spec.sample.every_steps == 0 and step != total:
        write_sample_grid(generate, state.ema_params, spec,
                          workdir / "samples" / f"step_{step:07d}.png", sample_rng)
      if evaluator and (step % spec.eval.every_steps == 0 or step == total):
        last.update(run_periodic_eval(evaluator, generate, state.ema_params, spec, step))
        writer.write(step, last)
      if step % spec.checkpoint.every_steps == 0 or step == total:
        ckpt.save(step, state, iterator, metrics=last or None)
    ckpt.wait()
    if spec.sample.at_end:
      write_sample_grid(generate, state.ema_params, spec,
                        workdir / "samples" / f"step_{step:07d}.png", sample_rng)
    checkpoints = ckpt.all_steps()
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
  summary = {"step": step, "metrics": last, "seconds": time.time() - start_time,
             "checkpoints": checkpoints, "workdir": str(workdir)}
  log(f"finished at step {step} in {summary['seconds']:.0f}s; samples in {workdir / 'samples'}")
  return summary
