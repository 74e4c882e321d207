"""Feature networks behind one interface, run sharded over every device and process.

``net(images_uint8 [N, H, W, C]) -> {"pool": [N, d], "logits": [N, k] (if available)}``.

* ``inception``: the standard FID Inception-v3 (2048-d), logits only with pytorch-fid's file.
* ``domain``: a classifier trained on the dataset (128-d), always with logits.

Each net carries a ``fingerprint`` (name, weights SHA-256, input protocol) that reference
statistics record and evaluation checks.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from diffjax import parallel
from diffjax.evaluation import domain_classifier, inception, inception_weights



@dataclasses.dataclass
class FeatureNet:
  name: str
  fingerprint: dict[str, Any]
  has_logits: bool
  apply: Callable  # jitted (params, uint8 images) -> dict of arrays
  params: Any
  mesh: Any
  batch_size: int = 200

  def __call__(self, images: np.ndarray, progress: bool | None = None) -> dict[str, np.ndarray]:
    """Features of uint8 images (the same array on every process), batch by batch.

    ``progress`` prints images/s and the ETA about every 30 s (default: when the work is more
    than 20 batches)."""
    sharding = parallel.batch_sharding(self.mesh)
    devices = math.prod(self.mesh.shape[a] for a in parallel.BATCH_AXES)
    step = -(-self.batch_size // devices) * devices
    outs = []
    show = (len(images) > 20 * step if progress is None else progress) and (
        jax.process_index() == 0)
    start = last = time.time()
    for lo in range(0, len(images), step):
      chunk = np.asarray(images[lo:lo + step])
      n = len(chunk)
      if n % devices:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], devices - n % devices, 0)])
      arr = jax.make_array_from_callback(chunk.shape, sharding, lambda idx, c=chunk: c[idx])
      out = self.apply(self.params, arr)
      if jax.process_count() > 1:
        out = multihost_utils.process_allgather(out, tiled=True)
      outs.append({k: np.asarray(jax.device_get(v))[:n] for k, v in out.items()})
      if show and time.time() - last > 30:
        last, done = time.time(), lo + n
        rate = done / (last - start)
        print(f"[diffjax] {self.name} features {done}/{len(images)} | {rate:.1f} img/s | "
              f"ETA {(len(images) - done) / rate / 60:.1f} min", flush=True)
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def inception_net(mesh, *, cache_dir: str | None = None, source: str | None = None,
                  download: bool = False, protocol: str = "tf",
                  batch_size: int = 200) -> FeatureNet:
  path = inception_weights.ensure(cache_dir, source, download)
  params, sha = inception_weights.load(path)
  with_logits = "fc" in params
  model = inception.FIDInceptionV3(with_logits)
  replicated = jax.device_put(params, parallel.replicated(mesh))
  apply = jax.jit(lambda p, x: model.apply({"params": p}, inception.preprocess(x, protocol)),
                  out_shardings=parallel.batch_sharding(mesh))
  return FeatureNet("inception", {"feature_net": "inception", "weights_sha256": sha,
                                  "protocol": protocol}, with_logits, apply, replicated, mesh,
                    batch_size)


def domain_net(mesh, directory, batch_size: int = 1000) -> FeatureNet:
  params, meta = domain_classifier.load(directory)
  model = domain_classifier.DomainClassifier(meta["num_classes"])
  apply = jax.jit(lambda p, x: model.apply({"params": p}, domain_classifier.to_float(x)),
                  out_shardings=parallel.batch_sharding(mesh))
  return FeatureNet("domain", {"feature_net": "domain", "weights_sha256": meta["sha256"]}, True,
                    apply, jax.device_put(params, parallel.replicated(mesh)), mesh, batch_size)
