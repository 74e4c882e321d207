"""Networks: paper parameter counts (by jax.eval_shape, nothing run), tiny variants run, and
layer numerics against independent numpy implementations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import models
from diffjax.models import layers


def _init_shapes(model, shape, labels=True):
  x, t = jnp.zeros(shape), jnp.zeros(shape[:1])
  y = jnp.zeros(shape[:1], jnp.int32) if labels else None
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, y))


def _count(variables):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nn.meta.unbox(variables["params"])))


@pytest.mark.parametrize("name,shape,overrides,paper_millions,rel_tol", [
    # Ho et al. 2020, CIFAR-10: 35.7M.
    ("ddpm-cifar10", (1, 32, 32, 3), {}, 35.7, 0.002),
    # Dhariwal & Nichol 2021, ImageNet 64x64 (learned sigma: 6 output channels): 296M.
    ("adm-imagenet64", (1, 64, 64, 3), {"out_channels": 6}, 296.0, 0.002),
    # Peebles & Xie 2023, Table 1 (256px latents 32x32x4, learned sigma: 8 output channels).
    ("DiT-S/2", (1, 32, 32, 4), {"out_channels": 8}, 33.0, 0.01),
    ("DiT-B/2", (1, 32, 32, 4), {"out_channels": 8}, 130.0, 0.005),
    ("DiT-L/2", (1, 32, 32, 4), {"out_channels": 8}, 458.0, 0.005),
    ("DiT-XL/2", (1, 32, 32, 4), {"out_channels": 8}, 675.0, 0.005),
])
def test_parameter_counts_match_papers(name, shape, overrides, paper_millions, rel_tol):
  model = models.get_model(name, **overrides)
  count = _count(_init_shapes(model, shape, labels=bool(model.num_classes)))
  assert abs(count / 1e6 - paper_millions) <= rel_tol * paper_millions, count


def test_ddpm_cifar10_count_is_exact():
  # The official TF checkpoint of Ho et al. holds 35,746,307 parameters.
  assert _count(_init_shapes(models.get_model("ddpm-cifar10"), (1, 32, 32, 3), False)) == 35746307


def test_every_parameter_has_logical_axis_names():
  for name, shape in [("unet-tiny", (1, 8, 8, 3)), ("DiT-tiny", (1, 8, 8, 3)),
                      ("adm-imagenet64", (1, 64, 64, 3))]:
    model = models.get_model(name)
    params = _init_shapes(model, shape)["params"]
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(p, nn.Partitioned) for p in leaves), name
    assert all(len(p.names) == len(p.value.shape) for p in leaves), name


# One UNet (unet-digits, the default network, differs in sizes only) and one DiT.
@pytest.mark.parametrize("name,shape", [("unet-tiny", (2, 8, 8, 3)), ("DiT-tiny", (2, 8, 8, 1))])
def test_tiny_variants_start_at_zero_output_and_train(name, shape):
  num_classes = 10
  model = models.get_model(name, num_classes=num_classes)
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  t = jnp.array([10.0, 500.0])
  y = jnp.array([3, num_classes])  # a class and the null class
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), x, t, y)

  @jax.jit
  def out_and_grads(params):
    loss = lambda p: jnp.mean((model.apply({"params": p}, x, t, y) - x) ** 2)
    return model.apply({"params": params}, x, t, y), jax.grad(loss)(params)

  out, grads = out_and_grads(variables["params"])
  assert out.shape == shape and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.0)  # zero-initialised output layers
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(nn.meta.unbox(grads))]
  assert np.isfinite(norms).all() and max(norms) > 0


def test_bfloat16_compute_keeps_float32_parameters():
  model = models.get_model("DiT-tiny", dtype=jnp.bfloat16)
  x = jnp.ones((2, 8, 8, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x, jnp.ones(2), jnp.zeros(2, jnp.int32))
  dtypes = {a.dtype for a in jax.tree.leaves(nn.meta.unbox(variables))}
  assert dtypes == {jnp.dtype(jnp.float32)}
  out = jax.jit(model.apply)(variables, x, jnp.ones(2), jnp.zeros(2, jnp.int32))
  assert out.dtype == jnp.bfloat16


def test_label_dropout_replaces_labels_with_the_null_class_in_training_only():
  emb = layers.LabelEmbedding(num_classes=5, features=4, dropout_prob=0.5)
  labels = jnp.arange(1000) % 5
  variables = emb.init(jax.random.PRNGKey(0), labels, False)
  table = variables["params"]["embedding"].value
  out = emb.apply(variables, labels, True, rngs={"dropout": jax.random.PRNGKey(1)})
  dropped = np.all(np.asarray(out) == np.asarray(table[5]), axis=1)
  assert 0.4 < dropped.mean() < 0.6
  np.testing.assert_array_equal(emb.apply(variables, labels, False), table[labels])


def test_self_attention_matches_numpy_softmax_attention():
  attn = layers.SelfAttention(num_heads=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
  variables = attn.init(jax.random.PRNGKey(1), x)
  p = jax.tree.map(np.asarray, nn.meta.unbox(variables["params"]))
  xn = np.asarray(x, np.float64)
  proj = lambda name, y: y @ p[name]["dense"]["kernel"] + p[name]["dense"]["bias"]
  q, k, v = (proj(n, xn).reshape(2, 5, 2, 4) for n in ("query", "key", "value"))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(4)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 5, 8)
  expected = proj("out", out)
  np.testing.assert_allclose(attn.apply(variables, x), expected, rtol=1e-4, atol=1e-5)


def test_group_norm_matches_numpy_and_flax():
  """Per-channel-statistics GroupNorm == the textbook float64 formula and flax's nn.GroupNorm,
  values and gradients, with a non-trivial scale and bias and a mean far from zero."""
  x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 8))
  norm = layers.GroupNorm(num_groups=4, epsilon=1e-6)
  variables = norm.init(jax.random.PRNGKey(1), x)
  params = nn.meta.unbox(variables["params"])
  assert set(params["norm"]) == {"scale", "bias"}
  scale = jnp.linspace(0.5, 1.5, 8)
  bias = jnp.linspace(-1.0, 1.0, 8)
  params = {"norm": {"scale": scale, "bias": bias}}
  xg = np.asarray(x, np.float64).reshape(2, 4, 6, 4, 2)
  mean = xg.mean(axis=(1, 2, 4), keepdims=True)
  var = xg.var(axis=(1, 2, 4), keepdims=True)
  expected = ((xg - mean) / np.sqrt(var + 1e-6)).reshape(2, 4, 6, 8) * scale + bias
  ours = lambda p, x: norm.apply({"params": p}, x)
  np.testing.assert_allclose(ours(params, x), expected, rtol=1e-5, atol=1e-5)
  ref = nn.GroupNorm(num_groups=4, epsilon=1e-6)
  theirs = lambda p, x: ref.apply({"params": p["norm"]}, x)
  np.testing.assert_allclose(ours(params, x), theirs(params, x), rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  grads = [jax.grad(lambda p, x: jnp.sum(f(p, x) * w), argnums=(0, 1))(params, x)
           for f in (ours, theirs)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  half = layers.GroupNorm(num_groups=4, dtype=jnp.bfloat16).apply({"params": params}, x)
  assert half.dtype == jnp.bfloat16


def test_upsample_nearest_matches_resize_and_its_gradient():
  from diffjax.models.unet import _upsample_nearest
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 4))
  resize = lambda x: jax.image.resize(x, (2, 6, 10, 4), method="nearest")
  np.testing.assert_array_equal(_upsample_nearest(x), resize(x))
  w = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 10, 4))
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * w))(x)
  np.testing.assert_allclose(grad(_upsample_nearest), grad(resize), rtol=1e-6, atol=1e-6)


def test_sinusoidal_embedding_closed_form():
  t = jnp.array([0.0, 1.0, 250.0])
  emb = np.asarray(layers.sinusoidal_embedding(t, 8))
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  args = np.asarray(t)[:, None] * freqs
  np.testing.assert_allclose(emb, np.concatenate([np.cos(args), np.sin(args)], 1), atol=1e-4)


def test_dit_block_is_identity_at_initialisation():
  """adaLN-Zero: zero-initialised gates make every block the identity map."""
  block = models.dit.DiTBlock(hidden_size=16, num_heads=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 16))
  c = jax.random.normal(jax.random.PRNGKey(1), (2, 16))
  variables = jax.jit(block.init)(jax.random.PRNGKey(2), x, c)
  np.testing.assert_array_equal(jax.jit(block.apply)(variables, x, c), x)


def test_dit_patchify_unpatchify_layout():
  """With the final projection set to copy the patch pixels, DiT must reassemble the image."""
  model = models.get_model("DiT-tiny", num_classes=0, depth=0, hidden_size=12, num_heads=1)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 4, 3))
  variables = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), x, jnp.zeros(1)))
  params = jax.tree.map(lambda a: a, variables["params"])
  # Patch embed: identity on the 2x2x3 = 12 patch values; final projection: identity back.
  params["patch_embed"]["conv"]["kernel"] = jnp.eye(12).reshape(2, 2, 3, 12)
  params["final_proj"]["dense"]["kernel"] = jnp.eye(12)

  out = np.asarray(jax.jit(model.apply)({"params": params}, x, jnp.zeros(1)))
  # Position embedding and layer norm act per token; undo them with the same per-token affine
  # map by comparing normalised patches instead of raw values.
  patches = np.asarray(x).reshape(1, 2, 2, 2, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(1, 4, 12)
  pos = layers.sincos_2d_position_embedding(2, 2, 12)
  tokens = patches + pos
  tokens = (tokens - tokens.mean(-1, keepdims=True)) / np.sqrt(tokens.var(-1, keepdims=True) + 1e-6)
  expected = tokens.reshape(1, 2, 2, 2, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(1, 4, 4, 3)
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_bad_model_arguments():
  with pytest.raises(ValueError, match="unknown model variant 'DiT-M/2'.*allowed: ddpm-cifar10"):
    models.get_model("DiT-M/2")
  with pytest.raises(ValueError, match=r"unknown argument\(s\) \['chanels'\]"):
    models.get_model("unet-tiny", chanels=3)
  model = models.get_model("unet-tiny")
  with pytest.raises(ValueError, match="divisible by 2"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 7, 7, 3)), jnp.zeros(1))
  with pytest.raises(ValueError, match="class-conditional"):
    models.get_model("DiT-tiny").init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                                      jnp.zeros(1))
  with pytest.raises(ValueError, match="already registered"):
    models.register_variant("unet-tiny", models.UNet)


def test_gelu_tanh_matches_its_closed_form_and_derivative():
  x = np.linspace(-4, 4, 81)  # beyond, float32's 1 - tanh^2 cancels (both implementations)
  u = np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)
  value = 0.5 * x * (1 + np.tanh(u))
  slope = (0.5 * (1 + np.tanh(u))
           + 0.5 * x * (1 - np.tanh(u) ** 2) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x**2))
  xj = jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(layers.gelu_tanh(xj), value, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(jax.grad(layers.gelu_tanh))(xj), slope, rtol=1e-5,
                             atol=1e-5)


def _kept(f, *args):
  """(shape, dtype) of each residual the backward pass of ``f`` keeps; nothing is computed."""
  return [(r.shape, r.dtype) for r in jax.tree.leaves(
      jax.eval_shape(lambda *a: jax.vjp(f, *a)[1], *args))]


def _assert_same_gradients(actual, expected):
  """Float32 sums in another order: an absolute tolerance on the scale of the largest gradient
  (a gradient that is zero in exact arithmetic, like a key bias's, is rounding noise in both)."""
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(expected))
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=2e-6 * scale)


def _nbytes(kept):
  return sum(int(np.prod(s)) * jnp.dtype(dt).itemsize for s, dt in kept)


def _random_params(params, scale=0.3):
  """Every parameter replaced by noise, so no gate or output layer is zero."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  return jax.tree.unflatten(tree, [scale * jax.random.normal(k, p.shape, p.dtype)
                                   for k, p in zip(keys, leaves)])


def test_dit_lean_residuals_same_gradients_fewer_activations_kept():
  """`lean_residuals` recomputes norms, modulation, GELU and softmax in the backward pass: the
  same outputs and gradients, and the backward pass keeps no float32 copy of an activation, no
  attention probabilities and two (not six) tensors of the MLP's hidden size per block."""
  b, t, d, heads = 2, 6, 16, 2
  x = jax.random.normal(jax.random.PRNGKey(0), (b, t, d))
  c = jax.random.normal(jax.random.PRNGKey(1), (b, d))

  def block(lean, dtype=jnp.float32):
    return models.dit.DiTBlock(hidden_size=d, num_heads=heads, lean_residuals=lean, dtype=dtype)

  params = _random_params(nn.meta.unbox(block(True).init(jax.random.PRNGKey(2), x, c))["params"])

  def loss(lean, dtype=jnp.float32):
    return lambda p, x: jnp.sum(block(lean, dtype).apply({"params": p}, x, c) ** 2)

  grads = {lean: jax.jit(jax.value_and_grad(loss(lean), argnums=(0, 1)))(params, x)
           for lean in (True, False)}
  _assert_same_gradients(grads[True], grads[False])
  assert float(jnp.abs(grads[True][1][0]["attn"]["query"]["dense"]["kernel"]).max()) > 0

  lean, full = (_kept(loss(lean, jnp.bfloat16), params, x.astype(jnp.bfloat16))
                for lean in (True, False))
  probabilities = lambda rs: [s for s, _ in rs if s[-2:] == (t, t)]
  float32_activations = lambda rs: [s for s, dt in rs if dt == jnp.float32 and s == (b, t, d)]
  hidden = lambda rs: [s for s, _ in rs if s == (b, t, 4 * d)]
  assert probabilities(full) and float32_activations(full) and len(hidden(full)) == 6
  assert not probabilities(lean) and not float32_activations(lean) and len(hidden(lean)) == 2
  # ... but the two norms' per-token statistics (mean, 1/std), so the recompute does not reduce
  # over the activation again.
  assert sum(s == (b, t, 1) and dt == jnp.float32 for s, dt in lean) == 4
  assert _nbytes(lean) < 0.6 * _nbytes(full), (_nbytes(lean), _nbytes(full))


@pytest.mark.parametrize("lean", [True, False])
def test_dit_compiled_train_step_grows_linearly_with_depth(lean):
  """Each block adds the same amount of optimised program. Without `_norm_modulate_kept`'s
  barrier XLA:CPU fused every earlier block's norm and the whole residual-cotangent chain into
  each block's fusions (keep-all, lines per block: 3460 from depth 2 to 4, 5284 from 4 to 8):
  quadratic in depth, and three times slower at DiT-B/2 size."""
  def hlo_lines(depth):
    model = models.dit.DiT(patch_size=2, hidden_size=64, depth=depth, num_heads=4, num_classes=10,
                           lean_residuals=lean)
    x, t, y = jnp.ones((2, 8, 8, 4)), jnp.full((2,), 0.5), jnp.zeros((2,), jnp.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x, t, y)
    loss = lambda p: jnp.mean(jnp.square(model.apply(p, x, t, y)))
    return len(jax.jit(jax.value_and_grad(loss)).lower(params).compile().as_text().splitlines())

  two, four, eight = (hlo_lines(depth) for depth in (2, 4, 8))
  per_block_early, per_block_late = (four - two) / 2, (eight - four) / 4
  assert per_block_late < 1.1 * per_block_early, (two, four, eight)


def test_self_attention_recomputed_probabilities_same_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
  attn = lambda recompute: layers.SelfAttention(num_heads=2, recompute_probabilities=recompute)
  params = _random_params(nn.meta.unbox(attn(True).init(jax.random.PRNGKey(1), x))["params"])
  grad = lambda recompute: jax.grad(
      lambda p, x: jnp.sum(jnp.sin(attn(recompute).apply({"params": p}, x))), argnums=(0, 1))(
          params, x)
  _assert_same_gradients(grad(True), grad(False))


@pytest.mark.parametrize("scale_shift_norm", [False, True])
def test_unet_block_lean_residuals_same_gradients_no_float32_copies(scale_shift_norm):
  """GroupNorm (+SiLU) recomputed in the backward pass: same gradients, and the block's backward
  pass keeps no float32 copy of a feature map (the plain autodiff keeps two per norm)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 8))
  emb = jax.random.normal(jax.random.PRNGKey(1), (2, 12))

  def block(lean, dtype=jnp.float32):
    return models.unet.ResBlock(16, scale_shift_norm=scale_shift_norm, norm_groups=4,
                                lean_residuals=lean, dtype=dtype)

  params = _random_params(nn.meta.unbox(
      block(True).init(jax.random.PRNGKey(2), x, emb, False))["params"])
  loss = lambda lean, dtype=jnp.float32: lambda p, x: jnp.sum(
      block(lean, dtype).apply({"params": p}, x, emb, False).astype(jnp.float32) ** 2)
  grads = {lean: jax.jit(jax.grad(loss(lean), argnums=(0, 1)))(params, x) for lean in (1, 0)}
  _assert_same_gradients(grads[1], grads[0])

  def kept(lean):  # a loss linear in the output, so the loss itself keeps nothing
    f = lambda p, x: jnp.sum(block(lean, jnp.bfloat16).apply({"params": p}, x, emb, False)
                             .astype(jnp.float32))
    return _kept(f, params, x.astype(jnp.bfloat16))

  maps = lambda rs: [(s, dt) for s, dt in rs if len(s) == 4 and s[:3] == (2, 4, 4)]
  float32_maps = lambda rs: [s for s, dt in maps(rs) if dt == jnp.float32]
  assert len(float32_maps(kept(False))) >= 4 and not float32_maps(kept(True))
  assert _nbytes(maps(kept(True))) < 0.6 * _nbytes(maps(kept(False)))


def _primitives(jaxpr, out):
  """``(primitive name, input dtypes)`` of every equation, nested jaxprs (jit, remat,
  custom_vjp, scan, cond) included."""
  for eqn in jaxpr.eqns:
    for value in eqn.params.values():
      for v in (value if isinstance(value, (tuple, list)) else (value,)):
        inner = getattr(v, "jaxpr", v)
        if hasattr(inner, "eqns"):
          _primitives(inner, out)
    out.add((eqn.primitive.name,
             tuple(str(x.aval.dtype) for x in eqn.invars if hasattr(x, "aval"))))
  return out


@pytest.mark.parametrize("name", ["DiT-tiny", "unet-tiny"])
def test_bfloat16_compute_keeps_norms_and_softmax_in_float32(name):
  """Mixed precision as the README says: with ``dtype=bfloat16`` every matmul runs in
  bfloat16, while every reduction (normalisation statistics, softmax max and sum), exp and
  rsqrt runs in float32."""
  model = models.get_model(name, dtype=jnp.bfloat16, num_classes=10)
  x, t, y = jnp.ones((2, 8, 8, 3)), jnp.ones(2), jnp.zeros(2, jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, y))
  prims = _primitives(jax.make_jaxpr(lambda v: model.apply(v, x, t, y))(variables).jaxpr, set())
  dots = {dtypes for p, dtypes in prims if p == "dot_general"}
  assert dots == {("bfloat16", "bfloat16")}, dots
  reductions = {(p, dtypes) for p, dtypes in prims
                if p in ("reduce_sum", "reduce_max", "exp", "rsqrt")}
  assert {p for p, _ in reductions} >= {"reduce_sum", "reduce_max", "exp", "rsqrt"}
  assert all(set(dtypes) == {"float32"} for _, dtypes in reductions), reductions
