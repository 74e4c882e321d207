"""Logical-axis rules: which mesh axis (if any) each logical parameter axis is split over.

Model code names every parameter axis (``diffjax.models.layers``); a rule set, chosen in the
config (``mesh.rules``), maps those names to mesh axes. Rules are tried in order and a mesh
axis is used at most once per array (flax's resolution), so ``("mlp", "embed")`` under the FSDP
rules splits ``mlp`` and keeps ``embed`` whole. An axis whose length the mesh axis does not
divide stays unsplit (see ``parallel.logical_shardings``).

* ``data_parallel``: every parameter replicated (the default).
* ``fsdp``: parameters and optimiser state split over the ``fsdp`` axis (ZeRO-3 style: XLA
  all-gathers each layer's weights for the forward and backward passes and reduce-scatters the
  gradients), so per-device parameter memory falls by the ``fsdp`` size.
* ``fsdp_tensor``: FSDP plus tensor parallelism: attention heads, MLP hidden units and
  convolution output channels over the ``tensor`` axis (Megatron-style), the rest over ``fsdp``.
"""

from __future__ import annotations

LOGICAL_AXES = ("embed", "mlp", "heads", "conv_in", "conv_out", "vocab", "norm")

DATA_PARALLEL_RULES: tuple[tuple[str, str | None], ...] = tuple((a, None) for a in LOGICAL_AXES)

RULE_SETS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "data_parallel": DATA_PARALLEL_RULES,
    "fsdp": (("mlp", "fsdp"), ("heads", "fsdp"), ("conv_out", "fsdp"), ("embed", "fsdp"),
             ("conv_in", "fsdp"), ("vocab", None), ("norm", None)),
    "fsdp_tensor": (("heads", "tensor"), ("mlp", "tensor"), ("conv_out", "tensor"),
                    ("embed", "fsdp"), ("conv_in", "fsdp"), ("vocab", None), ("norm", None)),
}


def get_rules(name: str) -> tuple[tuple[str, str | None], ...]:
  if name not in RULE_SETS:
    raise ValueError(f"unknown sharding rules {name!r}; allowed: {', '.join(RULE_SETS)}")
  return RULE_SETS[name]

