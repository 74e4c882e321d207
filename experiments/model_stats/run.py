"""Parameter counts and forward FLOPs of the named network variants.

FLOPs come from XLA's cost analysis of the lowered forward pass at batch 1 (one multiply-add
counts as two FLOPs); the DiT paper's "Gflops" count one multiply-add as one, so its numbers
compare with the MACs column. Nothing is run: shapes come from ``jax.eval_shape``.

  python experiments/model_stats/run.py        # writes results.json and results.md here
"""

import json
import pathlib
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from diffjax import models  # noqa: E402

# (variant, input shape HWC, overrides, paper parameter count in millions and its source)
CASES = [
    ("ddpm-cifar10", (32, 32, 3), {}, "35.7 (Ho et al. 2020)"),
    ("ddpmpp-cifar10", (32, 32, 3), {}, "55.7 (EDM's DDPM++, Karras et al. 2022)"),
    ("adm-imagenet64", (64, 64, 3), {"out_channels": 6}, "296 (Dhariwal & Nichol 2021)"),
    ("unet-digits", (8, 8, 1), {"num_classes": 10}, "-"),
    ("unet-mnist", (28, 28, 1), {"num_classes": 10}, "-"),
    ("DiT-S/2", (32, 32, 4), {"out_channels": 8}, "33 (Peebles & Xie 2023)"),
    ("DiT-B/2", (32, 32, 4), {"out_channels": 8}, "130"),
    ("DiT-L/2", (32, 32, 4), {"out_channels": 8}, "458"),
    ("DiT-XL/2", (32, 32, 4), {"out_channels": 8}, "675"),
    ("DiT-B/4", (64, 64, 3), {}, "-"),
]


def stats(name, hwc, overrides):
  model = models.get_model(name, **overrides)
  x = jax.ShapeDtypeStruct((1, *hwc), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if model.num_classes else None
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, y)
  params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nn.meta.unbox(variables)))
  flops = jax.jit(model.apply).lower(variables, x, t, y).cost_analysis()["flops"]
  return params, flops


def main():
  out_dir = pathlib.Path(__file__).parent
  rows = []
  for name, hwc, overrides, paper in CASES:
    start = time.time()
    params, flops = stats(name, hwc, overrides)
    rows.append({"variant": name, "input": "x".join(map(str, hwc)), "overrides": overrides,
                 "params": params, "paper_params_M": paper, "forward_gflops": flops / 1e9,
                 "forward_gmacs": flops / 2e9})
    print(f"{name:16s} {params / 1e6:8.2f}M params  {flops / 1e9:9.2f} GFLOPs "
          f"({time.time() - start:.1f}s)", flush=True)
  (out_dir / "results.json").write_text(json.dumps(
      {"jax": jax.__version__, "backend": jax.default_backend(), "rows": rows}, indent=1))
  lines = ["| variant | input | params | paper | forward GFLOPs (XLA) | GMACs |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['variant']} | {r['input']} | {r['params'] / 1e6:.2f}M | "
                 f"{r['paper_params_M']} | {r['forward_gflops']:.2f} | {r['forward_gmacs']:.2f} |")
  (out_dir / "results.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
