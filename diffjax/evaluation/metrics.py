"""Sample-quality metrics on feature vectors, computed the standard ways.

* Fréchet distance (FID with Inception features; Heusel et al. 2017): float64 statistics; the
  trace of the matrix square root from symmetric eigendecompositions (`frechet_distance`).
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
import scipy.special


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean [d] and unbiased covariance [d, d] in float64."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise ValueError(f"need features [n >= 2, d], got shape {f.shape}")
  return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

  ``Tr (S1 S2)^(1/2)`` is the sum of the square roots of the eigenvalues of ``S1 S2``, which
  are those of the symmetric positive semi-definite ``S1^(1/2) S2 S1^(1/2)``: two symmetric
  eigendecompositions instead of the reference implementations' ``scipy.linalg.sqrtm`` of the
  product (the same number to ~1e-9 relative with full-rank covariances, and exact where the
  product is singular, e.g. fewer samples than feature dimensions, where ``sqrtm`` needs an
  ``eps`` on the diagonals), and faster (experiments/benchmarks/evaluation/fid_trace_sqrt.md).
  """
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
  sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(
      np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics disagree in shape: {mu1.shape}/{sigma1.shape} vs "
                     f"{mu2.shape}/{sigma2.shape}")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) -
               2.0 * trace_sqrt_product(sigma1, sigma2))


def _psd_eigenvalues(matrix: np.ndarray, name: str, vectors: bool = True):
  """Eigenvalues (rounding noise below zero set to zero) and eigenvectors (or None) of a
  symmetric PSD matrix; a clearly negative eigenvalue means it is not a covariance matrix."""
  matrix = (matrix + matrix.T) / 2
  w, v = np.linalg.eigh(matrix) if vectors else (np.linalg.eigvalsh(matrix), None)
  scale = max(float(np.abs(w).max()), np.finfo(np.float64).tiny)
  if w.min() < -1e-6 * scale:
    raise ValueError(f"{name} is not positive semi-definite (eigenvalue {w.min():.3g}, largest "
                     f"{scale:.3g}): not a covariance matrix")
  return np.clip(w, 0.0, None), v


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """``Tr (S1 S2)^(1/2)`` for covariance matrices S1, S2."""
  w1, v1 = _psd_eigenvalues(sigma1, "sigma1")
  _psd_eigenvalues(sigma2, "sigma2", vectors=False)
  root1 = (v1 * np.sqrt(w1)) @ v1.T
  inner, _ = _psd_eigenvalues(root1 @ sigma2 @ root1, "S1^(1/2) S2 S1^(1/2)", vectors=False)
  return float(np.sum(np.sqrt(inner)))


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
