"""Training: optimiser and EMA closed forms, overfitting one batch, sharded equivalence, the
metrics files. (Exact resume after preemption, kills and damaged checkpoints: test_faults.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax import data, parallel
from diffjax.experiment import build_spec
from diffjax.jobs.common import state_setup
from diffjax.methods.diffusion import loss_fn
from diffjax.parallel.rules import DATA_PARALLEL_RULES
from diffjax.training import ema_decay_at, learning_rate_schedule, read_metrics
from diffjax.training.setup import jit_train_step
from launch_util import tiny_config


def test_learning_rate_schedules_closed_form():
  spec = build_spec(tiny_config(**{"optim.warmup_steps": 10, "optim.schedule": "cosine",
                                   "train.num_steps": 110}))
  lr = learning_rate_schedule(spec.method.optim)
  peak = spec.method.optim.lr
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(peak / 2)
  assert float(lr(10)) == pytest.approx(peak)
  assert float(lr(60)) == pytest.approx(peak * 0.5 * (1 + np.cos(np.pi * 0.5)), rel=1e-5)
  assert float(lr(110)) == pytest.approx(0.0, abs=1e-9)
  const = learning_rate_schedule(build_spec(tiny_config(**{"optim.warmup_steps": 0,
                                                          "optim.schedule": "constant"})).method.optim)
  assert float(const(0)) == float(const(1000)) == pytest.approx(peak)


def test_ema_decay_warmup():
  assert float(ema_decay_at(jnp.int32(0), 0.9999, True)) == pytest.approx(0.1)
  assert float(ema_decay_at(jnp.int32(90), 0.9999, True)) == pytest.approx(91 / 100)
  assert float(ema_decay_at(jnp.int32(10 ** 6), 0.9999, True)) == pytest.approx(0.9999)
  assert float(ema_decay_at(jnp.int32(0), 0.99, False)) == pytest.approx(0.99)


def _fixed_batch(n=8):
  src = data.digits_source("test")
  x = np.stack([src[i]["image"] for i in range(n)]).astype(np.float32) / 127.5 - 1
  y = np.array([src[i]["label"] for i in range(n)], np.int32)
  return {"image": jnp.asarray(x), "label": jnp.asarray(y)}


def test_overfits_one_fixed_batch():
  """With fixed noise and times, a tiny model drives the loss of one batch to ~0."""
  spec = build_spec(tiny_config())
  model = spec.method.module
  batch = _fixed_batch()
  import flax.linen as nn
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), batch["image"], jnp.zeros(8),
                                    batch["label"]))["params"]
  tx = optax.adam(3e-3)
  rng = jax.random.PRNGKey(1)
  loss = functools.partial(loss_fn, batch=batch, rng=rng, model=model, spec=spec.method.diffusion,
                           conditional=True, train=False)

  @jax.jit
  def step(params, opt):
    (value, _), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, value

  opt = tx.init(params)
  params, opt, first = step(params, opt)
  for _ in range(150):
    params, opt, last = step(params, opt)
  assert float(first) > 0.3 and float(last) < 1e-3 * float(first)


def _run_steps(mesh, spec, batches):
  setup = state_setup(spec, mesh, DATA_PARALLEL_RULES)
  bs = parallel.batch_sharding(mesh)
  fn = jit_train_step(setup, mesh, spec.train, spec.faults)
  state = setup.init(jax.random.PRNGKey(0))
  losses = []
  for b in batches:
    state, metrics = fn(state, parallel.global_batch(b, bs))
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.device_get(state)


def test_one_device_and_eight_devices_give_the_same_loss_curve():
  assert jax.device_count() == 8, "conftest provides 8 CPU devices"
  spec = build_spec(tiny_config(), num_devices=8)
  it = iter(data.make_dataset(data.digits_source("train"), data.PipelineOptions(
      8, 1, False, spec.data.batch_size, 0, 0)))
  batches = [next(it) for _ in range(6)]
  one = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  eight = parallel.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  losses1, state1 = _run_steps(one, spec, batches)
  losses8, state8 = _run_steps(eight, spec, batches)
  assert losses1[0] != losses1[-1]
  np.testing.assert_allclose(losses8, losses1, rtol=2e-5)
  for a, b in zip(jax.tree.leaves(state1.nets), jax.tree.leaves(state8.nets)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_metrics_and_sample_grids_reach_tensorboard_and_jsonl(tmp_path):
  """Scalars and a sample grid through tensorboardX, read back by TensorBoard's own reader."""
  from tensorboard.backend.event_processing import event_accumulator

  from diffjax.training import MetricsWriter
  writer = MetricsWriter(tmp_path)
  rows = [(1, {"loss": 0.75, "lr": 1e-4}), (2, {"loss": 0.5, "lr": 2e-4}),
          (2 ** 40, {"loss": -3.25, "eval/fd": 12.5})]
  for step, scalars in rows:
    writer.write(step, scalars)
  grid = np.random.default_rng(0).integers(0, 256, (19, 37, 1), dtype=np.uint8)
  writer.image(2, "samples", grid, tmp_path / "samples")
  writer.close()
  assert read_metrics(tmp_path) == [{"step": s, **v} for s, v in rows]
  acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"),
                                           size_guidance={"images": 0})
  acc.Reload()
  assert sorted(acc.Tags()["scalars"]) == ["eval/fd", "loss", "lr"]
  assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 0.75), (2, 0.5), (2 ** 40, -3.25)]
  np.testing.assert_allclose([e.value for e in acc.Scalars("lr")], [1e-4, 2e-4], rtol=1e-6)
  (event,) = acc.Images("samples")
  assert (event.step, event.width, event.height) == (2, 37, 19)
  from PIL import Image
  import io
  shown = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("L"))
  np.testing.assert_array_equal(shown, grid[..., 0])  # PNG: lossless
  png = np.asarray(Image.open(tmp_path / "samples" / "step_0000002.png"))
  np.testing.assert_array_equal(png, grid[..., 0])


def test_loss_by_noise_level_is_the_binned_mean_over_a_log_window():
  """Two steps' per-example losses binned by log-SNR through the log window equal numpy's
  binned means over both steps' examples; an empty bin is not logged."""
  from diffjax.methods.diffusion import LOGSNR_BINS, loss_by_logsnr
  from diffjax.training import LogWindow
  rng = np.random.default_rng(0)
  losses = [rng.uniform(0, 2, 64).astype(np.float32) for _ in range(2)]
  levels = [rng.uniform(-4, 20, 64).astype(np.float32) for _ in range(2)]  # none below -4
  window = LogWindow()
  for loss, level in zip(losses, levels):
    window.add({"loss": jnp.mean(loss), **loss_by_logsnr(jnp.asarray(loss), jnp.asarray(level))})
  row = window.read()
  all_loss, all_level = np.concatenate(losses), np.concatenate(levels)
  edges = [-np.inf, *LOGSNR_BINS, np.inf]
  for lo, hi in zip(edges[:-1], edges[1:]):
    inside = (all_level >= lo) & (all_level < hi)
    name = f"loss_by_logsnr/{lo:g}..{hi:g}"
    if inside.any():
      assert row[name] == pytest.approx(all_loss[inside].mean(), rel=1e-5)
    else:
      assert name not in row
  assert "loss_by_logsnr/-inf..-7.5" not in row and not any("@" in k for k in row)
