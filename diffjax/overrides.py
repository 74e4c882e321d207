"""Command-line overrides of free-form config sections.

Configs are locked: ``--config.a.b=v`` may only set a field the config file defines. Sections
that hold keyword arguments for a target chosen by name (a section named ``kwargs`` or
``options``, or ending in ``_kwargs``: ``model.kwargs``, ``sample.options``,
``diffusion.schedule_kwargs``, ``eval.grid``, ...) take any key instead, so that the command line and
``get_sweep()`` reach every knob of the network, sampler or schedule. Their keys are checked
later, against the target's signature, when the experiment spec is built (before any compute);
a misspelt key is an error listing the keywords the target accepts.

`split_free_form` takes such overrides out of the argument list before absl parses it (absl
would refuse a key the section does not define yet); `apply_free_form` sets them on the
loaded config.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Sequence

from diffjax.fields import ConfigError
from diffjax.registry import coerce


def is_free_form(section: str) -> bool:
  return section in ("kwargs", "options", "grid") or section.endswith("_kwargs")


def literal(text: str) -> Any:
  """A command-line value as a Python literal (``40``, ``0.5``, ``(1, 2)``, ``None``), else
  the text itself (``full``, ``false``: the target's default type decides, see
  `diffjax.registry.coerce`)."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def split_free_form(argv: Sequence[str], flag: str = "config"
                    ) -> tuple[list[str], list[tuple[str, str]]]:
  """``argv`` without the overrides of free-form sections, and those as ``(path, text)``.

  Both ``--config.a.kwargs.k=v`` and ``--config.a.kwargs.k v`` are recognised.
  """
  prefix = f"--{flag}."
  kept, found = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    name, eq, value = arg.partition("=")
    parts = name[len(prefix):].split(".") if name.startswith(prefix) else []
    if len(parts) >= 2 and any(is_free_form(p) for p in parts[:-1]):
      if not eq and i + 1 < len(argv):
        value, i = argv[i + 1], i + 1
      found.append((".".join(parts), value))
    else:
      kept.append(arg)
    i += 1
  return kept, found


def apply_free_form(config, overrides: Sequence[tuple[str, str]]) -> None:
  """Sets each ``(path, text)`` on ``config`` (its free-form section is unlocked for it).

  Raises:
    ConfigError: the path's section does not exist in the config, or the value does not fit
      the type of a key the config file defines.
  """
  for path, text in overrides:
    *sections, key = path.split(".")
    node = config
    for name in sections:
      if name not in node:
        raise ConfigError(f"--config.{path}: the config has no section "
                       f"{'.'.join(sections[:sections.index(name) + 1])!r}")
      node = node[name]
    value = literal(text)
    if key in node:  # keep the type the config file gave it (bool from "false", float from 4)
      value = coerce(value, node[key])
    with node.unlocked():
      try:
        node[key] = value
      except TypeError as e:
        raise ConfigError(f"--config.{path}={text}: {e}") from None


def flag_error_message(error: Exception, argv: Sequence[str]) -> str:
  """One line for a command line that absl or ml_collections refused."""
  if isinstance(error, (KeyError, AttributeError)):  # a field the locked config lacks
    name = str(error).split("\\n")[0].strip("'\"\\")
    bad = [a.split("=")[0] for a in argv if a.startswith("--config.") and name in a]
    hint = str(error).split("\\n")[1].strip("'\"") if "\\n" in str(error) else ""
    return (f"{bad[0] if bad else name}: no such config field (configs are locked: only "
            f"fields defined by the config file, or keys of a kwargs/options section, can be "
            f"overridden). {hint}").rstrip()
  text = str(error).replace("\\n", " ").replace("\\'", "'").replace("' Did", ": did")
  if text[:1] in "'\"" and text[-1:] == text[:1]:  # absl quotes some messages whole
    text = text[1:-1]
  if "Traceback" in text:  # a config file's own error: keep its last line
    text = text.split("Traceback")[0].strip() + " " + text.strip().splitlines()[-1]
  m = re.match(r"flag (--config\.[\w.]+=\S*): (.*)", text)
  if m:  # a value of the wrong type for its field
    return f"{m.group(1)}: not a value of that field's type ({m.group(2)})"
  return f"bad command line: {text}"


def config_file_error(error: OSError) -> str:
  """One line for a ``--config`` file that could not be loaded."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f"--config: {lines[-1] if lines else error}"
