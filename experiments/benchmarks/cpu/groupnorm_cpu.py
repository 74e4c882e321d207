"""diffjax's GroupNorm (per-channel statistics) against flax's nn.GroupNorm, forward + backward.

  python experiments/benchmarks/cpu/groupnorm_cpu.py    # writes groupnorm_<backend>.md beside it

One bf16 activation [32, 32, 32, 128] (32 groups), followed by SiLU and a weighted sum so the
gradient flows as in a residual block; median of 5 windows of 10 calls after compilation, the
two versions timed in alternation.
"""

import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffjax.models import layers  # noqa: E402


def main():
  shape = (32, 32, 32, 128)
  x = jax.random.normal(jax.random.PRNGKey(0), shape).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.PRNGKey(1), shape).astype(jnp.bfloat16)
  ours = layers.GroupNorm(32, dtype=jnp.bfloat16)
  params = nn.meta.unbox(ours.init(jax.random.PRNGKey(2), x)["params"])
  flax_norm = nn.GroupNorm(32, epsilon=1e-6, dtype=jnp.float32)
  versions = {
      "diffjax GroupNorm": lambda p, x: ours.apply({"params": p}, x),
      "flax nn.GroupNorm": lambda p, x: flax_norm.apply({"params": p["norm"]}, x).astype(
          jnp.bfloat16),
  }
  grads = {name: jax.jit(jax.grad(lambda p, x, f=f: jnp.sum(nn.silu(f(p, x)) * w),
                                  argnums=(0, 1)))
           for name, f in versions.items()}
  for g in grads.values():
    jax.block_until_ready(g(params, x))
  times = {name: [] for name in grads}
  for _ in range(5):
    for name, g in grads.items():
      t0 = time.perf_counter()
      for _ in range(10):
        out = g(params, x)
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - t0) / 10 * 1e3)
  ms = {name: statistics.median(t) for name, t in times.items()}
  backend = jax.default_backend()
  lines = [f"GroupNorm forward + backward on {backend} ({jax.devices()[0].device_kind}), bf16 "
           f"{list(shape)}, 32 groups, median of 5 x 10 calls", "",
           "| version | ms per call |", "|---|---|"]
  lines += [f"| {name} | {t:.1f} |" for name, t in ms.items()]
  lines += ["", f"flax / diffjax: {ms['flax nn.GroupNorm'] / ms['diffjax GroupNorm']:.2f}x"]
  (pathlib.Path(__file__).parent / f"groupnorm_{backend}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
