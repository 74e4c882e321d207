"""Training pieces: state, optimiser, pure train step, checkpoints, metrics output."""

from diffjax.training.checkpoint import Checkpointer, abstract_with_shardings
from diffjax.training.logger import MetricsWriter, Progress, read_metrics
from diffjax.training.optim import learning_rate_schedule, make_optimizer
from diffjax.training.state import TrainState, create_train_state, parameter_count
from diffjax.training.step import ema_decay_at, loss_fn, train_step
