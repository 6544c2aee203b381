"""RFT on the demo with GRPO (Shao et al., 2024, arXiv 2402.03300): no critic, a group baseline.

    python -m polar_jax rft --config configs/rft_demo_grpo.py --workdir runs/rft_demo_grpo   # after the demo

configs/rft_demo.py's run (lm1-step150 toward lm0-step600, judged by the demo's POLAR model) with
GRPO's advantage: each prompt's 4 rollouts are scored, and a rollout's advantage is its score
minus the group's mean, divided by the group's std (verl's compute_grpo_outcome_advantage),
the same for every token; no critic and no batch whitening after it (verl whitens only GAE).
The same rollouts per iteration as PPO's 32: 8 prompts x 4. The KL penalty stays in the reward
(0.5 per token, k1), where configs/rft_demo.py puts it: the demo's 0.2M-parameter reward model is
gamed below it; GRPO's paper puts its KL in the loss (algorithm.kl_loss_coef) instead.
"""

import pathlib

from polar_jax.config_loading import load_config

GROUP = 4  # rollouts per prompt


def get_config(demo_dir: str = "runs/demo"):
    """configs/rft_demo.py with GRPO's group-normalised advantage and no critic."""
    c = load_config(f"{pathlib.Path(__file__).with_name('rft_demo.py')}:{demo_dir}")
    c.setup_hint = c.setup_hint.replace("configs/rft_demo.py", f"configs/{pathlib.Path(__file__).name}")
    c.rollout.prompts, c.rollout.samples_per_prompt = 32 // GROUP, GROUP
    c.algorithm.estimator = "grpo"
    c.algorithm.group_normalize_std = True
    c.algorithm.whiten_advantages = False
    return c
