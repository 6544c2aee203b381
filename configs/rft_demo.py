"""RFT on the demo: a weak policy (an early checkpoint) trained toward a stronger one, judged by POLAR.

    python -m polar_jax demo --workdir runs/demo                              # first: models
    python -m polar_jax rft --config configs/rft_demo.py --workdir runs/rft_demo
    python -m polar_jax rft --config configs/rft_demo.py:DEMO_DIR --workdir ...   # another demo dir

The policy is the demo's lm1 stopped after 150 steps (a mid-training checkpoint, held out of the
reward model's pool); the target is lm0 after 600 steps (the pool's most trained LM). The target's
samples on corpus prompts are the references, the demo's pre-trained POLAR reward model scores
each rollout against its reference, and PPO (the released recipe's GAE, gamma = lambda = 1, clip
0.2) moves the policy. Two measures at the end, held out (DIR/rft_results.json, printed):
`reward_*` (mean POLAR reward) and `target_loglik_*` (the target's mean per-token log-likelihood
of the policy's responses: a measure that does not go through the reward model), and beside them
the reward-gaming check: the target's own fresh samples' reward and log-likelihood
(`target_samples_*`). A policy whose reward passes the target's own while its log-likelihood does
not rise has learnt what the reward model over-rates, not the target.

That is what happens here with a weak KL penalty: at kl_coef 0.1 the reward rises 0.07 -> 3.10,
three times the target's own samples' 0.98, while the target's log-likelihood falls -5.00 -> -5.62
(the demo's reward model is 0.2M parameters, smaller than the policy). A KL penalty of 0.5 per
token (k1, in the reward) keeps the policy near where that model's judgement holds. Measured
(200 iterations, held out, 64 prompts; reward / log-likelihood, before -> after, target's own):
    kl 0.5 seed 0:  0.07 -> 1.06 (0.98)   -5.00 -> -4.05 (-3.45)
    kl 0.5 seed 1:  0.26 -> 1.85 (1.25)   -5.04 -> -4.74 (-3.52)
    kl 0.4:         0.07 -> 1.53, 0.26 -> 1.19;  -5.00 -> -5.05, -5.04 -> -6.26 (gamed)
    kl 0.3:         0.07 -> 2.15, 0.26 -> 2.20;  -5.00 -> -5.17, -5.04 -> -5.08 (gamed)
Those figures are an earlier demo build's. On the demo built from a fresh clone on 2026-12-04 its
reward model rates the weak policy close to the target already (2.50 / 2.02 against 3.20 / 2.97)
and no setting tried raises the target's log-likelihood (seeds 0 / 1):
    kl 0.5:              2.50 -> 3.02, 2.02 -> 2.36;  -5.10 -> -5.18, -5.12 -> -5.88
    kl 1.0:              2.50 -> 2.93, 2.02 -> 2.41;  -5.10 -> -5.51, -5.12 -> -5.85
    kl_loss_coef 0.5:    2.50 -> 3.45, 2.02 -> 3.44;  -5.10 -> -5.25, -5.12 -> -5.16
With the KL in the reward the responses collapse to 2 to 4 tokens after about 150 iterations (a
per-token penalty makes short responses cheap); with it in the loss they keep their length and
the reward passes the target's own: gamed. See the README's RFT section.
From the weaker lm0-step40 at kl 0.5 nothing moves (-3.60 -> -3.62, -6.81 -> -6.74). The gain
a policy can make without gaming is bounded by the target's own samples' reward (0.9 to 1.0 above
the start here).

Two departures from the released recipe, for the demo's tiny reward model: rollouts are drawn
as the pool's samples it was trained on were (top-k 50, top-p 0.9, repetition loops cut), and the
KL penalty (the released recipe has none). The demo evaluates sampled responses (fixed key), not
greedy ones: greedy decoding of these small LMs collapses to a newline or a quote. The other
direction (the fluent lm0-step600 degraded toward the word-salad lm0-step40) is
configs/rft_demo_salad.py. About 3 minutes on 2 CPU cores.
"""

import pathlib

from polar_jax.rft.defaults import base_config

KL_COEF = 0.5  # per token (k1, in the reward); see above


def get_config(demo_dir: str = "runs/demo"):
    """The demo RFT run toward the stronger policy; `demo_dir` is where `python -m polar_jax demo` wrote its models."""
    demo = pathlib.Path(demo_dir)
    c = base_config()
    c.setup_hint = (
        f"configs/rft_demo.py uses the demo's policies and reward model: run `python -m polar_jax demo "
        f"--workdir {demo_dir}` first (or name another demo directory: configs/rft_demo.py:DIR)"
    )
    c.iterations = 200
    c.eval_every = 25
    c.checkpoint_every = 50

    c.policy.init = str(demo / "policies" / "lm1" / "step-150")
    c.policy.dtype = "float32"  # bfloat16 is emulated, and slow, on CPU
    c.policy.max_prompt_tokens = 32
    c.policy.scan_unroll = 2  # the demo LMs' two layers unrolled: faster on CPU

    c.data.kind = "policy_samples"  # references: the target's samples, written once to WORKDIR/data
    c.data.prompts = "pydoc"  # the demo's corpus; every 5th document gives held-out prompts only
    c.data.prompt_tokens = (2, 24)
    c.data.train_prompts = 512
    c.data.eval_prompts = 64
    # The target: lm0 after 600 steps, sampled as in the demo's pool (T 1.0, top-k 50, top-p 0.9, 24 tokens).
    # Any pool policy can be the target, e.g. SmolLM2 as a careful writer: checkpoint="smollm2",
    # template=synth.pool.CHATML, system="You are a careful technical writer.", stop=("<|im_end|>",).
    c.target.update(
        checkpoint=str(demo / "policies" / "lm0" / "step-600"),
        temperature=1.0,
        top_k=50,
        top_p=0.9,
        max_new_tokens=24,
        max_prompt_tokens=32,
    )
    c.eval.batch_size = 64
    c.eval.temperature, c.eval.top_k, c.eval.top_p = 1.0, 50, 0.9  # sampled with a fixed key (see above)

    c.reward.model = str(demo / "rm" / "model")
    c.reward.tokenizer = str(demo / "tokenizer")
    c.reward.dtype = "float32"
    c.reward.batch_size = 64
    c.reward.encoding.max_length = 256  # the demo's encoding (polar_jax.demo.encoding_config)
    c.reward.encoding.max_response_length = 96

    c.rollout.prompts = 32
    c.rollout.max_new_tokens = 24
    # Sampled as the pool's trajectories the reward model was trained on: top-k 50, top-p 0.9, loops cut.
    c.rollout.top_k, c.rollout.top_p, c.rollout.loop_max_ngram = 50, 0.9, 32

    c.algorithm.kl_coef = KL_COEF  # the released recipe has none; see above
    c.algorithm.epochs = 2
    c.algorithm.minibatches = 2
    c.actor_optim.lr = 2e-4  # a 0.5M-parameter policy moves at far larger steps than the paper's 1e-6
    c.actor_optim.warmup_fraction = 0.0
    c.critic_optim.lr = 1e-3
    c.critic_optim.warmup_fraction = 0.0
    return c
