"""The reference-statistics job (``--mode ref_stats``): feature statistics of the real
``eval.ref_split``, training the domain classifier first when ``eval.feature_net=domain``."""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np

from diffjax import workdir as workdir_lib
from diffjax.evaluation import reference
from diffjax.evaluation.evaluator import (expected_fingerprint, feature_net, real_images,
                                          ref_path, ref_source)
from diffjax.experiment import ExperimentSpec
from diffjax.jobs.common import experiment_spec, log, make_mesh


def ref_stats(config, workdir: str) -> pathlib.Path:
  """Computes and saves the reference statistics of ``eval.ref_split``."""
  spec = experiment_spec(config)
  workdir = workdir_lib.prepare(workdir, config, write=jax.process_index() == 0)
  return compute_reference(spec, workdir, make_mesh(spec))


def compute_reference(spec: ExperimentSpec, workdir: pathlib.Path, mesh) -> pathlib.Path:
  """Writes the reference statistics of ``spec``'s ``eval.ref_split``; returns their path."""
  d, e = spec.data, spec.eval
  net = feature_net(d, e, workdir, mesh, seed=spec.train.seed, train_if_missing=True, log=log)
  source = ref_source(d, e)
  start = time.time()
  x, y = real_images(d, source)
  feats = net(x)
  seconds = time.time() - start
  ref = reference.build(feats["pool"], expected_fingerprint(d, e, net, source))
  out = ref_path(e, workdir)
  summary = {"path": str(out), "num_images": len(x), "seconds": round(seconds, 1),
             "images_per_second": round(len(x) / seconds, 1),
             "fingerprint": ref["fingerprint"]}
  if net.name == "domain":
    summary["classifier_accuracy"] = float(np.mean(feats["logits"].argmax(1) == y))
  if jax.process_index() == 0:
    reference.save(out, ref)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
  log(f"reference statistics of {len(x)} {e.ref_split} images -> {out}" +
      (f" (domain classifier accuracy {summary['classifier_accuracy']:.4f})"
       if net.name == "domain" else ""))
  return out
