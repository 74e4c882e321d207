"""Ablations from config files.

A config file may define ``get_sweep()`` returning a list of points, each a dict of
``"section.field": value`` overrides plus an optional ``"name"``::

  def get_sweep():
    return [{"name": "lr1e-3", "optim.lr": 1e-3}, {"name": "lr3e-4", "optim.lr": 3e-4}]

``launch.py --config F --workdir W --sweep`` runs each point as its own launch into ``W/<name>``
(one after another), or with ``--dry_run`` prints one command per point for a cluster queue.
Afterwards the points' last logged metrics (and evaluation results, where present) are collected
into ``W/sweep_results.md`` and ``W/sweep_results.csv``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import pathlib
import re
import shlex
import subprocess
import sys

from diffjax.fields import ConfigError
from diffjax.training.logger import read_metrics

_STRIP_FLAGS = ("--sweep", "--dry_run", "--nosweep", "--nodry_run")


def load_points(config_path: str) -> list[dict]:
  """Reads ``get_sweep()`` from a config file and checks the points' shape and names."""
  spec = importlib.util.spec_from_file_location("sweep_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"{config_path} defines no get_sweep(); nothing to sweep")
  points = module.get_sweep()
  if not isinstance(points, (list, tuple)) or not points:
    raise ConfigError(f"{config_path}: get_sweep() must return a non-empty list of dicts")
  named, seen = [], set()
  for i, point in enumerate(points):
    if not isinstance(point, dict):
      raise ConfigError(f"{config_path}: sweep point {i} is not a dict: {point!r}")
    overrides = {k: v for k, v in point.items() if k != "name"}
    name = str(point.get("name") or "_".join(f"{k.split('.')[-1]}={v}"
                                             for k, v in overrides.items()))
    name = re.sub(r"[^A-Za-z0-9_.=+-]", "_", name)
    if name in seen:
      raise ConfigError(f"{config_path}: two sweep points are named {name!r}")
    seen.add(name)
    named.append({"name": name, "overrides": overrides})
  return named


def _format_value(value) -> str:
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(_format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def point_command(argv: list[str], workdir: str, point: dict) -> list[str]:
  """The launch command of one point: the sweep's own arguments minus sweep flags, with the
  point's workdir and overrides."""
  cleaned, skip = [], False
  for a in argv[1:]:
    if skip:  # the value of a "--workdir W" pair
      skip = False
    elif a in ("--workdir", "-workdir"):
      skip = True
    elif a not in _STRIP_FLAGS and not a.lstrip("-").startswith("workdir="):
      cleaned.append(a)
  overrides = [f"--config.{k}={_format_value(v)}" for k, v in point["overrides"].items()]
  return [sys.executable, argv[0], *cleaned,
          f"--workdir={pathlib.Path(workdir) / point['name']}", *overrides]


def collect(workdir: str | pathlib.Path, points: list[dict]) -> list[dict]:
  """One row per point: its overrides, last logged metrics and evaluation results."""
  rows = []
  for point in points:
    run = pathlib.Path(workdir) / point["name"]
    metrics = read_metrics(run)
    row = {"name": point["name"], **{k: v for k, v in point["overrides"].items()}}
    if metrics:
      last = metrics[-1]
      row.update({"step": last["step"], **{k: v for k, v in last.items()
                                             if k in ("loss", "grad_norm")}})
    for result in sorted((run / "eval").glob("*.json")) if (run / "eval").exists() else []:
      data = json.loads(result.read_text())
      for k, v in data.get("metrics", {}).items():
        if isinstance(v, (int, float)):
          row[f"{result.stem}/{k}"] = v
    rows.append(row)
  return rows


def write_tables(workdir: str | pathlib.Path, rows: list[dict]) -> pathlib.Path:
  workdir = pathlib.Path(workdir)
  columns = list(dict.fromkeys(k for row in rows for k in row))
  with open(workdir / "sweep_results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
  path = workdir / "sweep_results.md"
  path.write_text("\n".join(lines) + "\n")
  return path


def run(config_flag, workdir: str, *, dry_run: bool, argv: list[str]) -> list[dict]:
  """Runs (or prints) every sweep point, then writes the results table."""
  # "configs/x.py:arg" -> the file; the argument stays in each point's command.
  filename = config_flag.config_filename.partition(".py:")[0].removesuffix(".py") + ".py"
  points = load_points(filename)
  commands = [point_command(argv, workdir, p) for p in points]
  if dry_run:
    for cmd in commands:
      print(shlex.join(cmd))
    return []
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  for point, cmd in zip(points, commands):
    print(f"[diffjax] sweep point {point['name']}: {shlex.join(cmd[1:])}", flush=True)
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
      print(f"[diffjax] sweep point {point['name']} failed with exit code "
            f"{result.returncode}; continuing", flush=True)
  rows = collect(workdir, points)
  path = write_tables(workdir, rows)
  print(f"[diffjax] sweep results: {path}", flush=True)
  return rows
