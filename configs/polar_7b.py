"""POLAR-7B replica: pre-training (default) or SFT (`:sft`) on an InternLM2.5-7B base.

Same recipe as `polar_1_8b.py` with the 7B numbers: pre-training LR 1.67e-5 and 4343
triplets per step; SFT LR 2e-5, 320 triplets per step. All chips in FSDP. Compiled ahead of
time (`python -m polar_jax compile`, README "Will it fit?"): it needs full remat
(`--config.model.remat=full`) and, above 32 chips, a batch that divides over the chips
(`--config.data.batch_size=256`): then it fits a v5p-128 (82 of 96 GiB per chip), a v5p-256
and a v6e-256, not a v5e-256. Check other slices with `compile` before allocating them.
"""

import pathlib

from polar_jax.config_loading import load_config

# InternLM2.5-7B (config.json of internlm/internlm2_5-7b).
INTERNLM2_5_7B = dict(
    vocab_size=92544, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, mlp_dim=14336
)


def get_config(stage: str = "pretrain"):
    """The replica for `stage` "pretrain" or "sft"."""
    c = load_config(f"{pathlib.Path(__file__).with_name('polar_1_8b.py')}:{stage}")
    c.model.update(INTERNLM2_5_7B)
    if stage == "pretrain":
        c.model.init = "/path/to/internlm2_5-7b"
        c.optim.lr = 1.67e-5
        c.data.batch_size = 288  # rows of 32k tokens, ~4343 pairs
    else:
        c.model.init = "/path/to/POLAR-7B-Base"
        c.optim.lr = 2e-5
    return c
