"""Image generation from trained parameters, sharded over every device and process; shared by
the training loop's sample grids, ``--mode sample`` and evaluation. Knows no method: it runs
a method's ``generate(params, rng, labels)``."""

from __future__ import annotations

import math
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from diffjax import parallel


class Generator:
  """``generator(params, rng, labels) -> float images [n, H, W, C] in [-1, 1]`` (numpy).

  The batch is split over the mesh's batch axes (padded up to a multiple of their size) and
  the result is gathered to every process as a numpy array.
  """

  def __init__(self, generate: Callable, mesh):
    self.mesh = mesh
    self.sharding = parallel.batch_sharding(mesh)
    self.batch_devices = math.prod(mesh.shape[a] for a in parallel.BATCH_AXES)
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
