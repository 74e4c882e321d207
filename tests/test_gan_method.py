"""The GAN method through the training system: every family trains through launch.py (tiny
configs), lazy regularisers run on their steps only, a ProGAN run killed mid-fade-in resumes
bit for bit, 8 devices give the losses of one, a DCGAN overfits a tiny batch, and a bad GAN
config lists every problem before any compute."""

import json

import jax
import numpy as np
import pytest

from diffjax import data, parallel
from diffjax.experiment import build_spec
from diffjax.fields import ConfigError
from diffjax.jobs.common import state_setup
from diffjax.testing import fault_injection as fi
from diffjax.training.setup import jit_train_step
from launch_util import launch


def _config(family, **overrides):
  import importlib
  c = importlib.import_module(f"configs.gan_{family}").get_config("tiny")
  c.sample.at_end = False
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def _rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _args(family, workdir, steps, *extra):
  return ["--config", f"configs/gan_{family}.py:tiny", "--workdir", workdir,
          f"--config.train.num_steps={steps}", "--config.logging.log_every=1",
          "--config.checkpoint.every_steps=4", *extra]


@pytest.mark.parametrize("family", ["dcgan", "biggan", "stylegan2"])
def test_each_family_trains_and_samples_through_launch(tmp_path, family):
  """A few steps with both optimisers (two learning rates logged), finite losses, the
  generator's EMA in the checkpoint and a sample grid. StyleGAN2's lazy R1 (every 4
  discriminator updates here) and path length (every 2 generator updates) run on those steps
  only, and its path-length mean and w_avg move."""
  w = tmp_path / family
  small = ["--config.data.image_size=8"] if family == "stylegan2" else []
  out = launch(*_args(family, w, 6, *small)).stdout
  assert "method gan (discriminator" in out and "generator" in out
  rows = _rows(w)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  for r in rows:
    assert np.isfinite([r["d_loss"], r["g_loss"], r["grad_norm_d"], r["grad_norm_g"]]).all()
    assert "lr/generator" in r and "lr/discriminator" in r
  assert list((w / "samples").glob("*.png"))
  arrays = fi.final_arrays(w)
  assert any(k.startswith("/nets/generator/ema_params/") for k in arrays)
  assert not any(k.startswith("/nets/discriminator/ema_params/") for k in arrays)
  if family == "biggan":  # lr 1e-4 and 4e-4: two time scales; 2 D updates a step
    assert rows[0]["lr/generator"] == pytest.approx(1e-4)
    assert rows[0]["lr/discriminator"] == pytest.approx(4e-4)
    assert rows[0]["ortho"] > 0
    assert any("/spectral/" in k for k in arrays) and any("/batch_stats/" in k for k in arrays)
  if family == "stylegan2":
    assert [r["step"] for r in rows if r["r1"] > 0] == [1, 5]
    assert [r["step"] for r in rows if r["pl"] > 0] == [1, 3, 5]
    assert arrays["/nets/generator/collections/gan_stats/pl_mean"] != 0
    assert np.any(arrays["/nets/generator/collections/mapping_stats/w_avg"] != 0)


def test_progan_killed_mid_fade_in_resumes_bit_identical(tmp_path):
  """8x8 images (levels 4x4 and 8x8), growth 2 stable + 4 fade-in steps: preempted after
  step 4 (mid-fade-in) and relaunched == 8 steps at once, every array of the state and the
  data position, and the logged losses; the progress collection holds the level and alpha
  the last update used (step index 3: level 1, alpha 1/4)."""
  growth = ["--config.gan.growth_stable_steps=2", "--config.gan.growth_fade_steps=4",
            "--config.data.image_size=8"]
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  launch(*_args("progan", whole, 8, *growth))
  stopped = launch(*_args("progan", parts, 8, *growth, "--config.faults.inject_preemption_steps=[4]"),
                   check=False)
  assert stopped.returncode == fi.EXIT_PREEMPTED, stopped.stderr[-2000:]
  mid = fi.final_arrays(parts)
  assert int(mid["__step__"]) == 4
  assert int(mid["/nets/generator/collections/progress/level"]) == 1
  assert float(mid["/nets/generator/collections/progress/alpha"]) == pytest.approx(0.25)
  resumed = launch(*_args("progan", parts, 8, *growth))
  assert "resumed from checkpoint at step 4" in resumed.stdout
  assert fi.identical(fi.final_arrays(parts), fi.final_arrays(whole))
  losses = lambda rows: [{k: v for k, v in r.items() if "per_sec" not in k} for r in rows]
  assert losses(_rows(parts))[-4:] == losses(_rows(whole))[-4:]


def _batch(n=16, size=16):
  src = data.digits_source("train")
  x = np.stack([src[i]["image"] for i in range(n)]).astype(np.float32) / 127.5 - 1
  x = np.repeat(np.repeat(x, size // 8, axis=1), size // 8, axis=2)
  return {"image": x, "label": np.asarray([src[i]["label"] for i in range(n)], np.int32)}


def _run(config, devices, steps, batch, keep_states=False):
  spec = build_spec(config, num_devices=len(devices))
  mesh = parallel.make_mesh({"data": len(devices), "fsdp": 1, "tensor": 1}, devices)
  setup = state_setup(spec, mesh)
  step = jit_train_step(setup, mesh, spec.train, spec.faults)
  state, metrics = setup.init(jax.random.PRNGKey(0)), []
  states = [jax.device_get(state.nets)] if keep_states else None
  for _ in range(steps):
    state, m = step(state, parallel.global_batch(batch, parallel.batch_sharding(mesh)))
    metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    if keep_states:
      states.append(jax.device_get(state.nets))
  return spec, (states if keep_states else state), metrics


def test_eight_devices_give_the_losses_of_one_and_a_nan_step_changes_nothing():
  """DCGAN (batch norm: statistics over the global batch) with DiffAugment, two critic
  updates a step: the same losses on 8 devices as on 1, to float rounding. The shared
  non-finite policy applies to the GAN as to any method: the update of step 1 (its loss
  made NaN by fault injection) is rejected for both networks and counted."""
  c = _config("dcgan", **{"gan.augment": "diffaugment", "gan.n_critic": 2,
                          "faults.inject_nan_steps": (1,)})
  batch = _batch()
  _, states, one = _run(c, jax.devices()[:1], 3, batch, keep_states=True)
  _, _, eight = _run(c, jax.devices()[:8], 3, batch)
  for a, b in zip(one, eight):
    for k in ("d_loss", "g_loss", "d_real", "d_fake"):
      assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), (k, a, b)
  assert np.isnan(one[1]["loss"]) and [m["skipped"] for m in one] == [0, 1, 1]
  for a, b in zip(jax.tree.leaves(states[1]), jax.tree.leaves(states[2])):
    np.testing.assert_array_equal(a, b)  # generator, discriminator, EMA, BN statistics
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(states[2]),
                                                      jax.tree.leaves(states[3])))


def test_dcgan_overfits_a_tiny_batch():
  """Four digits, 300 steps: the generator's (EMA) samples end far closer to their nearest
  training image than at the start."""
  batch = _batch(4)
  batch = {k: np.concatenate([v] * 4) for k, v in batch.items()}  # the 4 digits, 4 times
  c = _config("dcgan", **{"train.ema_decay": 0.9, "optim.lr": 1e-3, "optim_d.lr": 1e-3})
  spec, state0, _ = _run(c, jax.devices()[:2], 0, batch)
  spec, state, metrics = _run(c, jax.devices()[:2], 300, batch)
  labels = np.zeros(16, np.int32)

  def nearest(s):
    x = np.asarray(spec.method.generate(s.inference_variables, jax.random.PRNGKey(5), labels))
    d = ((x[:, None] - batch["image"][None, :4]) ** 2).mean(axis=(2, 3, 4))
    return d.min(axis=1).mean()

  before, after = nearest(state0), nearest(state)
  assert after < 0.25 * before, (before, after)
  assert np.isfinite([m["d_loss"] for m in metrics]).all()


def test_bad_gan_config_lists_every_problem():
  c = _config("stylegan2", **{"gan.loss": "wasserstein", "gan.n_critic": 3,
                              "gan.augment_policy": "color,rotate", "gan.truncation_psi": 1.5})
  c.generator.kwargs.resolution = 64
  c.optim_d.lr = -1.0
  with pytest.raises(ConfigError) as err:
    build_spec(c, num_devices=1)
  msg = str(err.value)
  for expected in ("config.gan.loss: got 'wasserstein'; allowed: non_saturating, hinge, wgan_gp",
                   "config.gan.n_critic: data.batch_size 16 does not split into 3",
                   "config.gan.augment_policy: unknown augmentation(s) ['rotate']",
                   "config.gan.truncation_psi: must be in (0, 1]",
                   "config.generator.kwargs: ['resolution'] come from the data section",
                   "config.optim_d.lr: must be > 0"):
    assert expected in msg, msg
  c = _config("stylegan2")
  c.data.batch_size = 6
  c.discriminator.kwargs.mbstd_group = 4
  with pytest.raises(ConfigError, match="minibatch-std group 4 does not divide the 6 images"):
    build_spec(c, num_devices=1)
  bad = _config("dcgan", **{"gan.pl_weight": 2.0})
  with pytest.raises(ConfigError, match="need a style-based generator"):
    build_spec(bad, num_devices=1)
  progressive = _config("progan", **{"gan.growth_stable_steps": 0})
  with pytest.raises(ConfigError, match="growth_stable_steps > 0"):
    build_spec(progressive, num_devices=1)
  with pytest.raises(ConfigError, match="loss_spike_factor: the WGAN critic's loss is signed"):
    build_spec(_config("progan", **{"faults.loss_spike_factor": 3.0}), num_devices=1)


@pytest.mark.parametrize("devices", [1, 3])
def test_a_gan_run_loads_for_inference_on_any_device_count(devices):
  """diffjax.load rebuilds a run's spec for this host's devices: BigGAN's batch must still
  split into its n_critic = 2 discriminator updates (inference on one device once set the
  batch to 1 and refused the run)."""
  from diffjax import api
  config = _config("biggan")
  assert config.gan.n_critic == 2
  spec = api._spec(config, devices)
  assert spec.data.batch_size % (2 * devices) == 0
  assert spec.data.batch_size in (config.data.batch_size, config.data.batch_size * devices)
