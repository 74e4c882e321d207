"""What a method is: the objective a run trains, over networks it names by role.

A method declares its networks (``networks``: ``{role: Network}``, each with an init function,
an optimiser, or none when frozen, and whether it keeps an EMA), gives a pure update
``update(state, batch, rng) -> (state, metrics)`` built from `diffjax.training`'s
`value_and_grad` and `apply_gradients`, and a ``generate(params, rng, labels)`` that turns the
networks' parameters into images for sample grids and evaluation. Everything else (sharding,
checkpoints, EMA, accumulation, the non-finite policy, logging, evaluation) is the training
system's and knows no method.

A new method subclasses `Method`, builds itself from the config in ``from_config`` and is
registered by name with ``@register_method("name")``; configs pick it with ``method.name``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar, Mapping

import jax
import optax

from diffjax.fields import FieldChecker
from diffjax.spec import DataSpec, OptimSpec, TrainSpec
from diffjax.training.optim import make_optimizer


@dataclasses.dataclass(frozen=True)
class Network:
  """One network of a method.

  Attributes:
    module: the Flax module.
    init: ``rng -> Flax variables`` as ``module.init`` returns them (``params`` boxed with
      logical axis names, plus any other collection: batch statistics, spectral-norm vectors).
    optimizer: its optax optimiser; None for a frozen network (no gradients, no optimiser
      state).
    lr_schedule: ``step -> learning rate`` of ``optimizer`` (logged).
    ema: keep an exponential moving average of its parameters (sampling uses it).
  """

  module: Any
  init: Callable[[jax.Array], Any]
  optimizer: optax.GradientTransformation | None = None
  lr_schedule: Callable | None = None
  ema: bool = False

  @classmethod
  def trained(cls, module, init, optim: OptimSpec, *, ema: bool = True) -> "Network":
    optimizer, lr_schedule = make_optimizer(optim)
    return cls(module, init, optimizer, lr_schedule, ema)

  @classmethod
  def frozen(cls, module, init) -> "Network":
    return cls(module, init)


@dataclasses.dataclass(frozen=True)
class MethodContext:
  """The method-independent specs a method may build on."""

  data: DataSpec
  train: TrainSpec
  check_network: bool = True  # trace the networks on the data's shapes (no compute)


class Method(abc.ABC):
  """Base class of the objectives; see the module docstring.

  Attributes:
    name: the registered name (``method.name`` in configs).
    networks: ``{role: Network}``; the first one is initialised from the run's seed key.
    conditional: the networks take class labels (grids then show one class per column).
    num_classes: label count of the data (0: unlabelled).
    image_shape: ``(H, W, C)`` of the images ``generate`` returns.
  """

  name: ClassVar[str] = ""
  networks: Mapping[str, Network]
  conditional: bool = False
  num_classes: int = 0
  image_shape: tuple[int, int, int]

  @classmethod
  @abc.abstractmethod
  def from_config(cls, config, ck: FieldChecker, ctx: MethodContext) -> "Method | None":
    """Checks the config sections the method reads (recording problems in ``ck``) and builds
    the method; may return None when ``ck`` holds errors."""

  @abc.abstractmethod
  def update(self, state, batch, rng) -> tuple[Any, dict[str, jax.Array]]:
    """One pure update: ``(TrainState, batch, key) -> (TrainState, scalar metrics)``.

    Metrics named ``loss`` drive the loss-spike policy; any non-finite metric rejects the
    update. EMA, counters and learning-rate metrics are added by the training step."""

  @abc.abstractmethod
  def generate(self, variables: Mapping[str, Any], rng, labels) -> jax.Array:
    """Images ``float32 [n, H, W, C]`` in ``[-1, 1]`` from ``{role: Flax variables}`` (EMA
    parameters where kept); ``labels`` int32 ``[n]`` (ignored by unconditional methods)."""

  def auxiliary_networks(self) -> dict[str, tuple[str, int]]:
    """Networks of other runs that ``generate`` uses at inference: ``{role: (workdir, step)}``
    (step -1: latest). The jobs restore each one's inference variables (of its own first
    network) into ``variables[role]``. Default: none."""
    return {}

  def sampling_info(self) -> dict[str, Any]:
    """How ``generate`` samples, for result files (e.g. sampler, steps, guidance)."""
    return {}

  def evaluations_per_image(self) -> int | None:
    """Network evaluations ``generate`` makes per image (None: not known in advance)."""
    return None

  def sampling_tag(self) -> str:
    """A short name of the sampling settings for file names (e.g. ``ddim50_cfg2``)."""
    return self.name

  def likelihood_error(self, kind: str) -> str | None:
    """Why ``eval.likelihood=kind`` cannot be computed for this method (None: it can)."""
    return f"method {self.name!r} computes no likelihood"

  def bits_per_dim(self, variables: Mapping[str, Any], images_uint8, rng, kind: str):
    """Per-image negative log-likelihood in bits per dimension of uint8 images (jit-able)."""
    raise NotImplementedError(self.likelihood_error(kind))
