"""Mutation testing of diffjax's core modules: plants each edit of `mutations.py` in a copy of
the source tree, runs the tests that should catch it there, and records caught / missed.

The shared working tree is never edited: the tree is copied once per run (from a commit with
``--rev``, or the working tree's files with ``--rev WORKTREE``), each mutation is applied to
the copy, its tests run with ``python -m pytest -x -q`` under a timeout, and the file is
restored. Every test selection is first run unmutated: a selection that fails without a mutation
makes that mutation's result ``invalid`` instead of a false "caught"; one that selects no test
(at an older commit, before the tests were written) counts as ``missed``.

  # the table's two columns (about 20 + 30 minutes on 2 cores):
  python experiments/mutation/run.py --rev 0c580d3 --label before
  python experiments/mutation/run.py --rev HEAD --label after
  # a few mutations against the working tree, while writing tests:
  python experiments/mutation/run.py --rev WORKTREE --label dev --only ema_swap,ddpm_large

Results: ``results_<label>.json`` beside this file, and ``results.md`` (the caught / missed
table of every label run so far) regenerated after each run. Not part of CI (too slow on
2 cores).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from mutations import MUTATIONS, Mutation  # noqa: E402

RESULT_ORDER = ("caught", "missed", "timeout", "crash", "invalid", "not applicable")


def copy_tree(rev: str, dest: pathlib.Path) -> str:
  """The repository at ``rev`` (a commit, or ``WORKTREE``: tracked and untracked, not ignored
  files as they are now) in ``dest / "main"``, with ``dest / "shared"`` pointing at the shared
  assets beside the repository (the tests look for ``../shared/assets``). Returns the commit."""
  main = dest / "main"
  main.mkdir(parents=True)
  if rev == "WORKTREE":
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
      src = REPO / f
      if src.is_file():
        (main / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, main / f)
    commit = "worktree of " + subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                             check=True, capture_output=True,
                                             text=True).stdout.strip()
  else:
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(main)], input=archive, check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
  shared = REPO.parent / "shared"
  if shared.exists():
    (dest / "shared").symlink_to(shared)
  return commit


def pytest_command(m: Mutation) -> list[str]:
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests]
  return cmd + (["-k", m.k] if m.k else [])


def run_pytest(cmd: list[str], cwd: pathlib.Path, env: dict, timeout: float):
  """``(outcome, seconds, tail)``: outcome is "pass", "fail", "none" (nothing selected or
  collected) or "timeout"."""
  start = time.time()
  try:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return "timeout", time.time() - start, ""
  tail = (r.stdout + r.stderr)[-1500:]
  if r.returncode == 0:
    # A selection whose every test skipped proves nothing.
    outcome = "none" if " passed" not in r.stdout else "pass"
  elif r.returncode in (4, 5):  # usage error (e.g. a missing file) / no tests collected
    outcome = "none"
  else:
    outcome = "fail"
  return outcome, time.time() - start, tail


def failure_lines(tail: str) -> list[str]:
  """pytest's summary lines of failed or erroring tests (none when the process crashed)."""
  return [ln for ln in tail.splitlines() if ln.startswith(("FAILED ", "ERROR "))]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rev", default="HEAD", help="commit to test, or WORKTREE")
  p.add_argument("--label", required=True, help="column name: results_<label>.json")
  p.add_argument("--only", default="", help="comma-separated mutation ids")
  p.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run")
  p.add_argument("--keep", action="store_true", help="keep the copied tree")
  p.add_argument("--merge", action="store_true",
                 help="with --only: replace those rows of an existing results_<label>.json of the "
                      "same commit instead of writing a new file")
  args = p.parse_args()
  chosen = [m for m in MUTATIONS if not args.only or m.id in args.only.split(",")]
  if not chosen:
    raise SystemExit(f"no mutation matches --only {args.only}")
  work = pathlib.Path(tempfile.mkdtemp(prefix="diffjax-mutation-"))
  commit = copy_tree(args.rev, work)
  tree = work / "main"
  env = dict(os.environ)
  env.pop("PYTHONPATH", None)
  # One persistent compilation cache for the whole run: a program no mutation changed is
  # compiled once (conftest.py and launch_util honour DIFFJAX_TEST_CACHE).
  env["DIFFJAX_TEST_CACHE"] = str(work / "jax-cache")
  results, baseline = [], {}
  started = time.time()
  print(f"mutation run {args.label!r} on {commit} in {tree}: {len(chosen)} mutations",
        flush=True)
  for m in chosen:
    path = tree / m.file
    row = {"id": m.id, "file": m.file, "what": m.what, "tests": m.selection(),
           "equivalent": m.equivalent}
    source = path.read_text() if path.exists() else ""
    count = source.count(m.original)
    if count != 1:
      row.update(result="not applicable",
                 detail=f"original text found {count} times in {m.file} at {commit}")
      results.append(row)
      print(f"  {m.id:28s} not applicable ({count} matches)", flush=True)
      continue
    cmd = pytest_command(m)
    key = " ".join(cmd)
    if key not in baseline:
      baseline[key] = run_pytest(cmd, tree, env, args.timeout)
    base, base_s, base_tail = baseline[key]
    if base == "none":  # the selection names no test that exists at this commit
      row.update(result="missed", detail="no test of the selection exists at this commit")
      results.append(row)
      print(f"  {m.id:28s} missed   (no test selected)", flush=True)
      continue
    if base != "pass":
      row.update(result="invalid", detail=f"unmutated selection: {base}", tail=base_tail)
      results.append(row)
      print(f"  {m.id:28s} invalid (unmutated: {base})", flush=True)
      continue
    path.write_text(source.replace(m.original, m.replacement))
    try:
      outcome, seconds, tail = run_pytest(cmd, tree, env, args.timeout)
      if outcome == "fail" and not failure_lines(tail):
        # No test failed: the process died (a crash under load, say). Run it again; a
        # mutation is caught only by a test that fails.
        outcome, seconds, tail = run_pytest(cmd, tree, env, args.timeout)
        if outcome == "fail" and not failure_lines(tail):
          outcome = "crash"
    finally:
      path.write_text(source)
    result = {"fail": "caught", "pass": "missed", "timeout": "timeout", "crash": "crash",
              "none": "caught"}[outcome]
    if outcome == "none":  # e.g. the mutation breaks an import: collection fails
      result = "caught"
    row.update(result=result, seconds=round(seconds, 1), baseline_seconds=round(base_s, 1))
    if result in ("caught", "crash"):  # pytest's one-line summary of the first failure
      row["detail"] = (failure_lines(tail) or tail.splitlines()[-1:] or [""])[0][:300]
    results.append(row)
    print(f"  {m.id:28s} {result:8s} {seconds:6.1f}s", flush=True)
  path = HERE / f"results_{args.label}.json"
  elapsed = round(time.time() - started)
  if args.merge and path.exists():
    old = json.loads(path.read_text())
    if old["commit"] != commit:
      raise SystemExit(f"--merge: {path} is of commit {old['commit']}, this run of {commit}")
    rows = {r["id"]: r for r in old["results"]}
    rows.update({r["id"]: r for r in results})
    results = [rows[m.id] for m in MUTATIONS if m.id in rows]
    elapsed += old["seconds"]
    only = sorted(set(old.get("merged", [])) | set(args.only.split(",")))
  else:
    only = []
  out = {"label": args.label, "rev": args.rev, "commit": commit,
         "date": datetime.datetime.now().isoformat(timespec="seconds"),
         "seconds": elapsed, "command": " ".join(
             ["python experiments/mutation/run.py", f"--rev {args.rev}",
              f"--label {args.label}"] + ([f"--only {args.only}"] if args.only and not only
                                          else [])),
         "results": results}
  if only:  # the mutations added by later --merge runs (same commit, same selections)
    out["merged"] = only
    out["command"] += f" (then --only {','.join(only)} --merge)"
  path.write_text(json.dumps(out, indent=1) + "\n")
  write_table()
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)
  print(summary(results), flush=True)


def summary(results: list[dict]) -> str:
  counts = {r: sum(x["result"] == r for x in results) for r in RESULT_ORDER}
  scored = [x for x in results if not x.get("equivalent") and x["result"] in (
      "caught", "missed", "timeout", "crash")]
  caught = sum(x["result"] in ("caught", "timeout", "crash") for x in scored)
  share = f"{caught}/{len(scored)} = {100 * caught / len(scored):.0f}%" if scored else "n/a"
  return (", ".join(f"{k}: {v}" for k, v in counts.items() if v) +
          f"; non-equivalent caught (timeouts and crashes count as caught): {share}")


def write_table() -> None:
  """results.md: one row per mutation, one column per label run (results_*.json)."""
  runs = [json.loads(p.read_text()) for p in sorted(HERE.glob("results_*.json"))]
  order = {"before": 0, "after": 1}
  runs.sort(key=lambda r: (order.get(r["label"], 2), r["label"]))
  by_label = {r["label"]: {x["id"]: x for x in r["results"]} for r in runs}
  lines = ["# Mutation testing: planted one-line bugs against the tests that should catch them",
           "", "Generated by `experiments/mutation/run.py` from `results_<label>.json`; the "
           "mutations are listed in `mutations.py` (file, original text, replacement, tests).",
           "", "| run | commit | date | duration | command | summary |", "|---|---|---|---|---|---|"]
  for r in runs:
    lines.append(f"| {r['label']} | {r['commit']} | {r['date']} | {r['seconds'] // 60} min "
                 f"{r['seconds'] % 60} s | `{r['command']}` | {summary(r['results'])} |")
  labels = [r["label"] for r in runs]
  lines += ["", "| id | file | planted bug | tests run | " + " | ".join(labels) + " |",
            "|---|---|---|---|" + "---|" * len(labels)]
  for m in MUTATIONS:
    cells = []
    for label in labels:
      x = by_label[label].get(m.id)
      cells.append("-" if x is None else x["result"])
    tag = f" (**equivalent**: {m.equivalent})" if m.equivalent else ""
    lines.append(f"| {m.id} | `{m.file}` | {m.what}{tag} | `{m.selection()}` | " +
                 " | ".join(cells) + " |")
  (HERE / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
