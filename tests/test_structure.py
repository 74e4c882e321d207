"""The house rules that can be checked mechanically (docs/ARCHITECTURE.md): imports point down
the layers, with no circle among diffjax's modules (imports inside functions included)."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffjax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str | None:
  """The diffjax module ``name`` refers to (a module, or the package holding a name)."""
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name or None


def imports_of(path: pathlib.Path) -> set[str]:
  """diffjax modules imported anywhere in a file (module level or inside functions)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    found.update(m for m in map(_resolve, names) if m)
  return found


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def _cycles(graph):
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_package_root_stays_light():
  assert GRAPH["diffjax"] == {"diffjax.api"}  # only inside diffjax.load


def test_the_checker_finds_a_planted_circle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert "diffjax.registry" in GRAPH["diffjax.diffusion.schedules"]


def test_no_import_circle_among_the_modules():
  assert _cycles(GRAPH) == []


def _under(module: str, package: str) -> bool:
  return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("layer,allowed", [
    ("diffjax.diffusion", ("diffjax.diffusion", "diffjax.registry")),
    ("diffjax.models", ("diffjax.models", "diffjax.registry")),
    ("diffjax.data", ("diffjax.data", "diffjax.fields", "diffjax.faults", "diffjax.images",
                      "diffjax.registry")),
    ("diffjax.training", ("diffjax.training", "diffjax.parallel", "diffjax.spec",
                          "diffjax.fields", "diffjax.faults", "diffjax.images", "diffjax.models",
                          "diffjax.registry")),
    ("diffjax.methods", ("diffjax.methods", "diffjax.training", "diffjax.spec", "diffjax.fields",
                         "diffjax.diffusion", "diffjax.models", "diffjax.registry")),
])
def test_layers_import_only_what_lies_below_them(layer, allowed):
  # "diffjax" itself: the package root, which holds only __version__
  bad = {m: sorted(i for i in GRAPH[m] if i != "diffjax" and not any(_under(i, a)
                                                                   for a in allowed))
         for m in GRAPH if _under(m, layer)}
  assert {m: v for m, v in bad.items() if v} == {}


def test_no_job_imports_another_job():
  jobs = {m for m in GRAPH if m.startswith("diffjax.jobs.") and m != "diffjax.jobs.common"}
  for job in jobs:
    assert not any(_under(i, "diffjax.jobs") and i != "diffjax.jobs.common"
                   for i in GRAPH[job]), (job, GRAPH[job])
  above = ("diffjax.jobs", "diffjax.api", "diffjax")  # diffjax.load uses the jobs' set-up
  assert not any(_under(i, "diffjax.jobs") for m in GRAPH if m not in above and not _under(
      m, "diffjax.jobs") for i in GRAPH[m])  # nothing below the jobs reaches up to them


def test_the_library_does_not_use_its_test_harnesses():
  assert [m for m in GRAPH if not _under(m, "diffjax.testing")
          and any(_under(i, "diffjax.testing") for i in GRAPH[m])] == []


def _path_edits_and_imports(path: pathlib.Path) -> str:
  """The lines of a file that import modules or add folders to sys.path."""
  return "\n".join(line for line in path.read_text().splitlines()
                   if re.match(r"\s*(import|from)\s|.*sys\.path", line))


def test_tests_and_experiments_do_not_import_each_other():
  for path in (ROOT / "tests").glob("*.py"):
    assert "experiments" not in _path_edits_and_imports(path), path
  for path in (ROOT / "experiments").rglob("*.py"):
    text = _path_edits_and_imports(path)
    assert not re.search(r"\btests\b|^\s*(from|import)\s+(launch_util|fault_injection)\b",
                         text, re.M), path


def test_launch_stays_a_thin_script():
  assert len((ROOT / "launch.py").read_text().splitlines()) < 100
