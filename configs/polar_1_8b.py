"""POLAR-1.8B replica: pre-training (default) or SFT (`:sft`) on an InternLM2.5-1.8B base.

    python -m polar_jax train --config configs/polar_1_8b.py --workdir DIR \\
        --config.model.init=/path/to/internlm2_5-1_8b --config.data.train=... --config.data.eval=...
    python -m polar_jax train --config configs/polar_1_8b.py:sft --workdir DIR --config.model.init=DIR_OF_PRETRAINED_RM

Numbers are the paper's (Dou et al., arXiv 2507.05197): pre-training LR 1.4e-5 and 1940 triplets per step,
one epoch; SFT LR 1e-5, 320 triplets per step, one epoch; AdamW (0.9, 0.95), no weight
decay, clip 1.0, 3% warm-up, cosine to 0.1 x LR. Rows are packed: a step holds
`batch_size` rows of `seq_len` tokens; at the typical pair length (~2k tokens for 1-1024
token prompts and sampled answers) 128 rows of 32k tokens hold about 1940 pairs.

Mesh: every chip in FSDP (`fsdp=-1`). Compiled ahead of time (`python -m polar_jax compile`,
README "Will it fit?"): at this batch it fits a v5p-128 (79 of 96 GiB per chip) and a v5p-256;
a v6e-256 with `--config.mesh.tensor=2`; a v5e-256 only with `--config.model.remat=full`.
Smaller slices need a smaller batch (with accumulation) or full remat: check with `compile`.
"""

import pathlib

from polar_jax.config_loading import load_config

# InternLM2.5-1.8B (config.json of internlm/internlm2_5-1_8b).
INTERNLM2_5_1_8B = dict(
    vocab_size=92544, d_model=2048, num_layers=24, num_heads=16, num_kv_heads=8, head_dim=128, mlp_dim=8192
)


def get_config(stage: str = "pretrain"):
    """The replica for `stage` "pretrain" or "sft": base.py with these changes."""
    if stage not in ("pretrain", "sft"):
        raise ValueError(f"stage {stage!r}: use pretrain or sft")
    c = load_config(pathlib.Path(__file__).with_name("base.py"))
    c.steps = 10_000  # one epoch: set to (triplets / 1940) for your data
    c.model.update(INTERNLM2_5_1_8B)
    c.model.init = "/path/to/internlm2_5-1_8b"  # HF directory of the base LM (no network at run time)
    c.model.remat = "dots_no_batch"
    c.model.reward_head_init = "zeros"  # xtuner zero-initialises v_head on the base LM
    c.data.batch_size = 128  # rows of seq_len tokens per step (~1940 pairs)
    c.data.seq_len = 32768  # a pair of two 16k sequences always fits one row
    c.data.max_pairs_per_row = 32
    c.data.num_workers = 4
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.optim.lr = 1.4e-5
    if stage == "sft":
        c.model.init = "/path/to/POLAR-1_8B-Base"  # a pre-trained POLAR RM (ours, or converted official)
        c.optim.lr = 1e-5
        c.data.batch_size = 24  # ~320 triplets per step at SFT lengths
        c.steps = 470  # ~150K prompts / 320
    return c
