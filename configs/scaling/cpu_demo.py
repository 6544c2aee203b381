"""The CPU scaling sweep on the demo's triplets (text from a pool of real small LMs).

    python -m polar_jax demo --workdir runs/demo            # first: writes runs/demo/prepared/
    python -m polar_jax scaling --config configs/scaling/cpu_demo.py --workdir runs/scaling_cpu_demo

Four sizes of the CPU family (d_model = 16 x layers, 2 to 5 layers: 27K, 83K, 201K, 398K
non-embedding parameters), three seeds each (12 runs), each trained from scratch for 60
steps of 8 rows x 512 tokens at LR 1e-3. A row packs up to 4 pairs (the demo's sequences are
about 68 tokens, so a pair is about 136): about 28 pairs a step, 1,700 in a run, less than one
pass over the 2,048 training triplets, as the paper trains for one epoch. Validation loss is
on the held-out prompts split (256 triplets, all of them, 4 times a run); the fits use each
size's mean over its seeds.

Why these choices (measured on 2 busy cores, the demo's data):
- 240 steps of 2 pairs a row (about 2 epochs), one seed: the loss saturated at the split's
  floor (0.080, 0.049, 0.044, 0.049 from 27K to 398K; accuracy 0.97-0.98, the rest a few
  pairs every size gets confidently wrong), so it stopped falling with size; R^2 0.835 with
  the 1-layer model, which never learned (0.699: one layer cannot compare the candidate with
  the reference, so the family starts at 2 layers).
- One seed is too noisy: at 60 steps the three seeds of one size spread by up to 2.5x
  (201K: 0.135, 0.333, 0.198). Their mean falls with size: 0.480, 0.334, 0.222, 0.173
  (accuracy 0.875 to 0.956), giving L = 25.0 N^-0.385 (exponent's standard error 0.020,
  R^2 0.994), in 14 min 44 s at a load average of 4.5 to 6 (other jobs sharing the cores).
- The held-out *policies* split (every triplet involves a policy never trained on) is no
  better here: the final models of a one-seed sweep scored 0.65, 0.52, 0.85, 0.68 on it, with
  no trend (accuracy 0.68-0.72). With three training policies, telling unseen ones apart does
  not improve with size. `--config.eval_split=heldout_policies` measures it.

Another `prepare` output: --config.data_dir=DIR (DIR/train and DIR/<eval_split>).
"""

import pathlib

from polar_jax.config_loading import load_config


def get_config():
    """cpu_synthetic.py on the demo's prepared triplets: 4 sizes x 3 seeds, 60 steps each."""
    c = load_config(pathlib.Path(__file__).with_name("cpu_synthetic.py"))
    c.data_dir = "runs/demo/prepared"
    c.eval_split = "heldout_prompts"
    c.data_hint = (
        "Run `python -m polar_jax demo --workdir runs/demo` first (it writes runs/demo/prepared/), "
        "or point --config.data_dir at a directory with `prepare` outputs train/ and heldout_prompts/."
    )
    c.layers = (2, 3, 4, 5)
    c.seeds = (0, 1, 2)
    c.budget.update(kind="steps", value=60.0)
    c.evals_per_run = 4
    c.logs_per_run = 20
    c.checkpoints_per_run = 1
    c.train.data.kind = "array_record"
    c.train.data.seq_len = 512
    c.train.data.batch_size = 8
    c.train.data.max_pairs_per_row = 4
    c.train.eval_batches = 64  # more than the held-out split fills: all of it, once
    return c
