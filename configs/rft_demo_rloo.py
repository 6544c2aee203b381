"""RFT on the demo with RLOO (Ahmadian et al., 2024, "Back to Basics", arXiv 2402.14740).

    python -m polar_jax rft --config configs/rft_demo_rloo.py --workdir runs/rft_demo_rloo   # after the demo

configs/rft_demo_grpo.py with the leave-one-out baseline: a rollout's advantage is its score
minus the mean of the other 3 rollouts of its prompt (verl's compute_rloo_outcome_advantage),
not divided by any std, the same for every token; no critic, no batch whitening.
"""

import pathlib

from polar_jax.config_loading import load_config


def get_config(demo_dir: str = "runs/demo"):
    """configs/rft_demo_grpo.py with RLOO's leave-one-out baseline."""
    c = load_config(f"{pathlib.Path(__file__).with_name('rft_demo_grpo.py')}:{demo_dir}")
    c.setup_hint = c.setup_hint.replace("configs/rft_demo_grpo.py", f"configs/{pathlib.Path(__file__).name}")
    c.algorithm.estimator = "rloo"
    return c
