"""Objectives diffjax trains: each names its networks by role and gives a pure update and a
generate function (see `diffjax.methods.base`). Importing this package registers the built-in
methods; a config picks one with ``method.name``."""

from diffjax.methods.base import Method, MethodContext, Network
from diffjax.methods.diffusion import DiffusionMethod, DiffusionSpec, SamplerSpec
from diffjax.methods import autoencoder  # noqa: E402,F401  (the autoencoder method, latent.*)
from diffjax.methods.registry import METHODS, method_class, register_method
