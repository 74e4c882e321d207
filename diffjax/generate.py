"""Image generation from trained parameters, sharded over every device and process; shared by
the training loop's sample grids, ``--mode sample`` and evaluation."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from diffjax import diffusion, parallel
from diffjax.spec import DiffusionSpec, SampleSpec


class Generator:
  """``generator(params, rng, labels) -> uint8-ready float images [n, H, W, C] in [-1, 1]``.

  The batch is split over the mesh's batch axes (padded up to a multiple of their size) and
  the result is gathered to every process as a numpy array. Classifier-free guidance applies
  when ``sample_spec.guidance_scale != 1``.
  """

  def __init__(self, model: nn.Module, diffusion_spec: DiffusionSpec, sample_spec: SampleSpec,
               *, image_shape: tuple[int, ...], num_classes: int, conditional: bool, mesh):
    self.image_shape = tuple(image_shape)
    self.mesh = mesh
    self.sharding = parallel.batch_sharding(mesh)
    self.batch_devices = math.prod(mesh.shape[a] for a in parallel.BATCH_AXES)
    schedule, param = diffusion_spec.schedule, diffusion_spec.parameterization
    options = dict(sample_spec.options)

    def generate(params, rng, labels):
      net_fn = lambda x, level, cond: model.apply({"params": params}, x, level, cond)
      denoise = diffusion.make_denoiser(net_fn, param, schedule)
      kwargs = dict(sampler=sample_spec.sampler, num_steps=sample_spec.num_steps,
                    spacing=sample_spec.spacing, **options)
      if conditional:
        kwargs["cond"] = labels
        if sample_spec.guidance_scale != 1.0:
          kwargs.update(null_cond=num_classes, guidance_scale=sample_spec.guidance_scale)
      else:
        denoise = lambda x, t, _d=denoise: _d(x, t, None)
      shape = (labels.shape[0], *self.image_shape)
      return jnp.clip(diffusion.sample(denoise, schedule, shape, rng, **kwargs), -1.0, 1.0)

    self._generate = jax.jit(generate, out_shardings=self.sharding)

  def __call__(self, params, rng, labels) -> np.ndarray:
    labels = np.asarray(labels, np.int32)
    n = len(labels)
    padded = -(-n // self.batch_devices) * self.batch_devices
    labels = np.concatenate([labels, np.zeros(padded - n, np.int32)])
    global_labels = jax.make_array_from_callback(labels.shape, self.sharding,
                                                 lambda index: labels[index])
    x = self._generate(params, rng, global_labels)
    x = multihost_utils.process_allgather(x, tiled=True) if jax.process_count() > 1 else x
    return np.asarray(jax.device_get(x))[:n]


def grid_labels(num_images: int, num_classes: int) -> np.ndarray:
  """Labels ``0, 1, ..., C-1, 0, 1, ...``: with C grid columns each column is one class."""
  return (np.arange(num_images) % max(num_classes, 1)).astype(np.int32)
