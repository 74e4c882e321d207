"""The evaluation job (``--mode eval``): sample quality of a trained model.

Samples ``eval.num_samples`` images per seed from the latest checkpoint's EMA parameters,
sharded over every device and process, and writes ``<workdir>/eval/<name>.json`` (FID, KID,
precision, recall, Inception Score where available, conditional class accuracy for the domain
classifier, bits/dim if requested; per seed, mean and 95% interval) and a sample grid.
"""

from __future__ import annotations

import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from diffjax import images, workdir as workdir_lib
from diffjax.evaluation.evaluator import Evaluator, real_images, ref_source
from diffjax.experiment import ExperimentSpec
from diffjax.jobs.common import (experiment_spec, generate_images, grid_columns, log,
                                 make_generator, make_mesh, restore_for_inference)


def _interval(values: list[float]) -> dict[str, float]:
  v = np.asarray(values, np.float64)
  out = {"mean": float(v.mean())}
  if len(v) > 1:
    half = scipy.stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    out.update(std=float(v.std(ddof=1)), ci95_low=float(v.mean() - half),
               ci95_high=float(v.mean() + half))
  return out


def _test_likelihood(spec: ExperimentSpec, params, rng) -> dict[str, float]:
  """Bits/dim of the first ``eval.likelihood_num`` images of the reference split."""
  e = spec.eval
  x, _ = real_images(spec.data, ref_source(spec.data, e))
  x = x[:e.likelihood_num]
  one_batch = jax.jit(lambda xb, key: spec.method.bits_per_dim(params, xb, key, e.likelihood))
  bpd = np.concatenate([np.asarray(one_batch(jnp.asarray(x[i:i + e.likelihood_batch]),
                                             jax.random.fold_in(rng, i)))
                        for i in range(0, len(x), e.likelihood_batch)])
  return {"bits_per_dim": float(bpd.mean()),
          "bits_per_dim_sem": float(bpd.std(ddof=1) / math.sqrt(len(bpd))),
          "likelihood_images": int(len(bpd))}


def evaluate(config, workdir: str) -> dict:
  """Scores the latest checkpoint; returns and writes the results."""
  spec = experiment_spec(config)
  workdir = workdir_lib.prepare(workdir, config, write=False)
  mesh = make_mesh(spec)
  evaluator = Evaluator(spec.data, spec.eval, workdir, mesh)  # before the restore: fails fast
  params, step = restore_for_inference(spec, workdir, mesh)
  return score(spec, workdir, mesh, params, step, evaluator)


def score(spec: ExperimentSpec, workdir, mesh, params, step: int, evaluator=None) -> dict:
  """Samples ``eval.num_samples`` images per seed from ``params`` ({role: parameters}),
  scores them against the workdir's reference and writes ``<workdir>/eval/<name>.json``."""
  evaluator = evaluator or Evaluator(spec.data, spec.eval, workdir, mesh)
  generator = make_generator(spec, mesh)
  e = spec.eval
  name = e.name or f"{e.feature_net}_{spec.method.sampling_tag()}_n{e.num_samples}_step{step}"
  per_seed, start = [], time.time()
  for seed in range(e.seeds):
    t0 = time.time()
    x, labels = generate_images(generator, params, spec, e.num_samples,
                                jax.random.PRNGKey(1000 + seed), e.batch_size)
    scores = evaluator.score(x, labels if spec.method.conditional else None)
    scores["seconds"] = time.time() - t0
    per_seed.append(scores)
    log(f"seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    if seed == 0 and jax.process_index() == 0:
      images.save_png(workdir / "eval" / f"{name}.png",
                      images.make_grid(x[:100], ncols=grid_columns(spec),
                                       upscale=spec.sample.upscale))
  keys = [k for k in per_seed[0] if k != "seconds"]
  result = {"name": name, "checkpoint_step": step, "num_samples": e.num_samples,
            "seeds": e.seeds, "method": spec.method.name,
            "sampler": spec.method.sampling_info(),
            "feature_net": evaluator.net.fingerprint, "reference": str(evaluator.path),
            "reference_fingerprint": evaluator.ref["fingerprint"],
            "metrics": {k: _interval([p[k] for p in per_seed])["mean"] for k in keys},
            "intervals": {k: _interval([p[k] for p in per_seed]) for k in keys},
            "per_seed": per_seed, "seconds": time.time() - start}
  if e.likelihood:
    result["metrics"].update(_test_likelihood(spec, params, jax.random.PRNGKey(7)))
  if jax.process_index() == 0:
    out = workdir / "eval" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log(f"wrote {out}: " + ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items()))
  return result
