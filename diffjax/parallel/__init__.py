"""Device meshes, logical-axis sharding rules and multi-process helpers."""

from diffjax.parallel.mesh import (BATCH_AXES, DCN_AXES, MESH_AXES, batch_sharding,
                                   device_grid, global_batch, granules, logical_shardings,
                                   make_mesh, mesh_layout, process_batch_rows, replicated,
                                   sharding_report)
from diffjax.parallel.rules import DATA_PARALLEL_RULES, RULE_SETS, get_rules
