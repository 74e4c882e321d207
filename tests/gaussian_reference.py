"""Closed forms for Gaussian data x0 ~ N(mu, Sigma), used as independent references.

With ``x_t = alpha x0 + sigma eps`` and ``Sigma = U diag(lam) U^T``:

* the exact denoiser is ``E[x0 | x_t] = mu + U diag(alpha lam / (alpha^2 lam + sigma^2)) U^T
  (x_t - alpha mu)``;
* the probability-flow ODE in ``(x / alpha, sigma / alpha)`` moves each eigen-component of
  ``x / alpha - mu`` in proportion to ``sqrt(lam + (sigma / alpha)^2)``, so its solution from
  ``(alpha_0, sigma_0)`` to ``(alpha_1, sigma_1)`` is known exactly;
* the log-density of ``x_t`` is that of ``N(alpha mu, alpha^2 Sigma + sigma^2 I)``.
"""

import numpy as np


class Gaussian:
  """A fixed d-dimensional Gaussian with a full covariance."""

  def __init__(self, dim: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    self.lam = np.linspace(0.25, 1.0, dim)
    self.u = q
    self.cov = (q * self.lam) @ q.T
    self.mu = rng.uniform(-0.5, 0.5, size=dim)

  def denoiser(self, x_t, alpha, sigma):
    """E[x0 | x_t] for x_t [batch, d] and per-example alpha, sigma [batch] (jnp or np)."""
    import jax.numpy as jnp
    alpha = jnp.asarray(alpha)[:, None]
    sigma = jnp.asarray(sigma)[:, None]
    gain = alpha * self.lam / (alpha**2 * self.lam + sigma**2)  # [batch, d] in the eigenbasis
    z = (x_t - alpha * self.mu) @ self.u
    return self.mu + (gain * z) @ self.u.T

  def ode_solution(self, x_init, alpha0, sigma0, alpha1, sigma1):
    """Exact PF-ODE map of x_init (np [batch, d]) from level (alpha0, sigma0) to (alpha1, sigma1)."""
    z = (np.asarray(x_init, np.float64) - alpha0 * self.mu) @ self.u
    scale = alpha1 * np.sqrt(self.lam + (sigma1 / alpha1) ** 2) / np.sqrt(
        self.lam * alpha0**2 + sigma0**2)
    return alpha1 * self.mu + (scale * z) @ self.u.T

  def log_density(self, x, alpha, sigma):
    """log N(x; alpha mu, alpha^2 Sigma + sigma^2 I) for x [batch, d]."""
    cov = alpha**2 * self.cov + sigma**2 * np.eye(len(self.mu))
    diff = np.asarray(x, np.float64) - alpha * self.mu
    sol = np.linalg.solve(cov, diff.T).T
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (np.sum(diff * sol, axis=1) + logdet + len(self.mu) * np.log(2 * np.pi))

  def whiten(self, x):
    """Maps samples of this Gaussian to N(0, I)."""
    return ((np.asarray(x, np.float64) - self.mu) @ self.u) / np.sqrt(self.lam)
