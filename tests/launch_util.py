"""launch.py in a subprocess (from diffjax.testing.launching, re-exported for the tests) and the
tiny default config for in-process runs."""

from diffjax.testing.launching import ROOT, TEST_XLA_FLAGS, launch, subprocess_env

__all__ = ["ROOT", "TEST_XLA_FLAGS", "launch", "subprocess_env", "tiny_config"]


def tiny_config(**overrides):
  """The default config's ``:tiny`` variant without the final sample grid, with
  ``{"section.field": value}`` overrides (for in-process runs)."""
  from configs import default
  c = default.get_config("tiny")
  c.sample.at_end = False
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c
