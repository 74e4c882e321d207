"""Logical-axis rules: which mesh axis (if any) each logical parameter axis is split over.

Data parallelism replicates every parameter. Other layouts (FSDP, tensor parallel) are rule
sets chosen in the config; model code never changes.
"""

from __future__ import annotations

LOGICAL_AXES = ("embed", "mlp", "heads", "conv_in", "conv_out", "vocab", "norm")

DATA_PARALLEL_RULES: tuple[tuple[str, str | None], ...] = tuple((a, None) for a in LOGICAL_AXES)


def rules_from_config(pairs) -> tuple[tuple[str, str | None], ...]:
  """Rules from ``[(logical, mesh_axis or None), ...]``; logical axes not named stay replicated."""
  given = {}
  for logical, mesh_axis in pairs:
    if logical not in LOGICAL_AXES:
      raise ValueError(f"unknown logical axis {logical!r}; allowed: {', '.join(LOGICAL_AXES)}")
    given[logical] = mesh_axis or None
  return tuple((a, given.get(a)) for a in LOGICAL_AXES)
