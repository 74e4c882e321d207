"""Methods by name: ``method.name`` in a config picks one (`register_method` adds one)."""

from __future__ import annotations

from diffjax.registry import Registry

METHODS = Registry("method")
register_method = METHODS.register  # class decorator: @register_method("name")


def method_class(name: str):
  """The registered class of ``name``; raises ValueError listing the allowed names."""
  return METHODS.get(name).factory
