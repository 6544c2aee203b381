"""The CPU scaling sweep on the demo's triplets (text from a pool of real small LMs).

    python -m polar_jax demo --workdir runs/demo            # first: writes runs/demo/prepared/
    python -m polar_jax scaling --config configs/scaling/cpu_demo.py --workdir runs/scaling_cpu_demo

The sizes, budget and LR of cpu_synthetic.py. Rows are 512 tokens with up to 2 pairs, as in
the demo's own reward model (the demo encodes each sequence in at most 256 tokens), 8 of them
a step: the tokens per step of cpu_synthetic, so about its wall time. The vocabulary is the
demo tokenizer's (prepared/train/encoding.json, rounded up to a multiple of 64). Validation
loss is on the held-out prompts split, all of it. Another `prepare` output:
--config.data_dir=DIR (DIR/train and DIR/heldout_prompts).
"""

import pathlib

from polar_jax.config_loading import load_config


def get_config():
    """cpu_synthetic.py on the demo's prepared triplets."""
    c = load_config(pathlib.Path(__file__).with_name("cpu_synthetic.py"))
    c.data_dir = "runs/demo/prepared"
    c.data_hint = ("Run `python -m polar_jax demo --workdir runs/demo` first (it writes runs/demo/prepared/), "
                   "or point --config.data_dir at a directory with `prepare` outputs train/ and heldout_prompts/.")
    c.train.data.kind = "array_record"
    c.train.data.seq_len = 512
    c.train.data.batch_size = 8
    c.train.data.max_pairs_per_row = 2
    c.train.eval_batches = 64  # more than the held-out prompts split fills: all of it, once
    return c
