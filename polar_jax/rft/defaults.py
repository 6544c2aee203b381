"""Every key the RFT loop reads, with its default: configs/rft_*.py start here and change what
differs. Algorithm defaults are the released POLAR verl recipes (InternLM/POLAR `examples/ppo/`): GAE with
gamma = lambda = 1, clip 0.2, no KL (neither in the reward nor as a loss), one rollout per
prompt, a critic initialised from the policy (with a fresh biased value head), the raw POLAR
score as the terminal reward, thinking stripped before scoring by the official rule; verl's
details: "seq-mean-token-mean" loss aggregation, dual clip 3.0, message-list prompts through
the policy's chat template, over-long prompts filtered (counted), not cut; actor LR 1e-6,
critic LR 1e-5 (the paper's). configs/rft_qwen2_5_7b.py is the released Qwen2.5-7B recipe."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """The defaults of an RFT run (a new ConfigDict each call)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.iterations = 200  # PPO iterations: one rollout batch, its scores, then the update
    c.log_every = 1
    c.eval_every = 0  # evaluate on held-out prompts every N iterations (0 = at the start and end only)
    c.checkpoint_every = 50
    c.checkpoint_minutes = 30.0  # also save when this long has passed since the last save
    c.keep_checkpoints = 3
    c.max_bad_steps = 10  # this many skipped (non-finite) optimiser steps in a row stop the run
    # A rerun resumes the workdir's checkpoints only with a config that computes the same thing
    # (train/loop.py RESUME_FREE_KEYS lists what may change); these two are the deliberate exceptions:
    c.allow_changed_config = False  # resume them anyway (e.g. a lower learning rate after a divergence)
    c.start_over = False  # none of them readable: start at step 0 (otherwise the run stops and lists them)
    c.setup_hint = ""  # said when a model path is missing (e.g. which command makes it)

    c.policy = ml_collections.ConfigDict()
    c.policy.init = ""  # the policy LM: HF directory, .gguf file or polar_jax directory
    # How the policy sees a plain-string prompt ("{prompt}": as it is). Message-list prompts go through
    # the policy tokenizer's chat template (add_generation_prompt, as verl's RLHFDataset) when
    # chat_template is True and the tokenizer has one; otherwise they are flattened ("\n"-joined contents).
    c.policy.template = "{prompt}"
    c.policy.chat_template = True
    # verl's data.max_prompt_length: every prompt is left-padded to this; longer ones are filtered out of
    # the data (data.filter_overlong_prompts) or, if not filtered, handled by data.truncation.
    c.policy.max_prompt_tokens = 256
    c.policy.dtype = "bfloat16"  # compute dtype; parameters stay float32
    c.policy.remat = "none"
    c.policy.attention_impl = "auto"
    c.policy.scan_unroll = 1
    c.policy.trust_remote_code = False  # run the checkpoint's own tokenizer code (InternLM2); read it first
    # LoRA on the policy (models/lora.py): rank > 0 trains only rank-r adapters on these projections of every
    # layer (the decoder's names: wq wk wv wo w_gate w_up w_down), merged as W + alpha / rank x A @ B; the frozen
    # base is on the chips once, shared by the reference policy. Outputs policy/ merged and policy_lora/ (PEFT).
    c.policy.lora = ml_collections.ConfigDict(
        dict(rank=0, alpha=16.0, targets=("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"))
    )

    c.rollout = ml_collections.ConfigDict()
    c.rollout.prompts = 64  # prompts per iteration
    c.rollout.samples_per_prompt = 1  # rollouts of each prompt (the group size of the group baseline)
    # Decode slots of the continuous-batching engine that samples the rollouts: 0 = all rollouts of an
    # iteration at once (prompts x samples_per_prompt); N = N slots, refilled as rollouts finish (a
    # multiple of the mesh's data x fsdp). The rollouts are the same whatever N (each row has its own key).
    c.rollout.slots = 0
    c.rollout.max_new_tokens = 256
    c.rollout.temperature = 1.0
    c.rollout.top_k = 0  # 0 = off
    c.rollout.top_p = 1.0
    c.rollout.stop = ()  # extra stop strings (single tokens of the policy's tokenizer); EOS always stops
    # Repetition loops (a block of up to N tokens written `loop_repeats` times) cut to the block's first
    # occurrence, as POLAR's trajectory sampling does (sampling.SamplingConfig.polar: 32, 4); 0 = off (as verl).
    c.rollout.loop_max_ngram = 0
    c.rollout.loop_repeats = 4

    c.reward = ml_collections.ConfigDict()
    c.reward.model = ""  # a POLAR reward model: ours (polar_jax directory) or an imported official one
    # Or score through a reward server instead of holding the model on the policy's mesh (as verl's remote RM):
    # "http://HOST:PORT" of `python -m polar_jax serve` (rows go to its POST /score and are encoded there with
    # the server's encoding; reward.model must then be ""). rft waits for its /health at start.
    c.reward.server = ""
    c.reward.api_key = ""  # the server's --api-key ("" = $POLAR_JAX_API_KEY if set); saved in config.json
    c.reward.server_wait = 300.0  # seconds to wait at start for the server's /health to answer 200
    c.reward.server_timeout = 120.0  # seconds per request attempt (retried with backoff on 5xx / no answer)
    c.reward.tokenizer = ""  # default: the reward model's own
    c.reward.batch_size = 16
    # The rollouts of a prompt share its reference: score them as one group, the common prefix computed
    # once (`scoring.reward_scores`; the same scores to float32 rounding). False: one row per rollout.
    c.reward.shared_prefix = True
    # Thinking removed from responses before scoring: "official" (the released reward function: the text
    # after the first <think>...</think>, stripped; unchanged without a match) | "all_spans" (every span,
    # and an unmatched tag's side) | "none".
    c.reward.strip_think = "official"
    # The sequence score the estimator trains on (rft/rewards.py): "none" (the raw score, as released) |
    # "batch" (whitened per batch) | "running" (by the mean / std of every score so far, checkpointed) |
    # "group" (a z-score within each prompt's rollout.samples_per_prompt rollouts; needs >= 2). Then
    # reward.clip: () = none, or (lo, hi) clamps the normalised score (OpenRLHF's reward_clip_range).
    c.reward.normalize = "none"
    c.reward.clip = ()
    c.reward.dtype = "bfloat16"
    c.reward.trust_remote_code = False  # run the reward model's own tokenizer code (official POLAR checkpoints)
    # The official encoding's settings (data.encoding.EncodingConfig fields). None = from the reward model's
    # directory (its encoding.json, written by `train`), else the official client's defaults (16384 / 4096,
    # right cut, "sft"); a value set here overrides both.
    c.reward.encoding = ml_collections.ConfigDict(
        dict(
            max_length=None,
            max_response_length=None,
            response_cut_side=None,
            wrapper=None,
            split_text=None,
            reward_token=None,
        )
    )

    c.algorithm = ml_collections.ConfigDict()
    # "gae" (PPO with a critic) | without a critic: "group" = "grpo" (group baseline) | "rloo" (leave-one-out
    # baseline) | "reinforce_pp" (REINFORCE++: discounted token returns, whitened). Dr. GRPO: "grpo" with
    # group_normalize_std=False and loss_agg="seq-mean-token-sum-norm".
    c.algorithm.estimator = "gae"
    c.algorithm.loss = "ppo"  # "ppo" (dual-clip token ratio) | "gspo" (GSPO's sequence ratio, no dual clip)
    c.algorithm.gamma = 1.0
    c.algorithm.lam = 1.0
    c.algorithm.clip_ratio = 0.2
    c.algorithm.clip_ratio_low = None  # DAPO's decoupled clip: 1 - low .. 1 + high; None = clip_ratio
    c.algorithm.clip_ratio_high = None
    c.algorithm.clip_ratio_c = 3.0  # dual clip (verl): for negative advantages the loss is at most -A x this
    c.algorithm.value_clip = 0.5
    # How per-token losses (policy, value, entropy, KL loss) become one number (verl's loss_agg_mode):
    # "seq-mean-token-mean" (each response's token mean, then the mean over responses: what the released
    # recipes' micro-batches of 2 give in effect) | "token-mean" (one mean over all tokens of the mini-batch)
    # | "seq-mean-token-sum" | "seq-mean-token-sum-norm" (Dr. GRPO: each response's token sum / max_new_tokens).
    c.algorithm.loss_agg = "seq-mean-token-mean"
    c.algorithm.epochs = 1  # PPO epochs over each rollout batch
    c.algorithm.minibatches = 1  # optimiser steps per epoch (the batch split in this many parts)
    c.algorithm.whiten_advantages = True
    c.algorithm.group_normalize_std = True  # group baseline: divide by the group's std (GRPO)
    c.algorithm.entropy_coef = 0.0
    c.algorithm.kl_coef = 0.0  # KL to the reference policy subtracted from the token rewards (k1)
    c.algorithm.kl_loss_coef = 0.0  # KL to the reference policy added to the actor loss
    c.algorithm.kl_loss_estimator = "low_var_kl"  # k1 | abs | k2 | low_var_kl
    # DAPO's soft over-long punishment added to the score: 0 up to max_new_tokens - overlong_buffer tokens,
    # then linearly down to -overlong_penalty at max_new_tokens; 0 = off.
    c.algorithm.overlong_buffer = 0
    c.algorithm.overlong_penalty = 1.0
    # DAPO's dynamic sampling (verl's algorithm.filter_groups): drop the prompts whose rollouts all score the
    # same, sample further prompt batches until rollout.prompts are kept (needs samples_per_prompt >= 2);
    # more than max_gen_batches generation batches in one iteration stop the run (0 = no limit).
    c.algorithm.dynamic_sampling = False
    c.algorithm.max_gen_batches = 0

    c.critic = ml_collections.ConfigDict()
    c.critic.init = "policy"  # "policy" (as released) | "reward_model" (needs the policy's tokenizer)
    c.critic.value_head_init = "zeros"  # "zeros" | "reward_head" (copy the reward model's head)
    # A bias on the value head: True as released (verl's critic is AutoModelForTokenClassification(num_labels=1),
    # a fresh linear head with a bias); starts at 0.
    c.critic.value_head_bias = True

    c.reference = ml_collections.ConfigDict()
    c.reference.keep = True  # a frozen copy of the initial policy: the KL terms need it; else it gives the KL metric

    c.actor_optim = ml_collections.ConfigDict(
        dict(lr=1e-6, b1=0.9, b2=0.999, weight_decay=0.01, clip_norm=1.0, warmup_fraction=0.03, final_lr_fraction=1.0)
    )
    c.critic_optim = ml_collections.ConfigDict(
        dict(lr=1e-5, b1=0.9, b2=0.999, weight_decay=0.01, clip_norm=1.0, warmup_fraction=0.0, final_lr_fraction=0.1)
    )

    c.data = ml_collections.ConfigDict()
    c.data.kind = "jsonl"  # "jsonl" | "parquet" (verl's layout) | "policy_samples" (references sampled here)
    c.data.train = ""  # comma-separated files
    c.data.eval = ""  # held-out prompts with references (for the evaluation); "" = none
    c.data.skip_invalid = False  # strict (default): the first bad row stops the run with its FILE:LINE
    # verl's filter_overlong_prompts: prompts longer than policy.max_prompt_tokens (in policy tokens, as the
    # policy sees them) are dropped and counted (logged, metrics.jsonl `data_*` at step 0, rft_results.json).
    c.data.filter_overlong_prompts = True
    # An over-long prompt that is not filtered: "error" (verl's truncation='error': stop, naming its FILE:LINE)
    # | "left" (keep its last tokens).
    c.data.truncation = "error"
    c.data.shuffle = True
    c.data.eval_rows = 64  # held-out rows evaluated (the first ones)
    # data.kind = "policy_samples": prompts from a corpus, references sampled from the target policy,
    # written once to WORKDIR/data/{train,eval}.jsonl.
    c.data.prompts = "pydoc"  # "pydoc" (prefixes of Python's help topics) | a .txt / .jsonl prompts file
    c.data.prompt_tokens = (2, 24)  # min, max tokens (of the policy's tokenizer) of a corpus prefix
    c.data.heldout_every = 5  # every 5th document (or prompt line) goes to the held-out set
    c.data.train_prompts = 512
    c.data.eval_prompts = 64

    # The target policy (optional): the references' author for data.kind=policy_samples, and the judge of
    # the `target_loglik` evaluation (its mean per-token log-likelihood of the policy's evaluated responses).
    # Fields as a synth pool's PolicySpec; checkpoint "smollm2" is the packaged SmolLM2-135M-Instruct.
    c.target = ml_collections.ConfigDict(
        dict(
            checkpoint="",
            template="{prompt}",
            system="",
            stop=(),
            temperature=1.0,
            top_k=50,
            top_p=0.9,
            max_new_tokens=24,
            max_prompt_tokens=256,
            loop_max_ngram=32,
            trust_remote_code=False,
        )
    )

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 64  # evaluation (and reference sampling) batch
    # How the evaluated responses are drawn: greedy (temperature 0, the default), or sampled with a fixed key.
    c.eval.temperature = 0.0
    c.eval.top_k = 0
    c.eval.top_p = 1.0

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # -1 takes the rest
    return c
