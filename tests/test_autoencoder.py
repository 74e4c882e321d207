"""AutoencoderKL and its weights: diffusers parity (random weights saved as .safetensors and
imported; 4-channel SD layout and a 16-channel layout without quant convolutions; tiled and
untiled), strict import errors naming the tensor, the cache, the variants' sizes; the training
losses against independent computations (SSIM vs scikit-image, KL closed form, the adaptive
weight vs full back-propagation, the perceptual feature network vs the FID Inception)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import autoencoder as ae
from diffjax.models import vae_weights
from diffjax.models.registry import AUTOENCODERS

ASSETS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "assets"
TORCHSCRIPT = ASSETS / "inception" / "inception-2015-12-05-fid.torchscript.pt"

# Small SD-layout networks (3 levels, 4x downsampling, GroupNorm 32): the same code paths as
# the SD VAE (its 4 levels only repeat them) at a size the tests can afford.
LAYOUTS = {"sd4": dict(block_out_channels=(32, 64, 64), layers_per_block=2, latent_channels=4),
           "sd3_16": dict(block_out_channels=(32, 64, 64), layers_per_block=1,
                          latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)}


def _rel(ours, reference):
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


@pytest.fixture(scope="module")
def diffusers_vaes(tmp_path_factory):
  """{layout: (torch model, .safetensors path)} with every parameter randomised."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers", reason="diffusers not installed "
                                  "(requirements-test.txt)")
  from safetensors.torch import save_file
  folder = tmp_path_factory.mktemp("vaes")
  torch.manual_seed(0)
  out = {}
  for name, layout in LAYOUTS.items():
    model = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=32, sample_size=32, **layout).eval()
    with torch.no_grad():  # GroupNorm scales of 1 and zero biases would hide mistakes
      for p in model.parameters():
        p.add_(0.1 * torch.randn_like(p))
    path = folder / f"{name}.safetensors"
    save_file(model.state_dict(), str(path))
    out[name] = (model, path)
  return out


def _ours(model, path, cache_dir=None):
  module = AUTOENCODERS.build("sd-vae", **vae_weights.config_from_diffusers(dict(model.config)))
  params, info = vae_weights.import_safetensors(path, module, cache_dir=cache_dir,
                                                use_cache=cache_dir is not None)
  return module, {"params": params}, info


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_import_matches_diffusers(diffusers_vaes, layout):
  """Encode mean / log-variance and decode within 1e-4 relative in float32, whole and tiled."""
  import torch
  model, path = diffusers_vaes[layout]
  module, variables, _ = _ours(model, path)
  x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 40, 48)).astype(np.float32)
  with torch.no_grad():
    post = model.encode(torch.from_numpy(x)).latent_dist
    decoded = model.decode(post.mean).sample.numpy()
  nhwc = lambda t: np.asarray(t).transpose(0, 2, 3, 1)
  moments = jax.jit(lambda v: module.apply(variables, v, method="moments"))
  decode = jax.jit(lambda z: module.apply(variables, z, method="decode"))
  mean, logvar = ae.posterior(moments(jnp.asarray(nhwc(x))))
  assert _rel(mean, nhwc(post.mean)) < 1e-4 and _rel(logvar, nhwc(post.logvar)) < 1e-4
  assert _rel(decode(mean), nhwc(decoded)) < 1e-4
  if layout != "sd4":
    return
  # Tiled: diffusers' tiles of sample_size=32 with 25% overlap on a 40x48 image.
  model.enable_tiling()
  try:
    with torch.no_grad():
      tiled_post = model.encode(torch.from_numpy(x)).latent_dist
      tiled_decoded = model.decode(tiled_post.mean).sample.numpy()
  finally:
    model.disable_tiling()
  t_mean, _ = ae.tiled_encode(moments, jnp.asarray(nhwc(x)), 32, module.downsampling)
  assert _rel(t_mean, nhwc(tiled_post.mean)) < 1e-4
  assert _rel(ae.tiled_decode(decode, t_mean, 32, module.downsampling),
              nhwc(tiled_decoded)) < 1e-4
  assert _rel(t_mean, mean) > 1e-3  # tiles see less context: tiling is not a no-op here


def test_import_errors_name_the_tensor(diffusers_vaes, tmp_path):
  import torch
  from safetensors.torch import load_file, save_file
  model, path = diffusers_vaes["sd4"]
  module, variables, _ = _ours(model, path)
  data = path.read_bytes()
  (tmp_path / "cut.safetensors").write_bytes(data[:len(data) - 5000])
  tensors = load_file(str(path))
  renamed = dict(tensors)
  renamed["decoder.conv_out.weights"] = renamed.pop("decoder.conv_out.weight")
  save_file(renamed, str(tmp_path / "renamed.safetensors"))
  shaped = dict(tensors)
  shaped["encoder.mid_block.attentions.0.to_k.weight"] = torch.zeros(64, 32)
  save_file(shaped, str(tmp_path / "shaped.safetensors"))
  header_end = 8 + int.from_bytes(data[:8], "little")
  (tmp_path / "header.safetensors").write_bytes(data[:header_end - 10])
  last = max(tensors, key=lambda k: json.loads(data[8:header_end])[k]["data_offsets"][1])
  expected = {"cut": f"truncated.*'{last}'",
              "renamed": "missing tensor.*'decoder.conv_out.weight'.*unexpected tensor.*"
                         "'decoder.conv_out.weights'",
              "shaped": r"'encoder.mid_block.attentions.0.to_k.weight' has shape \(64, 32\), the "
                        r"network expects \(64, 64\)",
              "header": "truncated or not a safetensors file"}
  for name, pattern in expected.items():
    with pytest.raises(vae_weights.WeightImportError, match=pattern):
      vae_weights.import_safetensors(tmp_path / f"{name}.safetensors", module, use_cache=False)
  # Another architecture: every tensor of the extra level is named.
  other = AUTOENCODERS.build("sd-vae", block_out_channels=(32, 64), layers_per_block=2)
  with pytest.raises(vae_weights.WeightImportError, match="unexpected tensor.*up_blocks.2.resnets"):
    vae_weights.import_safetensors(path, other, use_cache=False)


def test_legacy_names_half_precision_and_cache(diffusers_vaes, tmp_path):
  """Deprecated attention names and bfloat16 / float16 files import to the same parameters;
  the converted cache records the source's SHA-256 and is read on the second import."""
  import torch
  from safetensors.torch import load_file, save_file
  model, path = diffusers_vaes["sd4"]
  module, variables, _ = _ours(model, path)
  legacy = {k.replace("to_q", "query").replace("to_k", "key").replace("to_v", "value")
             .replace("to_out.0", "proj_attn"): v for k, v in load_file(str(path)).items()}
  assert any(".proj_attn." in k for k in legacy)
  save_file(legacy, str(tmp_path / "legacy.safetensors"))
  save_file({k: v.to(torch.bfloat16) for k, v in legacy.items()},
            str(tmp_path / "bf16.safetensors"))
  params, _ = vae_weights.import_safetensors(tmp_path / "legacy.safetensors", module,
                                             use_cache=False)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(variables["params"])):
    np.testing.assert_array_equal(a, b)
  bf16, _ = vae_weights.import_safetensors(tmp_path / "bf16.safetensors", module, use_cache=False)
  for a, b in zip(jax.tree.leaves(bf16), jax.tree.leaves(variables["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2)

  cache = tmp_path / "cache"
  _, first = vae_weights.import_safetensors(path, module, cache_dir=cache)
  cached = vae_weights.cache_path(first["source_sha256"], cache)
  assert cached.exists() and first["source_sha256"] == vae_weights.sha256_file(path)
  assert vae_weights.read_npz_info(cached)["source_sha256"] == first["source_sha256"]
  stamp = cached.stat().st_mtime_ns
  params2, second = vae_weights.import_safetensors(path, module, cache_dir=cache)
  assert cached.stat().st_mtime_ns == stamp and second["fingerprint"] == first["fingerprint"]
  for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(variables["params"])):
    np.testing.assert_array_equal(a, b)
  assert vae_weights.weights_fingerprint(cached, module) == first["fingerprint"]


def test_variants_have_the_reference_sizes():
  """sd-vae / sd3-vae parameter counts equal diffusers' with the same configurations."""
  diffusers = pytest.importorskip("diffusers")
  counts = {}
  for name in ("sd-vae", "sd3-vae"):
    module = AUTOENCODERS.build(name)
    params = vae_weights.abstract_params(module)
    counts[name] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert module.latent_shape((256, 256, 3)) == (32, 32, module.latent_channels)
  blocks = dict(down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2)
  import torch
  with torch.device("meta"):  # shapes only
    sd = diffusers.AutoencoderKL(**blocks)
    sd3 = diffusers.AutoencoderKL(**blocks, latent_channels=16, use_quant_conv=False,
                                  use_post_quant_conv=False)
  assert counts["sd-vae"] == sum(p.numel() for p in sd.parameters())
  assert counts["sd3-vae"] == sum(p.numel() for p in sd3.parameters())
  assert AUTOENCODERS.build("flux-vae").shift_factor == 0.1159


def test_batch_chunks_and_latent_normalisation():
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (5, 8, 8, 1)), jnp.float32)
  fn = lambda v: (jnp.tanh(v) * jnp.arange(64.0).reshape(8, 8, 1), jnp.sum(v, axis=(1, 2)))
  for a, b in zip(fn(x), jax.jit(lambda v: ae.map_batches(fn, v, 2))(x)):  # 5 = 2 + 2 + 1
    np.testing.assert_allclose(a, b, rtol=1e-6)
  z = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 4, 4)) * 3 + 1
  for kwargs in (dict(scaling_factor=0.3611, shift_factor=0.1159),
                 dict(scaling_factor=0.5, latents_mean=(1.0, 0.0, -1.0, 2.0),
                      latents_std=(2.0, 1.0, 0.5, 4.0))):
    m = AUTOENCODERS.build("vae-tiny", **kwargs)
    n = m.normalize_latents(z)
    np.testing.assert_allclose(m.denormalize_latents(n), z, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(n[..., 3], (z[..., 3] - 2.0) / 4.0 * 0.5, rtol=1e-6)
  with pytest.raises(ValueError, match="latents_mean has 2 entries for 4 latent channels"):
    AUTOENCODERS.build("vae-tiny", latents_mean=(0.0, 1.0), latents_std=(1.0, 1.0)).init(
        jax.random.PRNGKey(0), x)


# --- losses and metrics -----------------------------------------------------------------------
def test_ssim_psnr_and_kl_against_references():
  skimage_metrics = pytest.importorskip("skimage.metrics")
  from diffjax.methods.autoencoder import psnr, ssim
  rng = np.random.default_rng(0)
  a = rng.uniform(-1, 1, (3, 24, 20, 3)).astype(np.float32)
  b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1).astype(np.float32)
  ours = np.asarray(ssim(jnp.asarray(a), jnp.asarray(b)))
  for i in range(3):
    ref = skimage_metrics.structural_similarity(a[i], b[i], data_range=2.0, channel_axis=-1,
                                                gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False)
    assert ours[i] == pytest.approx(ref, abs=1e-5)
  mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(psnr(jnp.asarray(a), jnp.asarray(b)), 10 * np.log10(4 / mse),
                             rtol=1e-5)
  mean, logvar = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 3))
  closed = 0.5 * np.sum(mean ** 2 + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3))
  np.testing.assert_allclose(ae.kl_divergence(jnp.asarray(mean), jnp.asarray(logvar)), closed,
                             rtol=1e-5)


def _ae_method(**method):
  from configs import autoencoder_fmnist
  from diffjax.experiment import build_spec
  c = autoencoder_fmnist.get_config("tiny")
  for k, v in method.items():
    c.method[k] = v
  return build_spec(c, num_devices=1).method


def test_adaptive_weight_equals_full_backprop_at_the_last_layer():
  """The loss's head-only gradients give the weight full back-propagation gives."""
  from diffjax.methods.autoencoder import adaptive_weight
  method = _ae_method(disc_weight=0.5, disc_layers=1, disc_channels=8)
  rng = jax.random.PRNGKey(0)
  x = jax.random.uniform(rng, (4, 8, 8, 1), minval=-1, maxval=1)
  params = jax.jit(method.module.init)(rng, x)["params"]  # jitted: eager init takes seconds
  d_params = jax.jit(method.discriminator.init)(rng, x)["params"]
  eps = jax.random.normal(rng, (4, *method.latent_shape))
  loss = lambda p: method._loss(p, {"image": x}, eps, fixed={"discriminator": d_params},
                                factor=1.0)
  _, (m, _) = jax.jit(loss)(params)

  def terms(p):
    mean, logvar = method.module.apply({"params": p}, x, method="encode")
    y = method.module.apply({"params": p}, mean + jnp.exp(0.5 * logvar) * eps, method="decode")
    return jnp.mean(jnp.abs(x - y)), -jnp.mean(method.discriminator.apply({"params": d_params},
                                                                           y))

  leaf = lambda g: g["decoder"]["conv_out"]["conv"]["kernel"]
  g_nll, g_g = map(leaf, jax.jit(lambda p: (jax.grad(lambda q: terms(q)[0])(p),
                                              jax.grad(lambda q: terms(q)[1])(p)))(params))
  assert float(m["d_weight"]) == pytest.approx(float(adaptive_weight(g_nll, g_g, 0.5)),
                                               rel=1e-4)
  assert float(m["d_weight"]) > 0
  method = _ae_method(disc_weight=0.5, disc_start=2)  # the discriminator's terms from step 2
  assert [float(method.disc_factor(jnp.asarray(s))) for s in range(4)] == [0, 0, 1, 1]


@pytest.mark.skipif(not TORCHSCRIPT.exists(), reason=f"shared assets not found at {ASSETS}")
def test_perceptual_net_file_of_the_fid_inceptions_first_layers(tmp_path):
  """The Inception stem written as a feature-network file computes the FID Inception's own
  activations (batch norm folded in); the perceptual distance is 0 for equal images, positive
  otherwise, and trains the autoencoder method through its file."""
  from diffjax.evaluation import inception, inception_weights
  from diffjax.methods.autoencoder import perceptual_distance
  weights = inception_weights.to_params(inception_weights.convert(str(TORCHSCRIPT)))
  ops, arrays = vae_weights.inception_stem(weights)
  path = vae_weights.save_feature_net(tmp_path / "stem.npz", ops, arrays, in_channels=3,
                                      source=TORCHSCRIPT.name)
  module, params, info = vae_weights.load_feature_net(path)
  assert info["sha256"] == vae_weights.sha256_file(path)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 80, 80, 3), minval=-1, maxval=1)
  taps = jax.jit(lambda v: module.apply({"params": params}, v))(x)
  net = inception.FIDInceptionV3(False)
  full = {k: v for k, v in weights.items() if k != "fc"}
  _, state = jax.jit(lambda v: net.apply({"params": full}, v, capture_intermediates=True))(x)
  reference = [state["intermediates"][name]["__call__"][0]
               for name in ("Conv2d_2b_3x3", "Conv2d_4a_3x3")]
  for ours, ref in zip(taps, reference):
    assert ours.shape == ref.shape and _rel(ours, ref) < 1e-4
  y = x + 0.2 * jax.random.normal(jax.random.PRNGKey(1), x.shape)
  np.testing.assert_allclose(perceptual_distance(taps, taps), 0.0, atol=1e-6)
  taps_y = jax.jit(lambda v: module.apply({"params": params}, v))(y)
  assert np.all(np.asarray(perceptual_distance(taps, taps_y)) > 0)
  # The autoencoder method's loss through the file (resized to 32x32: the stem needs > 8x8).
  small = vae_weights.save_feature_net(tmp_path / "stem32.npz", ops, arrays, in_channels=3,
                                       input_size=32)
  method = _ae_method(perceptual_weight=1.0, perceptual_net=str(small))
  assert "perceptual" in method.networks and method.networks["perceptual"].optimizer is None
  _, p_params, _ = vae_weights.load_feature_net(small)
  images = jax.random.uniform(jax.random.PRNGKey(2), (2, 8, 8, 1), minval=-1, maxval=1)
  params = jax.jit(method.module.init)(jax.random.PRNGKey(0), images)["params"]
  eps = jnp.zeros((2, *method.latent_shape))
  loss = lambda p: method._loss(p, {"image": images}, eps, fixed={"perceptual": p_params},
                                factor=0.0)
  (value, (m, _)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  assert float(m["perceptual"]) > 0
  assert float(value) == pytest.approx(float(m["rec"] + m["perceptual"] + 1e-6 * m["kl"]),
                                       rel=1e-5)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
