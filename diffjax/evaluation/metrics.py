"""Sample-quality metrics on feature vectors, computed the standard ways.

* Fréchet distance (FID with Inception features; Heusel et al. 2017): float64 statistics and
  ``scipy.linalg.sqrtm`` as in the reference implementations.
* KID (Bińkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  ``(x.y / d + 1)^3``, averaged over random subsets.
* Precision and recall (Kynkäänniemi et al. 2019): k-NN hyperspheres (k = 3) around each set's
  features; precision = share of generated samples inside the real manifold, recall = share of
  real samples inside the generated one.
* Inception Score (Salimans et al. 2016): ``exp(E KL(p(y|x) || p(y)))`` over 10 splits, from
  1008-way logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean [d] and unbiased covariance [d, d] in float64."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise ValueError(f"need features [n >= 2, d], got shape {f.shape}")
  return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

  When the product is singular enough for ``sqrtm`` to fail, ``eps`` is added to both
  diagonals (as the reference implementations do); a matrix square root with a large imaginary
  part is an error rather than a silently wrong number.
  """
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
  sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(
      np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics disagree in shape: {mu1.shape}/{sigma1.shape} vs "
                     f"{mu2.shape}/{sigma2.shape}")
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.all(np.isfinite(covmean)):
    offset = np.eye(len(sigma1)) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"matrix square root has a large imaginary component "
                       f"({np.max(np.abs(covmean.imag)):.3g}); too few samples for the "
                       f"feature dimension?")
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def kernel_inception_distance(features1, features2, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """KID: mean and standard deviation over subsets of the unbiased MMD^2."""
  x_all = np.asarray(features1, np.float64)
  y_all = np.asarray(features2, np.float64)
  m = min(subset_size, len(x_all), len(y_all))
  if m < 2:
    raise ValueError("KID needs at least 2 samples in each set")
  d = x_all.shape[1]
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    x = x_all[rng.choice(len(x_all), m, replace=False)]
    y = y_all[rng.choice(len(y_all), m, replace=False)]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    mmd = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) +
           (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
    values.append(mmd)
  return float(np.mean(values)), float(np.std(values))


@jax.jit
def _squared_distances(a, b):
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  d = (jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] -
       2 * jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST))
  return jnp.maximum(d, 0.0)


def _blocks(n: int, size: int):
  return [(i, min(i + size, n)) for i in range(0, n, size)]


def knn_radii(features, k: int = 3, block: int = 2048) -> np.ndarray:
  """Squared distance of each point to its k-th nearest other point."""
  f = jnp.asarray(features, jnp.float32)
  radii = []
  for lo, hi in _blocks(len(f), block):
    d = _squared_distances(f[lo:hi], f)
    radii.append(np.asarray(jnp.sort(d, axis=1)[:, k]))  # column 0 is the point itself
  return np.concatenate(radii)


def _coverage(queries, refs, ref_radii, block: int = 2048) -> float:
  """Share of queries inside at least one reference hypersphere."""
  q, r = jnp.asarray(queries, jnp.float32), jnp.asarray(refs, jnp.float32)
  radii = jnp.asarray(ref_radii, jnp.float32)
  inside = []
  for lo, hi in _blocks(len(q), block):
    inside.append(np.asarray(jnp.any(_squared_distances(q[lo:hi], r) <= radii[None, :], axis=1)))
  return float(np.concatenate(inside).mean())


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
  """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN radii."""
  if len(real) <= k or len(fake) <= k:
    raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
  precision = _coverage(fake, real, knn_radii(real, k))
  recall = _coverage(real, fake, knn_radii(fake, k))
  return precision, recall


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """Mean and standard deviation over splits of ``exp(E_x KL(p(y|x) || p(y)))``."""
  logits = np.asarray(logits, np.float64)
  logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  scores = []
  for part in np.array_split(logp, splits):
    p = np.exp(part)
    log_py = np.log(p.mean(axis=0))
    scores.append(np.exp(np.mean(np.sum(p * (part - log_py), axis=1))))
  return float(np.mean(scores)), float(np.std(scores))
