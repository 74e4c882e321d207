"""The GAN networks: parameter counts of the paper-sized variants against the papers' and the
reference code's, outputs against PyTorch implementations with the same weights (DCGAN: the
PyTorch example's architecture written out here; StyleGAN2: the ``stylegan2-torch`` package,
a port of the official code), and the families' defining behaviours (ProGAN's fade-in,
BigGAN's shared embedding and hierarchical latents, StyleGAN2's truncation and mixing)."""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from diffjax import models
from diffjax.models.gan import layers
from diffjax.testing import torch_stylegan2


def _count(variables) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))


def _shapes(module, *args, **kwargs):
  return nn.meta.unbox(jax.eval_shape(lambda k: module.init(k, *args, **kwargs),
                                      jax.random.PRNGKey(0)))


def _pair_counts(family_size: str, resolution: int, channels: int, num_classes: int):
  g = models.get_model(f"{family_size}-g", resolution=resolution, channels=channels,
                       num_classes=num_classes)
  d_kwargs = {"resolution": resolution} if family_size.startswith("progan") else {}
  d = models.get_model(f"{family_size}-d", num_classes=num_classes, **d_kwargs)
  y = jnp.zeros((4,), jnp.int32) if num_classes else None
  vg = _shapes(g, jnp.zeros((4, g.z_dim)), y)
  vd = _shapes(d, jnp.zeros((4, resolution, resolution, channels)), y)
  return vg, vd


def test_dcgan_parameter_counts_are_the_reference_examples():
  """The PyTorch DCGAN example (64x64, nz 100, ngf = ndf = 64, nc 3): G 3,576,704 and
  D 2,765,568 parameters (counted from the twin below, built with torch)."""
  vg, vd = _pair_counts("dcgan-64", 64, 3, 0)
  g, d = _torch_dcgan(64, 64, 100, 3)
  assert _count(vg) == sum(p.numel() for p in g.parameters()) == 3_576_704
  assert _count(vd) == sum(p.numel() for p in d.parameters()) == 2_765_568


def test_progan_parameter_counts_are_table_2s():
  """Karras et al. 2018, Table 2 (CelebA-HQ 1024x1024): 23.1M parameters in each network,
  counting the final resolution's toRGB / fromRGB only (the lower ones are dropped as the
  network grows; ours holds them all from the start, a few thousand more)."""
  vg, vd = _pair_counts("progan-1024", 1024, 3, 0)
  extra_g = sum(_count({"params": v}) for k, v in vg["params"].items()
                if k.startswith("torgb") and k != "torgb1024")
  extra_d = sum(_count({"params": v}) for k, v in vd["params"].items()
                if k.startswith("fromrgb") and k != "fromrgb1024")
  assert round((_count(vg) - extra_g) / 1e6, 1) == 23.1
  assert round((_count(vd) - extra_d) / 1e6, 1) == 23.1
  assert 0 < extra_g < 3000 and 0 < extra_d < 20_000


def test_biggan_parameter_count_is_table_1s():
  """Brock et al. 2019, Table 1: 158.3M parameters (G + D) for ch 96 with shared embedding
  and hierarchical latents at 128x128 on ImageNet. Ours is 158.42M; the 0.12M over the paper's
  rounding is about the shared 1000x128 embedding (128,000), which its count seems to leave
  out, so the test allows that much."""
  vg, vd = _pair_counts("biggan-128", 128, 3, 1000)
  total = _count(vg) + _count(vd)
  assert abs(total - 158.3e6) <= 0.05e6 + 1000 * 128, total
  assert round(_count(vg) / 1e6, 1) == 70.4 and round(_count(vd) / 1e6, 1) == 88.0
  assert vg["params"]["shared"].shape == (1000, 128)
  # Hierarchical latents: 120 = 6 chunks of 20; each CBN reads [shared 128 | chunk 20].
  assert vg["params"]["block0"]["bn1"]["gain"]["kernel"].shape == (148, 16 * 96)
  assert vg["params"]["linear"]["kernel"].shape == (20, 4 * 4 * 16 * 96)


# --- PyTorch references ---------------------------------------------------------------------
def _torch_dcgan(res, width, nz, nc):
  """The PyTorch DCGAN example's networks for ``res`` (64: the example as published)."""
  n = int(np.log2(res)) - 2
  g_layers = [torch.nn.ConvTranspose2d(nz, width * 2 ** (n - 1), 4, 1, 0, bias=False),
              torch.nn.BatchNorm2d(width * 2 ** (n - 1)), torch.nn.ReLU(True)]
  for i in range(n - 1):
    c_in, c_out = width * 2 ** (n - 1 - i), width * 2 ** (n - 2 - i)
    g_layers += [torch.nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                 torch.nn.BatchNorm2d(c_out), torch.nn.ReLU(True)]
  g_layers += [torch.nn.ConvTranspose2d(width, nc, 4, 2, 1, bias=False), torch.nn.Tanh()]
  d_layers = [torch.nn.Conv2d(nc, width, 4, 2, 1, bias=False), torch.nn.LeakyReLU(0.2, True)]
  for i in range(1, n):
    d_layers += [torch.nn.Conv2d(width * 2 ** (i - 1), width * 2 ** i, 4, 2, 1, bias=False),
                 torch.nn.BatchNorm2d(width * 2 ** i), torch.nn.LeakyReLU(0.2, True)]
  d_layers += [torch.nn.Conv2d(width * 2 ** (n - 1), 1, 4, 1, 0, bias=False)]
  return torch.nn.Sequential(*g_layers), torch.nn.Sequential(*d_layers)


def test_dcgan_outputs_equal_pytorch_with_the_same_weights():
  """Training-mode batch norm (batch statistics) and the running statistics it leaves, for
  both networks; the transposed convolutions' padding semantics are PyTorch's."""
  torch.manual_seed(0)
  tg, td = _torch_dcgan(16, 4, 8, 1)
  g = models.get_model("dcgan-64-g", resolution=16, channels=1, width=4, z_dim=8)
  d = models.get_model("dcgan-64-d", width=4)
  convs_g = [m for m in tg if isinstance(m, torch.nn.ConvTranspose2d)]
  bns_g = [m for m in tg if isinstance(m, torch.nn.BatchNorm2d)]
  for m in bns_g:  # non-trivial affine parameters
    m.weight.data.normal_(1, 0.1)
    m.bias.data.normal_(0, 0.1)
  t = lambda p: jnp.asarray(p.detach().numpy())
  names = ["project", "up0", "to_image"]
  gp = {n: {"kernel": t(c.weight).transpose(2, 3, 0, 1)} for n, c in zip(names, convs_g)}
  for n, bn in zip(["bn_project", "bn_up0"], bns_g):
    gp[n] = {"scale": t(bn.weight), "bias": t(bn.bias)}
  g_vars = {"params": gp, "batch_stats": nn.meta.unbox(_shapes(g, jnp.zeros((2, 8))))[
      "batch_stats"]}
  g_vars["batch_stats"] = jax.tree.map(lambda s: jnp.zeros(s.shape) if s.shape else s,
                                       g_vars["batch_stats"])
  for n in ("bn_project", "bn_up0"):
    g_vars["batch_stats"][n] = {"mean": jnp.zeros(g_vars["batch_stats"][n]["mean"].shape),
                                "var": jnp.ones(g_vars["batch_stats"][n]["var"].shape)}
  z = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
  tg.train()
  ref = tg(torch.from_numpy(z)[:, :, None, None]).detach().numpy().transpose(0, 2, 3, 1)
  out, stats = g.apply(g_vars, jnp.asarray(z), None, True, mutable=["batch_stats"])
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["batch_stats"]["bn_up0"]["var"], t(bns_g[1].running_var),
                             rtol=1e-5)
  convs_d = [m for m in td if isinstance(m, torch.nn.Conv2d)]
  bn_d = [m for m in td if isinstance(m, torch.nn.BatchNorm2d)][0]
  dp = {n: {"kernel": t(c.weight).transpose(2, 3, 1, 0)}
        for n, c in zip(["down0", "down1", "to_logit"], convs_d)}
  dp["bn_down1"] = {"scale": t(bn_d.weight), "bias": t(bn_d.bias)}
  d_vars = {"params": dp, "batch_stats": {"bn_down1": {"mean": jnp.zeros(8),
                                                       "var": jnp.ones(8)}}}
  x = np.random.default_rng(1).normal(size=(6, 16, 16, 1)).astype(np.float32)
  td.train()
  ref_d = td(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().reshape(-1)
  out_d, _ = d.apply(d_vars, jnp.asarray(x), None, True, mutable=["batch_stats"])
  np.testing.assert_allclose(out_d, ref_d, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def stylegan2_torch():
  """The ``stylegan2-torch`` package with its two compiled ops replaced by plain PyTorch: the
  package compiles CUDA kernels on import, which this CPU-only machine cannot."""
  pytest.importorskip("torch_conv_gradfix",
                      reason="torch-conv-gradfix (requirements-test-nodeps.txt) not installed")
  saved = torch_stylegan2.install_cpu_ops()
  try:
    yield pytest.importorskip(
        "stylegan2_torch", reason="stylegan2-torch (requirements-test-nodeps.txt) not installed")
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)


def test_stylegan2_parameter_counts_equal_the_reference_code(stylegan2_torch):
  """Config F at 1024x1024: the reference port's networks (grey images: one channel in and
  out) and ours with one channel have the same count; with three channels our generator has
  the official 30,370,060."""
  ref_g = stylegan2_torch.Generator(1024)
  ref_d = stylegan2_torch.Discriminator(1024)
  vg, vd = _pair_counts("stylegan2-1024", 1024, 1, 0)
  assert _count(vg) == sum(p.numel() for p in ref_g.parameters())
  assert _count(vd) == sum(p.numel() for p in ref_d.parameters())
  vg3, _ = _pair_counts("stylegan2-1024", 1024, 3, 0)
  assert _count(vg3) == 30_370_060


def _port_stylegan2(ref_g, ref_d, g_vars, d_vars):
  """Our variables with the reference networks' weights (NCHW/[out, in] -> NHWC/[in, out])."""
  t = lambda p: jnp.asarray(p.detach().numpy())
  gp = dict(nn.meta.unbox(g_vars["params"]))
  for i in range(len(ref_g.mapping) - 1):
    fc = ref_g.mapping[i + 1]
    gp[f"mapping_fc{i}"] = {"kernel": t(fc.weight).T, "bias": t(fc.bias)}
  gp["const"] = t(ref_g.input.input)[0].transpose(1, 2, 0)

  def modconv(block, noise=True):
    out = {"affine": {"kernel": t(block.affine.weight).T, "bias": t(block.affine.bias)},
           "weight": t(block.weight)[0].transpose(2, 3, 1, 0)}
    if noise:
      out["noise_strength"] = t(block.add_noise.weight)[0]
      out["bias"] = {"bias": t(block.leaky_relu.bias)}
    else:
      out["bias"] = {"bias": t(block.bias).reshape(-1)}
    return out

  res = [4 * 2 ** i for i in range(len(ref_g.convs))]
  for i, r in enumerate(res):
    gp[f"b{r}_conv1"] = modconv(ref_g.convs[i])
    gp[f"b{r}_torgb"] = {"conv": modconv(ref_g.to_rgbs[i], noise=False)}
    if i:
      gp[f"b{r}_conv0"] = modconv(ref_g.up_convs[i - 1])
  dp = {}
  conv_w = lambda w: t(w).transpose(2, 3, 1, 0)
  first = ref_d.blocks[0]
  dp["fromrgb"] = {"conv": {"kernel": conv_w(first[0].weight)}, "act": {"bias": t(first[1].bias)}}
  r = res[-1]
  for block in list(ref_d.blocks)[1:]:
    dp[f"b{r}_conv0"] = {"conv": {"kernel": conv_w(block.conv[0].weight)},
                         "act": {"bias": t(block.conv[1].bias)}}
    dp[f"b{r}_conv1"] = {"conv": {"kernel": conv_w(block.down_conv[1].weight)},
                         "act": {"bias": t(block.down_conv[2].bias)}}
    dp[f"b{r}_skip"] = {"conv": {"kernel": conv_w(block.skip[1].weight)}}
    r //= 2
  dp["b4_conv"] = {"conv": {"kernel": conv_w(ref_d.final_conv[0].weight)},
                   "act": {"bias": t(ref_d.final_conv[1].bias)}}
  w = t(ref_d.final_relu.weight)  # [out, C * 4 * 4] in (C, H, W) order
  c = w.shape[0]
  dp["b4_fc"] = {"kernel": w.reshape(c, -1, 4, 4).transpose(2, 3, 1, 0).reshape(-1, c),
                 "bias": t(ref_d.final_relu.bias)}
  dp["b4_out"] = {"kernel": t(ref_d.final_linear.weight).T, "bias": t(ref_d.final_linear.bias)}
  return {**g_vars, "params": gp}, {"params": dp}


def test_stylegan2_outputs_equal_the_reference_code_with_the_same_weights(stylegan2_torch):
  """Mapping, synthesis from per-layer styles (the mixing layout), the residual
  discriminator, and R1 through it: ours and the reference port agree (grey 16x16, small
  widths, noise strengths non-zero but noise off)."""
  torch.manual_seed(0)
  channels = {4: 16, 8: 16, 16: 8}
  ref_g = stylegan2_torch.Generator(16, latent_dim=16, n_mlp=2, channels=channels)
  ref_d = stylegan2_torch.Discriminator(16, channels=channels)
  for p in ref_g.parameters():  # give biases and noise strengths non-trivial values
    if p.ndim <= 1:
      p.data.normal_(0, 0.3)
  g = models.get_model("stylegan2-tiny-g", resolution=16, channels=1, z_dim=16, w_dim=16)
  d = models.get_model("stylegan2-tiny-d", mbstd_group=4)  # the reference's group
  g_vars = nn.meta.unbox(g.init(jax.random.PRNGKey(0), jnp.zeros((2, 16))))
  d_vars = nn.meta.unbox(d.init(jax.random.PRNGKey(0), jnp.zeros((4, 16, 16, 1))))
  g_vars, d_vars = _port_stylegan2(ref_g, ref_d, g_vars, d_vars)
  rng = np.random.default_rng(0)
  z = rng.normal(size=(4, 16)).astype(np.float32)
  w_ref = ref_g.mapping(torch.from_numpy(z)).detach().numpy()
  np.testing.assert_allclose(g.apply(g_vars, jnp.asarray(z), method="mapping"), w_ref,
                             rtol=1e-4, atol=1e-5)
  ws = rng.normal(size=(4, g.num_ws, 16)).astype(np.float32)  # a different style per layer
  zeros = [torch.zeros(4, 1, 4 * 2 ** ((i + 1) // 2), 4 * 2 ** ((i + 1) // 2))
           for i in range(g.num_ws - 1)]
  img_ref = ref_g([torch.from_numpy(ws)], input_type="w_plus", noises=zeros)
  img = g.apply(g_vars, jnp.asarray(ws), None, method="synthesis")
  np.testing.assert_allclose(img, img_ref.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4,
                             atol=1e-4)
  x = rng.normal(size=(4, 16, 16, 1)).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_(True)
  logits_ref = ref_d(xt)
  np.testing.assert_allclose(d.apply(d_vars, jnp.asarray(x)), logits_ref.detach().numpy()[:, 0],
                             rtol=1e-4, atol=1e-4)
  r1_ref = stylegan2_torch.d_reg_loss(logits_ref, xt).item()
  from diffjax.methods.gan import gradient_penalty_r1
  r1 = gradient_penalty_r1(lambda v: d.apply(d_vars, v), jnp.asarray(x))
  assert float(r1) == pytest.approx(r1_ref, rel=1e-4)


# --- family behaviours ------------------------------------------------------------------------
def test_progan_fade_in_starts_at_the_previous_level_and_holds_every_level():
  g = models.get_model("progan-tiny-g", channels=1)
  z = jax.random.normal(jax.random.PRNGKey(0), (4, g.z_dim))
  v = g.init(jax.random.PRNGKey(1), z, None, growth=(0, 1.0))
  assert {"torgb4", "torgb8", "torgb16", "b8_conv0", "b16_conv1"} <= set(v["params"])
  at = lambda lvl, a: np.asarray(g.apply(v, z, None, growth=(jnp.int32(lvl), jnp.float32(a))))
  np.testing.assert_allclose(at(1, 0.0), at(0, 1.0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(at(2, 0.0), at(1, 1.0), rtol=1e-5, atol=1e-6)
  mid = at(2, 0.3)
  np.testing.assert_allclose(mid, 0.7 * at(1, 1.0) + 0.3 * at(2, 1.0), rtol=1e-4, atol=1e-5)
  switch = models.get_model("progan-tiny-g", channels=1, structure="switch")
  np.testing.assert_allclose(switch.apply(v, z, None, growth=(jnp.int32(2), jnp.float32(0.3))),
                             mid, rtol=1e-5, atol=1e-6)  # lax.switch == every level blended
  assert at(0, 1.0)[:, ::4, ::4].shape == (4, 4, 4, 1)  # a 4x4 image upsampled
  np.testing.assert_array_equal(at(0, 1.0)[:, 0:4, 0:4], np.repeat(np.repeat(
      at(0, 1.0)[:, 0:1, 0:1], 4, 1), 4, 2))
  d = models.get_model("progan-tiny-d")
  vd = d.init(jax.random.PRNGKey(2), jnp.zeros((4, 16, 16, 1)), None, growth=(0, 1.0))
  x = jnp.asarray(at(2, 1.0))
  dd = lambda lvl, a: np.asarray(d.apply(vd, x, None, growth=(jnp.int32(lvl), jnp.float32(a))))
  np.testing.assert_allclose(dd(2, 0.0), dd(1, 1.0), rtol=1e-5, atol=1e-5)


def test_biggan_uses_shared_class_embedding_and_hierarchical_latents():
  g = models.get_model("biggan-tiny-g", channels=1)
  z = jax.random.normal(jax.random.PRNGKey(0), (4, g.z_dim))
  y = jnp.array([0, 1, 2, 3])
  v = g.init(jax.random.PRNGKey(1), z, y)
  assert set(v) == {"params", "spectral", "batch_stats"}
  base = g.apply(v, z, y)
  other_class = g.apply(v, z, jnp.array([5, 1, 2, 3]))
  assert not np.allclose(base[0], other_class[0]) and np.allclose(base[1:], other_class[1:])
  chunk = z.shape[1] // 3
  for i in range(3):  # every chunk (input layer, block 0, block 1) reaches the image
    z2 = z.at[:, i * chunk:(i + 1) * chunk].set(0.0)
    assert not np.allclose(g.apply(v, z2, y), base)
  d = models.get_model("biggan-tiny-d")
  vd = d.init(jax.random.PRNGKey(2), base, y)
  assert "attention8" in vd["params"] and "embed" in vd["params"]
  out, upd = d.apply(vd, base, y, True, mutable=["spectral"])
  assert not np.array_equal(jax.tree.leaves(upd)[0], jax.tree.leaves(vd["spectral"])[0])


def test_stylegan2_truncation_and_w_avg():
  g = models.get_model("stylegan2-tiny-g", channels=1)
  z = jax.random.normal(jax.random.PRNGKey(0), (8, g.z_dim))
  v = g.init(jax.random.PRNGKey(1), z)
  _, upd = g.apply(v, z, train=True, mutable=["mapping_stats"])
  w = g.apply(v, z, method="mapping")
  np.testing.assert_allclose(upd["mapping_stats"]["w_avg"], 0.005 * np.mean(w, 0), rtol=1e-5,
                             atol=1e-7)
  v = {**v, **upd}
  psi0 = g.apply(v, z, psi=0.0)  # every sample is the image of w_avg
  np.testing.assert_allclose(psi0, np.broadcast_to(psi0[:1], psi0.shape), rtol=1e-5,
                             atol=1e-6)
  w_half = g.apply(v, z, method="mapping", psi=0.5)
  np.testing.assert_allclose(w_half, upd["mapping_stats"]["w_avg"] + 0.5 * (
      w - upd["mapping_stats"]["w_avg"]), rtol=1e-5, atol=1e-6)


def test_layers_module_counts_parameters():
  v = {"params": {"a": jnp.zeros((2, 3)), "b": {"c": jnp.zeros(4)}}, "spectral": {"u": jnp.ones(9)}}
  assert layers.count_params(v) == 10
