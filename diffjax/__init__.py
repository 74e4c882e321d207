"""diffjax: a JAX/Flax codebase for training and evaluating generative image models."""

__version__ = "0.1.0"
