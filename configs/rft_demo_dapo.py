"""RFT on the demo with DAPO (Yu et al., 2025, arXiv 2503.14476; verl's recipe/dapo).

    python -m polar_jax rft --config configs/rft_demo_dapo.py --workdir runs/rft_demo_dapo   # after the demo

configs/rft_demo_grpo.py with DAPO's changes: the decoupled clip (1 - 0.2 .. 1 + 0.28,
"clip-higher", so unlikely tokens can rise), one token-level mean over the mini-batch (verl's
loss_agg_mode "token-mean"), and dynamic sampling (groups whose rollouts all score the same are
dropped and more prompts drawn, up to 10 prompt batches, verl's max_num_gen_batches). POLAR's
scores are continuous, so on the demo no group is ever dropped (the metric
dynamic_sampling_kept_fraction stays 1.0); with a thresholded or rounded reward it matters.
DAPO's over-long reward shaping (algorithm.overlong_buffer) is left off: the demo's responses
nearly all run to max_new_tokens (no end-of-text), so it would give every rollout the same
penalty, which the group baseline removes, except for the few cut short by the loop guard.
"""

import pathlib

from polar_jax.config_loading import load_config


def get_config(demo_dir: str = "runs/demo"):
    """configs/rft_demo_grpo.py with clip-higher, the token-mean loss and dynamic sampling."""
    c = load_config(f"{pathlib.Path(__file__).with_name('rft_demo_grpo.py')}:{demo_dir}")
    c.setup_hint = c.setup_hint.replace("configs/rft_demo_grpo.py", f"configs/{pathlib.Path(__file__).name}")
    c.algorithm.clip_ratio_low, c.algorithm.clip_ratio_high = 0.2, 0.28
    c.algorithm.loss_agg = "token-mean"
    c.algorithm.dynamic_sampling = True
    c.algorithm.max_gen_batches = 10
    return c
