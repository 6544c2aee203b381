"""RFT on the demo with REINFORCE++ (Hu, 2025, arXiv 2501.03262; verl's compute_reinforce_plus_plus_outcome_advantage).

    python -m polar_jax rft --config configs/rft_demo_reinforce_pp.py --workdir runs/rft_demo_reinforce_pp

configs/rft_demo.py's run without the critic: one rollout per prompt (32 prompts, as PPO), each
token's return the discounted sum of the token rewards after it (the score at the last token,
minus 0.5 x k1 per token: REINFORCE++ keeps the KL in the reward, as configs/rft_demo.py does),
whitened over the batch's tokens; PPO's clipped loss on top.
"""

import pathlib

from polar_jax.config_loading import load_config


def get_config(demo_dir: str = "runs/demo"):
    """configs/rft_demo.py with REINFORCE++'s whitened token returns and no critic."""
    c = load_config(f"{pathlib.Path(__file__).with_name('rft_demo.py')}:{demo_dir}")
    c.setup_hint = c.setup_hint.replace("configs/rft_demo.py", f"configs/{pathlib.Path(__file__).name}")
    c.algorithm.estimator = "reinforce_pp"
    return c
