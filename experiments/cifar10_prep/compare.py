"""The preparation before issue 32 against the current one on CIFAR-10, back to back on the same
machine (so both see the same load): images/s end to end, and the train copies of test images
each finds (both, only the old, only the new).

  python experiments/cifar10_prep/compare.py [--old_commit 7e837a0]   # writes compare.md here

The old code runs from a temporary `git worktree` of --old_commit (the last commit before
issue 32's changes to diffjax/data/prep), with this checkout's virtual environment.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ASSETS = ROOT.parent / "shared" / "assets"


def prepare(code_root: pathlib.Path, workdir: pathlib.Path) -> tuple[float, tuple, dict, list]:
  cmd = [sys.executable, "launch.py", "--mode=prep", "--config=configs/prep_cifar10.py",
         f"--workdir={workdir}",
         f"--config.source.path={ASSETS / 'data/cifar10_jpeg/cifar10-jpeg-q75.tar.gz'}",
         f"--config.privacy.face_model={ASSETS / 'faces/face_detection_yunet_2023mar.onnx'}",
         "--config.runner.num_workers=2"]
  load = os.getloadavg()[0]
  start = time.time()
  proc = subprocess.run(cmd, cwd=code_root, capture_output=True, text=True)
  wall = time.time() - start
  if proc.returncode:
    raise SystemExit(f"{code_root}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
  manifest = json.loads((workdir / "manifest.json").read_text())
  rejected = [json.loads(line) for line in (workdir / "rejected.jsonl").read_text().splitlines()]
  return wall, (load, os.getloadavg()[0]), manifest, rejected


def leaks(rejected) -> set[str]:
  return {r["id"] for r in rejected
          if r["reason"].endswith("duplicate") and "(cross-split)" in r["detail"]}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--old_commit", default="7e837a0")
  args = ap.parse_args()
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="prep-compare-"))
  old_tree = tmp / "old"
  subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.old_commit],
                 cwd=ROOT, check=True, capture_output=True)
  try:
    runs = {"before issue 32": prepare(old_tree, tmp / "old_out"),
            "now": prepare(ROOT, tmp / "new_out")}
  finally:
    subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT,
                   capture_output=True)
  found = {name: leaks(r[3]) for name, r in runs.items()}
  old, new = found["before issue 32"], found["now"]
  lines = ["# CIFAR-10 preparation before issue 32 and now, back to back (measured)", "",
           f"`python experiments/cifar10_prep/compare.py` (old code: commit {args.old_commit}, "
           f"run from a git worktree; {os.cpu_count()} cores, 2 DirectRunner workers each).", "",
           "| code | wall s | images/s | load avg before / after | near duplicates dropped | "
           "train copies of test images |", "|---|---|---|---|---|---|"]
  for name, (wall, load, manifest, rejected) in runs.items():
    dropped = manifest["counts"]["dropped"]
    lines.append(f"| {name} | {wall:.1f} | {60000 / wall:.0f} | {load[0]:.1f} / {load[1]:.1f} "
                 f"| {dropped.get('near_duplicate', 0)} | {len(found[name])} |")
  lines += ["", f"Train copies of test images: found by both {len(old & new)}, only before "
            f"{len(old - new)}, only now {len(new - old)}.", ""]
  (HERE / "compare.md").write_text("\n".join(lines))
  (tmp / "ids.json").write_text(json.dumps({"only_before": sorted(old - new),
                                            "only_now": sorted(new - old)}, indent=1))
  print("\n".join(lines))
  print(f"ids in {tmp / 'ids.json'}")
  shutil.rmtree(tmp / "old_out", ignore_errors=True)
  shutil.rmtree(tmp / "new_out", ignore_errors=True)


if __name__ == "__main__":
  main()
