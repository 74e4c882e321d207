"""Metrics against independent numpy/scipy computations and closed forms."""

import itertools

import numpy as np
import pytest
import scipy.linalg
import scipy.special

from diffjax.evaluation import metrics


def _features(n=600, d=12, shift=0.0, scale=1.0, seed=0):
  a = np.random.default_rng(100 + d).normal(size=(d, d)) / np.sqrt(d)  # one distribution per d
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)) @ a) * scale + shift


def _fid_by_sqrtm(f1, f2):
  """The reference implementations' way: scipy's general matrix square root of S1 S2."""
  mu1, mu2 = f1.mean(0), f2.mean(0)
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_an_independent_computation():
  f1, f2 = _features(seed=0), _features(shift=0.3, scale=1.2, seed=1)
  got = metrics.frechet_distance(*metrics.statistics(f1), *metrics.statistics(f2))
  assert got == pytest.approx(_fid_by_sqrtm(f1, f2), rel=1e-9)
  back = metrics.frechet_distance(*metrics.statistics(f2), *metrics.statistics(f1))
  assert got == pytest.approx(back, rel=1e-9)  # symmetric
  same = metrics.frechet_distance(*metrics.statistics(f1), *metrics.statistics(f1))
  assert abs(same) < 1e-6
  # Fewer samples than dimensions (singular covariances): still the same number.
  f1, f2 = _features(n=20, d=40, seed=2), _features(n=30, d=40, shift=0.2, seed=3)
  got = metrics.frechet_distance(*metrics.statistics(f1), *metrics.statistics(f2))
  assert got == pytest.approx(_fid_by_sqrtm(f1, f2), rel=1e-6)


def test_frechet_distance_refuses_a_matrix_that_is_no_covariance():
  mu, sigma = np.zeros(3), np.eye(3)
  with pytest.raises(ValueError, match="sigma2 is not positive semi-definite"):
    metrics.frechet_distance(mu, sigma, mu, np.diag([1.0, -0.5, 1.0]))


def test_frechet_distance_closed_form_for_gaussians():
  # For N(m1, s1^2 I) and N(m2, s2^2 I) in d dims: |m1 - m2|^2 + d (s1 - s2)^2.
  d = 5
  got = metrics.frechet_distance(np.full(d, 1.0), 4.0 * np.eye(d), np.zeros(d), np.eye(d))
  assert got == pytest.approx(d * 1.0 + d * (2.0 - 1.0) ** 2)


def test_kid_matches_a_direct_double_loop():
  x, y = _features(n=40, d=6, seed=2), _features(n=40, d=6, shift=0.5, seed=3)
  # One subset holding every sample: the unbiased MMD^2 does not depend on the order.
  got, _ = metrics.kernel_inception_distance(x, y, num_subsets=1, subset_size=40)
  k = lambda a, b: (np.dot(a, b) / 6 + 1) ** 3
  m = 40
  xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
  assert got == pytest.approx(xx + yy - 2 * xy, rel=1e-9)
  near, _ = metrics.kernel_inception_distance(_features(seed=4), _features(seed=5),
                                              num_subsets=20, subset_size=300)
  far, _ = metrics.kernel_inception_distance(_features(seed=4), _features(shift=1.0, seed=5),
                                             num_subsets=20, subset_size=300)
  assert abs(near) < 0.05 < far


def _pr_brute_force(real, fake, k=3):
  def radii(f):
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k]

  def coverage(q, r, rad):
    d = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1))
    return float(np.mean(np.any(d <= rad[None], axis=1)))

  return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def test_precision_recall_match_brute_force():
  real = _features(n=300, d=8, seed=6)
  fake = _features(n=250, d=8, shift=0.4, scale=0.7, seed=7)
  got = metrics.precision_recall(real, fake, k=3)
  np.testing.assert_allclose(got, _pr_brute_force(real, fake), atol=1e-9)
  assert metrics.precision_recall(real, real) == (1.0, 1.0)
  assert metrics.precision_recall(real, real + 100.0) == (0.0, 0.0)


def test_inception_score_extremes():
  assert metrics.inception_score(np.zeros((100, 1008)), splits=1)[0] == pytest.approx(1.0)
  confident = np.full((100, 10), -50.0)
  confident[np.arange(100), np.arange(100) % 10] = 50.0
  assert metrics.inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)


def test_bad_statistics_are_reported():
  with pytest.raises(ValueError, match="statistics disagree in shape"):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="need features"):
    metrics.statistics(np.zeros((1, 4)))


def test_inception_score_over_several_splits_is_the_mean_and_std_of_per_split_scores():
  """Salimans et al. 2016: each split's exp(mean_x KL(p(y|x) || p(y))), then their mean and
  standard deviation. Two splits confident over 2 and over 5 classes score 2 and 5 exactly;
  random logits match scipy's KL divergence per split."""
  import scipy.stats
  logits = np.full((100, 10), -60.0)
  logits[np.arange(50), np.arange(50) % 2] = 60.0
  logits[50 + np.arange(50), np.arange(50) % 5] = 60.0
  mean, std = metrics.inception_score(logits, splits=2)
  assert mean == pytest.approx(3.5, rel=1e-9) and std == pytest.approx(1.5, rel=1e-9)
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(120, 7)) * 3
  p = scipy.special.softmax(logits, axis=1)
  scores = []
  for part in np.split(p, 4):
    py = part.mean(axis=0)
    scores.append(np.exp(np.mean([scipy.stats.entropy(row, py) for row in part])))
  got = metrics.inception_score(logits, splits=4)
  np.testing.assert_allclose(got, (np.mean(scores), np.std(scores)), rtol=1e-9)


def test_kid_standard_deviation_over_subsets_matches_a_direct_computation():
  """The spread reported with KID is the standard deviation (as torch-fidelity's ``kid_std``)
  of the unbiased MMD^2 of each subset, the subsets drawn without replacement with numpy's
  generator of the given seed, each MMD^2 computed here by a double loop."""
  x, y = _features(n=20, d=5, seed=8), _features(n=24, d=5, shift=0.3, seed=9)
  m, subsets, seed = 8, 6, 3
  k = lambda a, b: (np.dot(a, b) / 5 + 1) ** 3
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(subsets):
    xs, ys = x[rng.choice(20, m, replace=False)], y[rng.choice(24, m, replace=False)]
    pairs = list(itertools.permutations(range(m), 2))
    values.append(sum(k(xs[i], xs[j]) for i, j in pairs) / len(pairs) +
                  sum(k(ys[i], ys[j]) for i, j in pairs) / len(pairs) -
                  2 * sum(k(a, b) for a in xs for b in ys) / m**2)
  mean, std = metrics.kernel_inception_distance(x, y, num_subsets=subsets, subset_size=m,
                                                seed=seed)
  assert mean == pytest.approx(np.mean(values), rel=1e-9)
  assert std == pytest.approx(np.std(values), rel=1e-9) and std > 0
