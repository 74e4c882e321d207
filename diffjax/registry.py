"""Name -> implementation tables with keyword checking, shared by every registry of diffjax
(networks, schedules, parameterisations, samplers, methods).

A registry maps a name to a factory (a class or a function) plus default keyword arguments.
`Registry.build` refuses an unknown name with the allowed names, and an unknown keyword with the
keywords that implementation accepts, so a config's free-form ``kwargs`` / ``options`` section
is checked against its target's signature before any compute. Values that came through a
command line as text are coerced to the type of the keyword's default (``"false"`` -> False for
a bool, 40 -> 40.0 for a float, a list -> a tuple).

This module imports nothing else of diffjax.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

_REQUIRED = object()
_SKIPPED_FIELDS = ("parent", "name")  # flax modules' bookkeeping fields


@dataclasses.dataclass(frozen=True)
class Entry:
  factory: Callable[..., Any]
  defaults: Mapping[str, Any]  # registered keyword arguments (a variant's hyper-parameters)
  keywords: Mapping[str, Any]  # every keyword the factory accepts -> its default (or _REQUIRED)


def accepted_keywords(factory: Callable[..., Any]) -> dict[str, Any]:
  """The keyword arguments a class (dataclass fields) or function takes, with defaults."""
  if dataclasses.is_dataclass(factory):
    out = {}
    for f in dataclasses.fields(factory):
      if f.name in _SKIPPED_FIELDS or not f.init:
        continue
      if f.default is not dataclasses.MISSING:
        out[f.name] = f.default
      elif f.default_factory is not dataclasses.MISSING:
        out[f.name] = f.default_factory()
      else:
        out[f.name] = _REQUIRED
    return out
  out = {}
  for p in inspect.signature(factory).parameters.values():
    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
      out[p.name] = _REQUIRED if p.default is p.empty else p.default
  return out


def coerce(value: Any, default: Any) -> Any:
  """``value`` in the type of ``default`` where a command line would have lost it."""
  if isinstance(default, bool):
    if isinstance(value, str) and value.lower() in ("true", "false"):
      return value.lower() == "true"
    return value
  if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if isinstance(default, tuple) and isinstance(value, list):
    return tuple(value)
  return value


class Registry:
  """``name -> Entry``; ``kind`` names the table in error messages ("model variant"),
  ``argument`` what its keywords are called there ("argument", "option")."""

  def __init__(self, kind: str, argument: str = "argument"):
    self.kind, self.argument = kind, argument
    self._entries: dict[str, Entry] = {}

  def add(self, name: str, factory: Callable[..., Any], *, keywords: Mapping[str, Any] | None = None,
          **defaults) -> None:
    """Registers ``factory`` under ``name``; ``keywords`` overrides the accepted keywords
    (default: read from the factory). A duplicate name or an unknown default raises."""
    if name in self._entries:
      raise ValueError(f"{self.kind} {name!r} is already registered")
    accepted = dict(accepted_keywords(factory) if keywords is None else keywords)
    unknown = sorted(set(defaults) - set(accepted))
    if unknown:
      raise ValueError(f"{self.kind} {name!r}: {getattr(factory, '__name__', factory)} takes no "
                       f"argument(s) {unknown}")
    self._entries[name] = Entry(factory, dict(defaults), accepted)

  def register(self, name: str, **defaults) -> Callable:
    """Decorator form of `add`; sets ``cls.name`` on classes that have no field of that name."""

    def add(factory):
      self.add(name, factory, **defaults)
      fields = ({f.name for f in dataclasses.fields(factory)}
                if dataclasses.is_dataclass(factory) else set())
      if isinstance(factory, type) and "name" not in fields:  # flax modules have a name field
        factory.name = name
      return factory

    return add

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def get(self, name: str) -> Entry:
    if name not in self._entries:
      raise ValueError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self._entries)}")
    return self._entries[name]

  def check_kwargs(self, name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` checked against what ``name`` accepts and coerced to its defaults' types.

    Raises:
      ValueError: unknown name, or keywords ``name`` does not take (the accepted ones listed).
    """
    entry = self.get(name)
    unknown = sorted(set(kwargs) - set(entry.keywords))
    if unknown:
      raise ValueError(f"{self.kind} {name!r} got unknown {self.argument}(s) {unknown}; allowed: "
                       f"{sorted(entry.keywords) or 'none'}")
    defaults = {**entry.keywords, **entry.defaults}
    return {k: coerce(v, defaults[k]) for k, v in kwargs.items()}

  def build(self, name: str, **kwargs) -> Any:
    """``factory(**defaults, **kwargs)`` after `check_kwargs`."""
    entry = self.get(name)
    return entry.factory(**{**entry.defaults, **self.check_kwargs(name, kwargs)})
