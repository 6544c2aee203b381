"""Tiny policy-discrimination pre-training that makes its own data: seconds per step on CPU.

    python -m polar_jax train --config configs/pretrain_tiny.py --workdir runs/pretrain_tiny

About a minute on 2 CPU cores; held-out pair accuracy about 0.85-0.9 at the end. Eight
synthetic "policies" (Markov chains over 128 tokens with their own vocabulary bands and
transitions, `data/synthetic.py`); each triplet's reference and chosen come from policy A,
the rejected from policy B. A 2-layer reward model learns from scratch to tell whether a
candidate matches its reference's policy.
"""

import pathlib

from polar_jax.config_loading import load_config


def get_config():
    """The tiny pre-training experiment: base.py with these changes."""
    c = load_config(pathlib.Path(__file__).with_name("base.py"))
    c.steps = 300
    c.eval_every = 100
    c.eval_batches = 4
    c.checkpoint_every = 100
    c.model.update(vocab_size=128, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128)
    c.model.dtype = "float32"  # bfloat16 is emulated, and slow, on CPU
    c.data.kind = "synthetic"
    c.data.batch_size = 16
    c.data.seq_len = 256
    c.data.max_pairs_per_row = 2
    c.optim.lr = 2e-3
    return c
