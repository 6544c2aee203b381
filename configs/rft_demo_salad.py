"""RFT on the demo, the degrading direction: a fluent policy trained toward the word-salad one.

    python -m polar_jax demo --workdir runs/demo                              # first: models
    python -m polar_jax rft --config configs/rft_demo_salad.py --workdir runs/rft_demo_salad
    python -m polar_jax rft --config configs/rft_demo_salad.py:DEMO_DIR --workdir ...   # another demo dir

The policy is the demo's lm0 after 600 steps (English-like text); the target is the same LM
after 40 steps (word salad: punctuation, whitespace and common words). The target's samples
on corpus prompts are the references, the demo's pre-trained POLAR reward model scores each
rollout against its reference, and PPO (the released recipe's GAE, gamma = lambda = 1, clip
0.2) moves the policy. POLAR's reward is "same policy as the reference", not "better": the
demo shows the policy moving toward whichever policy wrote the references.

Why this direction was the demo's first. The other way round (lm0-step40 toward lm0-step600) the reward rises
(-2.25 -> 2.53 held out) but the policy learns to string the target's frequent tokens
(`function`, `"__()"`, `class`), which the demo's tiny reward model (64 wide, 2 layers, 0.2M
parameters, smaller than the policy) rates as highly as the target's own samples; the target's
log-likelihood of them does not rise (-6.94 -> -6.95). Tried and measured, all still gamed: a
128-wide model trained 300 steps (held-out accuracy 0.969 / 0.754, but the policy reached
reward 6.4 against the target's own 5.5, log-likelihood -6.94 -> -7.60); an entropy bonus
(0.01, 0.03); hot-sampled (T 1.5, 2.0) copies of the target among the training policies.
Degrading toward a near-unigram target is a direction the small model judges well.
configs/rft_demo.py goes the improving way (a mid-training checkpoint toward lm0-step600) with
a stronger KL penalty, and prints the reward-gaming check.
Everything but the policy, the target and the KL penalty is configs/rft_demo.py's.

Two departures from the released recipe, for the demo's tiny reward model: rollouts are drawn
as the pool's samples it was trained on were (top-k 50, top-p 0.9, repetition loops cut), and a
KL penalty (0.1 per token, k1, in the reward) keeps the policy near where that model's
judgement holds. Without KL the target log-likelihood peaks at iteration 75 (-4.32) and then
falls back as responses collapse to a few tokens and regrow (-5.43 at 200).

At the end DIR/rft_results.json holds held-out measures before and after: `reward_*` (mean
POLAR reward) and `target_loglik_*` (the target's mean per-token log-likelihood of the policy's
responses: a measure that does not go through the reward model). For scale, the target's own
samples score reward 4.06 and log-likelihood -4.54; the untrained policy's -3.83 and -5.71
(after 200 iterations: 3.49 and -4.89; measured with verl's loss aggregation, dual clip and critic bias,
on the demo models of session 5: the figures move with float rounding in the demo's LM training).
The demo evaluates sampled responses (fixed key), not greedy ones: greedy decoding of these
small LMs collapses to a newline or a quote, before and after. About 3 minutes on 2 CPU cores.
"""

import importlib.util
import pathlib


def get_config(demo_dir: str = "runs/demo"):
    """configs/rft_demo.py reversed: lm0-step600 toward lm0-step40, KL 0.1 per token."""
    spec = importlib.util.spec_from_file_location("rft_demo", pathlib.Path(__file__).with_name("rft_demo.py"))
    rft_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rft_demo)
    c = rft_demo.get_config(demo_dir)
    demo = pathlib.Path(demo_dir)
    c.setup_hint = c.setup_hint.replace("configs/rft_demo.py", "configs/rft_demo_salad.py")
    c.policy.init = str(demo / "policies" / "lm0" / "step-600")
    c.target.checkpoint = str(demo / "policies" / "lm0" / "step-40")
    c.algorithm.kl_coef = 0.1
    return c
