"""A small classifier for 8x8 to 32x32 datasets, trained by the project on the dataset's train
split, whose penultimate layer gives a domain feature space.

Inception features say little about 8x8 digits or 28x28 clothing; a classifier trained on the
data itself gives a meaningful Fréchet distance on CPU and, for class-conditional models, the
accuracy with which samples show the class they were asked for. Its weights are saved with their
SHA-256, which the reference statistics record, so distances are only ever compared within one
classifier.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

FEATURE_DIM = 128


class DomainClassifier(nn.Module):
  """conv-conv-pool-conv-conv-global pool-dense(128) features -> dense(classes) logits."""

  num_classes: int
  width: int = 32

  @nn.compact
  def __call__(self, x):
    """x: float [N, H, W, C] in [-1, 1]. Returns {"pool": [N, 128], "logits": [N, classes]}."""
    w = self.width
    x = nn.relu(nn.Conv(w, (3, 3))(x))
    x = nn.relu(nn.Conv(w, (3, 3))(x))
    if min(x.shape[1:3]) >= 8:
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(2 * w, (3, 3))(x))
    x = nn.relu(nn.Conv(2 * w, (3, 3))(x))
    pool = nn.relu(nn.Dense(FEATURE_DIM)(jnp.mean(x, axis=(1, 2))))
    return {"pool": pool, "logits": nn.Dense(self.num_classes)(pool)}


def to_float(images_uint8):
  return jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0


def train(train_images: np.ndarray, train_labels: np.ndarray, num_classes: int, *,
          steps: int = 1500, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
          log=print) -> dict:
  """Trains on uint8 images [N, H, W, C] with integer labels; returns the params."""
  model = DomainClassifier(num_classes)
  rng = np.random.default_rng(seed)
  params = jax.jit(model.init)(jax.random.PRNGKey(seed), to_float(train_images[:1]))["params"]
  tx = optax.adam(lr)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x, y):
    def loss_fn(p):
      logits = model.apply({"params": p}, to_float(x))["logits"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  for i in range(steps):
    idx = rng.integers(0, len(train_images), batch_size)
    params, opt, loss = step(params, opt, train_images[idx], train_labels[idx])
    if (i + 1) % 500 == 0:
      log(f"domain classifier step {i + 1}/{steps}: loss {float(loss):.4f}")
  return jax.device_get(params)


def predict(params, num_classes: int, images_uint8: np.ndarray, batch: int = 1024) -> dict:
  model = DomainClassifier(num_classes)
  fn = jax.jit(lambda p, x: model.apply({"params": p}, to_float(x)))
  outs = [jax.device_get(fn(params, images_uint8[i:i + batch]))
          for i in range(0, len(images_uint8), batch)]
  return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def params_sha256(params) -> str:
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(leaf, np.float32).tobytes())
  return h.hexdigest()


def save(directory: str | pathlib.Path, params, meta: dict) -> pathlib.Path:
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  flat = {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  np.savez(directory / "domain_classifier.npz", **flat)
  (directory / "domain_classifier.json").write_text(
      json.dumps({**meta, "sha256": params_sha256(params)}, indent=1))
  return directory / "domain_classifier.npz"


def load(directory: str | pathlib.Path) -> tuple[dict, dict]:
  """``(params, meta)``; raises FileNotFoundError when no classifier was trained there."""
  directory = pathlib.Path(directory)
  path = directory / "domain_classifier.npz"
  if not path.exists():
    raise FileNotFoundError(f"no domain classifier in {directory}")
  meta = json.loads((directory / "domain_classifier.json").read_text())
  template = jax.eval_shape(DomainClassifier(meta["num_classes"]).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, meta["image_size"], meta["image_size"],
                                       meta["channels"])))["params"]
  with np.load(path) as f:
    leaves = {k: f[k] for k in f.files}
  params = jax.tree_util.tree_map_with_path(lambda p, _: leaves[jax.tree_util.keystr(p)],
                                            template)
  if params_sha256(params) != meta["sha256"]:
    raise ValueError(f"{path} does not match the hash recorded in domain_classifier.json; "
                     f"the weights were changed or damaged")
  return params, meta
