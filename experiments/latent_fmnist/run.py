"""The small latent-diffusion pipeline on Fashion-MNIST on a CPU, every stage through launch.py:

  1. Fashion-MNIST's idx files -> ArrayRecord (python -m diffjax.data.convert idx);
  2. the autoencoder (configs/autoencoder_fmnist.py, vae-f4-small: 28x28x1 -> 7x7x4);
  3. --mode encode: train and test latents as shards with a manifest (encode throughput), and
     reconstructions of the first --n test images (PSNR, SSIM, rFID with the FID Inception);
  4. a DiT on the latents (configs/latent_fmnist.py) and the same DiT on pixels (:pixel, 4x4
     patches: the same 49 tokens), each trained for --seconds of wall-clock time after its step
     compiled, then stopped by SIGTERM (the run saves its checkpoint and exits 42);
  5. --mode sample: --n class-balanced samples of each (DDIM, guidance 2), grids;
  6. FID and KID of each sample set against the same --n test images, Inception features
     computed once here (diffjax.evaluation: the FID Inception, Frechet distance, KID).

Writes results.json, results.md and the grids beside this file. From the repository root:

  python experiments/latent_fmnist/run.py [--runs runs/latent_fmnist] [--data data] \\
      [--ae_steps 1200] [--seconds 300] [--n 500]
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
sys.path.insert(0, str(ROOT))  # diffjax, when run as a script from the repository root
HERE = pathlib.Path(__file__).resolve().parent
ASSETS = ROOT.parent / "shared" / "assets"
INCEPTION = ASSETS / "inception" / "inception-2015-12-05-fid.torchscript.pt"


def launch(args, *, stop_after: float | None = None, log=None) -> dict:
  """``python launch.py *args``; with ``stop_after``, SIGTERM that many seconds after the train
  step compiled. Returns exit code, wall seconds, training seconds and the output."""
  cmd = [sys.executable, "launch.py", *map(str, args)]
  print("$", " ".join(cmd), flush=True)
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1)
  lines, compiled = [], threading.Event()
  start = time.time()
  marks = {}

  def read():
    for line in proc.stdout:
      lines.append(line)
      if log is not None:
        log.write(line)
        log.flush()
      if "train step compiled" in line and not compiled.is_set():
        marks["compiled"] = time.time()
        compiled.set()

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  stopped = False
  while proc.poll() is None:
    time.sleep(0.5)
    if stop_after and compiled.is_set() and not stopped:
      if time.time() - marks["compiled"] >= stop_after:
        proc.send_signal(signal.SIGTERM)
        stopped = True
  reader.join()
  end = time.time()
  out = "".join(lines)
  if proc.returncode not in (0, 42):
    raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-3000:]}")
  return {"returncode": proc.returncode, "seconds": end - start, "output": out,
          "train_seconds": end - marks["compiled"] if "compiled" in marks else None}


def last_step(output: str) -> int:
  saved = re.findall(r"checkpoint of step (\d+)", output)
  steps = re.findall(r"^step (\d+)/", output, re.M)
  return int(saved[-1]) if saved else int(steps[-1])


def convert(data: pathlib.Path) -> None:
  idx = ASSETS / "data" / "fashion_mnist"
  for split, name, folder in (("train", "train", "fashion_mnist"),
                              ("t10k", "test", "fashion_mnist_test")):
    if (data / folder / f"{name}.json").exists():
      continue
    subprocess.run([sys.executable, "-m", "diffjax.data.convert", "idx", "--output",
                    str(data / folder), "--split", name,
                    "--images", str(idx / f"{split}-images-idx3-ubyte.gz"),
                    "--labels", str(idx / f"{split}-labels-idx1-ubyte.gz")], cwd=ROOT, check=True)


def score(samples: dict[str, pathlib.Path], data: pathlib.Path, n: int) -> dict:
  """FID and KID of each sample file against the first ``n`` test images."""
  import numpy as np
  import jax
  from diffjax import data as data_lib, images, parallel
  from diffjax.evaluation import features, metrics

  mesh = parallel.make_mesh({"data": jax.device_count(), "fsdp": 1, "tensor": 1})
  net = features.inception_net(mesh, cache_dir=str(ROOT / "runs" / "cache"),
                               source=str(INCEPTION))
  source = data_lib.make_source("array_record", path=str(data / "fashion_mnist_test"))
  real = np.stack([source[i]["image"] for i in range(n)])
  t0 = time.time()
  ref = net(real)["pool"]
  out = {"inception_images_per_s": None}
  for name, path in samples.items():
    x = np.load(path)["images"][:n]
    assert x.shape == real.shape, (x.shape, real.shape)
    feats = net(x)["pool"]
    mu1, s1 = metrics.statistics(ref)
    mu2, s2 = metrics.statistics(feats)
    kid, kid_std = metrics.kernel_inception_distance(feats, ref, subset_size=min(250, n))
    out[name] = {"fid": metrics.frechet_distance(mu1, s1, mu2, s2), "kid": kid,
                 "kid_std": kid_std, "samples": int(len(x))}
    grid = images.make_grid(x[:100], ncols=10, upscale=2)
    images.save_png(HERE / f"samples_{name}.png", grid)
  out["inception_images_per_s"] = n * (1 + len(samples)) / (time.time() - t0)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--runs", default="runs/latent_fmnist")
  p.add_argument("--data", default="data")
  p.add_argument("--ae_steps", type=int, default=1200)
  p.add_argument("--seconds", type=float, default=300.0)
  p.add_argument("--n", type=int, default=500)
  p.add_argument("--sample_steps", type=int, default=25)
  p.add_argument("--models", default="latent,pixel", help="diffusion models to (re)train")
  p.add_argument("--reuse_autoencoder", action="store_true",
                 help="keep the trained autoencoder and latents of an earlier run")
  a = p.parse_args()
  runs, data = (ROOT / a.runs).absolute(), (ROOT / a.data).absolute()
  runs.mkdir(parents=True, exist_ok=True)
  if not INCEPTION.exists():
    sys.exit(f"the FID Inception is not at {INCEPTION}")
  log = open(runs / "log.txt", "a")
  saved = runs / "results.json"
  results: dict = json.loads(saved.read_text()) if saved.exists() else {"stages": {}}
  results["args"] = vars(a)
  stages = results["stages"]
  t = time.time()
  convert(data)
  stages["convert_seconds"] = time.time() - t

  pixels = [f"--config.data.path={data / 'fashion_mnist'}",
            f"--config.eval.ref_data_path={data / 'fashion_mnist_test'}"]
  ae = ["--config", "configs/autoencoder_fmnist.py", "--workdir", runs / "ae", *pixels,
        f"--config.train.num_steps={a.ae_steps}"]
  if not a.reuse_autoencoder:
    r = launch(ae, log=log)
    stages["autoencoder"] = {"seconds": r["seconds"], "train_seconds": r["train_seconds"],
                             "steps": last_step(r["output"])}
    r = launch([*ae, "--mode", "encode", f"--config.eval.inception_source={INCEPTION}",
                f"--config.eval.inception_cache={runs / 'cache'}",
                f"--config.encode.eval_num={a.n}"], log=log)
    manifest = json.loads((runs / "ae" / "latents" / "manifest.json").read_text())
    recon = json.loads((runs / "ae" / "latents" / "reconstruction_test.json").read_text())
    stages["encode"] = {"seconds": r["seconds"], **manifest["this_launch"]}
    results["reconstruction"] = recon
    (runs / "results.json").write_text(json.dumps(results, indent=1))

  models = {"latent": ["--config", "configs/latent_fmnist.py", "--workdir", runs / "ldm",
                       f"--config.data.path={runs / 'ae' / 'latents'}"],
            "pixel": ["--config", "configs/latent_fmnist.py:pixel", "--workdir", runs / "pixel",
                      *pixels]}
  driving = ["--config.train.num_steps=1000000", "--config.checkpoint.every_steps=1000000",
             "--config.sample.at_end=False", "--config.optim.schedule=constant",
             f"--config.sample.num_steps={a.sample_steps}"]
  samples = {}
  for name, args in models.items():
    if name not in a.models.split(","):
      samples[name] = max((args[3] / "samples").glob("*.npz"), key=lambda q: q.stat().st_mtime)
      continue
    if args[3].exists():  # a fresh run of this model
      import shutil
      shutil.rmtree(args[3])
    r = launch([*args, *driving], stop_after=a.seconds, log=log)
    stages[name] = {"train_seconds": r["train_seconds"], "steps": last_step(r["output"]),
                    "returncode": r["returncode"]}
    r = launch([*args, *driving, "--mode", "sample", f"--config.sample.num_images={a.n}"],
               log=log)
    stages[name]["sample_seconds"] = r["seconds"]
    samples[name] = max((args[3] / "samples").glob("*.npz"), key=lambda q: q.stat().st_mtime)
    (runs / "results.json").write_text(json.dumps(results, indent=1))
  t = time.time()
  results["generation"] = score(samples, data, a.n)
  stages["score_seconds"] = time.time() - t
  for name in ("ae", "ldm", "pixel"):
    metrics_file = runs / name / "metrics.jsonl"
    if metrics_file.exists():
      (HERE / f"metrics_{name}.jsonl").write_text(metrics_file.read_text())
  grid = runs / "ae" / "latents" / "reconstruction_test.png"
  (HERE / "reconstructions.png").write_bytes(grid.read_bytes())
  (HERE / "results.json").write_text(json.dumps(results, indent=1))
  (runs / "results.json").write_text(json.dumps(results, indent=1))
  write_markdown(results)
  print(json.dumps({k: v for k, v in results.items() if k != "args"}, indent=1))


def write_markdown(r: dict) -> None:
  s, g, rec = r["stages"], r["generation"], r["reconstruction"]
  enc = s["encode"]
  lines = [
      "# Latent vs pixel diffusion on Fashion-MNIST (2-core CPU, measured)", "",
      f"Produced by `python experiments/latent_fmnist/run.py` with {r['args']}.", "",
      "| stage | result |", "|---|---|",
      f"| autoencoder (vae-f4-small, 28x28x1 -> 7x7x4) | {s['autoencoder']['steps']} steps in "
      f"{s['autoencoder']['train_seconds']:.0f} s |",
      f"| reconstructions of {rec['num_images']} test images | PSNR {rec['psnr']:.2f} dB, "
      f"SSIM {rec.get('ssim', float('nan')):.4f}, rFID {rec.get('rfid', float('nan')):.2f} |",
      f"| encode train (60,000) | {enc['train']['images_per_s']:.0f} images/s "
      f"({enc['train']['seconds']:.0f} s, {enc['devices']} devices) |",
      f"| encode test (10,000) | {enc['test']['images_per_s']:.0f} images/s |", "",
      "| model (same DiT: depth 4, width 128, 49 tokens) | train wall-clock | steps | "
      f"FID ({g['latent']['samples']} samples) | KID |", "|---|---|---|---|---|"]
  for name, label in (("latent", "latent DiT (patch 1 on 7x7x4 latents)"),
                      ("pixel", "pixel DiT (patch 4 on 28x28x1 pixels)")):
    lines.append(f"| {label} | {s[name]['train_seconds']:.0f} s | {s[name]['steps']} | "
                 f"{g[name]['fid']:.2f} | {g[name]['kid']:.4f} +- {g[name]['kid_std']:.4f} |")
  (HERE / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  main()
