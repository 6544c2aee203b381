"""POLAR-1.8B replica: pre-training (default) or SFT (`:sft`) on an InternLM2.5-1.8B base.

    python -m polar_jax train --config configs/polar_1_8b.py --workdir DIR \\
        --config.model.init=/path/to/internlm2_5-1_8b --config.data.train=... --config.data.eval=...
    python -m polar_jax train --config configs/polar_1_8b.py:sft --workdir DIR --config.model.init=DIR_OF_PRETRAINED_RM

Numbers are the paper's (REFERENCE.md): pre-training LR 1.4e-5 and 1940 triplets per step,
one epoch; SFT LR 1e-5, 320 triplets per step, one epoch; AdamW (0.9, 0.95), no weight
decay, clip 1.0, 3% warm-up, cosine to 0.1 x LR. Rows are packed: a step holds
`batch_size` rows of `seq_len` tokens; at the typical pair length (~2k tokens for 1-1024
token prompts and sampled answers) 128 rows of 32k tokens hold about 1940 pairs.

Mesh: every chip in FSDP (`fsdp=-1`), which fits this size on a TPU v5p-8 (4 chips) and up,
and on one 8-GPU node; add `--config.mesh.data=N` to replicate over N groups on larger
slices. Check a mesh without hardware: `python -m polar_jax compile` (TPU topologies).
"""

import ml_collections

# InternLM2.5-1.8B (config.json of internlm/internlm2_5-1_8b).
INTERNLM2_5_1_8B = dict(vocab_size=92544, d_model=2048, num_layers=24, num_heads=16, num_kv_heads=8,
                        head_dim=128, mlp_dim=8192)


def get_config(stage: str = "pretrain"):
    """The replica for `stage` "pretrain" or "sft"."""
    if stage not in ("pretrain", "sft"):
        raise ValueError(f"stage {stage!r}: use pretrain or sft")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.steps = 10_000  # one epoch: set to (triplets / 1940) for your data
    c.log_every = 10
    c.eval_every = 500
    c.eval_batches = 8
    c.checkpoint_every = 500
    c.checkpoint_minutes = 30.0
    c.keep_checkpoints = 3
    c.max_bad_steps = 10
    c.accum_steps = 1
    c.margin = 0.0
    c.peak_tflops = 0.0

    c.model = ml_collections.ConfigDict(dict(INTERNLM2_5_1_8B))
    c.model.init = "/path/to/internlm2_5-1_8b"  # HF directory of the base LM (no network at run time)
    c.model.reward_head_init = "normal"
    c.model.dtype = "bfloat16"
    c.model.remat = "dots_no_batch"
    c.model.scan_unroll = 1  # = num_layers trades compile time for speed (14% on an H200 at 800M)
    c.model.attention_impl = "auto"  # splash (TPU), cuDNN (GPU)

    c.data = ml_collections.ConfigDict()
    c.data.kind = "array_record"
    c.data.train = ""  # directories written by `python -m polar_jax prepare`
    c.data.eval = ""
    c.data.synthetic_train_examples = 0
    c.data.synthetic_eval_examples = 0
    c.data.synthetic_concentration = 0.05
    c.data.batch_size = 128  # rows of seq_len tokens per step (~1940 pairs)
    c.data.seq_len = 32768  # a pair of two 16k sequences always fits one row
    c.data.max_pairs_per_row = 32
    c.data.mode = "packed"
    c.data.num_workers = 4

    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})

    c.optim = ml_collections.ConfigDict(dict(lr=1.4e-5, b1=0.9, b2=0.95, weight_decay=0.0, clip_norm=1.0,
                                             warmup_fraction=0.03, final_lr_fraction=0.1))
    if stage == "sft":
        c.model.init = "/path/to/POLAR-1_8B-Base"  # a pre-trained POLAR RM (ours, or converted official)
        c.optim.lr = 1e-5
        c.data.batch_size = 24  # ~320 triplets per step at SFT lengths
        c.steps = 470  # ~150K prompts / 320
    return c
