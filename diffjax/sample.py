"""The sampling job: images from a workdir's latest checkpoint (EMA parameters) with any
sampler and step count, written as a PNG grid and an ``.npz`` (uint8 images and labels)."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from diffjax import images, workdir as workdir_lib
from diffjax.generate import grid_labels
from diffjax.spec import ConfigError, ExperimentSpec, build_spec
from diffjax.train import log, make_mesh, make_sample_generator
from diffjax.training import Checkpointer
from diffjax.training.setup import setup_state

_CHUNK = 256  # images per device call


def restore_for_inference(spec: ExperimentSpec, workdir: pathlib.Path, mesh):
  """``(setup, state, step)`` from the latest checkpoint; raises ConfigError if there is none."""
  setup = setup_state(spec, mesh)
  ckpt = Checkpointer(workdir / "checkpoints", spec.checkpoint,
                      verify=spec.faults.verify_checkpoints, log=log)
  try:
    state, step, _ = ckpt.restore_latest(setup.abstract)
  finally:
    ckpt.close()
  if state is None:
    raise ConfigError(f"no checkpoint in {workdir / 'checkpoints'}; train first "
                      f"(--mode train) or point --workdir at a trained run")
  return setup, state, step


def sample(config, workdir: str) -> pathlib.Path:
  """Writes ``sample.num_images`` samples; returns the path of the PNG grid."""
  spec = build_spec(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  workdir = workdir_lib.prepare(workdir, config, write=False)
  mesh = make_mesh(spec)
  setup, state, step = restore_for_inference(spec, workdir, mesh)
  generate = make_sample_generator(setup, spec, mesh)
  s = spec.sample
  labels = grid_labels(s.num_images, spec.data.num_classes)
  rng = jax.random.PRNGKey(spec.train.seed + 2)
  chunks = [generate(state.ema_params, jax.random.fold_in(rng, i), labels[i:i + _CHUNK])
            for i in range(0, s.num_images, _CHUNK)]
  x = images.to_uint8(np.concatenate(chunks))
  name = f"{s.sampler}_{s.num_steps}steps_step{step}"
  if s.guidance_scale != 1.0:
    name += f"_cfg{s.guidance_scale:g}"
  out = workdir / "samples" / name
  if jax.process_index() == 0:
    ncols = spec.data.num_classes if spec.model.conditional else None
    images.save_png(out.with_suffix(".png"), images.make_grid(x[:256], ncols=ncols,
                                                              upscale=s.upscale))
    np.savez_compressed(out.with_suffix(".npz"), images=x, labels=labels)
  log(f"wrote {s.num_images} samples from step {step} to {out}.png / .npz")
  return out.with_suffix(".png")
