"""Memorisation check: are generated images copies of training images?

For each generated image its nearest training image in a feature space (the evaluation's
feature network, or pixels) is found; a generated image counts as a copy when it is closer to
that training image than ``factor`` times the ``quantile`` of the same distance for real
held-out images, which by construction are not copies (a calibrated threshold, so no absolute
distance has to be chosen per dataset and feature space). The closest pairs are shown side by
side for a human to judge.
"""

from __future__ import annotations

import numpy as np


def nearest(queries: np.ndarray, reference: np.ndarray, chunk: int = 2048
            ) -> tuple[np.ndarray, np.ndarray]:
  """Euclidean distance of each query [n, d] to its nearest reference row [m, d] and that
  row's index, in chunks of queries (float64)."""
  queries = np.asarray(queries, np.float64).reshape(len(queries), -1)
  reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
  ref_sq = np.sum(reference**2, axis=1)
  dist, index = [], []
  for i in range(0, len(queries), chunk):
    q = queries[i:i + chunk]
    d2 = np.sum(q**2, axis=1)[:, None] + ref_sq[None, :] - 2.0 * q @ reference.T
    j = np.argmin(d2, axis=1)
    dist.append(np.sqrt(np.maximum(d2[np.arange(len(q)), j], 0.0)))
    index.append(j)
  return np.concatenate(dist), np.concatenate(index)


def threshold(heldout: np.ndarray, train: np.ndarray, quantile: float = 0.01,
              factor: float = 0.5) -> float:
  """``factor`` times the ``quantile`` of held-out real images' nearest-training distances."""
  if not 0 < quantile < 1 or not factor > 0:
    raise ValueError(f"need 0 < quantile < 1 and factor > 0, got {quantile}, {factor}")
  return float(factor * np.quantile(nearest(heldout, train)[0], quantile))


def check(generated: np.ndarray, train: np.ndarray, heldout: np.ndarray, *,
          quantile: float = 0.01, factor: float = 0.5) -> dict:
  """The copy fraction of ``generated`` (features [n, d]) against ``train``, with the threshold
  from ``heldout``.

  Returns:
    ``{"threshold", "copy_fraction", "median_distance", "median_heldout_distance",
    "distances" [n], "nearest" [n] (training indices)}``.
  """
  tau = threshold(heldout, train, quantile, factor)
  dist, index = nearest(generated, train)
  return {"threshold": tau, "copy_fraction": float(np.mean(dist < tau)),
          "median_distance": float(np.median(dist)),
          "median_heldout_distance": float(np.median(nearest(heldout, train)[0])),
          "distances": dist, "nearest": index}


def closest_pairs(generated_uint8: np.ndarray, train_uint8: np.ndarray, result: dict,
                  count: int = 8) -> np.ndarray:
  """uint8 [2 * count, H, W, C]: the ``count`` generated images closest to a training image,
  each followed by that training image (for `diffjax.images.make_grid` with 2 columns)."""
  order = np.argsort(result["distances"])[:count]
  pairs = [img for i in order for img in (generated_uint8[i],
                                           train_uint8[result["nearest"][i]])]
  return np.stack(pairs)
