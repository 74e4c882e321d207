"""CIFAR-10 JPEGs (60,000) -> 32x32 ArrayRecord shards with a data card, then a short training
run that reads those shards through the normal config.

  python experiments/cifar10_prep/run.py [--archive PATH] [--data data/cifar10_prep]
      [--train_steps 150]

Writes into this folder: DATACARD.md, manifest.json, examples.png, rejected.png (copied from
the prepared dataset) and results.md (wall time, images/s end to end and by stage, and the
training run's first and last loss). The shards themselves stay in --data (not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_ARCHIVE = ROOT.parent / "shared/assets/data/cifar10_jpeg/cifar10-jpeg-q75.tar.gz"


def run(cmd: list[str]) -> str:
  print("+", " ".join(cmd), flush=True)
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  sys.stderr.write(proc.stderr[-3000:])
  if proc.returncode:
    raise SystemExit(f"{cmd[2:4]} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
  return proc.stdout


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--archive", default=str(DEFAULT_ARCHIVE))
  ap.add_argument("--data", default=str(ROOT / "data" / "cifar10_prep"))
  ap.add_argument("--workers", type=int, default=2)
  ap.add_argument("--train_steps", type=int, default=150)
  args = ap.parse_args()
  if not os.path.exists(args.archive):
    raise SystemExit(f"CIFAR-10 JPEG archive not found at {args.archive} (--archive)")
  data = pathlib.Path(args.data)
  if data.exists():
    shutil.rmtree(data)  # a fresh preparation, so the timing covers every stage

  load_before = os.getloadavg()
  start = time.time()
  out = run([sys.executable, "launch.py", "--mode=prep", "--config=configs/prep_cifar10.py",
             f"--workdir={data}", f"--config.source.path={args.archive}",
             f"--config.runner.num_workers={args.workers}"])
  prep_wall = time.time() - start
  load_after = os.getloadavg()
  print(out)
  for name in ("DATACARD.md", "manifest.json", "examples.png", "rejected.png", "faces.png"):
    shutil.copy(data / name, HERE / name)
    os.chmod(HERE / name, 0o644)  # published copies; the dataset itself stays owner-only
  manifest = json.loads((data / "manifest.json").read_text())

  rerun_start = time.time()
  run([sys.executable, "launch.py", "--mode=prep", "--config=configs/prep_cifar10.py",
       f"--workdir={data}", f"--config.source.path={args.archive}",
       f"--config.runner.num_workers={args.workers}"])
  rerun_wall = time.time() - rerun_start
  again = json.loads((data / "manifest.json").read_text())

  workdir = ROOT / "runs" / "cifar10_prep_train"
  shutil.rmtree(workdir, ignore_errors=True)
  train_start = time.time()
  run([sys.executable, "launch.py", "--config=configs/cifar10_ddpm.py:tiny",
       f"--workdir={workdir}", "--config.data.source=array_record",
       f"--config.data.path={data}/32px/train-*", f"--config.train.num_steps="
       f"{args.train_steps}", "--config.logging.log_every=25",
       "--config.optim.warmup_steps=10", "--config.optim.lr=1e-3",
       "--config.sample.at_end=False"])
  train_wall = time.time() - train_start
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]

  t = manifest["throughput"]
  c = manifest["counts"]
  near = manifest["dedup"]["near"]
  rejected = [json.loads(line) for line in (data / "rejected.jsonl").read_text().splitlines()]
  leaks = [r for r in rejected if r["reason"] == "near_duplicate" and "(cross-split)" in
           r["detail"]]
  exact_leaks = [r for r in rejected if r["reason"] == "exact_duplicate" and "(cross-split)" in
                 r["detail"]]
  lines = [
      "# CIFAR-10 JPEG preparation (measured)", "",
      f"Command: `python experiments/cifar10_prep/run.py` ({args.workers} DirectRunner "
      f"workers, this machine: {os.cpu_count()} cores). Data card: [DATACARD.md](DATACARD.md).",
      "",
      f"- Inputs {c['inputs']}, kept {c['kept_total']} ({c['kept']}), dropped "
      f"{sum(c['dropped'].values())}: {c['dropped']}; duplicates across train/test removed "
      f"from train: {c['cross_split_duplicates']}.",
      f"- Train copies of test images removed: {len(leaks)} near + {len(exact_leaks)} exact "
      f"({(len(leaks) + len(exact_leaks)) / max(c['kept'].get('test', 1), 1):.2%} of the kept "
      f"test images have a copy in train). Near duplicates: {near['rule']}, threshold "
      f"{near['min_similarity']}; {near['num_bands']} LSH bands of {near['band_bits']} bits "
      f"(candidate recall at the threshold {near['candidate_recall_at_threshold']}), "
      f"{near['buckets']} band buckets, largest {near['largest_bucket']}, "
      f"{near['pairs_compared']} pairs compared.",
      f"- Licences: {manifest['provenance']['licences']} (the archive gives no per-image "
      f"licence; the card says so).",
      f"- Preparation wall clock {prep_wall:.1f} s for the launch.py process (pipeline alone "
      f"{t['wall_s']} s): **{c['inputs'] / prep_wall:.0f} images/s end to end**; 1-minute "
      f"load average {load_before[0]:.1f} before and {load_after[0]:.1f} after on "
      f"{os.cpu_count()} cores (above the 2 workers' own load, other processes shared the "
      f"machine and the timing is slower than an idle machine's).",
      f"- Re-run on the same input: {rerun_wall:.1f} s, shards written "
      f"{again['changes']['shards_written']}, unchanged {again['changes']['shards_unchanged']}.",
      "", "Time by stage (busy seconds summed over workers; per-worker rate):", "",
      "| stage | calls | busy s | calls/s per worker |", "|---|---|---|---|"]
  lines += [f"| {s} | {v['calls']} | {v['cpu_s']} | {v['per_s_one_worker']} |"
            for s, v in t["stages"].items()]
  lines += ["", "`read` calls are input units (one per archive split, streamed by one worker "
            "each), `write` calls are shards; the others are images.", "",
            "Training from the shards (`configs/cifar10_ddpm.py:tiny`, lr 1e-3 after 10 warm-up "
            "steps, with "
            f"`data.source=array_record`, `data.path={data.name}/32px/train-*`): "
            f"{args.train_steps} steps in {train_wall:.0f} s, loss "
            f"{metrics[0]['loss']:.3f} (step {metrics[0]['step']}) -> {metrics[-1]['loss']:.3f} "
            f"(step {metrics[-1]['step']})." if metrics else "Training produced no metrics."]
  (HERE / "results.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
