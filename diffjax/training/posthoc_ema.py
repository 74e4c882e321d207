"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", EDM2, Sec. 3 and Appendix C).

During training every network that keeps an EMA also tracks one power-function EMA per
configured relative standard deviation ``sigma_rel`` (``train.posthoc_ema_stds``): after update
``t`` (t = 1, 2, ...) ``theta_hat <- beta_t theta_hat + (1 - beta_t) theta`` with
``beta_t = (1 - 1/t)^(gamma + 1)``, whose weights over the history are (in continuous time)
``p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)``. Snapshots of these profiles are saved every
``train.posthoc_ema_every`` steps. Afterwards the EMA of any ``sigma_rel`` at any snapshot time
is reconstructed as the linear combination of snapshots whose weight function is closest in
L2 to the target's: a small least-squares problem with closed-form inner products.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def std_to_gamma(sigma_rel: float) -> float:
  """The power-function exponent whose EMA has relative standard deviation ``sigma_rel``:
  the real root of ``(g + 1) / ((g + 2)^2 (g + 3)) = sigma_rel^2`` (EDM2, Eq. 3), i.e.
  ``g^3 + 7 g^2 + (16 - 1/s^2) g + (12 - 1/s^2) = 0``."""
  if not 0 < sigma_rel < 12 ** -0.5:
    raise ValueError(f"sigma_rel must be in (0, 0.2887), got {sigma_rel}")
  inv = 1.0 / sigma_rel**2
  roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
  real = roots[np.abs(roots.imag) < 1e-9].real
  return float(real.max())


def gamma_to_std(gamma: float) -> float:
  return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def beta(step, gamma: float):
  """The decay of the update that makes ``step + 1`` updates (``step``: int32, updates
  before it): ``(1 - 1/t)^(gamma + 1)`` with ``t = step + 1``; 0 for the first update."""
  t = jnp.asarray(step, jnp.float32) + 1.0
  return (1.0 - 1.0 / t) ** (gamma + 1.0)


def update(profiles: Sequence, params, step, gammas: Sequence[float]) -> tuple:
  """Each profile's power-function EMA update towards the new ``params``."""
  out = []
  for profile, gamma in zip(profiles, gammas):
    b = beta(step, gamma)
    out.append(jax.tree.map(lambda e, p: b * e + (1.0 - b) * p, profile, params))
  return tuple(out)


def inner_product(t_a, gamma_a, t_b, gamma_b):
  """``<p_a, p_b>`` of two power-function weight functions ending at ``t_a`` and ``t_b``:
  ``(ga+1)(gb+1)/(ga+gb+1) (m/t_a)^(ga+1) (m/t_b)^(gb+1) / m`` with ``m = min(t_a, t_b)``
  (numpy arrays broadcast)."""
  t_a, gamma_a, t_b, gamma_b = (np.asarray(v, np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
  m = np.minimum(t_a, t_b)
  return ((gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1) *
          (m / t_a) ** (gamma_a + 1) * (m / t_b) ** (gamma_b + 1) / m)


def solve_weights(snapshot_t: Sequence[float], snapshot_gamma: Sequence[float],
                  target_t: float, target_gamma: float) -> np.ndarray:
  """Least-squares weights of the snapshots (``snapshot_t[i]`` steps, exponent
  ``snapshot_gamma[i]``) whose combined weight function best matches the target's.

  Returns:
    float64 ``[num_snapshots]``: reconstructed = sum_i w_i snapshot_i.
  """
  t, g = np.asarray(snapshot_t, np.float64), np.asarray(snapshot_gamma, np.float64)
  gram = inner_product(t[:, None], g[:, None], t[None, :], g[None, :])
  rhs = inner_product(t, g, target_t, target_gamma)
  return np.linalg.lstsq(gram, rhs, rcond=None)[0]


def combine(trees: Sequence, weights: Sequence[float]):
  """``sum_i weights[i] * trees[i]`` leaf by leaf (float64 weights, float32 result)."""
  weights = [float(w) for w in weights]
  return jax.tree.map(lambda *leaves: sum(w * leaf for w, leaf in zip(weights, leaves)),
                      *trees)


class Snapshots:
  """The power-function EMA profiles of every network that keeps them, saved every
  ``train.posthoc_ema_every`` steps under ``<workdir>/posthoc_ema/<step>`` (orbax, all kept)."""

  def __init__(self, directory, stds: Sequence[float]):
    import orbax.checkpoint as ocp
    self._ocp = ocp
    self.stds = tuple(float(s) for s in stds)
    self.gammas = tuple(std_to_gamma(s) for s in self.stds)
    self._manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(create=True, max_to_keep=None,
                                                        enable_async_checkpointing=True),
        item_names=("profiles", "meta"))

  def save(self, step: int, state) -> None:
    profiles = {role: net.posthoc for role, net in state.nets.items() if net.posthoc}
    ocp = self._ocp
    self._manager.save(step, args=ocp.args.Composite(
        profiles=ocp.args.StandardSave(profiles),
        meta=ocp.args.JsonSave({"stds": list(self.stds), "gammas": list(self.gammas)})))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def reconstruct(self, abstract_profiles: dict, sigma_rel: float, at_step: int,
                  use: Sequence[float] | None = None) -> dict:
    """``{role: parameters}``: the EMA of relative standard deviation ``sigma_rel`` at
    ``at_step``, from the snapshots taken up to then (``abstract_profiles``: ``{role: tuple of
    abstract parameter trees}``, with shardings; ``use``: the profiles to combine, default
    all)."""
    ocp = self._ocp
    steps = [s for s in self.steps() if s <= at_step]
    if not steps:
      raise FileNotFoundError(f"no post-hoc EMA snapshot at or before step {at_step} in "
                              f"{self._manager.directory}")
    chosen = [i for i, s in enumerate(self.stds) if use is None or s in use]
    times = [s for s in steps for _ in chosen]
    gammas = [self.gammas[i] for _ in steps for i in chosen]
    weights = solve_weights(times, gammas, float(at_step), std_to_gamma(sigma_rel))
    out = {}
    loaded = [self._manager.restore(s, args=ocp.args.Composite(
        profiles=ocp.args.StandardRestore(abstract_profiles)))["profiles"] for s in steps]
    for role in abstract_profiles:
      trees = [snap[role][i] for snap in loaded for i in chosen]
      out[role] = combine(trees, weights)
    return out

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
