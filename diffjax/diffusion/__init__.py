"""Diffusion math as pure JAX functions: schedules, parameterizations, losses, samplers.

This package imports nothing else of diffjax but the leaf `diffjax.registry`. Typical use::

  from diffjax import diffusion
  schedule = diffusion.get_schedule("cosine")
  x0 = diffusion.sample(denoise_fn, schedule, shape, rng, sampler="ddim", num_steps=50)
"""

from diffjax.diffusion.guidance import autoguidance, classifier_free_guidance, rescale_guided
from diffjax.diffusion.losses import (T_SAMPLERS, WEIGHTINGS, denoising_loss, sample_t,
                                      x0_weight)
from diffjax.diffusion.parameterization import (NOISE_INPUTS, PARAMETERIZATIONS,
                                                PREDICTION_KINDS, EDMPreconditioning,
                                                Parameterization,
                                                Prediction, convert, from_x0_eps,
                                                get_parameterization, make_denoiser,
                                                noise_level, parameterization_names, to_x0_eps)
from diffjax.diffusion.samplers import (SAMPLERS, SPACINGS, TimeGrid, default_spacing,
                                        evaluations, posterior_coefficients, respaced_steps,
                                        sample, time_grid)
from diffjax.diffusion.schedules import (SCHEDULES, CosineSchedule, DiscreteCosineSchedule,
                                         EDMSchedule, FlowSchedule, LinearSchedule, Schedule,
                                         VESchedule, VPSchedule, broadcast_to_rank, get_schedule,
                                         register_schedule, schedule_names)
from diffjax.diffusion import learned_variance  # noqa: E402  (Nichol & Dhariwal's variances)
