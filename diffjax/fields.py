"""Config validation helpers shared by every job's spec: one error listing every bad field."""

from __future__ import annotations

from typing import Any, Callable


class ConfigError(ValueError):
  """A config that cannot run; the message names each offending field."""


class FieldChecker:
  """Collects every problem instead of stopping at the first."""

  def __init__(self):
    self.errors: list[str] = []

  def require(self, ok: bool, field: str, message: str) -> bool:
    if not ok:
      self.errors.append(f"config.{field}: {message}")
    return ok

  def attempt(self, field: str, fn: Callable[[], Any]) -> Any:
    try:
      return fn()
    except (ValueError, TypeError) as e:
      self.errors.append(f"config.{field}: {e}")
      return None

  def one_of(self, value, allowed, field: str) -> bool:
    return self.require(value in allowed, field,
                        f"got {value!r}; allowed: {', '.join(map(str, allowed))}")

  def positive_int(self, value, field: str, minimum: int = 1) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    return self.require(ok, field, f"must be an integer >= {minimum}, got {value!r}")

  def keywords(self, registry, name: str, pairs: tuple, field: str) -> tuple:
    """A free-form section's ``(key, value)`` pairs checked against what ``name`` in
    ``registry`` (a `diffjax.registry.Registry`) accepts, values coerced to its types."""
    checked = self.attempt(field, lambda: registry.check_kwargs(name, dict(pairs)))
    return tuple(sorted(checked.items())) if checked is not None else pairs
