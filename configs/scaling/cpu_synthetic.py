"""A scaling sweep on two CPU cores with the built-in synthetic triplets (no files needed).

    python -m polar_jax scaling --config configs/scaling/cpu_synthetic.py --workdir runs/scaling_cpu_synthetic

Five sizes of the CPU family (polar_jax/scaling/sizes.py CPU_RULE: d_model = 16 x layers,
16-dim heads; 1 to 5 layers, 3.4K to 398K non-embedding parameters), each trained from
scratch for 240 steps of 16 rows x 256 tokens at one fixed LR, with 6 held-out evaluations
of the same 512 pairs. The task is pretrain_tiny's: eight
Markov-chain "policies"; the reward model must tell whether a candidate comes from its
reference's policy.
"""

import pathlib

from polar_jax.config_loading import load_config


def get_config():
    """The CPU sweep on synthetic data: configs/scaling/base.py with these changes."""
    c = load_config(pathlib.Path(__file__).with_name("base.py"))
    c.family.update(aspect_ratio=16, head_dim=16, kv_group=1, mlp_multiple=16)
    c.layers = (1, 2, 3, 4, 5)
    c.budget.update(kind="steps", value=240.0)
    c.evals_per_run = 6
    c.logs_per_run = 40
    c.train.data.kind = "synthetic"
    c.train.data.synthetic_eval_examples = 512
    c.train.eval_batches = 16  # 16 batches x 16 rows x 2 pairs: all 512 held-out pairs
    c.train.data.batch_size = 16
    c.train.data.seq_len = 256
    c.train.data.max_pairs_per_row = 2
    c.train.model.dtype = "float32"  # bfloat16 is emulated, and slow, on CPU
    c.train.optim.lr = 1e-3  # 2e-3 left a 64-wide model on a plateau in one of two seeds
    return c
