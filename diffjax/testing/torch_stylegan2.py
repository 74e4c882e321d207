"""``stylegan2-torch`` (the PyPI package of a StyleGAN2 port, used as the reference in the
StyleGAN2 parity tests and the GAN throughput benchmark) on machines without CUDA.

The package compiles two CUDA ops (``upfirdn2d`` and the fused biased leaky ReLU) when it is
imported. `install_cpu_ops` puts plain-PyTorch versions of both where the package imports them
from, before it is imported. Needs PyTorch (imported here, not at module level).
"""

from __future__ import annotations

import sys
import types

OP_MODULES = ("stylegan2_torch.op.upfirdn2d", "stylegan2_torch.op.fused_act")


def install_cpu_ops() -> dict:
  """Registers the plain-PyTorch ops in ``sys.modules``; returns the entries they replaced
  (None where there was none), for a caller that restores them."""
  import torch
  import torch.nn.functional as F

  def upfirdn2d(input, kernel, up=1, down=1, pad=(0, 0)):
    """Zero insertion by reshape and F.pad, then F.conv2d with the flipped kernel."""
    up = up if isinstance(up, int) else up[0]
    down = down if isinstance(down, int) else down[0]
    pad = (pad[0], pad[1], pad[0], pad[1]) if len(pad) == 2 else tuple(pad)
    n, c, h, w = input.shape
    x = input.reshape(n * c, 1, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n * c, 1, h * up, w * up)
    x = F.pad(x, list(pad))
    k = torch.flip(kernel, [0, 1]).view(1, 1, *kernel.shape).to(x.dtype)
    out = F.conv2d(x, k)[:, :, ::down, ::down]
    return out.reshape(n, c, out.shape[-2], out.shape[-1])

  def fused_leaky_relu(x, bias=None, negative_slope=0.2, scale=2 ** 0.5):
    if bias is not None:
      x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * scale

  class FusedLeakyReLU(torch.nn.Module):
    def __init__(self, channel, bias=True, negative_slope=0.2, scale=2 ** 0.5):
      super().__init__()
      self.bias = torch.nn.Parameter(torch.zeros(channel)) if bias else None
      self.negative_slope, self.scale = negative_slope, scale

    def forward(self, x):
      return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)

  up, act = (types.ModuleType(name) for name in OP_MODULES)
  up.upfirdn2d = upfirdn2d
  act.fused_leaky_relu, act.FusedLeakyReLU = fused_leaky_relu, FusedLeakyReLU
  replaced = {name: sys.modules.get(name) for name in OP_MODULES}
  sys.modules[up.__name__], sys.modules[act.__name__] = up, act
  return replaced
