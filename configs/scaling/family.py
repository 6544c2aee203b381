"""The main size family, 1.3M to 1.1B non-embedding parameters, for a pod slice.

    python -m polar_jax scaling --config configs/scaling/family.py --workdir /shared/sweep \\
        --launch pod --tpu NAME --zone ZONE --config.data_dir=/shared/prepared

prints one launch/tpu_pod.sh command per run (DIR must be on storage every worker sees, as
for any pod run); rerun the same command once they are done to collect, fit and plot.
`--launch local` trains them here instead, one after another.

From scratch, 20 tokens per parameter (of the counted, non-embedding N), rows of 4096 tokens,
the paper's batch fit (about 2 pairs a row; rows rounded up to a multiple of 32, set
--config.batch.multiple to your slice's chip count), a fixed LR (the paper's LR fit needs a
base LM: --config.base_models=NAME=PATH,... --config.lr.rule=paper --config.lr.base_tokens_m=Dp).
"""

import pathlib

from polar_jax.config_loading import load_config


def get_config():
    """The 1M-1B family: configs/scaling/base.py with these changes."""
    c = load_config(pathlib.Path(__file__).with_name("base.py"))
    c.family.update(aspect_ratio=64, head_dim=64, kv_group=1, mlp_multiple=64)
    c.layers = (3, 4, 6, 8, 12, 16, 20, 24, 28)
    c.budget.update(kind="tokens_per_param", value=20.0, fill=0.9)
    c.batch.update(rule="paper", pairs_per_row=2.0, multiple=32)
    c.lr.update(rule="fixed")
    c.data_hint = "Set --config.data_dir to a `prepare` output root (DIR/train, DIR/heldout_prompts)."
    c.train.data.kind = "array_record"
    c.train.data.seq_len = 4096
    c.train.data.max_pairs_per_row = 8
    c.train.data.num_workers = 4
    c.train.eval_batches = 32
    c.train.model.dtype = "bfloat16"
    c.train.model.remat = "dots_no_batch"
    c.train.mesh.update(data=1, fsdp=-1, tensor=1)
    c.train.optim.lr = 3e-4
    return c
