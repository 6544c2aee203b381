"""Every key the trainer reads, with its default: configs/*.py start here (through
configs/base.py) and change what differs. Optimiser defaults are POLAR's released (xtuner) recipe:
AdamW (0.9, 0.95), no weight decay, clip 1.0, 3% linear warm-up then cosine to 0.1 x LR. It lives
in the package so that library code (the demo) can build configs too."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """The defaults of a training run (a new ConfigDict each call)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.steps = 1000
    c.log_every = 10  # 0 = never (the last step is always logged)
    c.eval_every = 500  # 0 = no evaluation
    c.eval_batches = 8
    c.checkpoint_every = 500  # 0 = never (the last step and checkpoint_minutes still save)
    c.checkpoint_minutes = 30.0  # also save when this long has passed since the last save
    c.keep_checkpoints = 3
    c.max_bad_steps = 10  # this many non-finite steps in a row stop the run
    # A rerun resumes the workdir's checkpoints only with a config that computes the same thing
    # (train/loop.py RESUME_FREE_KEYS lists what may change); these two are the deliberate exceptions:
    c.allow_changed_config = False  # resume them anyway (e.g. a lower learning rate after a divergence)
    c.start_over = False  # none of them readable: start at step 0 (otherwise the run stops and lists them)
    c.accum_steps = 1  # micro-batches per step (gradient accumulation)
    c.margin = 0.0  # Bradley-Terry: -log sigmoid(chosen - rejected - margin)
    c.peak_tflops = 0.0  # bf16 peak of one chip for MFU; 0 = look it up by device kind

    c.model = ml_collections.ConfigDict()
    c.model.init = "scratch"  # "scratch" | a base LM (HF dir, .gguf, polar dir) | a POLAR RM (SFT)
    c.model.reward_head_init = "normal"  # for a base LM: "zeros" | "normal"
    # Sizes: required by "scratch"; None with a checkpoint (taken from it; set ones must match).
    for size in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"):
        c.model[size] = None
    c.model.dtype = "bfloat16"  # compute; parameters stay float32
    c.model.remat = "none"  # none | full | dots | dots_no_batch
    c.model.scan_unroll = 1  # layers per scan step; all of them was 14% faster on an H200 (800M)
    c.model.attention_impl = "auto"  # splash (TPU), cuDNN (GPU, 16-bit), XLA otherwise

    c.data = ml_collections.ConfigDict()
    c.data.kind = "array_record"  # "array_record" (directories written by `prepare`) | "synthetic"
    c.data.train = ""  # comma-separated directories or files
    c.data.eval = ""
    c.data.synthetic_train_examples = 20_000
    c.data.synthetic_eval_examples = 256
    c.data.synthetic_concentration = 0.3  # Dirichlet of the synthetic policies' transitions
    c.data.synthetic_vocab_size = 128  # token ids 0..127 (within any model's vocabulary)
    c.data.batch_size = 8  # rows per step (global)
    c.data.seq_len = 4096  # tokens per row
    c.data.max_pairs_per_row = 8
    c.data.mode = "packed"  # "packed" | "padded" (length buckets)
    # Each pair's common prefix (prompt, reference, prompt again) computed once for both candidates
    # (exact: the same rewards and gradients); False lays the two sequences out whole.
    c.data.shared_prefix = True
    # Attention computes only this far back, the longest segment a row may hold: -1 = the longest in
    # the prepared data (stats.json), 0 = whole rows, N = at most N tokens (a longer pair is an error).
    c.data.attention_window = -1
    c.data.num_workers = 0

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # -1 takes the rest

    c.optim = ml_collections.ConfigDict(
        dict(lr=1e-5, b1=0.9, b2=0.95, weight_decay=0.0, clip_norm=1.0, warmup_fraction=0.03, final_lr_fraction=0.1)
    )
    return c
