"""One `jax.sharding.Mesh` with named axes ``("data", "fsdp", "tensor")`` for every run.

Parameters carry logical axis names (see `diffjax.models.layers`); `logical_shardings` maps
them to mesh axes by rules, so the same code runs on 1 CPU, 8 fake CPU devices, a GPU or a
TPU pod. The batch is split over ``("data", "fsdp")``.

Across TPU slices (or GPU/CPU hosts) the links are slower (DCN, Ethernet/InfiniBand) than within
one (ICI, NVLink). ``dcn`` sizes say how many of an axis's factors span those links: the mesh
``{"data": 4, "fsdp": 8}`` with ``dcn={"data": 2}`` on two slices of 16 chips is data
parallelism of 2 within each slice times 2 across them, with FSDP's all-gathers inside a slice.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import json
import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


DCN_AXES = ("data", "fsdp")  # axes that may span slices / hosts (tensor never should)


def granules(devices: Sequence[Any]) -> tuple[str, int]:
  """What the slow links join: ``("slices", n)`` when the devices belong to more than one TPU
  slice (multi-slice), else ``("processes", n)`` (GPU and CPU hosts, one process each)."""
  slices = {getattr(d, "slice_index", None) for d in devices}
  if len(slices) > 1 and None not in slices:
    return "slices", len(slices)
  return "processes", len({d.process_index for d in devices})


def device_grid(sizes: Mapping[str, int], devices: Sequence[Any],
                dcn: Mapping[str, int] | None = None) -> np.ndarray:
  """The devices arranged as the mesh's array, shape ``[sizes[a] for a in MESH_AXES]``.

  Without ``dcn`` (or with all its sizes 1) ``mesh_utils.create_device_mesh`` orders the
  devices so that inner axes (tensor, fsdp) land on the fastest interconnect on TPU and GPU; on
  CPU the order is plain. With ``dcn``, axis ``a`` is ``dcn[a]`` groups of slices or processes
  (outer) times ``sizes[a] / dcn[a]`` devices within each (``create_hybrid_device_mesh``), so
  only that axis's collectives cross the slow links.

  Raises:
    ValueError: naming the sizes that do not fit the devices.
  """
  devices = list(devices)
  shape = tuple(int(sizes[a]) for a in MESH_AXES)
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
                     f"have {len(devices)}")
  dcn = dict(dcn or {})
  unknown = sorted(set(dcn) - set(DCN_AXES))
  if unknown:
    raise ValueError(f"only {DCN_AXES} may span slices or hosts, got dcn sizes for {unknown}")
  dcn_shape = tuple(int(dcn.get(a, 1)) for a in MESH_AXES)
  if math.prod(dcn_shape) == 1:
    try:
      return mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):  # topologies it cannot tile
      return np.asarray(devices).reshape(shape)
  for axis, size, across in zip(MESH_AXES, shape, dcn_shape):
    if across < 1 or size % across:
      raise ValueError(f"mesh.{axis}={size} is not a multiple of mesh.dcn_{axis}={across}")
  kind, count = granules(devices)
  if math.prod(dcn_shape) != count:
    named = " x ".join(f"mesh.dcn_{a}={d}" for a, d in zip(MESH_AXES, dcn_shape) if d > 1)
    raise ValueError(f"{named} makes {math.prod(dcn_shape)} groups, but the {len(devices)} "
                     f"devices are in {count} {kind}")
  inner = tuple(size // across for size, across in zip(shape, dcn_shape))
  return mesh_utils.create_hybrid_device_mesh(inner, dcn_shape, devices,
                                              process_is_granule=kind == "processes")


def make_mesh(sizes: Mapping[str, int], devices: Sequence[Any] | None = None,
              dcn: Mapping[str, int] | None = None) -> Mesh:
  """A mesh over all (or the given) devices with one size per axis of `MESH_AXES`
  (``dcn``: the part of each size that spans slices or hosts, see `device_grid`)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(device_grid(sizes, devices, dcn), MESH_AXES)


def mesh_layout(mesh: Mesh) -> str:
  """Which device (id, process, TPU slice where known) sits at each mesh position, as JSON
  arrays indexed like the mesh (``data, fsdp, tensor``): where each axis's collectives run."""
  grid = np.asarray(mesh.devices)
  field = lambda f: json.dumps(np.vectorize(f, otypes=[int])(grid).tolist(), separators=(",", ":"))
  lines = [f"mesh {dict(mesh.shape)}", f"device ids: {field(lambda d: d.id)}",
           f"processes: {field(lambda d: d.process_index)}"]
  if all(getattr(d, "slice_index", None) is not None for d in grid.flat):
    lines.append(f"slices: {field(lambda d: d.slice_index)}")
  return "\n".join(lines)


def process_batch_rows(devices: np.ndarray, global_batch: int,
                       process_index: int | None = None) -> list[int]:
  """The rows of a global batch split over `BATCH_AXES` that one process's devices hold,
  ascending (the order ``jax.make_array_from_process_local_data`` reads its local data in).

  ``devices`` is the mesh's device array (``mesh.devices``). One run of rows per process when
  the mesh puts each process's devices together along the batch axes; several runs when it
  does not (e.g. ``mesh.dcn_fsdp`` with a data axis inside each host), and each process
  must read exactly those rows for the global batch to be the same as on one process.
  """
  process_index = jax.process_index() if process_index is None else process_index
  grid = np.asarray(devices)
  blocks = grid.shape[0] * grid.shape[1]  # (data, fsdp) positions, in the batch's order
  if global_batch % blocks:
    raise ValueError(f"global batch {global_batch} does not split over {blocks} devices")
  per_block = global_batch // blocks
  mine = [b for b, group in enumerate(grid.reshape(blocks, -1))
          if any(d.process_index == process_index for d in group)]
  return [b * per_block + r for b in mine for r in range(per_block)]


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
    if leaf is None:  # an absent part of the state (a network without EMA or optimiser)
      return None
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
