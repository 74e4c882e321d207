"""Latent diffusion end to end: an autoencoder trained through launch.py, --mode encode
(killed mid-shard and relaunched: the same shards as an uninterrupted run), a latent DiT
trained on the shards, sampled and evaluated in pixels; 8 fake devices under FSDP give the
loss curve of one device for the autoencoder and for a latent DiT; the latent dataset's
manifest is checked against the config before any compute."""

import json
import pathlib

import jax
import numpy as np
import pytest

from diffjax import parallel
from diffjax.data import latents as latent_data
from diffjax.experiment import build_spec
from diffjax.fields import ConfigError
from diffjax.jobs.common import state_setup
from diffjax.models import vae_weights
from diffjax.models.registry import AUTOENCODERS
from diffjax.training.setup import jit_train_step
from launch_util import launch, subprocess_env

EIGHT = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
FSDP8 = ["--nosplit_cpu", "--config.mesh.rules=fsdp", "--config.mesh.fsdp=8",
         "--config.mesh.data=1"]


def _config(name, arg, **overrides):
  import importlib
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  for key, value in overrides.items():
    node = c
    *path, field = key.split(".")
    for p in path:
      node = node[p]
    node[field] = value
  return c


def _digits(n=16, offset=0):
  from diffjax import data
  src = data.digits_source("train")
  x = np.stack([src[i]["image"] for i in range(offset, offset + n)]).astype(np.float32)
  return {"image": x / 127.5 - 1, "label": np.asarray([src[i]["label"] for i in
                                                        range(offset, offset + n)], np.int32)}


def _losses(spec, devices: int, steps: int):
  mesh = parallel.make_mesh({"data": 1, "fsdp": devices, "tensor": 1}, jax.devices()[:devices])
  setup = state_setup(spec, mesh, parallel.get_rules("fsdp"))
  step = jit_train_step(setup, mesh, spec.train, spec.faults)
  state, out = setup.init(jax.random.PRNGKey(0)), []
  for i in range(steps):
    batch = parallel.global_batch(_digits(16, 16 * i), parallel.batch_sharding(mesh))
    state, metrics = step(state, batch)
    out.append(jax.device_get(metrics))
  split = [leaf.sharding.spec for leaf in jax.tree.leaves(state.nets)]
  return out, any("fsdp" in str(s) for s in split)


@pytest.fixture(scope="module")
def tiny_ae_weights(tmp_path_factory):
  """A randomly initialised vae-tiny saved as a diffjax autoencoder file."""
  module = AUTOENCODERS.build("vae-tiny")
  params = jax.jit(module.init)(jax.random.PRNGKey(3), np.zeros((1, 8, 8, 1), np.float32))[
      "params"]
  path = tmp_path_factory.mktemp("ae") / "vae_tiny.npz"
  vae_weights.save_npz(path, jax.device_get(params), module)
  return path


def test_autoencoder_and_latent_dit_fsdp_on_8_devices_match_one_device(tiny_ae_weights):
  """Same losses (to float rounding) with parameters split 8 ways as on one device: the
  autoencoder, and a DiT on the latents of a frozen autoencoder (also split) encoded in the
  update."""
  ae_spec = build_spec(_config("autoencoder_fmnist", "tiny"), num_devices=8)
  ldm_spec = build_spec(_config("latent_fmnist", "pixel_tiny", **{
      "latent.autoencoder": "vae-tiny", "latent.weights": str(tiny_ae_weights),
      "model.kwargs": {"class_dropout": 0.1, "patch_size": 1}}), num_devices=8)
  assert "autoencoder" in ldm_spec.method.networks
  for spec, keys in ((ae_spec, ("loss", "rec", "kl")), (ldm_spec, ("loss",))):
    one, _ = _losses(spec, 1, 3)
    eight, split = _losses(spec, 8, 3)
    assert split  # some parameters really are split over the fsdp axis
    for key in keys:
      np.testing.assert_allclose([m[key] for m in eight], [m[key] for m in one], rtol=2e-4,
                                 atol=1e-6)
    assert one[-1]["loss"] < one[0]["loss"]


def _encode_in_process(tmp, weights, **encode):
  from diffjax.jobs import encode as encode_job
  c = _config("latent_fmnist", "pixel_tiny", **{
      "latent.autoencoder": "vae-tiny", "latent.weights": str(weights),
      "model.kwargs": {"class_dropout": 0.1, "patch_size": 1}, "encode.shard_size": 600,
      "encode.batch_size": 40, **{f"encode.{k}": v for k, v in encode.items()}})
  return encode_job.encode(c, str(tmp)), tmp / "latents"


def test_latent_dataset_manifest_checks_and_source(tiny_ae_weights, tmp_path):
  manifest, folder = _encode_in_process(tmp_path / "run", tiny_ae_weights, flip=True,
                                        max_images=700)
  assert manifest["splits"]["train"]["count"] == 700 and manifest["flips"]
  assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [600, 100]
  assert manifest["autoencoder"]["fingerprint"] == vae_weights.read_npz_info(
      tiny_ae_weights)["fingerprint"]
  # The source: posterior draws from the pipeline's generator, the flipped copy with flips.
  from diffjax.data import make_source
  source = make_source("latents", path=str(folder), split="train")
  ex = source[5]
  assert ex["image"].shape == (2, 4, 4, 8) and len(source) == 700
  rng = np.random.default_rng(0)
  draws = np.stack([latent_data.preprocess(ex, rng, random_flip=False)["image"]
                    for _ in range(2000)])
  mean0, logvar0 = np.split(ex["image"][0], 2, -1)
  np.testing.assert_allclose(draws.mean(0), mean0, atol=5 * np.exp(0.5 * logvar0).max() / 44)
  np.testing.assert_allclose(draws.std(0), np.exp(0.5 * logvar0), rtol=0.1)
  # The second copy is the flipped image's posterior (float16 storage).
  module = AUTOENCODERS.build("vae-tiny")
  params, _ = vae_weights.load_npz(tiny_ae_weights, module)
  x = _digits(6)["image"][5:6]
  encode = jax.jit(lambda v: module.apply({"params": params}, v, method="encode"))
  for copy, image in ((0, x), (1, x[:, :, ::-1])):
    m, lv = encode(image)
    np.testing.assert_allclose(np.split(ex["image"][copy], 2, -1)[0], m[0], atol=2e-3)
    np.testing.assert_allclose(np.split(ex["image"][copy], 2, -1)[1], lv[0], atol=1e-2)
  # random_flip picks either copy, otherwise the first.
  sharp = np.concatenate([np.stack([np.zeros((4, 4, 4)), np.ones((4, 4, 4))]),
                          np.full((2, 4, 4, 4), -30.0)], -1).astype(np.float32)
  pick = lambda seed, flip: float(latent_data.preprocess(
      {"image": sharp, "label": 0, "latent": 1}, np.random.default_rng(seed),
      random_flip=flip)["image"].mean())
  assert {round(pick(s, True)) for s in range(20)} == {0, 1}
  assert {round(pick(s, False)) for s in range(20)} == {0}
  # The stored channel statistics are those of the records.
  moments = np.stack([source[i]["image"] for i in range(len(source))])
  m, lv = np.split(moments, 2, axis=-1)
  mu = m.reshape(-1, 4).mean(0)
  std = np.sqrt((m ** 2).reshape(-1, 4).mean(0) + np.exp(lv).reshape(-1, 4).mean(0) - mu ** 2)
  np.testing.assert_allclose(manifest["splits"]["train"]["channel_mean"], mu, rtol=1e-2,
                             atol=1e-3)
  np.testing.assert_allclose(manifest["splits"]["train"]["channel_std"], std, rtol=1e-2)
  # Evaluation reads the images the latents came from.
  from diffjax.data import iterate_once, PipelineOptions
  batch = next(iter(iterate_once(source, PipelineOptions(8, 1, False, 4))))
  assert batch["image"].shape == (4, 8, 8, 1)

  latent_cfg = lambda **o: _config("latent_fmnist", "tiny", **{"data.path": str(folder), **o})
  spec = build_spec(latent_cfg(**{"data.random_flip": True, "latent.channel_stats": True}),
                    num_devices=8)
  assert spec.data.image_shape == (4, 4, 4) and spec.method.image_shape == (8, 8, 1)
  np.testing.assert_allclose(spec.method.latent.module.latents_mean,
                             manifest["splits"]["train"]["channel_mean"])
  other = AUTOENCODERS.build("vae-tiny")
  other_path = tmp_path / "other.npz"
  vae_weights.save_npz(other_path, jax.device_get(jax.jit(other.init)(
      jax.random.PRNGKey(9), np.zeros((1, 8, 8, 1), np.float32))["params"]), other)
  cases = {
      "latent.weights": ({"latent.weights": str(other_path)}, "were encoded by autoencoder "
                         "'vae-tiny' with fingerprint"),
      "data.path (size)": ({"data.image_size": 16}, "latents are of 8x8x1 images; "
                           "data.image_size / data.channels say 16x16x1"),
      "data.path (split)": ({"data.split": "validation"}, "not 'validation'"),
      "data.path": ({"data.path": str(tmp_path)}, "no manifest.json"),
  }
  for field, (overrides, message) in cases.items():
    with pytest.raises(ConfigError, match=message) as err:
      build_spec(latent_cfg(**overrides), num_devices=8)
    assert f"config.{field.split()[0]}" in str(err.value)
  (folder / "manifest.json").rename(folder / "manifest.moved")
  with pytest.raises(ConfigError, match="3 shard.s. done: the encoding is incomplete"):
    build_spec(latent_cfg(), num_devices=8)
  # Relaunching into the folder with other settings is refused.
  with pytest.raises(ConfigError, match="flips: folder has True, this launch False"):
    _encode_in_process(tmp_path / "run", tiny_ae_weights, flip=False, max_images=700)


def test_latent_diffusion_end_to_end_through_launch(tmp_path):
  """Autoencoder (8 devices, FSDP) -> --mode encode killed mid-shard and relaunched (shards
  equal to an uninterrupted run's) -> latent DiT on the shards -> sample grid, ref_stats and
  eval in pixels, with reconstruction metrics from --mode encode."""
  ae = tmp_path / "ae"
  common = ["--config.train.num_steps=6", "--config.logging.log_every=3",
            "--config.checkpoint.every_steps=6", "--config.eval.classifier_steps=50"]
  out = launch("--config", "configs/autoencoder_fmnist.py:tiny", "--workdir", ae, *common,
               *FSDP8, env=EIGHT).stdout
  assert "method autoencoder" in out and "'fsdp': 8" in out
  encode = ["--config", "configs/autoencoder_fmnist.py:tiny", "--workdir", ae, "--mode",
            "encode", *common, "--config.encode.shard_size=400", "--config.encode.eval_num=64",
            "--nosplit_cpu"]
  whole = launch(*encode, env=EIGHT).stdout
  assert "reconstructions of 64 test images: psnr" in whole
  killed = launch(*encode, f"--config.encode.output={tmp_path / 'again'}",
                  "--config.encode.inject_kill_after_shards=2", "--config.encode.eval_split=",
                  env=EIGHT, check=False)
  assert killed.returncode == 137 and "killed while writing train-00002-of-00005" in killed.stdout
  assert not (tmp_path / "again" / "manifest.json").exists()
  resumed = launch(*encode, f"--config.encode.output={tmp_path / 'again'}",
                   "--config.encode.eval_split=", env=EIGHT).stdout
  assert "2 of 5 shard(s) already done, verified" in resumed
  files = sorted(p.name for p in (ae / "latents").glob("*.array_record"))
  assert len(files) == 6
  for name in files:
    assert (ae / "latents" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
  recon = json.loads((ae / "latents" / "reconstruction_test.json").read_text())
  assert recon["num_images"] == 64 and recon["psnr"] > 5 and "rfd_domain" in recon

  ldm = tmp_path / "ldm"
  dit = ["--config", "configs/latent_fmnist.py:tiny", "--workdir", ldm,
         f"--config.data.path={ae / 'latents'}", *common, "--config.eval.num_samples=32",
         "--config.eval.batch_size=16", *FSDP8]
  out = launch(*dit, env=EIGHT).stdout
  assert "autoencoder 0.167M frozen" in out
  from PIL import Image
  grid = np.asarray(Image.open(next((ldm / "samples").glob("*.png"))))
  assert grid.std() > 0  # decoded pixels, tiled into a grid
  launch(*dit, "--mode", "ref_stats", env=EIGHT)
  launch(*dit, "--mode", "eval", env=EIGHT)
  result = json.loads(next((ldm / "eval").glob("domain_*.json")).read_text())
  assert result["num_samples"] == 32 and np.isfinite(result["metrics"]["fd"])
  ref = json.loads(str(np.load(ldm / "eval" / "ref_domain_test.npz")["fingerprint"]))
  assert ref["num_images"] == 180  # the digits' test images the latents came from


def test_configs_carry_the_recipes_and_refuse_bad_latent_sections():
  """DiT-XL/2 and DiT-B/2 on ImageNet-256 latents with the paper's numbers; the small configs
  validate; a frozen autoencoder without weights, an unknown variant and an autoencoder
  method without one are refused by field."""
  for arg, name in (("encode", "DiT-XL/2"), ("B_encode", "DiT-B/2")):
    spec = build_spec(_config("latent_imagenet256_dit", arg), num_devices=8,
                      check_network=False)
    m = spec.method
    assert (m.model.name, m.x_shape, m.image_shape) == (name, (32, 32, 4), (256, 256, 3))
    assert (m.optim.name, m.optim.lr, m.optim.weight_decay, spec.data.batch_size) == (
        "adamw", 1e-4, 0.0, 256)
    assert (spec.train.ema_decay, m.sampler.sampler, m.sampler.num_steps,
            m.sampler.guidance_scale) == (0.9999, "ddpm", 250, 1.5)
    assert m.latent.module.scaling_factor == 0.18215 and m.latent.spec.autoencoder == "sd-vae"
  for name, arg in (("autoencoder_fmnist", None), ("latent_fmnist", "pixel")):
    build_spec(_config(name, arg), num_devices=8, check_network=False)
  bad = _config("latent_fmnist", "pixel_tiny", **{"latent.autoencoder": "vae-tinyy"})
  with pytest.raises(ConfigError, match="config.latent.autoencoder: got 'vae-tinyy'"):
    build_spec(bad, num_devices=8)
  with pytest.raises(ConfigError, match="config.latent.weights: a frozen autoencoder needs"):
    build_spec(_config("latent_fmnist", "pixel_tiny", **{"latent.autoencoder": "vae-tiny"}),
               num_devices=8)
  with pytest.raises(ConfigError, match="config.latent.kwargs: autoencoder variant 'vae-tiny' "
                                        "got unknown argument"):
    build_spec(_config("autoencoder_fmnist", "tiny", **{"latent.kwargs": {"widths": 3}}),
               num_devices=8)
  with pytest.raises(ConfigError, match="config.latent.autoencoder: the autoencoder method "
                                        "trains"):
    build_spec(_config("autoencoder_fmnist", "tiny", **{"latent.autoencoder": ""}),
               num_devices=8)
