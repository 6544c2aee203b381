"""Tiny SFT: continue from `pretrain_tiny`'s final model on new triplets, at SFT settings.

    python -m polar_jax train --config configs/pretrain_tiny.py --workdir runs/pretrain_tiny
    python -m polar_jax train --config configs/sft_tiny.py --workdir runs/sft_tiny

Real SFT data are human-ranked triplets (rank 1 = reference, 2 = chosen, 3 = rejected)
prepared with `python -m polar_jax prepare`; set data.kind=array_record and data.train /
data.eval to the prepared directories. Here the triplets are synthetic (another seed).
"""

import pathlib

from polar_jax.config_loading import load_config


def get_config():
    """pretrain_tiny's settings, with an SFT initialisation, learning rate and data seed."""
    c = load_config(pathlib.Path(__file__).with_name("pretrain_tiny.py"))
    c.model.init = "runs/pretrain_tiny/model"  # a POLAR reward model directory (ours, or a converted official one)
    c.seed = 1
    c.steps = 100
    c.optim.lr = 2e-4
    return c
