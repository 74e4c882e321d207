"""Learned variances (Nichol & Dhariwal 2021): the VLB term against the closed-form Gaussian KL
and discretised decoder computed in numpy, the hybrid loss's stop-gradient, the ancestral
sampler with exact Gaussian means and variances reproducing the data's moments on a respaced
chain, guided-diffusion's respacing and the discrete cosine chain."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from diffjax import diffusion
from diffjax.diffusion import learned_variance as lv

LINEAR = diffusion.get_schedule("linear")
EPS = diffusion.get_parameterization("eps", noise_input="step_index")


def _numpy_chain(n=1000):
  betas = np.linspace(1e-4, 0.02, n, dtype=np.float64)
  return betas, np.cumprod(1.0 - betas)


def test_vlb_term_is_the_closed_form_gaussian_kl():
  rng = np.random.default_rng(0)
  shape = (3, 4, 4, 2)
  x0 = rng.integers(0, 256, shape) / 127.5 - 1.0
  eps, x0_hat = rng.normal(size=shape), np.clip(x0 + 0.3 * rng.normal(size=shape), -1, 1)
  v = rng.uniform(-1.5, 1.5, shape)
  k = np.array([400, 17, 120])  # 0-based steps (late steps have a KL near 0 for any v)
  betas, ab = _numpy_chain()
  a = lambda arr: arr[k].reshape(-1, 1, 1, 1)
  ab_prev = np.concatenate([[1.0], ab[:-1]])
  x_t = (np.sqrt(a(ab)) * x0 + np.sqrt(1 - a(ab)) * eps).astype(np.float32).astype(np.float64)
  post_var = a(betas) * (1 - a(ab_prev)) / (1 - a(ab))
  c0 = a(betas) * np.sqrt(a(ab_prev)) / (1 - a(ab))
  ct = (1 - a(ab_prev)) * np.sqrt(1 - a(betas)) / (1 - a(ab))
  m1, m2 = c0 * x0 + ct * x_t, c0 * x0_hat + ct * x_t
  f = (v + 1) / 2
  lv1 = np.log(post_var)
  lv2 = f * np.log(a(betas)) + (1 - f) * lv1
  kl = 0.5 * (-1 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))
  expected = kl.reshape(3, -1).mean(1) / np.log(2)
  t = (k + 1) / 1000.0
  ours = lv.vlb_term(*(jnp.asarray(z, jnp.float32) for z in (x0, x_t, t, x0_hat, v)), LINEAR)
  np.testing.assert_allclose(np.asarray(ours), expected, rtol=2e-4)


def test_vlb_term_at_step_zero_is_the_discretised_gaussian_decoder():
  rng = np.random.default_rng(1)
  shape = (2, 3, 3, 1)
  x0 = rng.integers(0, 256, shape) / 127.5 - 1.0
  x0[0, 0, 0, 0], x0[0, 0, 1, 0] = -1.0, 1.0  # the open edge bins
  x_t, x0_hat = x0 + 0.01 * rng.normal(size=shape), x0 + 0.004 * rng.normal(size=shape)
  v = rng.uniform(-1, 1, shape)
  betas, ab = _numpy_chain()
  post1 = betas[1] * (1 - ab[0]) / (1 - ab[1])  # the clipped lower bound at step 0
  log_var = (v + 1) / 2 * np.log(betas[0]) + (1 - (v + 1) / 2) * np.log(post1)
  mean = x0_hat  # the posterior mean at step 0 is the prediction
  scale = np.exp(0.5 * log_var)
  cdf = lambda z: scipy.stats.norm.cdf(z)
  upper, lower = cdf((x0 - mean + 1 / 255) / scale), cdf((x0 - mean - 1 / 255) / scale)
  prob = np.where(x0 < -0.999, upper, np.where(x0 > 0.999, 1 - lower, upper - lower))
  expected = -np.log(np.maximum(prob, 1e-12)).reshape(2, -1).mean(1) / np.log(2)
  t = jnp.full((2,), 1 / 1000.0)
  ours = lv.vlb_term(*(jnp.asarray(z, jnp.float32) for z in (x0, x_t)), t,
                     jnp.asarray(x0_hat, jnp.float32), jnp.asarray(v, jnp.float32), LINEAR)
  np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4)


def test_hybrid_loss_gradient_reaches_the_mean_only_through_l_simple():
  rng = jax.random.PRNGKey(0)
  x0 = jax.random.uniform(jax.random.PRNGKey(1), (4, 4, 4, 3), minval=-1, maxval=1)
  out = 0.5 * jax.random.normal(jax.random.PRNGKey(2), (4, 4, 4, 6))
  t = jnp.array([0.001, 0.25, 0.5, 0.9])  # step 0 (the decoder) included
  net = lambda p: (lambda x, level, c: p)

  def parts(p):
    loss, aux = lv.hybrid_loss(net(p), x0, rng, LINEAR, EPS, t=t)
    return jnp.mean(loss), aux

  grad_total = jax.grad(lambda p: parts(p)[0])(out)
  grad_mse = jax.grad(lambda p: jnp.mean(parts(p)[1]["mse"]))(out)
  grad_vlb = jax.grad(lambda p: jnp.mean(parts(p)[1]["vlb"]))(out)
  np.testing.assert_array_equal(np.asarray(grad_vlb[..., :3]), 0.0)
  np.testing.assert_allclose(grad_total[..., :3], grad_mse[..., :3], rtol=1e-6, atol=1e-9)
  assert float(jnp.abs(grad_vlb[..., 3:]).max()) > 0  # the VLB term trains the variance
  # Without the stop-gradient the VLB term would pull on the mean: the check above can fail.
  eps = jax.random.normal(jax.random.split(rng)[1], x0.shape)
  x_t = LINEAR.marginal(x0, eps, t)

  def vlb_no_stop(p):
    x0_hat = EPS.x0_from_output(p[..., :3], x_t, t, LINEAR)
    return jnp.mean(lv.vlb_term(x0, x_t, t, x0_hat, p[..., 3:], LINEAR))

  assert float(jnp.abs(jax.grad(vlb_no_stop)(out)[..., :3]).max()) > 1e-4
  # The total is L_simple + lambda * N * L_t with lambda = 0.001, N = 1000.
  loss, aux = lv.hybrid_loss(net(out), x0, rng, LINEAR, EPS, t=t)
  np.testing.assert_allclose(loss, aux["mse"] + aux["vlb"], rtol=1e-6)


def _gaussian_data(dims=32, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-0.5, 0.5, dims), rng.uniform(0.05, 0.6, dims)


def _exact_net(mu, s, schedule, steps, exact_variance=True):
  """net_fn of the exact denoiser of N(mu, diag(s^2)) data (eps output) and, per step of the
  respaced chain ``steps``, the v giving the true reverse variance (or -1: the posterior's)."""
  n = schedule.num_timesteps
  tab = lv.chain_tables(schedule, steps)
  min_log = np.full(n, np.nan)
  max_log, c0 = min_log.copy(), min_log.copy()
  min_log[steps], max_log[steps] = tab["posterior_log_variance_clipped"], tab["log_beta"]
  c0[steps] = tab["coef_x0"]
  mu, s2 = jnp.asarray(mu, jnp.float32), jnp.asarray(s ** 2, jnp.float32)
  tables = [jnp.asarray(z, jnp.float32) for z in (min_log, max_log, c0)]

  def net(x, level, cond):
    del cond
    k = jnp.round(level).astype(jnp.int32)
    a, sig = schedule.alpha_sigma((level + 1.0) / n)
    a, sig = a[:, None], sig[:, None]
    x0_mean = mu + a * s2 / (a ** 2 * s2 + sig ** 2) * (x - a * mu)
    eps = (x - a * x0_mean) / sig
    if not exact_variance:
      return jnp.concatenate([eps, -jnp.ones_like(eps)], -1)
    lo, hi, coef = (tb[k][:, None] for tb in tables)
    post_x0 = s2 * sig ** 2 / (a ** 2 * s2 + sig ** 2)
    true_log = jnp.log(jnp.exp(lo) * (k[:, None] > 0) + coef ** 2 * post_x0)
    return jnp.concatenate([eps, 2 * (true_log - lo) / (hi - lo) - 1], -1)

  return net


@pytest.mark.parametrize("num_steps", [10, 25])
def test_sampler_with_exact_means_and_variances_reproduces_the_data_moments(num_steps):
  mu, s = _gaussian_data()
  steps = diffusion.respaced_steps(1000, num_steps)
  n = 4096

  @functools.partial(jax.jit, static_argnums=0)
  def draw(exact):
    net = _exact_net(mu, s, LINEAR, steps, exact)
    return lv.sample(net, EPS, LINEAR, (n, len(mu)), jax.random.PRNGKey(3), num_steps=num_steps)

  x = np.asarray(draw(True), np.float64)
  z_mean = (x.mean(0) - mu) / (s / np.sqrt(n))
  var_err = x.var(0) / s ** 2 - 1
  assert np.abs(z_mean).max() < 4.5, z_mean
  assert np.abs(var_err).mean() < 0.03 and np.abs(var_err).max() < 0.12, var_err
  # The posterior's variance (the lower bound) on the same chain loses the data's variance:
  # the comparison can fail.
  small = np.asarray(draw(False), np.float64)
  assert np.abs(small.var(0) / s ** 2 - 1).mean() > 3 * np.abs(var_err).mean()


def test_guidance_of_the_learned_sampler():
  """Scale 1 equals the conditional model; guiding some channels leaves the others conditional."""
  shape = (8, 2, 2, 4)

  def net(x, level, cond):
    scale = 1.0 + 0.1 * cond.astype(jnp.float32)[:, None, None, None]
    return jnp.concatenate([0.3 * x * scale, 0.1 * scale * jnp.ones_like(x)], -1)

  cond = jnp.arange(8) % 3
  run = lambda **kw: np.asarray(lv.sample(net, EPS, LINEAR, shape, jax.random.PRNGKey(0),
                                          num_steps=10, cond=cond, **kw))
  plain = run()
  np.testing.assert_allclose(run(guidance_scale=1.0, null_cond=3), plain, rtol=1e-5, atol=1e-6)
  all4, three = run(guidance_scale=4.0, null_cond=3), run(guidance_scale=4.0, null_cond=3,
                                                           guidance_channels=3)
  assert np.abs(all4 - plain).max() > 1e-2
  np.testing.assert_allclose(three[..., 3], plain[..., 3], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(three[..., :3], all4[..., :3], rtol=1e-5, atol=1e-6)


def test_respacing_is_guided_diffusions():
  def space_timesteps(num_timesteps, count):  # guided-diffusion's respace.py, one section
    frac_stride = (num_timesteps - 1) / (count - 1)
    cur, taken = 0.0, []
    for _ in range(count):
      taken.append(round(cur))
      cur += frac_stride
    return taken

  for count in (250, 100, 50, 27):
    assert diffusion.respaced_steps(1000, count) == space_timesteps(1000, count)
  assert diffusion.respaced_steps(1000, 1000) == list(range(1000))
  steps = diffusion.respaced_steps(1000, 250)
  assert steps[:4] == [0, 4, 8, 12] and steps[-1] == 999 and len(set(steps)) == 250
  grid = diffusion.time_grid(LINEAR, 250, "respaced")
  np.testing.assert_allclose(np.asarray(grid.t[:-1]) * 1000 - 1, steps[::-1], atol=1e-3)
  assert float(grid.t[-1]) == 0.0 and float(grid.sigma[-1]) == 0.0
  with pytest.raises(ValueError, match="discrete schedule"):
    diffusion.time_grid(diffusion.get_schedule("cosine"), 10, "respaced")


def test_discrete_cosine_chain_and_step_index_input():
  schedule = diffusion.get_schedule("cosine_discrete")
  f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
  i = np.arange(1000)
  betas = np.minimum(1 - f((i + 1) / 1000) / f(i / 1000), 0.999)
  np.testing.assert_allclose(schedule.betas, betas, rtol=1e-12)
  ab = np.cumprod(1 - betas)
  t = jnp.asarray([1 / 1000, 0.5, 1.0])
  np.testing.assert_allclose(np.asarray(schedule.alpha(t)) ** 2, ab[[0, 499, 999]], rtol=1e-5)
  level = diffusion.noise_level("step_index", t, schedule)
  np.testing.assert_allclose(np.asarray(level), [0.0, 499.0, 999.0], atol=1e-3)
  with pytest.raises(ValueError, match="beta_start"):
    diffusion.get_schedule("cosine_discrete", beta_start=0.001)
  with pytest.raises(ValueError, match="discrete chain"):
    lv.check_schedule(diffusion.get_schedule("cosine"), EPS)


def test_the_diffusion_method_trains_and_samples_with_learned_variances():
  """diffusion.learn_sigma through the method: the hybrid loss with its two terms, sampling with
  the learned variances (ddpm, respaced, guided on some channels), the config checks."""
  from diffjax.experiment import build_spec
  from diffjax.fields import ConfigError
  from launch_util import tiny_config
  config = tiny_config(**{"diffusion.schedule": "linear", "diffusion.learn_sigma": True,
                          "sample.sampler": "ddpm", "sample.num_steps": 5,
                          "sample.guidance_scale": 2.0, "sample.guidance_channels": 1})
  config.data.channels = 3
  config.model.name = "unet-tiny"  # the smallest UNet: this test is about the method
  with pytest.raises(ConfigError, match="config.model.kwargs.out_channels: the network outputs "
                     "3 channels for 3-channel data; diffusion.learn_sigma=True needs 6"):
    build_spec(config, num_devices=8)
  config.model.kwargs.out_channels = 6
  method = build_spec(config, num_devices=8).method
  assert method.sampler.learned_variance and method.evaluations_per_image() == 5
  assert method.sampling_tag() == "ddpm5_cfg2_learnedvar"
  variables = method.networks["denoiser"].init(jax.random.PRNGKey(0))
  params = jax.tree.map(lambda p: p + 0.01, variables["params"])  # zero-initialised output
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3), minval=-1,
                                       maxval=1), "label": jnp.arange(4) % 10}
  loss, aux = method.loss(params, batch, None, rng=jax.random.PRNGKey(2))
  np.testing.assert_allclose(np.mean(aux["per_example"]), loss, rtol=1e-6)
  assert float(aux["vlb"]) > 0 and float(aux["mse"]) > 0
  np.testing.assert_allclose(loss, aux["mse"] + aux["vlb"], rtol=1e-5)  # 0.001 x 1000
  x = method.generate({"denoiser": {"params": params}}, jax.random.PRNGKey(3), jnp.arange(4))
  assert x.shape == (4, 8, 8, 3) and bool(jnp.all(jnp.isfinite(x)))
  fixed = tiny_config(**{"diffusion.schedule": "linear", "sample.sampler": "ddpm",
                         "sample.guidance_channels": 1})
  fixed.sample.options.variance = "learned"
  with pytest.raises(ConfigError) as err:
    build_spec(fixed, num_devices=8)
  assert "config.sample.options.variance: 'learned' samples with the network's learned" in \
      str(err.value)
  fixed.sample.options.variance = "small"
  with pytest.raises(ConfigError, match="config.sample.guidance_channels: is implemented for "
                     "learned-variance sampling"):
    build_spec(fixed, num_devices=8)
