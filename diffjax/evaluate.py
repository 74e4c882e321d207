"""Evaluation jobs: reference statistics (``--mode ref_stats``) and sample quality of a trained
model (``--mode eval``), plus the `Evaluator` the training loop uses periodically.

``ref_stats`` computes the feature statistics of the real ``eval.ref_split`` (training the
domain classifier first when ``eval.feature_net=domain``). ``eval`` samples
``eval.num_samples`` images per seed from the latest checkpoint's EMA parameters, sharded over
every device and process, and writes ``<workdir>/eval/<name>.json`` (FID, KID, precision,
recall, Inception Score where available, conditional class accuracy for the domain
classifier, bits/dim if requested; per seed, mean and 95% interval) and a sample grid.
"""

from __future__ import annotations

import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from diffjax import data as data_lib
from diffjax import images, workdir as workdir_lib
from diffjax.diffusion import likelihood, make_denoiser
from diffjax.evaluation import domain_classifier, features, metrics, reference
from diffjax.generate import grid_labels
from diffjax.sample import restore_for_inference
from diffjax.spec import ConfigError, ExperimentSpec, build_spec
from diffjax.train import log, make_mesh, make_sample_generator


def _classifier_dir(workdir: pathlib.Path) -> pathlib.Path:
  return workdir / "eval" / "domain_classifier"


def ref_path(spec: ExperimentSpec, workdir: pathlib.Path) -> pathlib.Path:
  e = spec.eval
  if e.ref_path:
    return pathlib.Path(e.ref_path)
  suffix = f"_{e.protocol}" if e.feature_net == "inception" else ""
  return workdir / "eval" / f"ref_{e.feature_net}{suffix}_{e.ref_split}.npz"


def _source(spec: ExperimentSpec, split: str, path: str = ""):
  d = spec.data
  return data_lib.make_source(d.source, name=d.name, split=split, data_dir=d.data_dir,
                              path=path or d.path, image_key=d.image_key,
                              label_key=d.label_key)


def real_images(spec: ExperimentSpec, source) -> tuple[np.ndarray, np.ndarray]:
  """Every image of a source, preprocessed like training data, as uint8 [N, H, W, C]."""
  d = spec.data
  options = data_lib.PipelineOptions(d.image_size, d.channels, False, 500,
                                     num_workers=d.num_workers)
  xs, ys = [], []
  for batch in data_lib.iterate_once(source, options):
    xs.append(images.to_uint8(batch["image"]))
    ys.append(np.asarray(batch["label"]))
  return np.concatenate(xs), np.concatenate(ys)


def feature_net(spec: ExperimentSpec, workdir: pathlib.Path, mesh, *,
                train_if_missing: bool = False) -> features.FeatureNet:
  e = spec.eval
  if e.feature_net == "inception":
    return features.inception_net(mesh, cache_dir=e.inception_cache or None,
                                  source=e.inception_source or None,
                                  download=e.download_inception, protocol=e.protocol)
  directory = _classifier_dir(workdir)
  try:
    return features.domain_net(mesh, directory)
  except FileNotFoundError:
    if not train_if_missing:
      raise ConfigError(f"no domain classifier in {directory}; run --mode ref_stats first")
  x, y = real_images(spec, _source(spec, spec.data.split))
  log(f"training the domain classifier on {len(x)} {spec.data.split} images")
  params = domain_classifier.train(x, y, spec.data.num_classes, steps=e.classifier_steps,
                                   seed=spec.train.seed, log=log)
  if jax.process_index() == 0:
    domain_classifier.save(directory, params, {
        "num_classes": spec.data.num_classes, "image_size": spec.data.image_size,
        "channels": spec.data.channels, "trained_on": spec.data.split,
        "steps": e.classifier_steps})
  return features.domain_net(mesh, directory)


def expected_fingerprint(spec: ExperimentSpec, net: features.FeatureNet, source) -> dict:
  d = spec.data
  return {**reference.data_fingerprint(
      d.source, name=d.name, split=spec.eval.ref_split,
      path=spec.eval.ref_data_path or d.path, image_size=d.image_size, channels=d.channels,
      source=source), **net.fingerprint}


def ref_stats(config, workdir: str) -> pathlib.Path:
  """Computes and saves the reference statistics of ``eval.ref_split``."""
  spec = build_spec(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  workdir = workdir_lib.prepare(workdir, config, write=jax.process_index() == 0)
  mesh = make_mesh(spec)
  net = feature_net(spec, workdir, mesh, train_if_missing=True)
  source = _source(spec, spec.eval.ref_split, spec.eval.ref_data_path)
  start = time.time()
  x, y = real_images(spec, source)
  feats = net(x)
  seconds = time.time() - start
  ref = reference.build(feats["pool"], expected_fingerprint(spec, net, source))
  out = ref_path(spec, workdir)
  summary = {"path": str(out), "num_images": len(x), "seconds": round(seconds, 1),
             "images_per_second": round(len(x) / seconds, 1),
             "fingerprint": ref["fingerprint"]}
  if net.name == "domain":
    summary["classifier_accuracy"] = float(np.mean(feats["logits"].argmax(1) == y))
  if jax.process_index() == 0:
    reference.save(out, ref)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
  log(f"reference statistics of {len(x)} {spec.eval.ref_split} images -> {out}" +
      (f" (domain classifier accuracy {summary['classifier_accuracy']:.4f})"
       if net.name == "domain" else ""))
  return out


class Evaluator:
  """Feature net and checked reference, built once; scores sets of generated images."""

  def __init__(self, spec: ExperimentSpec, workdir: pathlib.Path, mesh):
    self.spec = spec
    self.net = feature_net(spec, workdir, mesh)
    path = ref_path(spec, workdir)
    try:
      self.ref = reference.load(path)
    except FileNotFoundError:
      raise ConfigError(f"no reference statistics at {path}; compute them first with "
                        f"--mode ref_stats (same config) or set eval.ref_path") from None
    source = _source(spec, spec.eval.ref_split, spec.eval.ref_data_path)
    try:
      reference.check(self.ref["fingerprint"], expected_fingerprint(spec, self.net, source), path)
    except reference.ReferenceMismatch as e:
      raise ConfigError(str(e)) from None
    self.path = path

  def score(self, generated_uint8: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    e = self.spec.eval
    feats = self.net(generated_uint8)
    pool = feats["pool"]
    mu, sigma = metrics.statistics(pool)
    out = {"fd": metrics.frechet_distance(mu, sigma, self.ref["mu"], self.ref["sigma"])}
    kid, _ = metrics.kernel_inception_distance(pool, self.ref["features"],
                                               subset_size=e.kid_subset_size)
    out["kid"] = kid
    out["precision"], out["recall"] = metrics.precision_recall(self.ref["features"], pool,
                                                               k=e.pr_k)
    if self.net.name == "inception" and self.net.has_logits:
      out["inception_score"] = metrics.inception_score(feats["logits"])[0]
    if self.net.name == "domain" and labels is not None:
      out["class_accuracy"] = float(np.mean(feats["logits"].argmax(1) == labels))
    return out


def generate(generator, params, spec: ExperimentSpec, n: int, rng) -> tuple[np.ndarray, ...]:
  """n uint8 samples with balanced class labels (conditional) in chunks."""
  labels = grid_labels(n, spec.data.num_classes)
  chunk = spec.eval.batch_size
  outs, start = [], time.time()
  for i in range(0, n, chunk):
    outs.append(images.to_uint8(generator(params, jax.random.fold_in(rng, i),
                                          labels[i:i + chunk])))
    done = min(n, i + chunk)
    if done < n:  # progress of long sampling runs
      rate = done / (time.time() - start)
      log(f"sampled {done}/{n} images | {rate:.1f} img/s | ETA {(n - done) / rate / 60:.1f} min")
  return np.concatenate(outs), labels


def _interval(values: list[float]) -> dict[str, float]:
  v = np.asarray(values, np.float64)
  out = {"mean": float(v.mean())}
  if len(v) > 1:
    half = scipy.stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    out.update(std=float(v.std(ddof=1)), ci95_low=float(v.mean() - half),
               ci95_high=float(v.mean() + half))
  return out


def _test_likelihood(spec: ExperimentSpec, setup, params, rng) -> dict[str, float]:
  e = spec.eval
  source = _source(spec, e.ref_split, e.ref_data_path)
  x, _ = real_images(spec, source)
  x = x[:e.likelihood_num]
  net_fn = lambda x_in, level, cond: setup.model.apply({"params": params}, x_in, level, cond)
  denoise = make_denoiser(net_fn, spec.diffusion.parameterization, spec.diffusion.schedule)
  label_fn = (lambda n: np.full(n, spec.data.num_classes, np.int32)) if \
      spec.model.conditional else (lambda n: None)
  dims = int(np.prod(x.shape[1:]))

  @jax.jit
  def one_batch(xb, key):
    cond = label_fn(xb.shape[0])
    fn = lambda xt, t: denoise(xt, t, cond)  # unconditional (null class) likelihood
    k1, k2 = jax.random.split(key)
    if e.likelihood == "vlb":
      total, _ = likelihood.ddpm_vlb(fn, spec.diffusion.schedule, xb / 127.5 - 1.0, k1)
      return total / (dims * math.log(2.0))
    deq = (xb + jax.random.uniform(k2, xb.shape)) / 127.5 - 1.0
    logp, _ = likelihood.ode_log_likelihood(fn, spec.diffusion.schedule, deq, k1)
    return likelihood.bits_per_dim(logp, dims, likelihood.BIN_WIDTH_8BIT)

  bpd = [np.asarray(one_batch(jnp.asarray(x[i:i + e.likelihood_batch], jnp.float32),
                              jax.random.fold_in(rng, i)))
         for i in range(0, len(x), e.likelihood_batch)]
  bpd = np.concatenate(bpd)
  return {"bits_per_dim": float(bpd.mean()),
          "bits_per_dim_sem": float(bpd.std(ddof=1) / math.sqrt(len(bpd))),
          "likelihood_images": int(len(bpd))}


def evaluate(config, workdir: str) -> dict:
  """Scores the latest checkpoint; returns and writes the results."""
  spec = build_spec(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  workdir = workdir_lib.prepare(workdir, config, write=False)
  mesh = make_mesh(spec)
  evaluator = Evaluator(spec, workdir, mesh)
  setup, state, step = restore_for_inference(spec, workdir, mesh)
  generator = make_sample_generator(setup, spec, mesh)
  e, s = spec.eval, spec.sample
  name = e.name or (f"{e.feature_net}_{s.sampler}{s.num_steps}"
                    f"{'_cfg%g' % s.guidance_scale if s.guidance_scale != 1 else ''}"
                    f"_n{e.num_samples}_step{step}")
  per_seed, start = [], time.time()
  for seed in range(e.seeds):
    t0 = time.time()
    x, labels = generate(generator, state.ema_params, spec, e.num_samples,
                         jax.random.PRNGKey(1000 + seed))
    scores = evaluator.score(x, labels if spec.model.conditional else None)
    scores["seconds"] = time.time() - t0
    per_seed.append(scores)
    log(f"seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    if seed == 0 and jax.process_index() == 0:
      ncols = spec.data.num_classes if spec.model.conditional else None
      images.save_png(workdir / "eval" / f"{name}.png",
                      images.make_grid(x[:100], ncols=ncols, upscale=s.upscale))
  keys = [k for k in per_seed[0] if k != "seconds"]
  result = {"name": name, "checkpoint_step": step, "num_samples": e.num_samples,
            "seeds": e.seeds, "sampler": {"name": s.sampler, "num_steps": s.num_steps,
                                          "spacing": s.spacing, "options": dict(s.options),
                                          "guidance_scale": s.guidance_scale},
            "feature_net": evaluator.net.fingerprint, "reference": str(evaluator.path),
            "reference_fingerprint": evaluator.ref["fingerprint"],
            "metrics": {k: _interval([p[k] for p in per_seed])["mean"] for k in keys},
            "intervals": {k: _interval([p[k] for p in per_seed]) for k in keys},
            "per_seed": per_seed, "seconds": time.time() - start}
  if e.likelihood:
    result["metrics"].update(_test_likelihood(spec, setup, state.ema_params,
                                              jax.random.PRNGKey(7)))
  if jax.process_index() == 0:
    out = workdir / "eval" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log(f"wrote {out}: " + ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items()))
  return result
