"""RFT on the demo with GSPO (Zheng et al., 2025, "Group Sequence Policy Optimization", arXiv 2507.18071).

    python -m polar_jax rft --config configs/rft_demo_gspo.py --workdir runs/rft_demo_gspo   # after the demo

configs/rft_demo_grpo.py with GSPO's sequence-level importance ratio: exp of the mean token
log-ratio of each response, clipped to 1 - 3e-4 .. 1 + 4e-4 (the paper's and verl's GSPO recipe's
ranges: a sequence ratio moves far less than a token's), no dual clip, each response's token
mean then the mean over responses (loss_agg "seq-mean-token-mean", as verl's recipe).
"""

import pathlib

from polar_jax.config_loading import load_config


def get_config(demo_dir: str = "runs/demo"):
    """configs/rft_demo_grpo.py with GSPO's sequence ratio and its clip range."""
    c = load_config(f"{pathlib.Path(__file__).with_name('rft_demo_grpo.py')}:{demo_dir}")
    c.setup_hint = c.setup_hint.replace("configs/rft_demo_grpo.py", f"configs/{pathlib.Path(__file__).name}")
    c.algorithm.loss = "gspo"
    c.algorithm.clip_ratio_low, c.algorithm.clip_ratio_high = 3e-4, 4e-4
    c.algorithm.loss_agg = "seq-mean-token-mean"
    return c
