"""Trains one model of a finished `run.py` comparison for longer and scores it again, without
touching the equal-budget table: resumes ``runs/gan_vs_diffusion/<model>`` (launch.py continues
from its last checkpoint) for ``--extra_s`` more seconds of wall-clock, then evaluates it with the
same evaluator, reference and sample counts. Writes ``extended_<model>.json`` and
``samples_<model>_extended.png`` beside this file; wall-clock times in the curve count both
launches (the first run's budget plus the extension).

  python experiments/gan_vs_diffusion/extend.py --model stylegan2 --extra_s 900
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402  (this folder's run.py)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="stylegan2", choices=sorted(run.MODELS))
  p.add_argument("--extra_s", type=float, default=900)
  p.add_argument("--runs", default="runs/gan_vs_diffusion")
  p.add_argument("--data", default="data/fashion_mnist")
  p.add_argument("--growth", type=int, default=30)
  p.add_argument("--final_samples", type=int, default=1000)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--curve_samples", type=int, default=500)
  p.add_argument("--curve_points", type=int, default=4)
  a = p.parse_args()
  runs, data = run.ROOT / a.runs, run.ROOT / a.data
  first = json.loads((HERE / "results.json").read_text())[a.model]
  workdir = runs / a.model
  if not (workdir / "checkpoints").is_dir():
    sys.exit(f"{workdir} has no checkpoints: run run.py first")
  print(f"[extend] resuming {a.model} for {a.extra_s:.0f}s more", flush=True)
  more = run.train(a.model, workdir, data, a.extra_s, a.growth)
  offset = first["stopped_at_s"]
  times = {**{int(k): v for k, v in first["step_times"].items()},
           **{int(k): offset + v for k, v in more["step_times"].items()}}
  result = {**first, "step_times": times, "first_run_s": offset, "extension": more,
            "wall_s": first["wall_s"] + more["wall_s"], "cpu_s": first["cpu_s"] + more["cpu_s"],
            "stopped_at_s": offset + more["stopped_at_s"],
            "peak_rss_mb": max(first["peak_rss_mb"], more["peak_rss_mb"])}
  results = {a.model: result}
  run.evaluate([a.model], runs, results, a.final_samples, a.seeds, a.curve_samples,
               a.curve_points, out=HERE / f"extended_{a.model}.json", grid_suffix="_extended")


if __name__ == "__main__":
  main()
