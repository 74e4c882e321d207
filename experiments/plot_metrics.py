"""Plots a run's logged scalars (loss and, if present, others) from <workdir>/metrics.jsonl.

  python experiments/plot_metrics.py --workdir runs/fmnist_cpu --out loss_curve.png
"""

import json
import pathlib

from absl import app, flags

flags.DEFINE_string("workdir", None, "run folder holding metrics.jsonl")
flags.DEFINE_string("out", None, "output PNG")
flags.DEFINE_list("metrics", ["loss"], "scalars to plot, one panel each")
flags.DEFINE_string("title", "", "figure title")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [json.loads(l) for l in
          pathlib.Path(FLAGS.workdir, "metrics.jsonl").read_text().splitlines() if l.strip()]
  fig, axes = plt.subplots(1, len(FLAGS.metrics), figsize=(5 * len(FLAGS.metrics), 3.6),
                           squeeze=False)
  for ax, name in zip(axes[0], FLAGS.metrics):
    pts = [(r["step"], r[name]) for r in rows if name in r]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    if name == "loss":
      ax.set_yscale("log")
  if FLAGS.title:
    fig.suptitle(FLAGS.title)
  fig.tight_layout()
  fig.savefig(FLAGS.out, dpi=110)
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
