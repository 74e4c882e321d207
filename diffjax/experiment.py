"""The experiment: a validated, typed view of a whole config, built once at a job's start.

`build_spec` asks every section's spec to check and build itself (`diffjax.spec`), then the
method named by ``method.name`` to do the same with the sections it reads, and raises one
`ConfigError` listing every problem with the field it concerns, before any compute.
"""

from __future__ import annotations

import dataclasses

from diffjax import methods
from diffjax.fields import ConfigError, FieldChecker
from diffjax.spec import (CheckpointSpec, DataSpec, EvalSpec, FaultSpec, InitSpec, LoggingSpec,
                          MeshSpec, SampleSpec, TrainSpec)


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
  experiment: str
  method: methods.Method
  data: DataSpec
  train: TrainSpec
  sample: SampleSpec
  checkpoint: CheckpointSpec
  logging: LoggingSpec
  mesh: MeshSpec
  eval: EvalSpec
  faults: FaultSpec
  init: InitSpec = InitSpec()  # a published checkpoint to start from (init.checkpoint)


def build_spec(config, *, num_devices: int = 1, num_processes: int | None = None,
               check_network: bool = True) -> ExperimentSpec:
  """Validates a config and returns its typed spec.

  Args:
    config: the experiment ConfigDict (see configs/base.py).
    num_devices: global device count (batch divisibility, mesh).
    num_processes: process count (per-process batch, groups across hosts); None: not known
      (a config checked for another machine), the checks that need it are left out.
    check_network: trace the networks on the data shape (catches sizes they cannot take).

  Raises:
    ConfigError: listing every invalid field.
  """
  ck = FieldChecker()
  data = DataSpec.from_config(config.data, ck, num_processes=num_processes)
  train = TrainSpec.from_config(config.train, ck, seed=config.seed)
  sample = SampleSpec.from_config(config.sample, ck)
  checkpoint = CheckpointSpec.from_config(config.checkpoint, ck)
  logging_spec = LoggingSpec.from_config(config.logging, ck)
  eval_spec = EvalSpec.from_config(
      config.eval, ck, num_classes=data.num_classes,
      sample_fields=tuple(k for k in config.sample if k not in ("every_steps", "at_end")))
  faults = FaultSpec.from_config(config.faults, ck)
  init = InitSpec.from_config(config.get("init"), ck, check_files=check_network)
  method = None
  if ck.one_of(config.method.name, methods.METHODS.names(), "method.name"):
    context = methods.MethodContext(data, train, check_network)
    method = methods.method_class(config.method.name).from_config(config, ck, context)
  if method is not None and eval_spec.likelihood:
    problem = method.likelihood_error(eval_spec.likelihood)
    ck.require(problem is None, "eval.likelihood", problem or "")
  mesh = MeshSpec.from_config(config.mesh, ck, num_devices=num_devices,
                              num_processes=num_processes, batch_size=data.batch_size,
                              grad_accum=train.grad_accum)
  if ck.errors:
    raise ConfigError("invalid config:\n  " + "\n  ".join(ck.errors))
  return ExperimentSpec(config.experiment, method, data, train, sample, checkpoint,
                        logging_spec, mesh, eval_spec, faults, init)
