"""Device meshes, logical-axis sharding rules and multi-process helpers."""

from diffjax.parallel.mesh import (BATCH_AXES, MESH_AXES, batch_sharding, global_batch,
                                   logical_shardings, make_mesh, replicated,
                                   sharding_report)
from diffjax.parallel.rules import (DATA_PARALLEL_RULES, RULE_SETS, get_rules,
                                    rules_from_config)
