"""The trainer's defaults: every key it reads, listed with comments in
polar_jax/train/defaults.py. Other configs load this file and change what differs."""

from polar_jax.train.defaults import base_config


def get_config():
    """The defaults of a training run."""
    return base_config()
