"""The sampling job: images from a workdir's latest checkpoint (EMA parameters where kept)
with the method's configured sampler, written as a PNG grid and an ``.npz`` (uint8 images and
labels)."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from diffjax import images, workdir as workdir_lib
from diffjax.jobs.common import (experiment_spec, generate_images, grid_columns, log,
                                 make_generator, make_mesh, restore_for_inference)

_CHUNK = 256  # images per device call


def sample(config, workdir: str) -> pathlib.Path:
  """Writes ``sample.num_images`` samples; returns the path of the PNG grid."""
  spec = experiment_spec(config)
  workdir = workdir_lib.prepare(workdir, config, write=False)
  mesh = make_mesh(spec)
  params, step = restore_for_inference(spec, workdir, mesh)
  n = spec.sample.num_images
  x, labels = generate_images(make_generator(spec, mesh), params, spec, n,
                              jax.random.PRNGKey(spec.train.seed + 2), _CHUNK)
  out = workdir / "samples" / f"{spec.method.sampling_tag()}_step{step}"
  if jax.process_index() == 0:
    images.save_png(out.with_suffix(".png"), images.make_grid(
        x[:256], ncols=grid_columns(spec), upscale=spec.sample.upscale))
    np.savez_compressed(out.with_suffix(".npz"), images=x, labels=labels)
  log(f"wrote {n} samples from step {step} to {out}.png / .npz")
  return out.with_suffix(".png")
