"""diffjax: a JAX/Flax codebase for training and evaluating generative image models."""

__version__ = "0.1.0"


def load(workdir, step=None):
  """A trained run, ready to sample and evaluate: see `diffjax.api.load`."""
  from diffjax.api import load as load_run  # imported on first use: `import diffjax` stays light
  return load_run(workdir, step)
