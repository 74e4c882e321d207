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

  Leaves without names (step counters, rng) are replicated. An array axis whose length the
  chosen mesh axis does not divide (say 3 output channels over 4 devices) stays unsplit.
  """
  specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  shapes = nn.meta.unbox(abstract_tree)

  def fit(spec, leaf):
    if not isinstance(spec, P):
      return NamedSharding(mesh, P())
    axes = []
    for dim, name in zip(leaf.shape, tuple(spec) + (None,) * (len(leaf.shape) - len(spec))):
      names = (name,) if isinstance(name, str) else tuple(name or ())
      size = int(np.prod([mesh.shape[n] for n in names])) if names else 1
      axes.append(name if names and dim % size == 0 else None)
    return NamedSharding(mesh, P(*axes))

  return jax.tree.map(fit, mesh_specs, shapes,
                      is_leaf=lambda x: isinstance(x, P) or x is None)


def sharding_report(abstract_tree, shardings) -> tuple[str, dict[str, float]]:
  """A table of every array's shape and split, and the bytes per device it adds up to
  (``per_device_mb`` in device memory, ``host_mb`` per device in host memory: offloaded)."""
  leaves = jax.tree_util.tree_leaves_with_path(abstract_tree)
  shard_leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  lines, total, per_device, host = [], 0, 0, 0
  for (path, leaf), sharding in zip(leaves, shard_leaves):
    nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    local = sharding.shard_shape(leaf.shape)
    local_bytes = int(np.prod(local)) * np.dtype(leaf.dtype).itemsize
    total += nbytes
    on_host = sharding.memory_kind in ("pinned_host", "unpinned_host")
    host += local_bytes if on_host else 0
    per_device += 0 if on_host else local_bytes
    name = jax.tree_util.keystr(path).replace(".value", "")
    lines.append(f"{name:90s} {str(tuple(leaf.shape)):22s} {str(tuple(sharding.spec)):32s} "
                 f"{local_bytes / nbytes:6.3f}" + (" host" if on_host else ""))
  header = f"{'array':90s} {'shape':22s} {'mesh axes':32s} {'share':>6s}"
  return "\n".join([header, *lines]), {"total_mb": total / 2**20,
                                       "per_device_mb": per_device / 2**20,
                                       "host_mb": host / 2**20}


def global_batch(local_batch, sharding: NamedSharding):
  """Assembles each process's slice of the batch into global arrays split over the batch axes."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
