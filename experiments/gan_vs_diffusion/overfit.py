"""Each GAN family overfits a tiny batch: four 8x8 digits (upsampled to 16x16, repeated to a
batch of 16), the family's tiny config (configs/gan_<family>.py:tiny), a few hundred steps.
Reports the mean squared distance (images in [-1, 1]) of 16 EMA-generator samples to their
nearest training digit before and after, and the discriminator's mean logits on reals and
fakes at the end. Writes overfit.json and overfit.md beside this file.

  python experiments/gan_vs_diffusion/overfit.py [--steps 400]
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--families", default="dcgan,stylegan2,biggan,progan")
  a = p.parse_args()
  import jax
  import numpy as np
  from diffjax import data, images, parallel
  from diffjax.experiment import build_spec
  from diffjax.jobs.common import state_setup
  from diffjax.training.setup import jit_train_step

  src = data.digits_source("train")
  x = np.stack([src[i]["image"] for i in range(4)]).astype(np.float32) / 127.5 - 1
  x = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
  y = np.asarray([src[i]["label"] for i in range(4)], np.int32)
  batch = {"image": np.concatenate([x] * 4), "label": np.concatenate([y] * 4)}
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  results, grids = {}, []
  for family in a.families.split(","):
    c = importlib.import_module(f"configs.gan_{family}").get_config("tiny")
    c.train.ema_decay = 0.9
    c.train.num_steps = a.steps
    if family == "progan":  # grow through 4x4, 8x8 and 16x16 within the run
      c.gan.growth_stable_steps = c.gan.growth_fade_steps = a.steps // 8
    spec = build_spec(c, num_devices=1)
    setup = state_setup(spec, mesh)
    step = jit_train_step(setup, mesh, spec.train, spec.faults)
    state = setup.init(jax.random.PRNGKey(0))
    labels = np.tile(y, 4)

    def nearest(s):
      out = np.asarray(spec.method.generate(s.inference_variables, jax.random.PRNGKey(5),
                                            labels))
      d = ((out[:, None] - x[None]) ** 2).mean(axis=(2, 3, 4))
      return float(d.min(axis=1).mean()), out

    before, _ = nearest(state)
    b = parallel.global_batch(batch, parallel.batch_sharding(mesh))
    t0 = time.time()
    for _ in range(a.steps):
      state, m = step(state, b)
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    after, out = nearest(state)
    results[family] = {"steps": a.steps, "nearest_mse_before": before,
                       "nearest_mse_after": after, "d_real": m["d_real"], "d_fake": m["d_fake"],
                       "seconds": time.time() - t0}
    grids.append(np.concatenate([images.to_uint8(x), images.to_uint8(out[:12])]))
    print(family, results[family], flush=True)
  (HERE / "overfit.json").write_text(json.dumps(results, indent=1))
  rows = ["| family | steps | nearest-digit MSE before | after | D(real) | D(fake) |",
          "|---|---|---|---|---|---|"]
  rows += [f"| {f} | {r['steps']} | {r['nearest_mse_before']:.3f} | {r['nearest_mse_after']:.3f}"
           f" | {r['d_real']:.2f} | {r['d_fake']:.2f} |" for f, r in results.items()]
  (HERE / "overfit.md").write_text("\n".join(rows) + "\n")
  images.save_png(HERE / "overfit.png", images.make_grid(np.concatenate(grids), ncols=16,
                                                         upscale=3))
  print("\n".join(rows))


if __name__ == "__main__":
  main()
