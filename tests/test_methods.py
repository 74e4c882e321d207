"""The method layer: a second objective (tests/autoencoder_method.py, this suite's only) trains
through launch.py on 8 devices with checkpoints, resume and FSDP, with no change to the
training system; the step wrapper's EMA and skip policy on any method; frozen networks;
checkpoints of another state layout refused in one line."""

import json
import shutil

import jax
import numpy as np
import pytest

from diffjax import parallel
from diffjax.experiment import build_spec
from diffjax.faults import CheckpointError
from diffjax.fields import ConfigError
from diffjax.jobs.common import checkpointer, state_setup
from diffjax.methods import METHODS
from diffjax.testing import fault_injection as fi
from diffjax.training.setup import jit_train_step
from launch_util import launch, subprocess_env

AE = "tests/autoencoder_config.py"
EIGHT = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
FSDP8 = ["--nosplit_cpu", "--config.mesh.rules=fsdp", "--config.mesh.fsdp=8",
         "--config.mesh.data=1", "--config.logging.log_every=1", "--config.sample.at_end=False",
         "--config.checkpoint.every_steps=4",
         "--config.optim.schedule=constant"]  # the cosine schedule would depend on num_steps


def _ae_launch(workdir, steps, *extra, arg=""):
  return launch("--config", AE + arg, "--workdir", workdir, f"--config.train.num_steps={steps}",
                *FSDP8, *extra, env=EIGHT)


def test_a_second_method_trains_resumes_and_samples_through_launch(tmp_path):
  """Interrupted after 8 of 12 steps and resumed == 12 steps at once, bit for bit, on 8 devices
  with the parameters split over the fsdp axis; the loss falls; --mode sample decodes."""
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  out = _ae_launch(whole, 12).stdout
  assert "method test_autoencoder" in out and "'fsdp': 8" in out
  _ae_launch(parts, 8)
  resumed = _ae_launch(parts, 12).stdout
  assert "resumed from checkpoint at step 8" in resumed
  assert fi.identical(fi.final_arrays(parts), fi.final_arrays(whole))
  rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["loss"] < 0.9 * rows[0]["loss"]
  # Both networks train (two optimisers); the decoder's EMA and parameters are split 8 ways.
  sharding = (whole / "sharding.txt").read_text()
  assert "['encoder'].opt_state" in sharding and "['decoder'].ema_params" in sharding
  assert "['decoder'].collections['batch_stats']" in sharding
  assert "'fsdp'" in sharding
  _ae_launch(whole, 12, "--mode", "sample")
  images = np.load(next((whole / "samples").glob("test_autoencoder_step12.npz")))["images"]
  assert images.shape == (16, 8, 8, 1) and images.std() > 0


def _ae_spec(arg=None, **overrides):
  import autoencoder_config
  c = autoencoder_config.get_config(arg)
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return build_spec(c, num_devices=2)


def _batch(n=16):
  from diffjax import data
  src = data.digits_source("train")
  x = np.stack([src[i]["image"] for i in range(n)]).astype(np.float32) / 127.5 - 1
  return {"image": x, "label": np.zeros(n, np.int32)}


def _run(spec, steps):
  mesh = parallel.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  setup = state_setup(spec, mesh)
  step = jit_train_step(setup, mesh, spec.train, spec.faults)
  state, metrics = setup.init(jax.random.PRNGKey(0)), []
  states = [jax.device_get(state)]
  for _ in range(steps):
    state, m = step(state, parallel.global_batch(_batch(), parallel.batch_sharding(mesh)))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return states, metrics


def test_step_wrapper_ema_skip_policy_and_frozen_networks_on_any_method():
  """EMA is decay * old + (1 - decay) * new parameters with the warm-up decay; an injected NaN
  rejects every network's update; a frozen network keeps its initial parameters and holds
  no optimiser state or EMA."""
  spec = _ae_spec("frozen_encoder", **{"train.ema_decay": 0.9, "faults.inject_nan_steps": (1,)})
  states, metrics = _run(spec, 3)
  decoder = lambda s: s.nets["decoder"]
  for k in (1, 3):  # accepted updates (step 1, the second, was injected with NaN)
    decay = min(0.9, (1 + (k - 1)) / (10 + (k - 1)))
    prev, new = decoder(states[k - 1]), decoder(states[k])
    for e_old, e_new, p_new in zip(jax.tree.leaves(prev.ema_params),
                                   jax.tree.leaves(new.ema_params),
                                   jax.tree.leaves(new.params)):
      np.testing.assert_allclose(e_new, decay * e_old + (1 - decay) * p_new, rtol=1e-6,
                                 atol=1e-7)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(prev.params),
                                                         jax.tree.leaves(new.params)))
  assert np.isnan(metrics[1]["loss"]) and metrics[1]["skipped"] == 1
  for a, b in zip(jax.tree.leaves(states[2].nets), jax.tree.leaves(states[1].nets)):
    np.testing.assert_array_equal(a, b)  # the rejected update changed nothing
  encoder = [s.nets["encoder"] for s in states]
  assert encoder[0].opt_state is None and encoder[0].ema_params is None
  for a, b in zip(jax.tree.leaves(encoder[0].params), jax.tree.leaves(encoder[-1].params)):
    np.testing.assert_array_equal(a, b)
  assert "lr" in metrics[0] and metrics[0]["loss"] > metrics[-1]["loss"]
  # The decoder's batch statistics move with accepted updates only (a collection, not EMA'd).
  means = [s.nets["decoder"].collections["batch_stats"]["BatchNorm_0"]["mean"] for s in states]
  assert not np.array_equal(means[1], means[0])
  np.testing.assert_array_equal(means[2], means[1])
  # Both networks trained: one optimiser each, learning rates logged per network.
  _, both = _run(_ae_spec(), 1)
  assert {"lr/encoder", "lr/decoder"} <= set(both[0]) and "lr" not in both[0]


def test_checkpoints_of_another_layout_are_refused_in_one_line(tmp_path):
  """A checkpoint without a layout record (diffjax before the method layer) and one of
  another layout are refused by name; neither is set aside as damaged."""
  spec = _ae_spec()
  mesh = parallel.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  setup = state_setup(spec, mesh)
  ckpt = checkpointer(spec, tmp_path)
  ckpt.save(3, setup.init(jax.random.PRNGKey(0)))
  ckpt.close()
  frozen = _ae_spec("frozen_encoder")
  with pytest.raises(CheckpointError, match="holds another state layout") as err:
    checkpointer(frozen, tmp_path).restore_latest(state_setup(frozen, mesh).abstract)
  assert "'trainable': True" in str(err.value) and "\n" not in str(err.value)
  shutil.rmtree(tmp_path / "checkpoints" / "3" / "meta")
  with pytest.raises(CheckpointError, match="before its method layer") as err:
    checkpointer(spec, tmp_path).restore_latest(setup.abstract)
  assert "\n" not in str(err.value)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3"]


def test_old_workdir_is_refused_in_one_line(tmp_path):
  w = tmp_path / "run"
  w.mkdir()
  (w / "config.json").write_text(json.dumps({"experiment": "digits", "optim": {"lr": 1e-3}}))
  result = launch("--config", "configs/default.py:tiny", "--workdir", w, check=False,
                  timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0 and "before its method layer" in result.stderr


def test_unknown_method_lists_the_registered_ones():
  with pytest.raises(ConfigError, match="config.method.name: got 'nope'; allowed: .*diffusion"):
    _ae_spec(**{"method.name": "nope"})
  assert {"diffusion", "test_autoencoder"} <= set(METHODS.names())
  with pytest.raises(ValueError, match="method 'diffusion' is already registered"):
    METHODS.add("diffusion", object)
