"""Every key of a scaling sweep, with its default: sweep configs start here and change what
differs. Run one with

    python -m polar_jax scaling --config configs/scaling/NAME.py --workdir DIR [--config.KEY=VALUE ...]

`train` is the training config every run starts from (configs/base.py keys; override as
--config.train.optim.lr=...). Each run gets the model of one size, its step count, LR and
batch from the rules below, and evaluation / logging / checkpoint cadences from the
`*_per_run` counts. Depth/width rule and the paper's fits: polar_jax/scaling/sizes.py.
"""

import pathlib

import ml_collections

from polar_jax.config_loading import load_config


def get_config():
    """The defaults of a sweep (a small from-scratch family on synthetic data)."""
    c = ml_collections.ConfigDict()
    c.train = load_config(pathlib.Path(__file__).parents[1] / "base.py")
    c.train.data.kind = "synthetic"
    c.train.model.dtype = "float32"
    # Sizes: one run per layer count of the depth/width rule `family` (d_model = aspect_ratio x layers,
    # heads of head_dim, kv_group query heads per KV head, SwiGLU mlp_dim = 8/3 d_model rounded up).
    c.family = ml_collections.ConfigDict(dict(aspect_ratio=64, head_dim=64, kv_group=1, mlp_multiple=64))
    c.layers = (3, 4, 6, 8, 12, 16, 20, 24, 28)  # 1.3M ... 1.1B non-embedding parameters
    # Or start every run from a base LM instead: "NAME=PATH,NAME=PATH" (polar_jax / HF directories, .gguf).
    c.base_models = ""
    # Tokens each run trains on: kind "steps" (value = steps), "tokens" (value = tokens) or
    # "tokens_per_param" (value x the fitted parameter count). Token budgets become steps with
    # `fill`, the expected share of non-padding tokens in a packed row.
    c.budget = ml_collections.ConfigDict(dict(kind="steps", value=1000.0, fill=0.9))
    # LR: "fixed" (train.optim.lr) or "paper" (the paper's fit, scaling/sizes.py; needs base_tokens_m, the base
    # LM's pre-training tokens in millions, so only for runs from base LMs).
    c.lr = ml_collections.ConfigDict(dict(rule="fixed", base_tokens_m=0.0))
    # Batch: "fixed" (train.data.batch_size rows) or "paper" (samples per step from the fit,
    # packed pairs_per_row to a row, rows rounded up to a multiple of `multiple`).
    c.batch = ml_collections.ConfigDict(dict(rule="fixed", pairs_per_row=2.0, multiple=1))
    c.evals_per_run = 5  # held-out evaluations per run: the points of the compute frontier
    c.logs_per_run = 50
    c.checkpoints_per_run = 2
    c.fit_params = "non_embedding"  # the N of the fits: "non_embedding" (Kaplan et al.) or "total"
    # Training seeds (each run's train.seed: initialisation and data order): one run per size
    # and seed, named SIZE-sSEED unless this is (0,); the fits use each size's mean over its seeds.
    c.seeds = (0,)
    c.data_dir = ""  # a `prepare` output root: trains on DIR/train, validates on DIR/<eval_split> (sets train.data)
    # The validation split(s) of data_dir: heldout_prompts (new prompts, trained policies) or
    # heldout_policies (policies never trained on); comma-separated ones are evaluated as one set.
    c.eval_split = "heldout_prompts"
    c.data_hint = ""  # what to tell the user when the data is missing
    return c
