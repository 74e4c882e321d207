"""Method-agnostic training: the state of named networks, optimisers, the pure step wrapper
(EMA, accumulation, non-finite policy), sharded set-up, checkpoints, metrics output."""

from diffjax.training.checkpoint import Checkpointer, state_meta
from diffjax.training.logger import LogWindow, MetricsWriter, Progress, read_metrics
from diffjax.training import posthoc_ema
from diffjax.training.optim import learning_rate_schedule, make_optimizer
from diffjax.training.state import NetState, TrainState, create_train_state, parameter_count
from diffjax.training.step import (apply_gradients, ema_decay_at, ema_update, train_step,
                                   value_and_grad)
