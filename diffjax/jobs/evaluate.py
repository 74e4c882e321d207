"""The evaluation job (``--mode eval``): sample quality of a trained model.

Samples ``eval.num_samples`` images per seed from the latest checkpoint's EMA parameters,
sharded over every device and process, and writes ``<workdir>/eval/<name>.json`` (FID, KID,
precision, recall, Inception Score where available, conditional class accuracy for the domain
classifier, bits/dim if requested; per seed, mean and 95% interval) and a sample grid.
"""

from __future__ import annotations

import csv
import itertools
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
from diffjax.fields import ConfigError
from diffjax.jobs.common import (experiment_spec, generate_images, grid_columns, log,
                                 make_generator, make_mesh, restore_for_inference)


def _interval(values: list[float]) -> dict[str, float]:
  v = np.asarray(values, np.float64)
  out = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
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
  if spec.eval.grid:
    return evaluate_grid(config, spec, workdir, mesh, evaluator)
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
                                jax.random.PRNGKey(1000 + seed), e.batch_size,
                                rounding=e.sample_uint8)
    scores = evaluator.score(x, labels if spec.method.conditional else None)
    scores["seconds"] = time.time() - t0
    per_seed.append(scores)
    log(f"seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    if seed == 0 and e.memorization:
      copies, pairs = evaluator.memorization(x)
      log(f"memorisation: {copies['copy_fraction']:.2%} of the samples are closer to a "
          f"training image than {copies['threshold']:.4g}")
    if seed == 0 and jax.process_index() == 0:
      images.save_png(workdir / "eval" / f"{name}.png",
                      images.make_grid(x[:100], ncols=grid_columns(spec),
                                       upscale=spec.sample.upscale))
      if e.memorization:  # each sample beside its nearest training image
        images.save_png(workdir / "eval" / f"{name}_closest_pairs.png",
                        images.make_grid(pairs, ncols=2, upscale=spec.sample.upscale))
  keys = [k for k in per_seed[0] if k != "seconds"]
  result = {"name": name, "checkpoint_step": step, "num_samples": e.num_samples,
            "seeds": e.seeds, "method": spec.method.name,
            "sampler": spec.method.sampling_info(),
            "feature_net": evaluator.net.fingerprint, "reference": str(evaluator.path),
            "reference_fingerprint": evaluator.ref["fingerprint"],
            "sample_uint8": e.sample_uint8,
            "metrics": {k: _interval([p[k] for p in per_seed])["mean"] for k in keys},
            "intervals": {k: _interval([p[k] for p in per_seed]) for k in keys},
            "per_seed": per_seed, "seconds": time.time() - start}
  if e.memorization:
    result["memorization"] = copies
  if e.likelihood:
    result["metrics"].update(_test_likelihood(spec, params, jax.random.PRNGKey(7)))
  if jax.process_index() == 0:
    out = workdir / "eval" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log(f"wrote {out}: " + ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items()))
  return result


# --- one-checkpoint sweeps ------------------------------------------------------------------
def _cell_specs(config, spec: ExperimentSpec) -> list[tuple[dict, ExperimentSpec]]:
  """Every combination of ``eval.grid`` as (its sample fields, its spec), all checked before
  any compute (one ConfigError listing every bad cell)."""
  fields = [f for f, _ in spec.eval.grid]
  cells, problems = [], []
  for combo in itertools.product(*(values for _, values in spec.eval.grid)):
    cell = dict(zip(fields, combo))
    c = config.copy_and_resolve_references()
    with c.unlocked():
      for field, value in cell.items():
        c.sample[field] = value
      c.eval.grid = {}
    try:
      cells.append((cell, experiment_spec(c)))
    except ConfigError as e:
      problems.append(f"cell {cell}: {str(e).replace(chr(10), ' ')}")
  if problems:
    raise ConfigError("invalid eval.grid:\n  " + "\n  ".join(problems))
  return cells


def _cell_name(cell: dict) -> str:
  return "_".join(f"{k}={v}" for k, v in cell.items()).replace(" ", "").replace("/", "-")


def evaluate_grid(config, spec: ExperimentSpec, workdir, mesh, evaluator) -> dict:
  """Scores every cell of ``eval.grid`` against one checkpoint and one reference.

  Cells that differ only in ``guidance_scale`` share one compiled sampler (the scale is passed
  as an array). A finished cell is written to ``<workdir>/eval/<grid>/<cell>.json`` and is not
  recomputed by a relaunch. Writes ``results.csv`` / ``results.md`` (best setting first) and
  ``fd_vs_nfe.png`` beside the cells.
  """
  e = spec.eval
  cells = _cell_specs(config, spec)
  variables, step = restore_for_inference(spec, workdir, mesh)
  name = e.name or f"grid_{e.feature_net}_n{e.num_samples}_step{step}"
  out = workdir / "eval" / name
  out.mkdir(parents=True, exist_ok=True)
  by_ema: dict = {}
  generators: dict = {}
  rows, start, computed = [], time.time(), 0
  for i, (cell, cell_spec) in enumerate(cells):
    path = out / f"{_cell_name(cell)}.json"
    if path.exists():
      rows.append(json.loads(path.read_text()))
      log(f"cell {i + 1}/{len(cells)} {cell}: done before, kept")
      continue
    ema = cell_spec.sample.posthoc_ema_std
    if ema not in by_ema:
      by_ema[ema] = (variables if ema == spec.sample.posthoc_ema_std else
                     restore_for_inference(cell_spec, workdir, mesh, step)[0])
    cell_vars = dict(by_ema[ema])
    guided = cell_spec.method.sampler.guided if hasattr(cell_spec.method, "sampler") else False
    key = (cell_spec.method.sampling_tag() if not guided else
           tuple((k, v) for k, v in cell.items() if k != "guidance_scale"))
    if key not in generators:
      generators[key] = make_generator(cell_spec, mesh)
    if guided:
      cell_vars["sampling"] = {"guidance_scale": jnp.float32(
          cell_spec.method.sampler.guidance_scale)}
    t0 = time.time()
    per_seed = []
    for seed in range(e.seeds):
      x, labels = generate_images(generators[key], cell_vars, cell_spec, e.num_samples,
                                  jax.random.PRNGKey(1000 + seed), e.batch_size,
                                  rounding=e.sample_uint8)
      per_seed.append(evaluator.score(x, labels if cell_spec.method.conditional else None))
    keys = list(per_seed[0])
    row = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in cell.items()},
           "nfe": cell_spec.method.evaluations_per_image(),
           **{k: _interval([p[k] for p in per_seed])["mean"] for k in keys},
           **{f"{k}_ci95": [_interval([p[k] for p in per_seed]).get("ci95_low"),
                            _interval([p[k] for p in per_seed]).get("ci95_high")]
              for k in keys if e.seeds > 1},
           "seconds": time.time() - t0}
    if jax.process_index() == 0:
      path.write_text(json.dumps(row, indent=1))
    rows.append(row)
    computed += 1
    left = len(cells) - i - 1
    rate = (time.time() - start) / computed
    log(f"cell {i + 1}/{len(cells)} {cell}: fd {row['fd']:.4g} | ETA {left * rate / 60:.1f} min")
  if jax.process_index() == 0:
    _write_grid_results(out, rows, [f for f, _ in e.grid], step)
  log(f"wrote {out / 'results.md'} ({computed} cells computed, {len(cells) - computed} kept)")
  return {"name": name, "rows": rows, "computed": computed, "directory": str(out)}


def _write_grid_results(out, rows: list[dict], fields: list[str], step: int) -> None:
  columns = list(dict.fromkeys(k for row in rows for k in row if not k.endswith("_ci95")))
  with open(out / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  best = min(rows, key=lambda r: r["fd"])
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  lines = [f"# Evaluation grid at checkpoint step {step}", "",
           "Best setting (lowest FD): " + ", ".join(f"{k}={best[k]}" for k in fields) +
           f" -> fd {best['fd']:.4g}", "",
           "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
  (out / "results.md").write_text("\n".join(lines) + "\n")
  _plot_fd_vs_nfe(out / "fd_vs_nfe.png", rows, fields)


def _plot_fd_vs_nfe(path, rows: list[dict], fields: list[str]) -> None:
  """One panel per sampler: FD against evaluations, a line per other setting."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker
  samplers = sorted({str(r.get("sampler", "")) for r in rows})
  fig, axes = plt.subplots(1, len(samplers), figsize=(4.5 * len(samplers), 3.6), squeeze=False)
  others = [f for f in fields if f not in ("sampler", "num_steps")]
  for ax, sampler in zip(axes[0], samplers):
    mine = [r for r in rows if str(r.get("sampler", "")) == sampler and r["nfe"] is not None]
    for setting in sorted({tuple(str(r[f]) for f in others) for r in mine}):
      line = sorted((r["nfe"], r["fd"]) for r in mine
                    if tuple(str(r[f]) for f in others) == setting)
      label = ", ".join(f"{f}={v}" for f, v in zip(others, setting)) or "fd"
      ax.plot(*zip(*line), marker="o", label=label)
    ax.set_title(sampler or "samples")
    ax.set_xlabel("network evaluations per image")
    ax.set_ylabel("FD")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
