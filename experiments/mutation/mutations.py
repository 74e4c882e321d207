"""The planted edits of the mutation run (`run.py`): each one a plausible one-line bug in a core
module, the text it replaces (which must occur exactly once in the file) and the tests that
should catch it (test files, with an optional ``-k`` expression naming both the tests that
existed before issue 34 and the ones added for it, so the "before" column runs the same
selection on the older suite).

``equivalent``: the reason a mutation cannot change any result (then it is listed, not scored).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Mutation:
  id: str
  file: str
  original: str
  replacement: str
  tests: tuple[str, ...]
  what: str
  k: str = ""
  equivalent: str = ""

  def selection(self) -> str:
    return " ".join(self.tests) + (f" -k '{self.k}'" if self.k else "")


def M(id, file, original, replacement, tests, what, k="", equivalent=""):
  tests = (tests,) if isinstance(tests, str) else tuple(tests)
  return Mutation(id, file, original, replacement, tests, what, k, equivalent)


STEP = "diffjax/training/step.py"
CKPT = "diffjax/training/checkpoint.py"
SAMPLERS = "diffjax/diffusion/samplers.py"
SCHED = "diffjax/diffusion/schedules.py"
LOSSES = "diffjax/diffusion/losses.py"
PARAM = "diffjax/diffusion/parameterization.py"
GUIDE = "diffjax/diffusion/guidance.py"
METRICS = "diffjax/evaluation/metrics.py"
RULES = "diffjax/parallel/rules.py"
PIPE = "diffjax/data/pipeline.py"
PRIV = "diffjax/data/prep/privacy.py"
DEDUP = "diffjax/data/prep/dedup.py"
METHOD = "diffjax/methods/diffusion.py"
STATE = "diffjax/training/state.py"

T_TRAIN, T_METHODS = "tests/test_training.py", "tests/test_methods.py"
T_SAMPLERS, T_PARAM = "tests/test_samplers.py", "tests/test_parameterization.py"
T_SCHED, T_DATA, T_SCALE = "tests/test_schedules.py", "tests/test_data.py", "tests/test_scale.py"
T_PREP, T_METRICS = "tests/test_prep.py", "tests/test_metrics.py"
T_FAULTS, T_INCEPTION = "tests/test_faults.py", "tests/test_inception.py"

# The step wrapper: the method-layer test (one step of EMA, a rejected update) and the
# training tests (EMA closed forms, the numpy replay of the skip policy).
EMA = ((T_TRAIN, T_METHODS), "ema or numpy_replay or step_wrapper")
POLICY = ((T_TRAIN, T_METHODS), "numpy_replay or step_wrapper or nonfinite")
# Samplers: closed-form grids, variances and the Gaussian moment / order tests (the slow
# every-sampler-every-schedule matrix is left out to keep the run short).
SAMPLE = (T_SAMPLERS, "not every_sampler_is_right and not former_grids")
PARAMS = ((T_PARAM,), "")
CHECKPOINTS = ((T_FAULTS, T_TRAIN), "incomplete_temporary or best_checkpoint or across_rule_sets"
               " or exit_code_5 or k_steps or full_disk")
DATA = ((T_DATA,), "not worker_processes_exit and not converted_assets")
PREP_CAPTIONS = ((T_PREP,), "caption or card or luhn")
DEDUP_TESTS = ((T_PREP,), "similarity_feature or near_duplicates_of_small or simhash")
METRIC_TESTS = ((T_METRICS,), "")
RULE_TESTS = ((T_SCALE,), "megatron or sharding_report or unknown_rules")


def _m(id, file, original, replacement, group, what, equivalent=""):
  tests, k = group
  return M(id, file, original, replacement, tests, what, k, equivalent)


MUTATIONS = [
    # --- the holes the issue lists ------------------------------------------------------------
    _m("ema_swap", STEP, "decay * e + (1.0 - decay) * p", "(1.0 - decay) * e + decay * p", EMA,
       "EMA: decay and 1 - decay swapped"),
    _m("ema_old_params", STEP,
       "net = net.replace(ema_params=ema_update(net.ema_params, net.params, decay))",
       "net = net.replace(ema_params=ema_update(net.ema_params, state.nets[role].params, decay))",
       EMA, "EMA averages the parameters before the update"),
    _m("ddpm_large_is_small", SAMPLERS,
       "var = jnp.where(p.sn > 0, p.sc**2 * _posterior_fraction(p.lc, p.ln), 0.0)",
       "var = jnp.where(p.sn > 0, p.sn**2 * _posterior_fraction(p.lc, p.ln), 0.0)",
       (T_SAMPLERS, "moments or ho_et_al"), "DDPM \"large\" variance replaced by the small one"),
    _m("edm_precond_no_alpha", PARAM, "return (broadcast_to_rank(c_in / alpha, x_t) * x_t,",
       "return (broadcast_to_rank(c_in, x_t) * x_t,", PARAMS,
       "EDM preconditioning drops the 1/alpha input scaling (non-EDM schedules)"),
    _m("snr_weight_inverted", LOSSES, "if weighting == \"snr\":\n    return jnp.exp(logsnr)",
       "if weighting == \"snr\":\n    return jnp.exp(-logsnr)", PARAMS,
       "snr weighting exp(logsnr) -> exp(-logsnr)"),
    _m("x0_weight_wrong", LOSSES, "if weighting == \"x0\":\n    return jnp.ones_like(logsnr)",
       "if weighting == \"x0\":\n    return jnp.exp(logsnr)", PARAMS,
       "x0 weighting 1 -> snr"),
    _m("discrete_t_drops_last", LOSSES, "jax.random.randint(rng, (batch_size,), 1, n + 1)",
       "jax.random.randint(rng, (batch_size,), 1, n)", PARAMS,
       "discrete times randint(1, n + 1) -> randint(1, n): t = 1 never drawn"),
    _m("start_batch_offset", PIPE, "ds = ds[start_batch * local:]",
       "ds = ds[start_batch * options.batch_size:]", DATA,
       "resume by position skips global-batch rows instead of this process's rows"),
    _m("start_batch_off_by_one", PIPE, "ds = ds[start_batch * local:]",
       "ds = ds[(start_batch + 1) * local:]", DATA, "resume by position one batch late"),
    _m("tensor_heads_unsharded", RULES, "\"fsdp_tensor\": ((\"heads\", \"tensor\"),",
       "\"fsdp_tensor\": ((\"heads\", None),", RULE_TESTS,
       "fsdp_tensor leaves attention heads unsharded"),
    _m("luhn_inverted", PRIV, "  return total % 10 == 0", "  return total % 10 != 0",
       PREP_CAPTIONS, "Luhn check inverted"),
    # --- training/step.py ---------------------------------------------------------------------
    _m("ema_warmup_formula", STEP, "(1.0 + n) / (10.0 + n)", "n / (10.0 + n)", EMA,
       "EMA warm-up decay (1 + n)/(10 + n) -> n/(10 + n)"),
    _m("ema_warmup_ignored", STEP, "  if not warmup:\n", "  if True:\n", EMA,
       "EMA warm-up switched off"),
    _m("spike_check_or", STEP,
       "ok &= (state.loss_avg == 0) | (loss <= faults.loss_spike_factor * state.loss_avg)",
       "ok |= (state.loss_avg == 0) | (loss <= faults.loss_spike_factor * state.loss_avg)",
       POLICY, "loss-spike check can accept a non-finite update"),
    _m("spike_factor_ignored", STEP, "(loss <= faults.loss_spike_factor * state.loss_avg)",
       "(loss <= 2 * faults.loss_spike_factor * state.loss_avg)", POLICY,
       "loss-spike threshold doubled"),
    _m("loss_avg_weights", STEP, "0.99 * state.loss_avg + 0.01 * loss",
       "0.9 * state.loss_avg + 0.1 * loss", POLICY, "running loss mean 0.99/0.01 -> 0.9/0.1"),
    _m("rejected_update_applied", STEP,
       "nets[role] = jax.tree.map(lambda n, o: jnp.where(ok, n, o), net, state.nets[role])",
       "nets[role] = net", POLICY, "a rejected update still changes the networks"),
    _m("streak_not_reset", STEP, "streak=jnp.where(ok, 0, state.streak + 1)",
       "streak=jnp.where(ok, state.streak, state.streak + 1)", POLICY,
       "skip streak not reset by an accepted update"),
    _m("nonfinite_ignores_grad_norm", STEP,
       "ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))",
       "ok = jnp.all(jnp.isfinite(metrics[\"loss\"]))", POLICY,
       "only the loss is checked for non-finite values (not gradient norms)"),
    _m("step_rng_not_folded", STEP, "rng = jax.random.fold_in(state.rng, state.step)",
       "rng = state.rng", POLICY, "every step draws the same noise"),
    _m("grad_accum_not_averaged", STEP,
       "loss, grads = jax.tree.map(lambda x: x / grad_accum, (loss, grads))",
       "loss, grads = loss / grad_accum, grads",
       ((T_SCALE, T_TRAIN), "gradient_accumulation_equals or closed_form_gradient"),
       "accumulated gradients summed, not averaged"),
    # --- training/checkpoint.py ---------------------------------------------------------------
    _m("best_mode_inverted", CKPT, "reverse=spec.best_mode == \"min\"",
       "reverse=spec.best_mode == \"max\"", CHECKPOINTS, "best checkpoint by the wrong end"),
    _m("keep_off_by_one", CKPT, "checkpoint_managers.LatestN(spec.keep)",
       "checkpoint_managers.LatestN(spec.keep + 1)", CHECKPOINTS, "keeps one checkpoint too many"),
    _m("tmp_not_cleaned", CKPT, "create=True, cleanup_tmp_directories=True",
       "create=True, cleanup_tmp_directories=False", CHECKPOINTS,
       "incomplete temporary folders are never removed"),
    _m("tmp_not_reported", CKPT, "    if partial:\n      _warn(", "    if not partial:\n      _warn(",
       CHECKPOINTS, "incomplete temporary folders are not reported"),
    _m("inference_reads_params", CKPT,
       "keys = {role: [\"params\" if net.ema_params is None else \"ema_params\"] +",
       "keys = {role: [\"params\"] +", CHECKPOINTS,
       "inference restores the raw parameters, not the EMA"),
    _m("damaged_not_set_aside", CKPT,
       "          problems.append(f\"step {step}: {why}\")\n          self._set_aside(step)\n"
       "          continue",
       "          problems.append(f\"step {step}: {why}\")\n          continue", CHECKPOINTS,
       "a damaged checkpoint is skipped but left in place"),
    _m("state_inference_params", STATE,
       "params = self.params if self.ema_params is None else self.ema_params",
       "params = self.params", ((T_TRAIN,), "k_steps"),
       "a state's inference variables are the raw parameters"),
    # --- diffusion/ -----------------------------------------------------------------------------
    _m("cosine_offset_sign", SCHED, "return (t + self.s) / (1.0 + self.s) * (math.pi / 2)",
       "return (t + self.s) / (1.0 - self.s) * (math.pi / 2)", ((T_SCHED, T_PARAM), ""),
       "cosine schedule's phi divides by 1 - s"),
    _m("vp_inverse_root", SCHED,
       "return (-self.beta_min + jnp.sqrt(self.beta_min**2 - 2.0 * d * log_a2)) / d",
       "return (self.beta_min + jnp.sqrt(self.beta_min**2 - 2.0 * d * log_a2)) / d",
       ((T_SCHED,), ""), "VP t_from_logsnr takes the wrong root"),
    _m("linear_betas_n_plus_1", SCHED,
       "np.linspace(self.beta_start, self.beta_end, self.num_timesteps, dtype=np.float64)",
       "np.linspace(self.beta_start, self.beta_end, self.num_timesteps + 1, "
       "dtype=np.float64)[:-1]", ((T_SCHED, T_SAMPLERS), "linear or ddpm or ho_et_al"),
       "DDPM betas spaced over N + 1 points"),
    _m("edm_schedule_rho", SCHED,
       "return jnp.maximum(lo + jnp.asarray(t, jnp.float32) * (hi - lo), 0.0) ** self.rho",
       "return jnp.maximum(lo + jnp.asarray(t, jnp.float32) * (hi - lo), 0.0) ** "
       "(self.rho - 1)", ((T_SCHED,), ""), "EDM schedule exponent rho -> rho - 1"),
    _m("flow_logsnr_half", SCHED, "return 2.0 * (jnp.log1p(-t) - jnp.log(t))",
       "return (jnp.log1p(-t) - jnp.log(t))", ((T_SCHED,), ""), "flow log-SNR halved"),
    _m("ddim_eta_noise", SAMPLERS, "c2 = eta**2 * p.sn**2 * _posterior_fraction(p.lc, p.ln)",
       "c2 = eta**2 * p.sc**2 * _posterior_fraction(p.lc, p.ln)", SAMPLE,
       "DDIM's eta noise from the current sigma, not the next"),
    _m("heun_full_correction", SAMPLERS,
       "return x_next + (p.sn - p.an * sig_hat / a_hat) * (eps2 - eps) / 2.0",
       "return x_next + (p.sn - p.an * sig_hat / a_hat) * (eps2 - eps)", SAMPLE,
       "Heun's trapezoid correction not halved"),
    _m("churn_s_noise_dropped", SAMPLERS,
       "noise = jnp.sqrt(jnp.maximum(s_hat**2 - s_cur**2, 0.0)) * s_noise",
       "noise = jnp.sqrt(jnp.maximum(s_hat**2 - s_cur**2, 0.0))", SAMPLE,
       "Euler/Heun churn ignores s_noise"),
    _m("dpmpp_2m_ratio", SAMPLERS, "c = h / (2.0 * h_prev)", "c = h_prev / (2.0 * h)", SAMPLE,
       "DPM-Solver++(2M) step ratio inverted"),
    _m("unipc_base_sign", SAMPLERS, "base = jnp.exp(-h) * y - h_phi_1 * d0",
       "base = jnp.exp(-h) * y + h_phi_1 * d0", SAMPLE, "UniPC's exponential-integrator sign"),
    _m("posterior_alpha_t", SAMPLERS, "return (alpha_t / alpha_s) * (sigma_s / sigma_t) ** 2, "
       "alpha_s * frac, sigma_s**2 * frac",
       "return (alpha_t / alpha_s) * (sigma_s / sigma_t) ** 2, alpha_t * frac, sigma_s**2 * frac",
       SAMPLE, "posterior mean coefficient of x0 uses alpha_t"),
    _m("edm_grid_unclipped", SAMPLERS,
       "s_hi, s_lo = min(s_hi, sigma_max), max(s_lo, sigma_min)",
       "s_hi, s_lo = s_hi, max(s_lo, sigma_min)", SAMPLE,
       "EDM grid not clipped to sigma_max on VP schedules"),
    _m("quadratic_grid_reversed", SAMPLERS,
       "ts = t_min + (t_max - t_min) * (1.0 - frac) ** 2",
       "ts = t_max - (t_max - t_min) * frac ** 2", SAMPLE,
       "quadratic grid dense at the noise end instead of the data end"),
    _m("flow_step_sign", SAMPLERS, "x_next = jnp.where(is_clean_jump, d, x + (p.tn - p.tc) * u)",
       "x_next = jnp.where(is_clean_jump, d, x + (p.tc - p.tn) * u)", SAMPLE,
       "flow Euler steps the wrong way"),
    _m("heun_nfe", SAMPLERS, "return 2 * n - 1  # no correction", "return 2 * n  # no correction",
       SAMPLE, "Heun's evaluation count off by one"),
    _m("cfg_formula", GUIDE, "out = d_uncond + broadcast_to_rank(w, x_t) * (d_cond - d_uncond)",
       "out = d_cond + broadcast_to_rank(w, x_t) * (d_cond - d_uncond)", SAMPLE,
       "classifier-free guidance extrapolates from the conditional prediction"),
    _m("cfg_rescale_mix", GUIDE, "return guided * (phi * factor + (1.0 - phi))",
       "return guided * (phi * factor + phi)", SAMPLE, "guidance rescale mixes with phi, not 1 - phi"),
    _m("autoguidance_swapped", GUIDE, "return d_guide + broadcast_to_rank(",
       "return d + broadcast_to_rank(", SAMPLE, "autoguidance extrapolates from the main model"),
    _m("min_snr_max", LOSSES, "return jnp.minimum(jnp.exp(logsnr), gamma)",
       "return jnp.maximum(jnp.exp(logsnr), gamma)", PARAMS, "min-SNR weighting takes the max"),
    _m("edm_weight_formula", LOSSES, "return (s2 + sigma_data**2) / (s2 * sigma_data**2)",
       "return (s2 + sigma_data**2) / s2", PARAMS, "EDM weighting lacks its 1 / sigma_data^2"),
    _m("lognormal_sign", LOSSES, "return schedule.t_from_logsnr(-2.0 * log_sigma)",
       "return schedule.t_from_logsnr(2.0 * log_sigma)", PARAMS,
       "log-normal times map log(sigma) to the wrong log-SNR"),
    _m("loss_scale_inverted", LOSSES, "return w / jnp.square(scale) * native, {\"t\": t}",
       "return w * jnp.square(scale) * native, {\"t\": t}", PARAMS,
       "x0-space weight applied with the output scale inverted"),
    _m("v_target_sign", PARAM, "    return alpha * eps - sigma * x0\n",
       "    return alpha * eps + sigma * x0\n", PARAMS, "v = alpha eps + sigma x0"),
    _m("eps_error_scale", PARAM, "return -alpha / sigma", "return -sigma / alpha", PARAMS,
       "eps-prediction's output error scale inverted"),
    _m("c_noise_scale", PARAM, "return -0.125 * schedule.logsnr(t)",
       "return -0.25 * schedule.logsnr(t)", PARAMS, "EDM c_noise = ln(sigma) / 2"),
    _m("method_ignores_labels", METHOD, "labels = batch[\"label\"] if conditional else None",
       "labels = None", ((T_TRAIN,), "overfits"),
       "the conditional model is trained without its labels"),
    # --- evaluation/metrics.py -----------------------------------------------------------------
    _m("fid_trace_factor", METRICS, "2.0 * trace_sqrt_product(sigma1, sigma2)",
       "trace_sqrt_product(sigma1, sigma2)", METRIC_TESTS, "FID without the factor 2"),
    _m("cov_biased", METRICS, "return f.mean(axis=0), np.cov(f, rowvar=False)",
       "return f.mean(axis=0), np.cov(f, rowvar=False, bias=True)", METRIC_TESTS,
       "biased covariance in the statistics"),
    _m("kid_biased", METRICS, "mmd = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) +",
       "mmd = (kxx.sum() / (m * m) +", METRIC_TESTS, "KID's within-set term biased"),
    _m("kid_std_ddof", METRICS, "return float(np.mean(values)), float(np.std(values))",
       "return float(np.mean(values)), float(np.std(values, ddof=1))", METRIC_TESTS,
       "KID spread as the sample standard deviation"),
    _m("knn_radius_index", METRICS, "radii.append(np.asarray(jnp.sort(d, axis=1)[:, k]))",
       "radii.append(np.asarray(jnp.sort(d, axis=1)[:, k - 1]))", METRIC_TESTS,
       "k-NN radius of the (k-1)-th neighbour"),
    _m("is_ignores_splits", METRICS, "for part in np.array_split(logp, splits):",
       "for part in [logp]:", METRIC_TESTS, "Inception Score over one split whatever splits is"),
    # --- parallel/rules.py ---------------------------------------------------------------------
    _m("fsdp_heads_unsharded", RULES, "\"fsdp\": ((\"mlp\", \"fsdp\"), (\"heads\", \"fsdp\"),",
       "\"fsdp\": ((\"mlp\", \"fsdp\"), (\"heads\", None),", RULE_TESTS,
       "fsdp rules leave the heads to the width axis"),
    _m("tensor_mlp_on_fsdp", RULES, "(\"mlp\", \"tensor\"), (\"conv_out\", \"tensor\"),",
       "(\"mlp\", \"fsdp\"), (\"conv_out\", \"tensor\"),", RULE_TESTS,
       "fsdp_tensor splits the MLP over fsdp"),
    # --- data/pipeline.py ----------------------------------------------------------------------
    _m("process_slice_stride", PIPE,
       "return self._parent[batch * self._global + self._rows[row]]",
       "return self._parent[batch * len(self._rows) + self._rows[row]]", DATA,
       "a process's slice strides by its own rows, not the global batch"),
    _m("flip_always", PIPE, "if random_flip and rng.random() < 0.5:", "if random_flip:", DATA,
       "random flip always flips"),
    _m("normalise_range", PIPE, "\"image\": image.astype(np.float32) / 127.5 - 1.0,",
       "\"image\": image.astype(np.float32) / 128.0 - 1.0,", DATA, "pixels scaled by 1/128"),
    _m("crop_not_centred", PIPE, "top, left = (h - side) // 2, (w - side) // 2",
       "top, left = 0, 0", DATA, "crop from the corner, not the centre"),
    _m("luma_weights_swapped", PIPE, "np.array([0.299, 0.587, 0.114], np.float32)",
       "np.array([0.114, 0.587, 0.299], np.float32)", DATA, "luma weights of R and B swapped"),
    # --- data/prep/privacy.py ------------------------------------------------------------------
    _m("luhn_double_rule", PRIV, "d = d * 2 - 9 if d > 4 else d * 2",
       "d = d * 2 - 9 if d > 5 else d * 2", PREP_CAPTIONS, "Luhn's digit sum wrong for 5"),
    _m("card_min_length", PRIV, "13 <= len(digits) <= 19", "14 <= len(digits) <= 19",
       PREP_CAPTIONS, "13-digit card numbers not recognised"),
    _m("url_user_parts_ignored", PRIV, "if _USER_URL_PARTS.search(url) or _SOCIAL.match(url):",
       "if _SOCIAL.match(url):", PREP_CAPTIONS, "URLs with user names kept"),
    _m("phone_min_digits", PRIV, "_MIN_PHONE_DIGITS = 7", "_MIN_PHONE_DIGITS = 10",
       PREP_CAPTIONS, "phone numbers need 10 digits"),
    _m("email_dropped", PRIV, "text = sub(_EMAIL, \"[EMAIL]\", \"email\", text)",
       "pass", PREP_CAPTIONS, "e-mail addresses kept"),
    # --- data/prep/dedup.py --------------------------------------------------------------------
    _m("keeper_split_rank_reversed", DEDUP,
       "return lambda key: (rank.get(key.split, len(rank)), key.id)",
       "return lambda key: (-rank.get(key.split, len(rank)), key.id)", DEDUP_TESTS,
       "the train copy is kept over the test copy"),
    _m("candidate_recall_formula", DEDUP,
       "return 1.0 - (1.0 - agree ** band_bits) ** num_bands",
       "return 1.0 - (1.0 - agree ** band_bits) ** (num_bands - 1)", DEDUP_TESTS,
       "LSH candidate recall with one band too few"),
    _m("hamming_strict", DEDUP, "near |= (bits <= rule.max_hamming) & (sims >= rule.hash_min_similarity)",
       "near |= (bits < rule.max_hamming) & (sims >= rule.hash_min_similarity)", DEDUP_TESTS,
       "hash rule excludes pairs exactly max_hamming bits apart"),
    _m("drop_keeps_later", DEDUP, "keep, drop = (a, b) if order(a) <= order(b) else (b, a)",
       "keep, drop = (b, a) if order(a) <= order(b) else (a, b)", DEDUP_TESTS,
       "the later-ranked copy is kept"),
    _m("exact_group_keeps_last", DEDUP, "return members[0], members[1:]",
       "return members[-1], members[:-1]", DEDUP_TESTS, "exact duplicates keep the last-ranked"),
]

LAYERS = "diffjax/models/layers.py"
BF16 = (("tests/test_models.py",), "bfloat16 or norms_and_softmax or group_norm")
MUTATIONS += [
    # --- models/layers.py: float32 statistics under bfloat16 compute --------------------------
    _m("group_norm_in_bf16", LAYERS, "  x32 = x.astype(jnp.float32)\n  spatial =",
       "  x32 = x\n  spatial =", BF16, "group norm statistics in the compute dtype"),
    _m("layer_norm_in_bf16", LAYERS,
       "  x32 = x.astype(jnp.float32)\n  mean = jnp.mean(x32, axis=-1, keepdims=True)",
       "  x32 = x\n  mean = jnp.mean(x32, axis=-1, keepdims=True)", BF16,
       "DiT's layer norm statistics in the compute dtype"),
]
