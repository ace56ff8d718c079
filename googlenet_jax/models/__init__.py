"""Models, chosen by name in the config (`config.model`)."""

from googlenet_jax.models.googlenet import GoogLeNet, Inception

MODELS = {'googlenet': GoogLeNet}
