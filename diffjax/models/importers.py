"""Published denoiser checkpoints imported into diffjax's own networks, strictly.

Formats (``init.format`` in configs; `FORMATS`):

* ``diffusers_unet``: diffusers' ``UNet2DModel`` layout (``diffusion_pytorch_model.safetensors``
  or ``.bin``), the layout the DDPM checkpoints of Ho et al. are published in
  (google/ddpm-cifar10-32, ddpm-celebahq-256, ddpm-{church,bedroom,cat}-256 and their ``ema``
  versions) -> `UNet`. Attention weights under diffusers' deprecated names (``query``, ``key``,
  ``value``, ``proj_attn``) are accepted as the current ones. Build the UNet with
  `unet_kwargs_from_diffusers` of the checkpoint's ``config.json`` (DDPM: the ``ddpm-cifar10``
  variant with ``embedding_freq_shift=1, embedding_sin_first=True``).
* ``diffusers_dit``: diffusers' ``DiTTransformer2DModel`` (facebook/DiT-XL-2-256, -512) -> `DiT`,
  the learned-sigma output channels included. diffusers keeps a copy of the timestep and label
  embedders in every block; the copies must be identical (the published conversion makes them
  so) and are imported once.
* ``dit``: the DiT release's state dict (``DiT-XL-2-256x256.pt``, ``DiT-XL-2-512x512.pt``, or a
  training checkpoint of its ``train.py``, whose ``ema`` entry is read) -> `DiT`. Its fixed
  ``pos_embed`` is not a parameter here: it is checked against the sine-cosine table the
  network computes.
* ``adm`` / ``adm_new_attention_order``: guided-diffusion's ``UNetModel`` state dict (Dhariwal &
  Nichol 2021) -> `UNet` built with `unet_kwargs_from_adm` of the model's flags; the second
  format is for ``--use_new_attention_order True`` (the ImageNet 64x64 model), which lays the
  fused ``qkv`` projection out as [q, k, v] x heads instead of heads x [q, k, v].

  Which released ADM models convert: the diffusion models ``64x64_diffusion.pt``,
  ``128x128_diffusion.pt``, ``256x256_diffusion.pt``, ``256x256_diffusion_uncond.pt``,
  ``512x512_diffusion.pt`` and ``lsun_{bedroom,cat,horse}.pt`` /
  ``lsun_horse_nodropout.pt`` (all use ``resblock_updown``, GroupNorm eps 1e-5, learned sigma).
  Not: the classifiers (``*_classifier.pt``, an encoder network), the upsamplers
  (``64_256_upsampler.pt``, ``128_512_upsampler.pt``, conditioned on a low-resolution image),
  and improved-diffusion's models (convolutional resampling with symmetric padding, which
  diffjax's UNet does not implement). Class-conditional ADM models have no null-class row
  (they were trained without label dropout): diffjax's extra row is set to zeros.

Every import is strict: every tensor of the file maps to exactly one parameter with the
expected shape and every parameter is found, or the import stops naming every offending tensor
(`diffjax.models.weight_files.strict_map`). `import_checkpoint` records the source's SHA-256
and the parameters' SHA-256.

  python -m diffjax.models.importers --source DiT-XL-2-256x256.pt --format dit \\
      --model DiT-XL/2 --kwargs '{"out_channels": 8}' --shape 32,32,4 --num_classes 1000
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.dit import DiT
from diffjax.models.layers import sincos_2d_position_embedding
from diffjax.models.unet import UNet
from diffjax.models.weight_files import (WeightImportError, canonical_attention_names, flatten,
                                         names, params_sha256, read_tensors, sha256_file,
                                         strict_map, to_flax, torch_shape, unflatten)

FORMATS = {
    "diffusers_unet": "diffusers UNet2DModel (DDPM checkpoints) -> UNet",
    "diffusers_dit": "diffusers DiTTransformer2DModel -> DiT",
    "dit": "DiT release state dict (DiT-XL-2-256x256.pt naming) -> DiT",
    "adm": "guided-diffusion UNetModel state dict -> UNet",
    "adm_new_attention_order": "guided-diffusion UNetModel, use_new_attention_order=True -> UNet",
}
_NETWORK = {"diffusers_unet": UNet, "adm": UNet, "adm_new_attention_order": UNet,
            "diffusers_dit": DiT, "dit": DiT}


def abstract_params(module: nn.Module, x_shape: tuple[int, int, int]) -> dict:
  """``{path tuple: shape}`` of ``module``'s parameters for inputs of ``x_shape`` (no
  compute)."""
  x = jax.ShapeDtypeStruct((1, *x_shape), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if module.num_classes else None
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x, t, y)
  return {p: tuple(v.shape) for p, v in flatten(nn.meta.unbox(variables["params"]))}


def describe(module: nn.Module) -> str:
  if isinstance(module, DiT):
    fields = ("patch_size", "hidden_size", "depth", "num_heads", "num_classes", "out_channels")
  else:
    fields = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "num_heads",
              "head_channels", "resblock_updown", "scale_shift_norm", "num_classes",
              "out_channels", "stem_width")
  return f"{type(module).__name__}(" + ", ".join(
      f"{f}={getattr(module, f)!r}" for f in fields) + ")"


class _Plan:
  """How a file's tensors become a network's parameters.

  ``direct``: parameter path -> (tensor name, layout kind) for one-to-one tensors; ``extra``:
  tensor names (with their expected shapes) that special rules consume; ``rules``: functions
  ``(tensors, params)`` that fill the remaining parameters; ``notes``: what the import did
  beyond copying.
  """

  def __init__(self):
    self.direct: dict[tuple[str, ...], tuple[str, str]] = {}
    self.extra: dict[str, tuple[int, ...]] = {}
    self.rules: list[Callable[[dict, dict], None]] = []
    self.notes: list[str] = []


def _leaf(leaf: str) -> str:
  return "weight" if leaf in ("kernel", "scale", "embedding") else "bias"


def _kind(sub: str, leaf: str) -> str:
  if leaf == "bias" or sub == "norm":
    return "vector"
  if leaf == "embedding":
    return "raw"
  return {"conv": "conv", "dense": "linear"}[sub]


def _add(plan: _Plan, shapes: dict, ours: tuple[str, ...], theirs: str) -> None:
  """Maps every parameter under the wrapper module ``ours`` to ``theirs.weight/.bias``."""
  found = [p for p in shapes if p[:len(ours)] == ours and len(p) == len(ours) + 2]
  if not found:
    raise WeightImportError(f"internal: no parameters under {'/'.join(ours)}")
  for p in found:
    plan.direct[p] = (f"{theirs}.{_leaf(p[-1])}", _kind(p[-2], p[-1]))


# --- UNet: diffusers and ADM -------------------------------------------------------------------
def _unet_blocks(module: UNet, x_shape) -> list[tuple[str, str, dict]]:
  """The UNet's blocks in order: ``(name, type, where)`` with type ``res``, ``attn``,
  ``conv_down``, ``conv_up`` and ``where`` = {"stage": down|mid|up, "level", "index"}."""
  out = [("conv_in", "conv", {"stage": "in"})]
  levels, res = len(module.ch_mult), x_shape[0]
  for level in range(levels):
    for i in range(module.num_res_blocks):
      out.append((f"down_{level}_{i}", "res", {"stage": "down", "level": level, "index": i}))
      if res in module.attn_resolutions:
        out.append((f"down_{level}_{i}_attn", "attn", {"stage": "down", "level": level,
                                                        "index": i}))
    if level != levels - 1:
      out.append((f"down_{level}_resample", "res" if module.resblock_updown else "conv_down",
                  {"stage": "down", "level": level, "index": "resample"}))
      res //= 2
  out += [("mid_0", "res", {"stage": "mid", "index": 0}),
          ("mid_attn", "attn", {"stage": "mid", "index": "attn"}),
          ("mid_1", "res", {"stage": "mid", "index": 1})]
  for level in reversed(range(levels)):
    for i in range(module.num_res_blocks + 1):
      out.append((f"up_{level}_{i}", "res", {"stage": "up", "level": level, "index": i}))
      if res in module.attn_resolutions:
        out.append((f"up_{level}_{i}_attn", "attn", {"stage": "up", "level": level, "index": i}))
    if level != 0:
      out.append((f"up_{level}_resample", "res" if module.resblock_updown else "conv_up",
                  {"stage": "up", "level": level, "index": "resample"}))
      res *= 2
  return out + [("norm_out", "norm", {"stage": "out"}), ("conv_out", "conv", {"stage": "out"})]


_RES_DIFFUSERS = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj",
                  "norm2": "norm2", "conv2": "conv2", "skip": "conv_shortcut"}
_RES_ADM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "emb_proj": "emb_layers.1",
            "norm2": "out_layers.0", "conv2": "out_layers.3", "skip": "skip_connection"}


def _res_block(plan, shapes, ours: str, theirs: str, table: dict) -> None:
  for sub, name in table.items():
    if any(p[:2] == (ours, sub) for p in shapes):
      _add(plan, shapes, (ours, sub), f"{theirs}.{name}")


def _label_rows(plan: _Plan, shapes: dict, name: str, rows: int, what: str) -> None:
  """The label table: ``rows`` in the file; diffjax's null-class row is zero when absent."""
  path = ("label_embed", "embedding")
  if path not in shapes:
    return
  want_rows, width = shapes[path]
  if rows == want_rows:
    plan.direct[path] = (name, "raw")
    return
  if rows != want_rows - 1:
    raise WeightImportError(f"internal: {rows} label rows for a table of {want_rows}")
  plan.extra[name] = (rows, width)
  plan.notes.append(f"{what} has no null-class row: row {rows} (classifier-free guidance's "
                    f"unconditional class) is set to zeros")

  def rule(tensors, params):
    params[path] = np.concatenate([tensors[name], np.zeros((1, width), np.float32)])

  plan.rules.append(rule)


def _diffusers_unet_plan(module: UNet, shapes: dict, x_shape, tensors: dict) -> _Plan:
  plan = _Plan()
  levels = len(module.ch_mult)
  for name, kind, where in _unet_blocks(module, x_shape):
    stage = where["stage"]
    if stage in ("in", "out"):
      _add(plan, shapes, (name,),
           {"conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"}[name])
      continue
    if stage == "mid":
      prefix = ("mid_block.attentions.0" if kind == "attn" else
                f"mid_block.resnets.{where['index']}")
    else:
      block = where["level"] if stage == "down" else levels - 1 - where["level"]
      head = f"{stage}_blocks.{block}"
      if where["index"] == "resample":
        if kind == "res":
          raise WeightImportError("a UNet with resblock_updown has no diffusers UNet2DModel "
                                  "DDPM layout (its resampling blocks are convolutions)")
        prefix = f"{head}.{'downsamplers' if stage == 'down' else 'upsamplers'}.0.conv"
      else:
        prefix = f"{head}.{'attentions' if kind == 'attn' else 'resnets'}.{where['index']}"
    if kind == "res":
      _res_block(plan, shapes, name, prefix, _RES_DIFFUSERS)
    elif kind == "attn":
      _add(plan, shapes, (name, "norm"), f"{prefix}.group_norm")
      for ours, theirs in (("query", "to_q"), ("key", "to_k"), ("value", "to_v"),
                           ("out", "to_out.0")):
        _add(plan, shapes, (name, "attn", ours), f"{prefix}.{theirs}")
    else:
      _add(plan, shapes, (name,), prefix)
  _add(plan, shapes, ("noise_embed", "fc1"), "time_embedding.linear_1")
  _add(plan, shapes, ("noise_embed", "fc2"), "time_embedding.linear_2")
  if "class_embedding.weight" in tensors:
    _label_rows(plan, shapes, "class_embedding.weight",
                tensors["class_embedding.weight"].shape[0], "the diffusers class embedding")
  return plan


def _adm_plan(module: UNet, shapes: dict, x_shape, new_order: bool) -> _Plan:
  plan = _Plan()
  if not module.resblock_updown:
    raise WeightImportError("ADM's released diffusion models resample inside residual blocks "
                            "(--resblock_updown True): build the UNet with resblock_updown=True "
                            "(convolutional resampling, as in improved-diffusion, does not "
                            "convert: ADM pads it symmetrically)")
  k_in, k_out, slot = 1, 0, 0
  current = ""
  for name, kind, where in _unet_blocks(module, x_shape):
    stage = where["stage"]
    if name == "conv_in":
      _add(plan, shapes, (name,), "input_blocks.0.0")
      continue
    if name in ("norm_out", "conv_out"):
      _add(plan, shapes, (name,), "out.0" if name == "norm_out" else "out.2")
      continue
    if stage == "down":
      if kind == "res":
        current, slot = f"input_blocks.{k_in}", 0
        k_in += 1
      else:
        slot = 1
    elif stage == "mid":
      current, slot = "middle_block", {0: 0, "attn": 1, 1: 2}[where["index"]]
    else:
      if kind == "res" and where["index"] != "resample":
        current, slot = f"output_blocks.{k_out}", 0
        k_out += 1
      else:
        slot += 1
    prefix = f"{current}.{slot}"
    if kind == "res":
      _res_block(plan, shapes, name, prefix, _RES_ADM)
    else:
      _add(plan, shapes, (name, "norm"), f"{prefix}.norm")
      width = shapes[(name, "attn", "query", "dense", "kernel")][0]
      _adm_attention(plan, shapes, name, prefix, module._heads(width), new_order)
  _add(plan, shapes, ("noise_embed", "fc1"), "time_embed.0")
  _add(plan, shapes, ("noise_embed", "fc2"), "time_embed.2")
  if module.num_classes:
    _label_rows(plan, shapes, "label_emb.weight", module.num_classes, "ADM's label embedding")
  return plan


def _adm_attention(plan: _Plan, shapes: dict, name: str, prefix: str, heads: int,
                   new_order: bool) -> None:
  """ADM's fused 1x1 ``qkv`` convolution [3C, C, 1] -> query/key/value kernels [C, C]; its
  ``proj_out`` [C, C, 1] -> out. Legacy order: heads x [q, k, v] x head_dim; new order:
  [q, k, v] x heads x head_dim."""
  width = shapes[(name, "attn", "query", "dense", "kernel")][0]
  d = width // heads
  plan.extra.update({f"{prefix}.qkv.weight": (3 * width, width, 1),
                     f"{prefix}.qkv.bias": (3 * width,),
                     f"{prefix}.proj_out.weight": (width, width, 1),
                     f"{prefix}.proj_out.bias": (width,)})

  def rule(tensors, params):
    w, b = tensors[f"{prefix}.qkv.weight"][:, :, 0], tensors[f"{prefix}.qkv.bias"]
    if new_order:
      ws, bs = w.reshape(3, width, width), b.reshape(3, width)
    else:
      ws = w.reshape(heads, 3, d, width).transpose(1, 0, 2, 3).reshape(3, width, width)
      bs = b.reshape(heads, 3, d).transpose(1, 0, 2).reshape(3, width)
    for j, ours in enumerate(("query", "key", "value")):
      params[(name, "attn", ours, "dense", "kernel")] = ws[j].T
      params[(name, "attn", ours, "dense", "bias")] = bs[j]
    params[(name, "attn", "out", "dense", "kernel")] = tensors[
        f"{prefix}.proj_out.weight"][:, :, 0].T
    params[(name, "attn", "out", "dense", "bias")] = tensors[f"{prefix}.proj_out.bias"]

  plan.rules.append(rule)


# --- DiT: diffusers and the release ------------------------------------------------------------
_DIT_BLOCK_DIFFUSERS = {"adaln": "norm1.linear", "mlp_in": "ff.net.0.proj",
                        "mlp_out": "ff.net.2"}
_DIT_BLOCK_RELEASE = {"adaln": "adaLN_modulation.1", "mlp_in": "mlp.fc1", "mlp_out": "mlp.fc2",
                      ("attn", "out"): "attn.proj"}


def _diffusers_dit_plan(module: DiT, shapes: dict, tensors: dict) -> _Plan:
  plan = _Plan()
  _add(plan, shapes, ("patch_embed",), "pos_embed.proj")
  for i in range(module.depth):
    ours = f"block_{i}"
    for sub, theirs in _DIT_BLOCK_DIFFUSERS.items():
      _add(plan, shapes, (ours, sub), f"transformer_blocks.{i}.{theirs}")
    for sub, theirs in (("query", "to_q"), ("key", "to_k"), ("value", "to_v"),
                        ("out", "to_out.0")):
      _add(plan, shapes, (ours, "attn", sub), f"transformer_blocks.{i}.attn1.{theirs}")
  _add(plan, shapes, ("final_adaln",), "proj_out_1")
  _add(plan, shapes, ("final_proj",), "proj_out_2")
  # The conditioning embedders: one copy per block in diffusers, one here.
  emb = "norm1.emb"
  copies = {("noise_embed", "fc1"): "timestep_embedder.linear_1",
            ("noise_embed", "fc2"): "timestep_embedder.linear_2"}
  for ours, theirs in copies.items():
    _add(plan, shapes, ours, f"transformer_blocks.0.{emb}.{theirs}")
  if module.num_classes:
    plan.direct[("label_embed", "embedding")] = (
        f"transformer_blocks.0.{emb}.class_embedder.embedding_table.weight", "raw")
  for p, (name, kind) in list(plan.direct.items()):
    if name.startswith(f"transformer_blocks.0.{emb}."):
      for i in range(1, module.depth):
        plan.extra[name.replace("blocks.0.", f"blocks.{i}.", 1)] = torch_shape(shapes[p], kind)
  depth = module.depth

  def same_copies(tensors, params):
    del params
    differ = sorted({f"transformer_blocks.{i}.{emb}" for name in tensors
                     for i in range(1, depth)
                     if name.startswith(f"transformer_blocks.{i}.{emb}.") and not np.array_equal(
                         tensors[name], tensors[name.replace(f"blocks.{i}.", "blocks.0.", 1)])})
    if differ:
      raise WeightImportError(
          f"the timestep / label embedders of {names(differ)} differ from block 0's: diffjax's "
          f"DiT shares one embedder across blocks (as the DiT release does, and as diffusers' "
          f"conversion of it copies into every block)")

  plan.rules.append(same_copies)
  plan.notes.append(f"{depth - 1} per-block copies of the timestep/label embedders checked "
                    f"equal to block 0's and imported once")
  del tensors
  return plan


def _dit_release_plan(module: DiT, shapes: dict, x_shape) -> _Plan:
  plan = _Plan()
  _add(plan, shapes, ("patch_embed",), "x_embedder.proj")
  _add(plan, shapes, ("noise_embed", "fc1"), "t_embedder.mlp.0")
  _add(plan, shapes, ("noise_embed", "fc2"), "t_embedder.mlp.2")
  if module.num_classes:
    plan.direct[("label_embed", "embedding")] = ("y_embedder.embedding_table.weight", "raw")
  width = module.hidden_size
  for i in range(module.depth):
    ours = f"block_{i}"
    for sub, theirs in _DIT_BLOCK_RELEASE.items():
      _add(plan, shapes, (ours, *((sub,) if isinstance(sub, str) else sub)),
           f"blocks.{i}.{theirs}")
    prefix = f"blocks.{i}.attn.qkv"
    plan.extra.update({f"{prefix}.weight": (3 * width, width), f"{prefix}.bias": (3 * width,)})

    def qkv(tensors, params, ours=ours, prefix=prefix):
      w = tensors[f"{prefix}.weight"].reshape(3, width, width)
      b = tensors[f"{prefix}.bias"].reshape(3, width)
      for j, sub in enumerate(("query", "key", "value")):
        params[(ours, "attn", sub, "dense", "kernel")] = w[j].T
        params[(ours, "attn", sub, "dense", "bias")] = b[j]

    plan.rules.append(qkv)
  _add(plan, shapes, ("final_adaln",), "final_layer.adaLN_modulation.1")
  _add(plan, shapes, ("final_proj",), "final_layer.linear")
  p = module.patch_size
  tokens = (x_shape[0] // p) * (x_shape[1] // p)
  plan.extra["pos_embed"] = (1, tokens, width)

  def pos_embed(tensors, params):
    del params
    ours = sincos_2d_position_embedding(x_shape[0] // p, x_shape[1] // p, width)
    err = float(np.max(np.abs(tensors["pos_embed"][0] - ours)))
    if err > 1e-5:
      raise WeightImportError(f"pos_embed differs from the fixed sine-cosine table diffjax's DiT "
                              f"computes (max abs difference {err:.3g}): not a DiT release "
                              f"checkpoint, or one for another grid")

  plan.rules.append(pos_embed)
  plan.notes.append("pos_embed (a fixed buffer) checked against the computed sine-cosine table")
  return plan


def published_table(fmt: str, module: nn.Module,
                    x_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
  """``{tensor name: PyTorch shape}`` that a checkpoint of format ``fmt`` holds for ``module``
  (what `convert` expects; computed without building any parameter)."""
  shapes = abstract_params(module, tuple(x_shape))
  plan = _plan(fmt, module, shapes, x_shape, {})
  table = {name: torch_shape(shapes[p], kind) for p, (name, kind) in plan.direct.items()}
  return {**table, **plan.extra}


# --- import -------------------------------------------------------------------------------------
def _plan(fmt: str, module, shapes: dict, x_shape, tensors: dict) -> _Plan:
  if fmt == "diffusers_unet":
    return _diffusers_unet_plan(module, shapes, x_shape, tensors)
  if fmt in ("adm", "adm_new_attention_order"):
    return _adm_plan(module, shapes, x_shape, fmt == "adm_new_attention_order")
  if fmt == "diffusers_dit":
    return _diffusers_dit_plan(module, shapes, tensors)
  return _dit_release_plan(module, shapes, x_shape)


def convert(tensors: dict[str, np.ndarray], fmt: str, module: nn.Module,
            x_shape: tuple[int, int, int], *, source: str = "") -> tuple[dict, list[str]]:
  """``(Flax params, notes)`` of ``module`` from a checkpoint's named tensors, strictly.

  Args:
    tensors: name -> float32 array, as the file holds them.
    fmt: a key of `FORMATS`.
    module: the diffjax network (`UNet` or `DiT`) to fill.
    x_shape: ``(H, W, C)`` of its input (attention placement, DiT's token grid).
    source: the file, for messages.

  Raises:
    WeightImportError: another network type than the format's, or tensors that do not fit
      (every missing, unexpected or wrongly shaped tensor named).
  """
  if fmt not in FORMATS:
    raise WeightImportError(f"unknown checkpoint format {fmt!r}; allowed: {', '.join(FORMATS)}")
  if not isinstance(module, _NETWORK[fmt]):
    raise WeightImportError(f"format {fmt!r} imports into a {_NETWORK[fmt].__name__}, but the "
                            f"model is a {type(module).__name__}")
  if fmt == "diffusers_unet":
    tensors = canonical_attention_names(tensors)
  shapes = abstract_params(module, tuple(x_shape))
  plan = _plan(fmt, module, shapes, x_shape, tensors)
  expected = {name: torch_shape(shapes[p], kind) for p, (name, kind) in plan.direct.items()}
  expected.update(plan.extra)
  try:
    strict_map(tensors, expected, describe(module), source=source)
  except WeightImportError as e:
    raise WeightImportError(str(e) + _hint(tensors, expected, module, fmt)) from None
  params = {p: to_flax(tensors[name], kind) for p, (name, kind) in plan.direct.items()}
  for rule in plan.rules:
    rule(tensors, params)
  unfilled = sorted("/".join(p) for p in set(shapes) - set(params))
  if unfilled:  # a plan that forgets a parameter is a bug here, not in the file
    raise WeightImportError(f"internal: the {fmt} plan leaves {names(unfilled)} unset")
  for p, value in params.items():
    if tuple(value.shape) != shapes[p]:
      raise WeightImportError(f"internal: {'/'.join(p)} converted to {value.shape}, the network "
                              f"expects {shapes[p]}")
  return unflatten({p: np.ascontiguousarray(v, np.float32) for p, v in params.items()}), \
      plan.notes + _function_notes(fmt, module)


def _hint(tensors, expected, module, fmt) -> str:
  """What to change when the output layer's width is twice (or half) the network's."""
  name = {"diffusers_unet": "conv_out.weight", "adm": "out.2.weight",
          "adm_new_attention_order": "out.2.weight", "diffusers_dit": "proj_out_2.weight",
          "dit": "final_layer.linear.weight"}[fmt]
  if name in tensors and name in expected and tensors[name].shape != expected[name]:
    got, want = tensors[name].shape[0], expected[name][0]
    if got == 2 * want:
      return ("\n  (the checkpoint's output layer is twice as wide: it learns the variance. Set "
              "model.kwargs.out_channels to twice the data channels and "
              "diffusion.learn_sigma=True)")
  del module
  return ""


def _function_notes(fmt: str, module) -> list[str]:
  """Where the network, as configured, computes another function than the format's own."""
  notes = []
  if fmt == "diffusers_dit" and (module.freq_shift != 1 or module.mlp_norm_eps != 1e-5):
    notes.append(f"this DiT computes the DiT release's function (freq_shift="
                 f"{module.freq_shift}, mlp_norm_eps={module.mlp_norm_eps}); diffusers' "
                 f"DiTTransformer2DModel uses freq_shift=1 and its norm_eps (1e-5) there")
  if fmt == "dit" and (module.freq_shift != 0 or module.mlp_norm_eps != 1e-6):
    notes.append(f"this DiT uses freq_shift={module.freq_shift}, mlp_norm_eps="
                 f"{module.mlp_norm_eps}; the DiT release computes with 0 and 1e-6")
  if fmt.startswith("adm") and module.norm_eps != 1e-5:
    notes.append(f"ADM's GroupNorm epsilon is 1e-5; this UNet uses {module.norm_eps}")
  if fmt == "diffusers_unet" and not (module.embedding_freq_shift == 1 and
                                      module.embedding_sin_first):
    notes.append("DDPM's timestep embedding is [sin, cos] with freq_shift=1 (diffusers "
                 "flip_sin_to_cos=False, freq_shift=1); this UNet embeds otherwise")
  return notes


def import_checkpoint(path, fmt: str, module: nn.Module,
                      x_shape: tuple[int, int, int]) -> tuple[dict, dict[str, Any]]:
  """``(Flax params, info)`` of a published checkpoint file for ``module``.

  ``info``: ``format``, ``source`` (absolute path), ``source_sha256``, ``params_sha256``,
  ``num_params`` and ``notes`` (what the import did beyond copying tensors, and where the
  configured network's function differs from the format's own).

  Raises:
    WeightImportError: the file is missing, unreadable or does not fit ``module``.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise WeightImportError(f"{path}: no such checkpoint file")
  tensors, note = read_tensors(path, prefer=("ema",) if fmt == "dit" else ())
  params, notes = convert(tensors, fmt, module, x_shape, source=str(path))
  info = {"format": fmt, "source": str(path.absolute()), "source_sha256": sha256_file(path),
          "params_sha256": params_sha256(params),
          "num_params": int(sum(np.size(v) for v in jax.tree.leaves(params))),
          "notes": ([f"read {note}"] if note else []) + notes}
  return params, info


# --- published configurations -> diffjax keyword arguments --------------------------------------
def unet_kwargs_from_diffusers(config: dict | str | pathlib.Path) -> dict[str, Any]:
  """`UNet` keyword arguments of a diffusers ``UNet2DModel`` ``config.json`` (the DDPM
  layouts: ``DownBlock2D`` / ``AttnDownBlock2D`` with convolutional resampling).

  Raises:
    WeightImportError: options diffjax's UNet does not implement, all named.
  """
  if not isinstance(config, dict):
    config = json.loads(pathlib.Path(config).read_text())
  c = {**_UNET2D_DEFAULTS, **config}
  problems = []
  down, up = list(c["down_block_types"]), list(c["up_block_types"])
  for key, want in (("act_fn", "silu"), ("time_embedding_type", "positional"),
                    ("center_input_sample", False), ("class_embed_type", None),
                    ("mid_block_scale_factor", 1), ("downsample_padding", 0),
                    ("downsample_type", "conv"), ("upsample_type", "conv"),
                    ("add_attention", True)):
    if c.get(key, want) != want:
      problems.append(f"{key}={c[key]!r} (only {want!r})")
  if c.get("resnet_time_scale_shift", "default") not in ("default", "scale_shift"):
    problems.append(f"resnet_time_scale_shift={c['resnet_time_scale_shift']!r}")
  allowed = {"DownBlock2D", "AttnDownBlock2D"}
  if set(down) - allowed or set(up) - {"UpBlock2D", "AttnUpBlock2D"}:
    problems.append(f"block types {down} / {up} (only DownBlock2D, AttnDownBlock2D and their "
                    f"up versions)")
  attn_down = [t.startswith("Attn") for t in down]
  if [t.startswith("Attn") for t in reversed(up)] != attn_down:
    problems.append(f"up_block_types {up} do not mirror down_block_types {down}")
  channels = list(c["block_out_channels"])
  ch = channels[0]
  if any(w % ch for w in channels):
    problems.append(f"block_out_channels {channels} are not multiples of {ch}")
  if problems:
    raise WeightImportError("unsupported UNet2DModel configuration: " + "; ".join(problems))
  size = c["sample_size"] if isinstance(c["sample_size"], int) else c["sample_size"][0]
  head = c.get("attention_head_dim")
  kwargs = {"ch": ch, "ch_mult": tuple(w // ch for w in channels),
            "num_res_blocks": c["layers_per_block"],
            "attn_resolutions": tuple(size // 2 ** i for i, a in enumerate(attn_down) if a),
            "dropout": float(c.get("dropout", 0.0)), "norm_groups": c["norm_num_groups"],
            "norm_eps": float(c["norm_eps"]), "embedding_freq_shift": float(c["freq_shift"]),
            "embedding_sin_first": not c["flip_sin_to_cos"],
            "scale_shift_norm": c.get("resnet_time_scale_shift") == "scale_shift",
            "out_channels": c["out_channels"] if c["out_channels"] != c["in_channels"] else None}
  if head:
    kwargs["head_channels"] = int(head)
  else:
    kwargs["num_heads"] = 1
  if c.get("num_class_embeds"):
    kwargs["num_classes"] = int(c["num_class_embeds"])
  return kwargs


_UNET2D_DEFAULTS = {"sample_size": None, "in_channels": 3, "out_channels": 3,
                    "flip_sin_to_cos": True, "freq_shift": 0, "layers_per_block": 2,
                    "norm_num_groups": 32, "norm_eps": 1e-5, "dropout": 0.0,
                    "block_out_channels": (224, 448, 672, 896),
                    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                         "AttnDownBlock2D"),
                    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                                       "UpBlock2D"),
                    "downsample_padding": 1}


def dit_kwargs_from_diffusers(config: dict | str | pathlib.Path, *,
                              release_function: bool = True) -> dict[str, Any]:
  """`DiT` keyword arguments of a diffusers ``DiTTransformer2DModel`` ``config.json``.

  ``release_function``: compute what the DiT release computes (``freq_shift=0``,
  ``mlp_norm_eps=1e-6``; its published checkpoints hold the same weights) instead of
  diffusers' port (``freq_shift=1``, ``mlp_norm_eps=norm_eps``).
  """
  if not isinstance(config, dict):
    config = json.loads(pathlib.Path(config).read_text())
  problems = []
  for key, want in (("activation_fn", "gelu-approximate"), ("norm_type", "ada_norm_zero"),
                    ("norm_elementwise_affine", False), ("attention_bias", True)):
    if config.get(key, want) != want:
      problems.append(f"{key}={config[key]!r} (only {want!r})")
  if problems:
    raise WeightImportError("unsupported DiTTransformer2DModel configuration: " +
                            "; ".join(problems))
  heads, head_dim = config.get("num_attention_heads", 16), config.get("attention_head_dim", 72)
  in_ch = config.get("in_channels", 4)
  out_ch = config.get("out_channels") or in_ch
  return {"patch_size": config.get("patch_size", 2), "hidden_size": heads * head_dim,
          "depth": config.get("num_layers", 28), "num_heads": heads,
          "num_classes": config.get("num_embeds_ada_norm", 1000) or 0,
          "out_channels": out_ch if out_ch != in_ch else None,
          "freq_shift": 0.0 if release_function else 1.0,
          "mlp_norm_eps": 1e-6 if release_function else float(config.get("norm_eps", 1e-5))}


# guided-diffusion's default channel multipliers by image size (script_util.create_model).
_ADM_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4),
                     128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}


def unet_kwargs_from_adm(flags: dict[str, Any]) -> tuple[dict[str, Any], str]:
  """``(UNet keyword arguments, format)`` of guided-diffusion model flags (as its README lists
  them per released model, e.g. ``{"image_size": 256, "num_channels": 256,
  "num_res_blocks": 2, "attention_resolutions": "32,16,8", "num_head_channels": 64,
  "class_cond": True, "learn_sigma": True, "resblock_updown": True,
  "use_scale_shift_norm": True}``); unspecified flags take guided-diffusion's defaults.

  Raises:
    WeightImportError: a flag combination that does not convert (named).
  """
  f = {"num_channels": 128, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
       "num_head_channels": -1, "attention_resolutions": "16,8", "channel_mult": "",
       "dropout": 0.0, "class_cond": False, "learn_sigma": False, "resblock_updown": False,
       "use_scale_shift_norm": True, "use_new_attention_order": False, **flags}
  size = int(f["image_size"])
  problems = []
  if not f["resblock_updown"]:
    problems.append("resblock_updown=False (convolutional resampling with symmetric padding)")
  if f["num_heads_upsample"] not in (-1, f["num_heads"]):
    problems.append("num_heads_upsample differs from num_heads")
  if problems:
    raise WeightImportError("this ADM model does not convert: " + "; ".join(problems))
  mult = (tuple(float(m) if "." in m else int(m) for m in f["channel_mult"].split(","))
          if f["channel_mult"] else _ADM_CHANNEL_MULT.get(size))
  if mult is None:
    raise WeightImportError(f"no default channel_mult for image_size {size}: give channel_mult")
  kwargs = {"ch": int(f["num_channels"]), "ch_mult": mult,
            "num_res_blocks": int(f["num_res_blocks"]),
            "attn_resolutions": tuple(int(r) for r in str(f["attention_resolutions"]).split(",")),
            "dropout": float(f["dropout"]), "resblock_updown": True,
            "scale_shift_norm": bool(f["use_scale_shift_norm"]), "norm_eps": 1e-5,
            "norm_groups": 32, "out_channels": 6 if f["learn_sigma"] else None,
            "num_classes": int(f.get("num_classes", 1000)) if f["class_cond"] else 0}
  if mult[0] != 1:  # ADM's input convolution is as wide as the first level
    kwargs["stem_width"] = int(kwargs["ch"] * mult[0])
  if int(f["num_head_channels"]) > 0:
    kwargs["head_channels"] = int(f["num_head_channels"])
  else:
    kwargs["num_heads"] = int(f["num_heads"])
  return kwargs, ("adm_new_attention_order" if f["use_new_attention_order"] else "adm")


def main(argv):
  from absl import flags

  from diffjax.models.registry import get_model
  del argv
  f = flags.FLAGS
  kwargs = json.loads(f.kwargs) if f.kwargs else {}
  kwargs.setdefault("num_classes", f.num_classes)
  module = get_model(f.model, **kwargs)
  shape = tuple(int(v) for v in f.shape.split(","))
  params, info = import_checkpoint(f.source, f.format, module, shape)
  print(json.dumps(info, indent=1))
  if f.out:
    np.savez(f.out, **{"/".join(p): v for p, v in flatten(params)})
    print(f"wrote {f.out}")
  return 0 if math.isfinite(info["num_params"]) else 1


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("source", None, "checkpoint file")
  flags.DEFINE_enum("format", None, list(FORMATS), "checkpoint format")
  flags.DEFINE_string("model", None, "diffjax model variant (diffjax.models.registry)")
  flags.DEFINE_string("kwargs", "", "JSON field overrides of the variant")
  flags.DEFINE_string("shape", None, "H,W,C of the network's input")
  flags.DEFINE_integer("num_classes", 0, "label classes (0: unconditional)")
  flags.DEFINE_string("out", "", "also write the converted parameters to this .npz")
  flags.mark_flags_as_required(["source", "format", "model", "shape"])
  app.run(main)
