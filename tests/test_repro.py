"""The reproduction kit: published reference statistics (FID between two files' stored statistics
against pytorch-fid, another protocol refused), each paper's sample-to-uint8 conversion, the
repro configs, ``init.checkpoint`` through the jobs (inference restores the imported network;
fine-tuning starts from it), and the harness end to end on a random-weight twin."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from diffjax import images
from diffjax.evaluation import reference
from diffjax.experiment import build_spec
from diffjax.fields import ConfigError
from launch_util import ROOT, subprocess_env, tiny_config
from torch_references import pytorch_fid_frechet

ASSETS = ROOT.parent / "shared" / "assets"
INCEPTION = ASSETS / "inception" / "inception-2015-12-05-fid.torchscript.pt"
needs_inception = pytest.mark.skipif(not INCEPTION.exists(),
                                     reason=f"shared assets absent ({INCEPTION})")


def _stats(seed, dims=128, n=400):
  rng = np.random.default_rng(seed)
  f = rng.normal(size=(n, dims)) @ rng.normal(size=(dims, dims)) * 0.3 + 0.2 * seed
  return f.mean(0), np.cov(f, rowvar=False)


def test_fid_between_published_files_equals_pytorch_fid(tmp_path):
  frechet = pytorch_fid_frechet()
  mu1, s1 = _stats(1)
  mu2, s2 = _stats(2)
  np.savez(tmp_path / "edm.npz", mu=mu1, sigma=s1)  # EDM's fid.py ref layout
  images_ = np.random.default_rng(3).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  np.savez(tmp_path / "adm.npz", arr_0=images_, mu=mu2, sigma=s2, mu_s=mu2[:7],
           sigma_s=s2[:7, :7])  # guided-diffusion's reference batch layout
  np.savez(tmp_path / "ttur.npz", mu=mu2, sigma=s2)
  expected = frechet(*(np.load(tmp_path / "edm.npz")[k] for k in ("mu", "sigma")),
                     *(np.load(tmp_path / "adm.npz")[k] for k in ("mu", "sigma")))
  assert expected > 1.0
  assert reference.fid_between(tmp_path / "edm.npz", "edm", tmp_path / "adm.npz", "adm") == \
      pytest.approx(expected, abs=1e-3)
  assert reference.fid_between(tmp_path / "edm.npz", "edm", tmp_path / "ttur.npz", "ttur") == \
      pytest.approx(expected, abs=1e-3)
  out = subprocess.run([sys.executable, "-m", "diffjax.evaluation.reference",
                        f"{tmp_path / 'edm.npz'}:edm", f"{tmp_path / 'adm.npz'}:adm"], cwd=ROOT,
                       capture_output=True, text=True, env=subprocess_env())
  assert out.returncode == 0 and float(out.stdout.split()[-1]) == pytest.approx(expected,
                                                                                abs=1e-3)
  adm = reference.load_published(tmp_path / "adm.npz", "adm")
  fp = adm["fingerprint"]
  assert (fp["protocol"], fp["image_size"], fp["num_images"], len(fp["file_sha256"])) == (
      "tf", 8, 6, 64)
  np.testing.assert_array_equal(adm["images"], images_)


def test_a_reference_of_another_protocol_is_refused(tmp_path):
  mu, sigma = _stats(4)
  np.savez(tmp_path / "edm.npz", mu=mu, sigma=sigma)
  np.savez(tmp_path / "pt.npz", mu=mu, sigma=sigma)
  with pytest.raises(reference.ReferenceMismatch, match="protocol: 'tf' vs 'pytorch_fid'"):
    reference.fid_between(tmp_path / "edm.npz", "edm", tmp_path / "pt.npz", "pytorch_fid")
  stored = reference.load_published(tmp_path / "edm.npz", "edm")["fingerprint"]
  net = {"feature_net": "inception", "weights_sha256": "x", "protocol": "pytorch_fid"}
  with pytest.raises(reference.ReferenceMismatch, match="computed with the 'tf' Inception "
                     "input protocol, the evaluation uses 'pytorch_fid'"):
    reference.check_published(stored, net, 32, tmp_path / "edm.npz")
  reference.check_published(stored, {**net, "protocol": "tf"}, 32, tmp_path / "edm.npz")
  np.savez(tmp_path / "adm.npz", arr_0=np.zeros((2, 64, 64, 3), np.uint8), mu=mu, sigma=sigma)
  with pytest.raises(reference.ReferenceMismatch, match="reference images are 64px, the "
                     "samples 32px"):
    reference.check_published(reference.load_published(tmp_path / "adm.npz", "adm")[
        "fingerprint"], {**net, "protocol": "tf"}, 32, "adm.npz")
  np.savez(tmp_path / "bad.npz", m=mu)
  with pytest.raises(ValueError, match="not a edm reference.*no mu, sigma"):
    reference.load_published(tmp_path / "bad.npz", "edm")


def test_each_papers_uint8_conversion():
  x = np.random.default_rng(0).uniform(-1.1, 1.1, 100_000).astype(np.float32)
  edm_dit = np.clip(x * 127.5 + 128, 0, 255).astype(np.uint8)  # EDM and DiT: cast truncates
  adm = np.clip((x + 1) * 127.5, 0, 255).astype(np.uint8)  # guided-diffusion
  # float32 rounding of the two expressions may differ right at a tie (1 in 1e5 here)
  assert np.mean(images.to_uint8(x, "round") != edm_dit) < 1e-4
  assert np.abs(images.to_uint8(x, "round").astype(int) - edm_dit).max() <= 1
  np.testing.assert_array_equal(images.to_uint8(x, "floor"), adm)
  inside = x[np.abs(x) < 0.99]
  assert images.to_uint8(inside).mean() - images.to_uint8(inside, "floor").mean() == \
      pytest.approx(0.5, abs=0.01)  # truncation is half a level darker on average
  with pytest.raises(ValueError, match="unknown rounding"):
    images.to_uint8(x, "ceil")


def _repro(name, arg=None):
  import importlib
  return importlib.import_module(f"configs.{name}").get_config(arg)


def test_repro_configs_carry_the_papers_recipes():
  ddpm = build_spec(_repro("repro_ddpm_cifar10"), num_devices=8, check_network=False)
  s, m = ddpm.method.sampler, ddpm.method.module
  assert (s.sampler, s.num_steps, s.spacing, dict(s.options), s.clip_denoised) == (
      "ddpm", 1000, "uniform", {"variance": "large"}, True)
  assert (m.embedding_freq_shift, m.embedding_sin_first, ddpm.init.format) == (
      1.0, True, "diffusers_unet")
  assert ddpm.method.diffusion.parameterization.noise_input == "step_index"
  assert (ddpm.eval.ref_format, ddpm.eval.sample_uint8, ddpm.eval.num_samples) == (
      "edm", "round", 50_000)
  dit = build_spec(_repro("repro_dit_xl2_256"), num_devices=8, check_network=False)
  s = dit.method.sampler
  assert (s.num_steps, s.spacing, s.learned_variance, s.guidance_scale, s.guidance_channels) == (
      250, "respaced", True, 1.5, 3)
  assert dit.method.diffusion.learn_sigma and dit.method.module.out_channels == 8
  assert (dit.method.module.freq_shift, dit.method.module.mlp_norm_eps) == (0.0, 1e-6)
  assert (dit.init.format, dit.eval.ref_format, dit.eval.sample_uint8) == ("dit", "adm", "round")
  adm = build_spec(_repro("repro_adm_imagenet64"), num_devices=8, check_network=False)
  assert adm.method.diffusion.schedule.name == "cosine_discrete"
  assert (adm.method.module.norm_eps, adm.method.module.out_channels) == (1e-5, 6)
  assert (adm.init.format, adm.eval.sample_uint8, adm.method.sampler.clip_denoised) == (
      "adm_new_attention_order", "floor", True)
  bad = _repro("repro_dit_xl2_256", "twin")
  bad.diffusion.learn_sigma = False
  with pytest.raises(ConfigError) as err:
    build_spec(bad, num_devices=1, check_network=False)
  assert "config.sample.options.variance: 'learned' samples with the network's learned " \
         "variances" in str(err.value)


# --- init.checkpoint through the jobs (digits: the default config's unet-digits) --------------
def _twin_of(module, path: pathlib.Path):
  """A random diffusers UNet2DModel laid out as ``module`` (a two-level conditional UNet on 8x8
  digits with attention at 4x4 and diffjax's default embedding)."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  torch.manual_seed(0)
  widths = tuple(module.ch * m for m in module.ch_mult)
  assert len(widths) == 2 and module.attn_resolutions == (4,) and not module.head_channels
  model = diffusers.UNet2DModel(
      sample_size=8, in_channels=1, out_channels=1, block_out_channels=widths,
      layers_per_block=module.num_res_blocks, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
      up_block_types=("AttnUpBlock2D", "UpBlock2D"),
      attention_head_dim=widths[1] // module.num_heads, norm_num_groups=module.norm_groups,
      norm_eps=1e-6, flip_sin_to_cos=True, freq_shift=0, downsample_padding=0,
      num_class_embeds=module.num_classes)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.02 * torch.randn_like(p))
  model.save_pretrained(path, safe_serialization=True)
  return path / "diffusion_pytorch_model.safetensors"


def test_init_checkpoint_for_inference_and_fine_tuning(tmp_path):
  from diffjax.jobs.common import make_mesh, restore_for_inference, state_setup
  from diffjax.jobs.train import train
  from diffjax.models.importers import import_checkpoint
  config = tiny_config(**{"train.num_steps": 1, "checkpoint.every_steps": 1})
  ckpt = _twin_of(build_spec(config, num_devices=jax.device_count()).method.module,
                  tmp_path / "twin")
  config.init.checkpoint, config.init.format = str(ckpt), "diffusers_unet"
  spec = build_spec(config, num_devices=jax.device_count())
  imported, info = import_checkpoint(ckpt, "diffusers_unet", spec.method.module, (8, 8, 1))
  assert "no null-class row" in info["notes"][0]
  mesh = make_mesh(spec)
  variables, step = restore_for_inference(spec, tmp_path / "run", mesh)  # nothing trained yet
  assert step == 0
  jax.tree.map(np.testing.assert_array_equal, variables["denoiser"]["params"], imported)
  train(config, str(tmp_path / "run"))  # one Adam step from the import: moves each by <= lr
  tuned, step = restore_for_inference(spec, tmp_path / "run", mesh)
  assert step == 1
  diff = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                      tuned["denoiser"]["params"], imported)
  assert max(jax.tree.leaves(diff)) < 2 * config.optim.lr  # a fresh initialisation: > 1e-2
  fresh = state_setup(spec, mesh).init(jax.random.PRNGKey(0)).nets["denoiser"].params
  far = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), fresh, imported)
  assert max(jax.tree.leaves(far)) > 1e-2


# --- the harness, end to end ------------------------------------------------------------------
@needs_inception
def test_harness_end_to_end_on_a_random_weight_twin(tmp_path):
  """experiments/repro/run.py on the DDPM recipe's twin: import, the paper's sampler, FID against
  a published reference (guided-diffusion's batch layout, whose images give KID and
  precision/recall) over two seed sets, the results file; an EDM-format reference with another
  Inception protocol is refused before any sampling."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  torch.manual_seed(1)
  model = diffusers.UNet2DModel(  # the DDPM CIFAR-10 layout at 1/8 of the width
      sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32, 32),
      layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                            "DownBlock2D"),
      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
      attention_head_dim=None, norm_num_groups=8, norm_eps=1e-6, freq_shift=1,
      flip_sin_to_cos=False, downsample_padding=0)
  model.save_pretrained(tmp_path, safe_serialization=True)
  ckpt = tmp_path / "diffusion_pytorch_model.safetensors"
  rng = np.random.default_rng(0)
  a = rng.normal(size=(2048, 32))
  np.savez(tmp_path / "cifar10-32x32.npz", mu=rng.normal(size=2048) * 0.1, sigma=a @ a.T / 32)
  # The same statistics as a guided-diffusion batch: its images give KID and precision/recall.
  np.savez(tmp_path / "VIRTUAL_cifar10.npz", mu=rng.normal(size=2048) * 0.1, sigma=a @ a.T / 32,
           arr_0=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
  inception = f"--config.eval.inception_source={INCEPTION}"
  w = tmp_path / "run"
  # The reference of another protocol: refused when the evaluator is built, before sampling.
  from diffjax.evaluation.evaluator import Evaluator
  from diffjax.jobs.common import make_mesh
  config = _repro("repro_ddpm_cifar10", "twin")
  config.init.checkpoint, config.eval.ref_path = str(ckpt), str(tmp_path / "cifar10-32x32.npz")
  config.eval.protocol, config.eval.inception_source = "pytorch_fid", str(INCEPTION)
  spec = build_spec(config, num_devices=jax.device_count())
  with pytest.raises(ConfigError, match="computed with the 'tf' Inception input protocol, the "
                     "evaluation uses 'pytorch_fid'"):
    Evaluator(spec.data, spec.eval, w, make_mesh(spec))
  out = subprocess.run(
      [sys.executable, "experiments/repro/run.py", "--paper", "ddpm_cifar10", "--twin",
       "--checkpoint", str(ckpt), "--reference", str(tmp_path / "VIRTUAL_cifar10.npz"),
       "--num_samples", "4", "--seeds", "2", "--workdir", str(w), "--out",
       str(tmp_path / "results"), "--", inception, "--config.eval.batch_size=4",
       "--config.eval.ref_format=adm", "--config.eval.sample_uint8=floor", "--split_cpu=false"],
      cwd=ROOT, env=subprocess_env(XLA_FLAGS=""), capture_output=True, text=True,
      timeout=600)  # one CPU device (--split_cpu=false): the least to compile
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert "imported" in out.stdout and "pipeline check" in out.stdout
  record = json.loads((tmp_path / "results" / "results_twin_n4x2.json").read_text())
  m = record["measured"]
  assert record["verdict"].startswith("pipeline check") and m["seeds"] == 2
  assert len(m["per_seed"]) == 2 and m["min"] <= m["mean"] <= m["max"] and m["mean"] > 0
  assert record["checkpoint"]["sha256"] == __import__("hashlib").sha256(
      ckpt.read_bytes()).hexdigest()
  fingerprint = record["reference"]["fingerprint"]
  assert (fingerprint["published"], fingerprint["image_size"], fingerprint["num_images"]) == (
      "adm", 32, 4)
  assert record["sampler"]["clip_denoised"] and record["sample_uint8"] == "floor"
  assert {"kid", "precision", "recall"} <= set(record["other_metrics"])
  assert (tmp_path / "results" / "results_twin_n4x2.md").read_text().count("pipeline check") == 1
