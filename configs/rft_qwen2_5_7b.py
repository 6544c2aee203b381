"""The released POLAR RFT recipe for Qwen2.5-7B-Instruct with POLAR-7B (InternLM/POLAR
`examples/ppo/qwen2_5-7b_general.sh`, verl PPO), on a TPU slice.

    python -m polar_jax rft --config configs/rft_qwen2_5_7b.py --workdir DIR \\
        --config.policy.init=/path/to/Qwen2.5-7B-Instruct --config.reward.model=/path/to/POLAR-7B \\
        --config.data.train=/path/to/general/train.parquet [--config.iterations=N]
    python -m polar_jax compile --config configs/rft_qwen2_5_7b.py --topology v5p-128 --stage rft \\
        --config.policy.init=... --config.reward.model=...      # will it fit? (config.json files suffice)

As released: GAE with gamma = lambda = 1, clip 0.2, dual clip 3.0, value clip 0.5, no KL (neither
in the reward nor as a loss, so no reference policy is kept), one rollout per prompt, the critic
initialised from the policy with a fresh biased value head (verl's token-classification critic),
the raw POLAR score as the terminal reward, thinking stripped by the official rule; 1024 prompts
per iteration and one PPO step on all of them (ppo_mini_batch_size = train_batch_size = 1024,
one epoch); prompts of at most 1024 policy tokens (longer ones filtered and counted, verl's
filter_overlong_prompts; message lists through Qwen's chat template), responses of at most 1024;
actor LR 1e-6 with 3% linear warm-up then constant, critic LR 1e-5 cosine to 0.1 x; gradient
checkpointing on both (`remat=full`); "seq-mean-token-mean" aggregation (micro-batches of 2 in
the recipe make each sequence weigh about the same). The data are verl's POLAR parquet files
(`prompt` messages, `reward_model.ground_truth`); the recipe runs one epoch over them:
set `iterations` to rows / 1024 (the default, 1220, is the paper's 1.25M prompts).

Where it fits, measured by `compile --stage rft` (libtpu 0.0.48.1, from the two models' config.json
files; every program of one iteration, per chip, with what the run keeps on the chips beside it:
rollout prefill and decode through the engine, POLAR-7B's scoring, experience, the PPO update with
the actor's and critic's float32 states and AdamW moments; all chips in FSDP):

    v5p-64  (32 chips)   peak: the update, 83.5 of 95.7 GiB per chip; prefill 71.7, decode 11.0,
                         scoring 49.0, experience 43.7: fits   (96 s to compile on 2 CPU cores)
    v5p-128 (64 chips)   the update 40.3 GiB, but the engine's prefill of all 1024 prompts in one
                         batch is refused (114.6 GiB of temporaries): does not fit; with
                         rollout.slots=256 it fits, peak scoring 91.3 GiB (prefill 46.4)
    v5p-32  (16 chips)   the update alone needs 118.7 GiB of temporaries: does not fit
"""

from polar_jax.rft.defaults import base_config


def get_config():
    """The Qwen2.5-7B-Instruct + POLAR-7B general recipe; model and data paths are placeholders."""
    c = base_config()
    c.setup_hint = (
        "set --config.policy.init (Qwen2.5-7B-Instruct, an HF directory), --config.reward.model "
        "(POLAR-7B, the official HF directory or a polar_jax one) and --config.data.train (verl parquet)"
    )
    c.iterations = 1220  # one epoch over the data: rows / rollout.prompts
    c.checkpoint_every = 100  # trainer.save_freq
    c.log_every = 1

    c.policy.init = "/path/to/Qwen2.5-7B-Instruct"
    c.policy.dtype = "bfloat16"
    c.policy.remat = "full"  # enable_gradient_checkpointing=True (actor and critic)
    c.policy.max_prompt_tokens = 1024  # data.max_prompt_length
    c.policy.chat_template = True  # verl applies the actor's chat template to the message-list prompts

    c.data.kind = "parquet"
    c.data.train = "/path/to/general/train.parquet"
    c.data.eval = ""  # the recipe's validation file is unused (val_before_train=False)
    c.data.filter_overlong_prompts = True
    c.data.truncation = "error"

    c.rollout.prompts = 1024  # data.train_batch_size
    c.rollout.samples_per_prompt = 1  # rollout.n
    c.rollout.max_new_tokens = 1024  # data.max_response_length
    c.rollout.temperature, c.rollout.top_k, c.rollout.top_p = 1.0, 0, 1.0  # verl's vLLM rollout defaults

    c.reward.model = "/path/to/POLAR-7B"
    c.reward.dtype = "bfloat16"
    c.reward.batch_size = 64
    c.reward.strip_think = "official"
    c.reward.normalize = "none"  # the raw score

    c.algorithm.estimator = "gae"
    c.algorithm.gamma = c.algorithm.lam = 1.0
    c.algorithm.clip_ratio = 0.2
    c.algorithm.clip_ratio_c = 3.0
    c.algorithm.value_clip = 0.5
    c.algorithm.loss_agg = "seq-mean-token-mean"
    c.algorithm.epochs = 1  # ppo_epochs
    c.algorithm.minibatches = 1  # ppo_mini_batch_size 1024 of 1024 rollouts
    c.algorithm.kl_coef = c.algorithm.kl_loss_coef = 0.0
    c.reference.keep = False  # no KL term reads it; verl then builds no reference policy

    c.critic.init = "policy"
    c.critic.value_head_bias = True

    c.actor_optim.update(lr=1e-6, warmup_fraction=0.03, final_lr_fraction=1.0)
    c.critic_optim.update(lr=1e-5, warmup_fraction=0.0, final_lr_fraction=0.1)

    c.mesh.update(data=1, fsdp=-1, tensor=1)  # every chip in FSDP, as the replica configs
    return c
