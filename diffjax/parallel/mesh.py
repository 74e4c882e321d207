"""One `jax.sharding.Mesh` with named axes ``("data", "fsdp", "tensor")`` for every run.

Parameters carry logical axis names (see `diffjax.models.layers`); `logical_shardings` maps
them to mesh axes by rules, so the same code runs on 1 CPU, 8 fake CPU devices, a GPU or a
TPU pod. The batch is split over ``("data", "fsdp")``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def make_mesh(sizes: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh over all (or the given) devices with one size per axis of `MESH_AXES`.

  ``mesh_utils.create_device_mesh`` orders devices so that inner axes (tensor, fsdp) land on
  the fastest interconnect on TPU and GPU; on CPU the order is plain.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(int(sizes[a]) for a in MESH_AXES)
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, "
                     f"have {len(devices)}")
  try:
    grid = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, NotImplementedError, AssertionError):  # e.g. topologies it cannot tile
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_shardings(abstract_tree, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree whose leaves may be ``nn.Partitioned`` (logical names).

  Leaves without names (step counters, rng) are replicated.
  """
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def global_batch(local_batch, sharding: NamedSharding):
  """Assembles each process's slice of the batch into global arrays split over the batch axes."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
