"""Train-step throughput of diffjax's StyleGAN2 and BigGAN against PyTorch implementations of the
same networks, in the same run, on the same device kind.

Peers:
* StyleGAN2: the ``stylegan2-torch`` package from PyPI (a port of the official code; grey
  images, as that package's networks are single-channel). Its two CUDA ops compile with nvcc
  when imported; on a machine without CUDA they are replaced by plain PyTorch (the same
  upfirdn2d and bias + leaky ReLU). Its loop as the package's losses define it: a
  discriminator update (+ R1 every 16), a generator update (+ path length every 4, on half the
  batch), style mixing 0.9, generator EMA.
* BigGAN: no BigGAN with a discriminator installs from PyPI (``pytorch-pretrained-biggan`` is
  BigGAN-deep's generator alone), so the peer is a PyTorch twin of diffjax's BigGAN written
  here (spectral norm by ``torch.nn.utils.parametrizations.spectral_norm``, conditional batch
  norm from a shared embedding and hierarchical latents, self-attention, projection
  discriminator); the script checks that its parameter count equals ours. Both: hinge loss,
  two discriminator updates per generator update, generator EMA, no orthogonal
  regularisation (left out of both).

Each side runs ``--warmup`` steps (compilation, cuDNN autotuning) and then ``--steps`` timed
steps; images/s counts the reals each step consumes. Results go to ``gan_throughput_<device>
.json`` and ``.md`` beside this file.

  python experiments/benchmarks/gan/gan_throughput.py                    # CPU, small sizes
  python experiments/benchmarks/gan/gan_throughput.py --device gpu --size paper   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[3]
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from diffjax.testing import torch_stylegan2  # noqa: E402

SIZES = {  # (resolution, StyleGAN2 channel_base, channel_max, z/w dim, batch;
           #  BigGAN resolution, ch, z_dim, batch)
    "cpu": dict(sg_res=32, sg_base=1024, sg_max=64, sg_z=64, sg_batch=16,
                bg_res=32, bg_ch=16, bg_z=64, bg_shared=32, bg_batch=32),
    "paper": dict(sg_res=256, sg_base=32768, sg_max=512, sg_z=512, sg_batch=32,
                  bg_res=128, bg_ch=96, bg_z=120, bg_shared=128, bg_batch=64),
}


# --- JAX (diffjax) ------------------------------------------------------------------------------
def jax_step_rate(family: str, s: dict, warmup: int, steps: int) -> dict:
  import jax
  from configs import gan_base
  from diffjax import parallel
  from diffjax.experiment import build_spec
  from diffjax.jobs.common import state_setup
  from diffjax.training import parameter_count
  from diffjax.training.setup import jit_train_step

  c = gan_base.get_gan_base()
  c.data.source, c.data.channels, c.data.num_classes = "digits", 1, 10
  if family == "stylegan2":
    c.data.image_size, c.data.batch_size = s["sg_res"], s["sg_batch"]
    c.generator.name, c.discriminator.name = "stylegan2-1024-g", "stylegan2-1024-d"
    c.generator.kwargs.update(channel_base=s["sg_base"], channel_max=s["sg_max"],
                              z_dim=s["sg_z"], w_dim=s["sg_z"], mapping_layers=8)
    c.discriminator.kwargs.update(channel_base=s["sg_base"], channel_max=s["sg_max"])
    gan_base.set_optimizers(c, 0.002, 0.002, 0.0, 0.99)
    c.gan.update(loss="non_saturating", r1_gamma=10.0, d_reg_every=16, pl_weight=2.0,
                 g_reg_every=4, style_mixing=0.9)
  else:
    c.data.image_size, c.data.batch_size = s["bg_res"], s["bg_batch"]
    c.generator.name, c.discriminator.name = "biggan-128-g", "biggan-128-d"
    c.generator.conditional = True
    c.generator.kwargs.update(ch=s["bg_ch"], z_dim=s["bg_z"], shared_dim=s["bg_shared"],
                              attention=s["bg_res"] // 2 if s["bg_res"] >= 64 else 0)
    c.discriminator.kwargs.update(ch=s["bg_ch"],
                                  attention=s["bg_res"] // 2 if s["bg_res"] >= 64 else 0)
    gan_base.set_optimizers(c, 1e-4, 4e-4, 0.0, 0.999, eps=1e-6)
    c.gan.update(loss="hinge", n_critic=2)
  spec = build_spec(c, num_devices=1)
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  setup = state_setup(spec, mesh)
  step = jit_train_step(setup, mesh, spec.train, spec.faults)
  state = setup.init(jax.random.PRNGKey(0))
  b, r = c.data.batch_size, c.data.image_size
  rng = np.random.default_rng(0)
  batch = parallel.global_batch({"image": rng.uniform(-1, 1, (b, r, r, 1)).astype(np.float32),
                                 "label": rng.integers(0, 10, b).astype(np.int32)},
                                parallel.batch_sharding(mesh))
  t0 = time.perf_counter()
  for _ in range(warmup):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  t1 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  dt = time.perf_counter() - t1
  return {"params": {role: parameter_count(n.params) for role, n in state.nets.items()},
          "warmup_s": t1 - t0, "step_ms": 1000 * dt / steps, "images_per_s": b * steps / dt,
          "batch": b}


# --- PyTorch: StyleGAN2 (stylegan2-torch) -------------------------------------------------------
def torch_stylegan2_rate(s: dict, device: str, warmup: int, steps: int) -> dict:
  import copy
  import random
  import torch
  if device == "cpu":
    torch_stylegan2.install_cpu_ops()  # stylegan2-torch would compile CUDA ops on import
  import stylegan2_torch as sg
  dev = torch.device("cuda" if device == "gpu" else "cpu")
  res = s["sg_res"]
  channels = {2 ** i: min(s["sg_base"] // 2 ** i, s["sg_max"]) for i in range(2, 11)}
  g = sg.Generator(res, latent_dim=s["sg_z"], n_mlp=8, channels=channels).to(dev)
  d = sg.Discriminator(res, channels=channels).to(dev)
  g_ema = copy.deepcopy(g).eval()
  g_opt = torch.optim.Adam(g.parameters(), lr=0.002 * 4 / 5, betas=(0.0, 0.99 ** (4 / 5)))
  d_opt = torch.optim.Adam(d.parameters(), lr=0.002 * 16 / 17, betas=(0.0, 0.99 ** (16 / 17)))
  b = s["sg_batch"]
  real = torch.rand(b, 1, res, res, device=dev) * 2 - 1
  mean_path = torch.zeros((), device=dev)
  state = {"i": 0, "mean_path": mean_path}

  def noise():
    return [torch.randn(b, s["sg_z"], device=dev) for _ in range(2 if random.random() < 0.9 else 1)]

  def one_step():
    i = state["i"]
    d_opt.zero_grad(set_to_none=True)
    with torch.no_grad():
      fake = g(noise())
    loss = sg.d_loss(d(real), d(fake))
    loss.backward()
    d_opt.step()
    if i % 16 == 0:
      d_opt.zero_grad(set_to_none=True)
      r = real.detach().requires_grad_(True)
      (10 / 2 * sg.d_reg_loss(d(r), r) * 16).backward()
      d_opt.step()
    g_opt.zero_grad(set_to_none=True)
    sg.g_loss(d(g(noise()))).backward()
    g_opt.step()
    if i % 4 == 0:
      g_opt.zero_grad(set_to_none=True)
      z = [torch.randn(b // 2, s["sg_z"], device=dev)]
      img, latents = g(z, return_latents=True)
      pen, state["mean_path"], _ = sg.g_reg_loss(img, latents, state["mean_path"])
      (2 * 4 * pen).backward()
      g_opt.step()
    with torch.no_grad():
      for pe, p in zip(g_ema.parameters(), g.parameters()):
        pe.mul_(0.999).add_(p, alpha=0.001)
    state["i"] += 1

  return _time_torch(one_step, dev, warmup, steps, b, {"generator": _n(g),
                                                       "discriminator": _n(d)})


# --- PyTorch: BigGAN twin ----------------------------------------------------------------------
def torch_biggan(s: dict):
  import torch
  from torch import nn
  from diffjax.models.gan.biggan import D_MULTIPLIERS, G_MULTIPLIERS
  sn = nn.utils.parametrizations.spectral_norm
  F = nn.functional

  class CBN(nn.Module):
    def __init__(self, c, cond):
      super().__init__()
      self.bn = nn.BatchNorm2d(c, affine=False, eps=1e-5, momentum=0.1)
      self.gain, self.bias = sn(nn.Linear(cond, c, bias=False)), sn(nn.Linear(cond, c, bias=False))

    def forward(self, x, y):
      return self.bn(x) * (1 + self.gain(y))[:, :, None, None] + self.bias(y)[:, :, None, None]

  class Attention(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.theta, self.phi = (sn(nn.Conv2d(c, c // 8, 1, bias=False)) for _ in range(2))
      self.g, self.o = sn(nn.Conv2d(c, c // 2, 1, bias=False)), sn(nn.Conv2d(c // 2, c, 1,
                                                                              bias=False))
      self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x):
      b, c, h, w = x.shape
      theta = self.theta(x).view(b, c // 8, h * w)
      phi = F.max_pool2d(self.phi(x), 2).view(b, c // 8, -1)
      g = F.max_pool2d(self.g(x), 2).view(b, c // 2, -1)
      beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
      o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(b, c // 2, h, w))
      return x + self.gamma * o

  class GBlock(nn.Module):
    def __init__(self, cin, cout, cond):
      super().__init__()
      self.bn1, self.bn2 = CBN(cin, cond), CBN(cout, cond)
      self.conv1, self.conv2 = sn(nn.Conv2d(cin, cout, 3, 1, 1)), sn(nn.Conv2d(cout, cout, 3, 1, 1))
      self.sc = sn(nn.Conv2d(cin, cout, 1))

    def forward(self, x, y):
      h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2)
      h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
      return h + self.sc(F.interpolate(x, scale_factor=2))

  class G(nn.Module):
    def __init__(self, res, ch, z, shared, classes, attention):
      super().__init__()
      m = G_MULTIPLIERS[res]
      self.chunks = len(m)
      self.shared = nn.Embedding(classes, shared)
      self.linear = sn(nn.Linear(z // self.chunks, 16 * m[0] * ch))
      self.blocks = nn.ModuleList(GBlock(m[i] * ch, m[i + 1] * ch, shared + z // self.chunks)
                                  for i in range(len(m) - 1))
      self.attn = {i: Attention(m[i + 1] * ch) for i in range(len(m) - 1)
                   if 8 * 2 ** i == attention}
      self.attn_modules = nn.ModuleList(self.attn.values())
      self.out_bn, self.out = nn.BatchNorm2d(m[-1] * ch), sn(nn.Conv2d(m[-1] * ch, 1, 3, 1, 1))
      self.m0, self.ch = m[0], ch

    def forward(self, z, y):
      zs = torch.chunk(z, self.chunks, 1)
      e = self.shared(y)
      h = self.linear(zs[0]).view(z.shape[0], 4, 4, self.m0 * self.ch).permute(0, 3, 1, 2)
      for i, blk in enumerate(self.blocks):
        h = blk(h, torch.cat([e, zs[i + 1]], 1))
        if i in self.attn:
          h = self.attn[i](h)
      return torch.tanh(self.out(F.relu(self.out_bn(h))))

  class DBlock(nn.Module):
    def __init__(self, cin, cout, preact, down):
      super().__init__()
      self.preact, self.down = preact, down
      self.conv1, self.conv2 = sn(nn.Conv2d(cin, cout, 3, 1, 1)), sn(nn.Conv2d(cout, cout, 3, 1, 1))
      self.sc = sn(nn.Conv2d(cin, cout, 1)) if (cin != cout or down) else None

    def forward(self, x):
      h = self.conv2(F.relu(self.conv1(F.relu(x) if self.preact else x)))
      h = F.avg_pool2d(h, 2) if self.down else h
      sc = x
      if self.sc is not None:
        if self.preact:
          sc = self.sc(sc)
          sc = F.avg_pool2d(sc, 2) if self.down else sc
        else:
          sc = F.avg_pool2d(sc, 2) if self.down else sc
          sc = self.sc(sc)
      return h + sc

  class D(nn.Module):
    def __init__(self, res, ch, classes, attention):
      super().__init__()
      m = D_MULTIPLIERS[res]
      cins = [1] + [k * ch for k in m[:-1]]
      downs = [i < len(m) - 1 if res >= 64 else i < 2 for i in range(len(m))]
      self.blocks = nn.ModuleList(DBlock(cins[i], m[i] * ch, i > 0, downs[i])
                                  for i in range(len(m)))
      self.attn = nn.ModuleDict({"0": Attention(m[0] * ch)} if attention == res // 2 else {})
      self.linear = sn(nn.Linear(m[-1] * ch, 1))
      self.embed = sn(nn.Embedding(classes, m[-1] * ch))

    def forward(self, x, y):
      h = x
      for i, blk in enumerate(self.blocks):
        h = blk(h)
        if str(i) in self.attn:
          h = self.attn[str(i)](h)
      h = torch.sum(F.relu(h), dim=(2, 3))
      return self.linear(h)[:, 0] + torch.sum(self.embed(y) * h, 1)

  attention = s["bg_res"] // 2 if s["bg_res"] >= 64 else 0
  return (G(s["bg_res"], s["bg_ch"], s["bg_z"], s["bg_shared"], 10, attention),
          D(s["bg_res"], s["bg_ch"], 10, attention))


def torch_biggan_rate(s: dict, device: str, warmup: int, steps: int) -> dict:
  import copy
  import torch
  dev = torch.device("cuda" if device == "gpu" else "cpu")
  g, d = (m.to(dev) for m in torch_biggan(s))
  g_ema = copy.deepcopy(g)
  g_opt = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.0, 0.999), eps=1e-6)
  d_opt = torch.optim.Adam(d.parameters(), lr=4e-4, betas=(0.0, 0.999), eps=1e-6)
  b, res = s["bg_batch"], s["bg_res"]
  real = torch.rand(b, 1, res, res, device=dev) * 2 - 1
  labels = torch.randint(0, 10, (b,), device=dev)

  def one_step():
    for part in range(2):  # two discriminator updates, each on half the reals
      d_opt.zero_grad(set_to_none=True)
      rb, yb = real[part::2], labels[part::2]
      with torch.no_grad():
        yf = torch.randint(0, 10, (b // 2,), device=dev)
        fake = g(torch.randn(b // 2, s["bg_z"], device=dev), yf)
      loss = F_relu(1 - d(rb, yb)).mean() + F_relu(1 + d(fake, yf)).mean()
      loss.backward()
      d_opt.step()
    g_opt.zero_grad(set_to_none=True)
    yf = torch.randint(0, 10, (b // 2,), device=dev)
    (-d(g(torch.randn(b // 2, s["bg_z"], device=dev), yf), yf).mean()).backward()
    g_opt.step()
    with torch.no_grad():
      for pe, p in zip(g_ema.parameters(), g.parameters()):
        pe.mul_(0.9999).add_(p, alpha=1e-4)

  F_relu = torch.nn.functional.relu
  return _time_torch(one_step, dev, warmup, steps, b, {"generator": _n(g),
                                                       "discriminator": _n(d)})


def _n(module) -> int:
  return sum(p.numel() for p in module.parameters())


def _time_torch(one_step, dev, warmup, steps, batch, params) -> dict:
  import torch
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  t0 = time.perf_counter()
  for _ in range(warmup):
    one_step()
  sync()
  t1 = time.perf_counter()
  for _ in range(steps):
    one_step()
  sync()
  dt = time.perf_counter() - t1
  return {"params": params, "warmup_s": t1 - t0, "step_ms": 1000 * dt / steps,
          "images_per_s": batch * steps / dt, "batch": batch}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  p.add_argument("--size", choices=tuple(SIZES), default="cpu")
  p.add_argument("--warmup", type=int, default=4)
  p.add_argument("--steps", type=int, default=16)
  p.add_argument("--families", default="stylegan2,biggan")
  a = p.parse_args()
  import jax
  import torch
  s = SIZES[a.size]
  out = {"device": a.device, "size": a.size, "sizes": s, "jax": jax.__version__,
         "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
         "jax_devices": [str(x) for x in jax.devices()[:1]],
         "torch_threads": torch.get_num_threads(), "results": {}}
  for family in a.families.split(","):
    ours = jax_step_rate(family, s, a.warmup, a.steps)
    peer = (torch_stylegan2_rate if family == "stylegan2" else torch_biggan_rate)(
        s, a.device, a.warmup, a.steps)
    # the same networks: equal parameter counts
    assert sum(ours["params"].values()) == sum(peer["params"].values()), (ours, peer)
    out["results"][family] = {"diffjax": ours, "pytorch": peer,
                              "speedup": ours["images_per_s"] / peer["images_per_s"]}
    print(family, json.dumps(out["results"][family]), flush=True)
  name = f"gan_throughput_{a.device}_{a.size}"
  (HERE / f"{name}.json").write_text(json.dumps(out, indent=1))
  rows = ["| network | batch | parameters (G + D) | diffjax img/s | PyTorch img/s | ratio |",
          "|---|---|---|---|---|---|"]
  for fam, r in out["results"].items():
    ours, peer = r["diffjax"], r["pytorch"]
    rows.append(f"| {fam} ({'stylegan2-torch' if fam == 'stylegan2' else 'PyTorch twin'}) | "
                f"{ours['batch']} | {sum(ours['params'].values()) / 1e6:.3f}M vs "
                f"{sum(peer['params'].values()) / 1e6:.3f}M | {ours['images_per_s']:.1f} | "
                f"{peer['images_per_s']:.1f} | {r['speedup']:.2f} |")
  (HERE / f"{name}.md").write_text(
      f"{a.device}, sizes '{a.size}' ({json.dumps(s)}), {a.warmup} warm-up + {a.steps} timed "
      f"steps, jax {jax.__version__}, torch {torch.__version__}\n\n" + "\n".join(rows) + "\n")
  print("\n".join(rows))


if __name__ == "__main__":
  main()
