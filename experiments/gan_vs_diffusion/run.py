"""GANs against a diffusion model on the same data, at the same wall-clock budget, measured by
the same evaluator.

Trains DCGAN, StyleGAN2, BigGAN, ProGAN (configs/gan_*.py:fmnist) and a diffusion UNet
(configs/fashion_mnist.py:cpu at 32x32) on Fashion-MNIST through launch.py, each for
``--budget_s`` seconds of wall-clock (compilation included; the run is stopped by SIGTERM,
which saves its checkpoint), then scores checkpoints along the way and the last one with one
domain classifier and one reference (the 10,000 test images): Frechet distance, KID,
precision/recall, the classifier's Inception-Score analogue, class accuracy for conditional
models; parameters, images seen, wall-clock and CPU seconds, peak resident memory and XLA's
per-device memory estimate. Writes ``results.json``, ``results.md``, one sample grid per model
and ``fid_vs_time.png`` beside this file.

  python experiments/gan_vs_diffusion/run.py            # from the repository root
  python experiments/gan_vs_diffusion/run.py --budget_s 600 --models dcgan,diffusion
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

DATA = ["--config.data.source=array_record", "--config.data.path={data}",
        "--config.eval.ref_data_path={data}_test", "--config.eval.feature_net=domain"]
MODELS = {
    # name: (config, extra overrides, conditional)
    "dcgan": ("configs/gan_dcgan.py:fmnist", ["--config.data.batch_size=64"], False),
    "stylegan2": ("configs/gan_stylegan2.py:fmnist", [
        "--config.generator.kwargs.channel_base=512",
        "--config.discriminator.kwargs.channel_base=512"], False),
    "biggan": ("configs/gan_biggan.py:fmnist", [], True),
    "progan": ("configs/gan_progan.py:fmnist", [
        "--config.gan.growth_stable_steps={growth}", "--config.gan.growth_fade_steps={growth}",
        "--config.generator.kwargs.fmap_base=256", "--config.discriminator.kwargs.fmap_base=256"],
        False),
    "diffusion": ("configs/fashion_mnist.py:cpu", [
        "--config.data.image_size=32", "--config.model.kwargs.attn_resolutions=[8]",
        "--config.model.kwargs.ch=24", "--config.sample.num_steps=20",
        "--config.optim.schedule=constant", "--config.train.ema_decay=0.995"], True),
}


def convert(assets: pathlib.Path, data: pathlib.Path) -> None:
  for split, name, out in (("train", "train", data), ("t10k", "test", pathlib.Path(f"{data}_test"))):
    if not (out / f"{name}.json").exists() and not list(out.glob(f"{name}*")):
      subprocess.run([sys.executable, "-m", "diffjax.data.convert", "idx", "--output", str(out),
                      "--split", name, "--images", str(assets / f"{split}-images-idx3-ubyte.gz"),
                      "--labels", str(assets / f"{split}-labels-idx1-ubyte.gz")], cwd=ROOT,
                     check=True)


def train(name: str, workdir: pathlib.Path, data: pathlib.Path, budget_s: float,
          growth: int) -> dict:
  """launch.py for ``budget_s`` seconds, then SIGTERM (it saves and exits 42)."""
  config, extra, _ = MODELS[name]
  args = [a.format(data=data, growth=growth) for a in DATA + extra]
  cmd = [sys.executable, "launch.py", "--config", config, "--workdir", str(workdir), *args,
         "--config.train.num_steps=1000000", "--config.checkpoint.every_steps=25",
         "--config.checkpoint.keep=100000", "--config.logging.log_every=25",
         "--config.sample.every_steps=0", "--config.sample.at_end=False",
         "--config.data.num_workers=0", f"--config.experiment=gan_vs_diffusion_{name}",
         # One XLA device for both cores: no cross-device collectives. With the default (one
         # device per core) a DCGAN run here died once in an XLA:CPU all-reduce rendezvous
         # timeout after its first checkpoint (see README).
         "--nosplit_cpu"]
  start = time.time()
  before = os.times()
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
  log, times, peak = [], {}, [0]

  def watch_memory():
    while proc.poll() is None:
      try:
        status = pathlib.Path(f"/proc/{proc.pid}/status").read_text()
        peak[0] = max(peak[0], int(re.search(r"VmHWM:\s+(\d+)", status).group(1)))
      except (OSError, AttributeError):
        pass
      time.sleep(1.0)

  threading.Thread(target=watch_memory, daemon=True).start()
  timer = threading.Timer(budget_s, lambda: proc.poll() is None and proc.send_signal(
      signal.SIGTERM))
  timer.start()
  for line in proc.stdout:
    log.append(line)
    m = re.match(r"step (\d+)/", line)
    if m:
      times[int(m.group(1))] = time.time() - start
  proc.wait()
  timer.cancel()
  after = os.times()
  (workdir / "train_log.txt").write_text("".join(log))
  if proc.returncode not in (0, 42):
    raise RuntimeError(f"{name} exited {proc.returncode}:\n{''.join(log[-40:])}")
  memory = re.search(r"memory per device: arguments ([\d.]+) MB, temporaries ([\d.]+) MB",
                     "".join(log))
  compiled = re.search(r"train step compiled in ([\d.]+)s", "".join(log))
  return {"wall_s": time.time() - start, "stopped_at_s": min(budget_s, time.time() - start),
          "cpu_s": (after.children_user - before.children_user)
          + (after.children_system - before.children_system),
          "peak_rss_mb": peak[0] / 1024, "compile_s": float(compiled.group(1)) if compiled else None,
          "xla_arguments_mb": float(memory.group(1)) if memory else None,
          "xla_temporaries_mb": float(memory.group(2)) if memory else None,
          "step_times": times}


def evaluate(names, runs: pathlib.Path, results: dict, n_final: int, seeds: int,
             n_curve: int, curve_points: int, out: pathlib.Path = HERE / "results.json",
             grid_suffix: str = "") -> None:
  import jax
  import numpy as np
  import diffjax
  import diffjax.methods.gan  # noqa: F401  (registers the gan method)
  from diffjax import images, parallel
  from diffjax.evaluation import metrics
  from diffjax.evaluation.evaluator import Evaluator, ref_path
  from diffjax.jobs import ref_stats
  from diffjax.training import parameter_count

  home = runs / "eval_home"  # one domain classifier and one reference for every model
  first = diffjax.load(runs / names[0])
  spec = first.spec
  mesh = parallel.make_mesh({"data": jax.local_device_count(), "fsdp": 1, "tensor": 1},
                            jax.local_devices())
  if not ref_path(spec.eval, home).exists():
    ref_stats.compute_reference(spec, home, mesh)
  for name in names:
    r = results[name]
    workdir = runs / name
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    model = diffjax.load(workdir)
    evaluator = Evaluator(model.spec.data, model.spec.eval, home, mesh)
    r["parameters"] = {role: parameter_count(v["params"]) for role, v in model.variables.items()}
    batch = json.loads((workdir / "config.json").read_text())["data"]["batch_size"]
    r["final_step"] = steps[-1]
    r["batch_size"] = batch
    r["images_seen"] = steps[-1] * batch
    r["conditional"] = model.method.conditional
    r["sampling"] = model.method.sampling_info()

    def score(m, n, seed):
      labels = np.arange(n) % 10
      t0 = time.time()
      x = m.sample(n, labels=labels, seed=seed)
      s = evaluator.score(x, labels if m.method.conditional else None)
      pool = evaluator.net(x)
      s["classifier_score"] = float(metrics.inception_score(pool["logits"])[0])
      s["sample_seconds"] = time.time() - t0
      return s, x

    per_seed = []
    for seed in range(seeds):
      s, x = score(model, n_final, 1000 + seed)
      per_seed.append(s)
      if seed == 0:
        images.save_png(HERE / f"samples_{name}{grid_suffix}.png", images.make_grid(
            x[:100], ncols=10, upscale=2))
    r["final"] = {k: _interval([p[k] for p in per_seed]) for k in per_seed[0]}
    picks = sorted(set(steps[int(round(i * (len(steps) - 1) / (curve_points - 1)))]
                       for i in range(curve_points)))
    curve = []
    for step in picks:
      m = model if step == steps[-1] else diffjax.load(workdir, step)
      s, _ = score(m, n_curve, 7)
      t = r["step_times"].get(str(step), r["step_times"].get(step))
      if t is None and step == steps[-1]:
        t = r["stopped_at_s"]  # the SIGTERM's checkpoint
      curve.append({"step": step, "wall_s": t, "fd": s["fd"], "kid": s["kid"]})
      print(f"[gan_vs_diffusion] {name} step {step} ({t}s): fd {s['fd']:.3g}", flush=True)
    r["curve"] = curve
    out.write_text(json.dumps(results, indent=1))


def _interval(values):
  import math
  import numpy as np
  import scipy.stats
  v = np.asarray(values, np.float64)
  out = {"mean": float(v.mean()), "values": [float(x) for x in v]}
  if len(v) > 1:
    half = scipy.stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    out.update(ci95=float(half))
  return out


def report(results: dict, data: pathlib.Path, budget_s: float) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  size_mb = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / 2**20
  rows = ["| model | conditional | parameters (G + D or denoiser) | steps x batch = images seen "
          "| wall-clock s (CPU s) | FD_domain | KID_domain | precision / recall | classifier "
          "score | class acc. | peak RSS MB (XLA args + temps MB) |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, r in results.items():
    if "final" not in r:
      continue
    f = r["final"]
    ci = lambda k, fmt="{:.3g}": (fmt.format(f[k]["mean"]) + (
        f" ± {fmt.format(f[k]['ci95'])}" if "ci95" in f[k] else ""))
    params = " + ".join(f"{v / 1e6:.3f}M" for v in r["parameters"].values())
    acc = ci("class_accuracy", "{:.3f}") if "class_accuracy" in f else "-"
    rows.append(
        f"| {name} | {r['conditional']} | {params} | {r['final_step']} x {r['batch_size']} = "
        f"{r['images_seen']:,} | {r['wall_s']:.0f} ({r['cpu_s']:.0f}) | {ci('fd')} | "
        f"{ci('kid')} | {ci('precision', '{:.3f}')} / {ci('recall', '{:.3f}')} | "
        f"{ci('classifier_score')} | {acc} | {r['peak_rss_mb']:.0f} "
        f"({r['xla_arguments_mb']} + {r['xla_temporaries_mb']}) |")
  table = "\n".join(rows)
  (HERE / "results.md").write_text(
      f"Fashion-MNIST (60,000 training images, {size_mb:.1f} MB of ArrayRecord), 32x32 grey, "
      f"{budget_s:.0f} s of wall-clock per model on a shared 2-core CPU.\n\n{table}\n")
  plt.figure(figsize=(6, 4))
  for name, r in results.items():
    pts = [(c["wall_s"], c["fd"]) for c in r.get("curve", []) if c["wall_s"] is not None]
    if pts:
      plt.plot(*zip(*pts), marker="o", label=name)
  plt.xlabel("training wall-clock (s, compilation included)")
  plt.ylabel("FD in the domain classifier's features")
  plt.yscale("log")
  plt.legend()
  plt.title("Fashion-MNIST 32x32, shared 2-core CPU")
  plt.tight_layout()
  plt.savefig(HERE / "fid_vs_time.png", dpi=120)
  print(table)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="dcgan,stylegan2,biggan,progan,diffusion")
  p.add_argument("--budget_s", type=float, default=480)
  p.add_argument("--runs", default="runs/gan_vs_diffusion")
  p.add_argument("--data", default="data/fashion_mnist")
  p.add_argument("--assets", default=str(ROOT.parent / "shared/assets/data/fashion_mnist"))
  p.add_argument("--final_samples", type=int, default=1000)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--curve_samples", type=int, default=500)
  p.add_argument("--curve_points", type=int, default=4)
  p.add_argument("--growth", type=int, default=30, help="ProGAN steps per stable / fade phase")
  p.add_argument("--skip_training", action="store_true", help="evaluate existing runs only")
  a = p.parse_args()
  names = a.models.split(",")
  runs, data = ROOT / a.runs, ROOT / a.data
  convert(pathlib.Path(a.assets), data)
  out = HERE / "results.json"
  results = json.loads(out.read_text()) if out.exists() else {}
  for name in names:
    if a.skip_training and name in results:
      continue
    workdir = runs / name
    if workdir.exists():
      import shutil
      shutil.rmtree(workdir)
    print(f"[gan_vs_diffusion] training {name} for {a.budget_s:.0f}s", flush=True)
    results[name] = train(name, workdir, data, a.budget_s, a.growth)
    results[name]["dataset_images"] = 60_000
    out.write_text(json.dumps(results, indent=1))
  evaluate(names, runs, results, a.final_samples, a.seeds, a.curve_samples, a.curve_points)
  report({n: results[n] for n in names}, data, a.budget_s)
  out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
