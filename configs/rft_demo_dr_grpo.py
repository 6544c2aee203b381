"""RFT on the demo with Dr. GRPO (Liu et al., 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783).

    python -m polar_jax rft --config configs/rft_demo_dr_grpo.py --workdir runs/rft_demo_dr_grpo   # after the demo

configs/rft_demo_grpo.py with Dr. GRPO's two corrections: the group baseline is not divided by
the group's std (verl's norm_adv_by_std_in_grpo=False), and each response's token losses are
summed and divided by the fixed max_new_tokens, not by the response's own length (verl's
loss_agg_mode "seq-mean-token-sum-norm"), so neither easy prompts nor long answers get more weight.
On the demo most responses run to max_new_tokens, so the second correction changes little.
"""

import pathlib

from polar_jax.config_loading import load_config


def get_config(demo_dir: str = "runs/demo"):
    """configs/rft_demo_grpo.py without the std and with the length-independent token sum."""
    c = load_config(f"{pathlib.Path(__file__).with_name('rft_demo_grpo.py')}:{demo_dir}")
    c.setup_hint = c.setup_hint.replace("configs/rft_demo_grpo.py", f"configs/{pathlib.Path(__file__).name}")
    c.algorithm.group_normalize_std = False
    c.algorithm.loss_agg = "seq-mean-token-sum-norm"
    return c
