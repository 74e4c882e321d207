"""Device meshes, logical-axis sharding rules and multi-process helpers."""

from diffjax.parallel.mesh import (BATCH_AXES, MESH_AXES, batch_sharding, global_batch,
                                   logical_shardings, make_mesh, replicated)
from diffjax.parallel.rules import DATA_PARALLEL_RULES, rules_from_config
