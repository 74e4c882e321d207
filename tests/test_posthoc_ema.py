"""Post-hoc EMA (EDM2): the profiles' exponents, the least-squares weights against a numpy
solution, and a reconstruction from two profiles against a third tracked directly."""

import jax
import numpy as np
import pytest

from diffjax import parallel
from diffjax.experiment import build_spec
from diffjax.jobs.common import state_setup
from diffjax.training import posthoc_ema
from diffjax.training.setup import jit_train_step


def test_exponents_of_the_papers_profiles():
  # EDM2 Sec. 3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94.
  assert posthoc_ema.std_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
  assert posthoc_ema.std_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
  for s in (0.01, 0.05, 0.13, 0.28):
    assert posthoc_ema.gamma_to_std(posthoc_ema.std_to_gamma(s)) == pytest.approx(s, rel=1e-9)
  with pytest.raises(ValueError, match="sigma_rel must be in"):
    posthoc_ema.std_to_gamma(0.3)


def test_weights_equal_a_numpy_least_squares_over_the_weight_functions():
  """The closed-form normal equations against a discretised L2 fit of the target's weight
  function p(tau) = (g + 1) tau^g / t^(g + 1) on [0, t] by the snapshots' functions."""
  times = np.repeat(np.arange(100, 1001, 100), 2).astype(float)
  gammas = np.tile([posthoc_ema.std_to_gamma(0.05), posthoc_ema.std_to_gamma(0.10)], 10)
  target_t, target_g = 1000.0, posthoc_ema.std_to_gamma(0.07)
  tau = (np.arange(200_000) + 0.5) * (1000.0 / 200_000)
  p = lambda t, g: np.where(tau <= t, (g + 1) * tau**g / t ** (g + 1), 0.0)
  basis = np.stack([p(t, g) for t, g in zip(times, gammas)], axis=1)
  reference = np.linalg.lstsq(basis, p(target_t, target_g), rcond=None)[0]
  weights = posthoc_ema.solve_weights(times, gammas, target_t, target_g)
  # The discretised response (both fits) at a few million points: agree to 1e-3 of the total.
  fitted = basis @ weights
  np.testing.assert_allclose(fitted, basis @ reference, atol=1e-3 * np.abs(fitted).max())
  assert weights.sum() == pytest.approx(1.0, abs=1e-3)  # an average of averages


def test_reconstruction_from_two_profiles_matches_a_third_tracked_directly(tmp_path):
  """The test autoencoder (fast to compile) tracks sigma_rel 0.05, 0.10 and 0.07; the 0.07
  EMA at the last step, rebuilt from the 0.05 and 0.10 snapshots only, is within 2% of how far
  the tracked one moved from the initial parameters."""
  import autoencoder_config
  c = autoencoder_config.get_config()
  c.train.posthoc_ema_stds = (0.05, 0.10, 0.07)
  c.train.posthoc_ema_every = 5
  c.train.num_steps = 60
  c.optim.schedule = "constant"
  spec = build_spec(c, num_devices=2)
  mesh = parallel.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  setup = state_setup(spec, mesh)
  step_fn = jit_train_step(setup, mesh, spec.train, spec.faults)
  from diffjax import data
  it = iter(data.make_dataset(data.digits_source("train"), data.PipelineOptions(
      8, 1, False, 16, 0, 0)))
  state = setup.init(jax.random.PRNGKey(0))
  initial = jax.device_get(state.nets["decoder"].params)
  snapshots = posthoc_ema.Snapshots(tmp_path / "posthoc_ema", spec.train.posthoc_ema_stds)
  for step in range(1, 61):
    batch = {k: v for k, v in next(it).items() if k != "bad_records"}
    state, _ = step_fn(state, parallel.global_batch(batch, parallel.batch_sharding(mesh)))
    if step % 5 == 0:
      snapshots.save(step, state)
  snapshots.wait()
  profiles = {"decoder": setup.abstract.nets["decoder"].posthoc}
  rebuilt = snapshots.reconstruct(profiles, 0.07, 60, use=(0.05, 0.10))["decoder"]
  snapshots.close()
  tracked = jax.device_get(state.nets["decoder"].posthoc[2])
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  moved = np.linalg.norm(flat(tracked) - flat(initial))
  error = np.linalg.norm(flat(jax.device_get(rebuilt)) - flat(tracked))
  assert moved > 0 and error < 0.02 * moved, (error, moved)
  # The encoder (no EMA) tracks no profiles.
  assert state.nets["encoder"].posthoc is None
