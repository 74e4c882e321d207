"""Every experiment config (and its small variants) validates and builds its network."""

import importlib

import jax
import jax.numpy as jnp
import pytest

from diffjax.experiment import build_spec
from diffjax.fields import ConfigError

CASES = [("default", None), ("default", "tiny"), ("mnist", None), ("mnist", "cpu"),
         ("mnist", "tiny"), ("fashion_mnist", None), ("fashion_mnist", "cpu"),
         ("cifar10_ddpm", None), ("cifar10_ddpm", "tiny"), ("cifar10_edm", None),
         ("cifar10_edm", "tiny"), ("imagenet64_dit", None), ("imagenet64_dit", "tiny")]


@pytest.mark.parametrize("name,arg", CASES)
def test_config_validates_and_network_fits_the_data(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  spec = build_spec(config, num_devices=8)
  model = spec.method.module
  shape = (1, spec.data.image_size, spec.data.image_size, spec.data.channels)
  labels = jnp.zeros((1,), jnp.int32) if spec.method.conditional else None
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros(1),
                             labels)
  out = jax.eval_shape(model.apply, variables, jnp.zeros(shape), jnp.zeros(1), labels)
  assert out.shape == shape


def test_recipes_carry_the_papers_numbers():
  ddpm = build_spec(importlib.import_module("configs.cifar10_ddpm").get_config(), num_devices=8)
  assert (ddpm.method.optim.lr, ddpm.data.batch_size, ddpm.train.num_steps) == (2e-4, 128, 800_000)
  assert ddpm.train.ema_decay == 0.9999 and dict(ddpm.method.model.kwargs) == {}
  assert ddpm.method.diffusion.schedule.num_timesteps == 1000 and ddpm.data.random_flip
  edm = build_spec(importlib.import_module("configs.cifar10_edm").get_config(), num_devices=8)
  assert edm.train.num_steps * edm.data.batch_size == 200_000_000
  assert dict(edm.method.diffusion.t_sampler_options) == {"p_mean": -1.2, "p_std": 1.2}


def test_every_problem_is_listed_at_once():
  config = importlib.import_module("configs.default").get_config()
  config.optim.lr = -1.0
  config.train.ema_decay = 1.5
  config.sample.num_steps = 0
  with pytest.raises(ConfigError) as err:
    build_spec(config)
  text = str(err.value)
  assert "config.optim.lr" in text and "config.train.ema_decay" in text
  assert "config.sample.num_steps" in text


def test_compile_cache_location():
  from diffjax.jobs import compile_cache_dir
  assert compile_cache_dir("/x/cache", {"JAX_COMPILATION_CACHE_DIR": "/env"}) == "/x/cache"
  assert compile_cache_dir("auto", {"JAX_COMPILATION_CACHE_DIR": "/env"}) == "/env"
  assert compile_cache_dir("auto", {}).endswith("/.cache/diffjax/jax")
  assert compile_cache_dir("", {"JAX_COMPILATION_CACHE_DIR": "/env"}) is None


def _with_overrides(name, arg, *args, sampler=None):
  """A config file's config after command-line overrides of free-form sections, as
  launch.py applies them (``sampler``: set ``sample.sampler`` first)."""
  from diffjax.overrides import apply_free_form, split_free_form
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  config.sample.sampler = sampler or config.sample.sampler
  config.lock()
  rest, free_form = split_free_form(["launch.py", *args])
  assert rest == ["launch.py"]
  apply_free_form(config, free_form)
  return build_spec(config, num_devices=8)


def test_free_form_sections_reach_every_knob_of_their_target():
  """Keys a config file never defined, set from the command line, arrive typed as the target
  declares them (a bool from "false", a float from 40)."""
  spec = _with_overrides("default", "tiny", "--config.model.kwargs.remat=full",
                         "--config.model.kwargs.lean_residuals", "false",
                         "--config.sample.options.s_churn=40",
                         "--config.diffusion.schedule_kwargs.s=0.01", sampler="heun")
  m = spec.method
  assert m.module.remat == "full" and m.module.lean_residuals is False
  assert dict(m.sampler.options) == {"s_churn": 40.0}
  assert isinstance(dict(m.sampler.options)["s_churn"], float)
  assert m.diffusion.schedule.s == 0.01
  dit = _with_overrides("imagenet64_dit", "tiny", "--config.model.kwargs.lean_residuals=False",
                        "--config.sample.options.eta=0.5",
                        "--config.diffusion.t_sampler_kwargs.t_eps=0.001", sampler="ddim")
  assert dit.method.module.lean_residuals is False
  assert dict(dit.method.sampler.options) == {"eta": 0.5}
  assert dict(dit.method.diffusion.t_sampler_options)["t_eps"] == 0.001


@pytest.mark.parametrize("override,message", [
    ("--config.model.kwargs.remmat=full", "model variant 'unet-tiny' got unknown argument(s) "
     "['remmat']; allowed: ['attn_resolutions'"),
    ("--config.sample.options.eta=0.5", "sampler 'heun' got unknown option(s) ['eta']; "
     "allowed: ['s_churn', 's_noise', 's_tmax', 's_tmin']"),
    ("--config.diffusion.schedule_kwargs.sigma=1", "schedule 'cosine' got unknown argument(s) "
     "['sigma']; allowed: ['logsnr_min', 's']"),
    ("--config.diffusion.parameterization_kwargs.sigma_data=0.5",
     "parameterization 'v' got unknown argument(s) ['sigma_data']; allowed: ['kind', "
     "'noise_input']"),
])
def test_free_form_keys_are_checked_against_their_target(override, message):
  with pytest.raises(ConfigError) as err:
    _with_overrides("default", "tiny", override, sampler="heun")
  assert message in str(err.value)
