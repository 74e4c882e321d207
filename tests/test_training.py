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


# --- the step wrapper's policies against a numpy replay (issue 34) ------------------------------
def _numpy_ema_decay(k, decay, warmup):
  """The EMA decay of the update at step k: min(decay, (1 + k) / (10 + k)) with warm-up
  (TensorFlow's ExponentialMovingAverage with ``num_updates``), else ``decay``."""
  return min(decay, (1.0 + k) / (10.0 + k)) if warmup else decay


class _ScalarMethod:
  """A method whose update is one SGD step ``w <- w - g`` with the batch's ``g``, reporting the
  batch's ``loss``: the step wrapper's policies then act on numbers the test chooses."""

  def __init__(self, lr=1.0):
    from diffjax.methods.base import Network
    self.networks = {"w": Network(None, None, optax.sgd(lr), optax.constant_schedule(lr / 2),
                                  ema=True)}

  def update(self, state, batch, rng):
    from diffjax.training import apply_gradients
    net = apply_gradients(state.nets["w"], self.networks["w"].optimizer, batch["g"])
    return state.with_net("w", net), {"loss": batch["loss"],
                                      "grad_norm": jnp.sqrt(jnp.sum(batch["g"] ** 2)),
                                      "draw": jax.random.uniform(rng)}


def test_skip_policy_loss_average_and_ema_equal_a_numpy_replay():
  """Loss-spike skipping (factor 3 times the running mean of accepted losses), non-finite
  losses and gradient norms rejected, the running mean 0.99 / 0.01 over accepted losses only,
  ``skipped`` / ``streak`` counters, and the parameters and EMA (decay 0.9 with warm-up) after
  every step equal a numpy replay of the documented rules; the update at step k draws from
  ``fold_in(rng, k)``."""
  from diffjax.training import NetState, TrainState, train_step
  spec = build_spec(tiny_config(**{"train.ema_decay": 0.9, "faults.loss_spike_factor": 3.0}))
  method = _ScalarMethod()
  w0 = np.array([0.5, -1.0, 2.0], np.float32)
  opt = method.networks["w"].optimizer
  zero = jnp.zeros((), jnp.int32)
  state = TrainState(step=zero, nets={"w": NetState(jnp.asarray(w0), jnp.asarray(w0),
                                                    opt.init(jnp.asarray(w0)))},
                     rng=jax.random.PRNGKey(0), skipped=zero, streak=zero,
                     loss_avg=jnp.zeros((), jnp.float32))
  step = jax.jit(functools.partial(train_step, method=method, train=spec.train,
                                   faults=spec.faults))
  rng = np.random.default_rng(0)
  # (loss, gradient): a spike (7 > 3 x 2.005), NaN loss, an infinite gradient, a loss just over
  # the threshold (6.0 > 5.985) and one just under it (5.9).
  losses = [2.0, 2.5, 7.0, np.nan, 1.0, 1.5, 6.0, 5.9, 0.5]
  grads = [rng.normal(size=3).astype(np.float32) for _ in losses]
  grads[5] = np.array([np.inf, 0, 0], np.float32)
  w, ema, avg, skipped, streak = w0.astype(np.float64), w0.astype(np.float64), 0.0, 0, 0
  for k, (loss, g) in enumerate(zip(losses, grads)):
    state, metrics = step(state, {"loss": jnp.float32(loss), "g": jnp.asarray(g)})
    ok = np.isfinite(loss) and np.all(np.isfinite(g)) and (avg == 0 or loss <= 3.0 * avg)
    if ok:
      w = w - g
      d = _numpy_ema_decay(k, 0.9, True)
      ema = d * ema + (1 - d) * w
      avg = loss if avg == 0 else 0.99 * avg + 0.01 * loss
    skipped, streak = skipped + (not ok), 0 if ok else streak + 1
    net = jax.device_get(state.nets["w"])
    np.testing.assert_allclose(net.params, w, rtol=1e-6, err_msg=f"step {k}")
    np.testing.assert_allclose(net.ema_params, ema, rtol=1e-5, err_msg=f"step {k}")
    assert float(state.loss_avg) == pytest.approx(avg, rel=1e-6), k
    assert (int(state.step), int(metrics["skipped"]), int(metrics["streak"])) == (
        k + 1, skipped, streak), k
    assert float(metrics["lr"]) == 0.5
    # Step k's randomness is fold_in(rng, k), whatever happened before (exact resumes).
    assert float(metrics["draw"]) == float(jax.random.uniform(
        jax.random.fold_in(jax.random.PRNGKey(0), k)))
  assert skipped == 4 and streak == 0  # the replay itself took every branch


def test_nonfinite_abort_and_the_streak_limit_end_the_run_naming_the_checkpoint():
  """faults.nonfinite=abort ends the run at the first skipped update; with "skip" only a
  streak of max_consecutive_skips does (0: never)."""
  import dataclasses
  import types
  from diffjax.faults import EXIT_NUMERICAL, NumericalAbort
  from diffjax.jobs.train import _check_numerics
  spec = build_spec(tiny_config())
  ckpt = types.SimpleNamespace(all_steps=lambda: [4, 8], directory="/w/checkpoints")
  with_faults = lambda **f: dataclasses.replace(spec, faults=dataclasses.replace(spec.faults, **f))
  abort = with_faults(nonfinite="abort", max_consecutive_skips=0)
  with pytest.raises(NumericalAbort, match=r"aborted at step 10: 1 consecutive.*since step "
                                           r"10\. Last good checkpoint: step 8 in /w/checkp") as e:
    _check_numerics(abort, {"streak": 1.0, "loss": float("nan")}, 10, ckpt)
  assert e.value.exit_code == EXIT_NUMERICAL == 3
  _check_numerics(abort, {"streak": 0.0, "loss": 1.0}, 10, ckpt)
  skip = with_faults(nonfinite="skip", max_consecutive_skips=3)
  _check_numerics(skip, {"streak": 2.0}, 10, ckpt)
  with pytest.raises(NumericalAbort, match="3 consecutive update.*since step 8"):
    _check_numerics(skip, {"streak": 3.0}, 10, ckpt)
  _check_numerics(with_faults(nonfinite="skip", max_consecutive_skips=0), {"streak": 50.0}, 60,
                  ckpt)


def test_ema_after_k_steps_is_the_numpy_recursion_and_inference_reads_it(tmp_path):
  """The tiny diffusion model's EMA after 5 steps equals the numpy recursion over the recorded
  parameter trajectory (warm-up decays 0.1, 2/11, ...); what sampling restores from a
  checkpoint, and a state's inference variables, are that EMA, not the parameters."""
  from diffjax.jobs.common import checkpointer, restore_for_inference
  # Adam moves every weight by about lr a step: 1e-2 makes the EMA's lag (and any error in
  # it) far larger than float32 rounding.
  spec = build_spec(tiny_config(**{"optim.lr": 1e-2, "optim.warmup_steps": 0}), num_devices=8)
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  setup = state_setup(spec, mesh, DATA_PARALLEL_RULES)
  fn = jit_train_step(setup, mesh, spec.train, spec.faults)
  it = iter(data.make_dataset(data.digits_source("train"), data.PipelineOptions(
      8, 1, False, spec.data.batch_size, 0, 0)))
  state = setup.init(jax.random.PRNGKey(0))
  params = [jax.device_get(state.nets["denoiser"].params)]
  for _ in range(5):
    state, _ = fn(state, parallel.global_batch(next(it), parallel.batch_sharding(mesh)))
    params.append(jax.device_get(state.nets["denoiser"].params))
  final = jax.device_get(state)
  ema = jax.tree.map(lambda p: np.asarray(p, np.float64), params[0])
  for k in range(5):
    d = _numpy_ema_decay(k, spec.train.ema_decay, spec.train.ema_warmup)
    ema = jax.tree.map(lambda e, p: d * e + (1 - d) * np.asarray(p, np.float64), ema,
                       params[k + 1])
  got = final.nets["denoiser"].ema_params
  for e, g, p in zip(jax.tree.leaves(ema), jax.tree.leaves(got), jax.tree.leaves(params[-1])):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
  lag = [np.abs(e - p).max() for e, p in zip(jax.tree.leaves(ema), jax.tree.leaves(params[-1]))]
  assert max(lag) > 3e-3  # the EMA is not the parameters themselves
  # Inference: a state's variables and a checkpoint's restored variables are the EMA.
  inference = final.inference_variables["denoiser"]["params"]
  for a, b in zip(jax.tree.leaves(inference), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  ckpt = checkpointer(spec, tmp_path)
  ckpt.save(5, state)
  ckpt.close()
  variables, step = restore_for_inference(spec, tmp_path, mesh)
  assert step == 5
  for a, b in zip(jax.tree.leaves(variables["denoiser"]["params"]), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_accumulated_gradients_equal_the_closed_form_gradient_of_the_whole_batch():
  """value_and_grad with grad_accum=4 on a least-squares loss: the loss and the gradient are
  those of the whole batch, 2/N X^T (X w - y) (numpy, float64), not their sum over the
  micro-batches; per-example draws travel with their examples (micro-batch i holds examples
  i, i + 4, ...); aux is the last micro-batch's."""
  from diffjax.training.step import value_and_grad
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(16, 3)), rng.normal(size=16)
  noise = rng.normal(size=16)
  w = np.array([0.5, -1.0, 2.0])

  def loss_fn(params, batch, per_example):
    r = batch["x"] @ params - batch["y"] - per_example
    return jnp.mean(r**2), {"first": batch["x"][0, 0]}

  batch = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
  (loss, aux), grads = jax.jit(functools.partial(value_and_grad, loss_fn, grad_accum=4))(
      jnp.asarray(w, jnp.float32), batch, jnp.asarray(noise, jnp.float32))
  r = x @ w - y - noise
  np.testing.assert_allclose(loss, np.mean(r**2), rtol=1e-5)
  np.testing.assert_allclose(grads, 2 / 16 * x.T @ r, rtol=1e-5)
  assert float(aux["first"]) == pytest.approx(x[3, 0])  # micro-batch 3 starts at example 3
