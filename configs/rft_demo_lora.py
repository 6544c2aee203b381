"""RFT on the demo with LoRA on the policy: configs/rft_demo.py's PPO run, only rank-8 adapters trained.

    python -m polar_jax rft --config configs/rft_demo_lora.py --workdir runs/rft_demo_lora   # after the demo

Adapters of rank 8 (alpha 16, so W + 2 x A @ B) on all seven projections of both layers of the
demo policy (wq wk wv wo w_gate w_up w_down): 32,768 trainable parameters, 5.9% of the policy's
557,696 (the embedding, tied to the LM head, and the norms stay frozen). The frozen base is the
reference policy. The critic is trained in full, as in configs/rft_demo.py. LoRA takes larger
steps than full fine-tuning (B starts at zero and the update is low rank): ACTOR_LR.
Writes WORKDIR/policy (merged) and WORKDIR/policy_lora (the adapters, PEFT's layout).
"""

import pathlib

from polar_jax.config_loading import load_config

RANK = 8
ACTOR_LR = 1e-3  # configs/rft_demo.py's full fine-tuning: 2e-4


def get_config(demo_dir: str = "runs/demo"):
    """configs/rft_demo.py with rank-8 LoRA adapters on every projection of the policy."""
    c = load_config(f"{pathlib.Path(__file__).with_name('rft_demo.py')}:{demo_dir}")
    c.setup_hint = c.setup_hint.replace("configs/rft_demo.py", f"configs/{pathlib.Path(__file__).name}")
    c.policy.lora.rank = RANK
    c.policy.lora.alpha = 16.0
    c.actor_optim.lr = ACTOR_LR
    return c
