"""RFT on the demo: a fluent policy is trained toward the word-salad one, judged by POLAR.

    python -m polar_jax demo --workdir runs/demo                              # first: models
    python -m polar_jax rft --config configs/rft_demo.py --workdir runs/rft_demo
    python -m polar_jax rft --config configs/rft_demo.py:DEMO_DIR --workdir ...   # another demo dir

The policy is the demo's lm0 after 600 steps (English-like text); the target is the same LM
after 40 steps (word salad: punctuation, whitespace and common words). The target's samples
on corpus prompts are the references, the demo's pre-trained POLAR reward model scores each
rollout against its reference, and PPO (the released recipe's GAE, gamma = lambda = 1, clip
0.2) moves the policy. POLAR's reward is "same policy as the reference", not "better": the
demo shows the policy moving toward whichever policy wrote the references.

Why this direction. The other way round (lm0-step40 toward lm0-step600) the reward rises
(-2.25 -> 2.53 held out) but the policy learns to string the target's frequent tokens
(`function`, `"__()"`, `class`), which the demo's tiny reward model (64 wide, 2 layers, 0.2M
parameters, smaller than the policy) rates as highly as the target's own samples; the target's
log-likelihood of them does not rise (-6.94 -> -6.95). Tried and measured, all still gamed: a
128-wide model trained 300 steps (held-out accuracy 0.969 / 0.754, but the policy reached
reward 6.4 against the target's own 5.5, log-likelihood -6.94 -> -7.60); an entropy bonus
(0.01, 0.03); hot-sampled (T 1.5, 2.0) copies of the target among the training policies.
Degrading toward a near-unigram target is a direction the small model judges well.

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

import pathlib

from polar_jax.rft.defaults import base_config


def get_config(demo_dir: str = "runs/demo"):
    """The demo RFT run; `demo_dir` is where `python -m polar_jax demo` wrote its models."""
    demo = pathlib.Path(demo_dir)
    c = base_config()
    c.setup_hint = (
        f"configs/rft_demo.py uses the demo's policies and reward model: run `python -m polar_jax demo "
        f"--workdir {demo_dir}` first (or name another demo directory: configs/rft_demo.py:DIR)"
    )
    c.iterations = 200
    c.eval_every = 25
    c.checkpoint_every = 50

    c.policy.init = str(demo / "policies" / "lm0" / "step-600")
    c.policy.dtype = "float32"  # bfloat16 is emulated, and slow, on CPU
    c.policy.max_prompt_tokens = 32
    c.policy.scan_unroll = 2  # the demo LMs' two layers unrolled: faster on CPU

    c.data.kind = "policy_samples"  # references: the target's samples, written once to WORKDIR/data
    c.data.prompts = "pydoc"  # the demo's corpus; every 5th document gives held-out prompts only
    c.data.prompt_tokens = (2, 24)
    c.data.train_prompts = 512
    c.data.eval_prompts = 64
    # The target: lm0 after 40 steps, sampled as in the demo's pool (T 1.0, top-k 50, top-p 0.9, 24 tokens).
    # Any pool policy can be the target, e.g. SmolLM2 as a careful writer: checkpoint="smollm2",
    # template=synth.pool.CHATML, system="You are a careful technical writer.", stop=("<|im_end|>",).
    c.target.update(
        checkpoint=str(demo / "policies" / "lm0" / "step-40"),
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

    c.algorithm.kl_coef = 0.1  # the released recipe has none; see above
    c.algorithm.epochs = 2
    c.algorithm.minibatches = 2
    c.actor_optim.lr = 2e-4  # a 0.5M-parameter policy moves at far larger steps than the paper's 1e-6
    c.actor_optim.warmup_fraction = 0.0
    c.critic_optim.lr = 1e-3
    c.critic_optim.warmup_fraction = 0.0
    return c
