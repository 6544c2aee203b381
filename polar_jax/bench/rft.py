"""One RFT iteration, phase by phase: rollout (sampling), scoring (decode, POLAR encoding,
reward-model forward), experience (log-probs, reference log-probs, values, GAE) and the PPO
update (epochs x mini-batches of actor and critic steps). Medians over timed iterations
after warm-up ones (compilation); every phase waits for its results.

    python -m polar_jax.bench.rft                                   # configs/rft_demo.py (needs runs/demo), CPU
    python -m polar_jax.bench.rft --config configs/rft_demo.py:DIR --workdir runs/rft_demo
    python -m polar_jax.bench.rft --synthetic 800m --dtype bfloat16 # random ~800M policy, critic and RM (GPU)

`--synthetic SIZE` needs no files: a byte-level BPE tokenizer is trained on Python's help
topics, and random Llama-shaped policy and reward models of that size are built in memory
(random policies rarely stop, so every response runs to --new tokens: the worst case).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile

import jax
import numpy as np

from polar_jax import parallel
from polar_jax.bench.common import print_table
from polar_jax.config_loading import load_config
from polar_jax.io.model import Model
from polar_jax.models import families
from polar_jax.models.config import ModelConfig
from polar_jax.rft import data as data_lib
from polar_jax.rft import setup, trainer
from polar_jax.rft.defaults import base_config

PHASES = (
    ("rollout", "time_rollout_s"),
    ("scoring", "time_score_s"),
    ("experience", "time_experience_s"),
    ("update", "time_update_s"),
)
# d_model, layers, heads, kv heads, head_dim, mlp
SIZES = {"tiny": (64, 2, 4, 2, 16, 128), "100m": (768, 12, 12, 4, 64, 2048), "800m": (1536, 24, 12, 4, 128, 5632)}


def synthetic(size: str, dtype: str, prompts: int, new: int, prompt_tokens: int, workdir: pathlib.Path):
    """(config, models, examples) of random models of `size` on corpus prompts; no files needed."""
    from polar_jax.io import tokenizers
    from polar_jax.synth import corpus, demo_lms
    from polar_jax.synth import prompts as prompts_lib
    from polar_jax.train.lm import numpy_init_params

    tok_dir = demo_lms.train_tokenizer(corpus.corpus_documents(), 32000, workdir / "tokenizer")
    tok = tokenizers.load_tokenizer(tok_dir)
    d, layers, heads, kv, head_dim, mlp = SIZES[size]
    cfg = ModelConfig(
        vocab_size=-(-len(tok) // 128) * 128,
        d_model=d,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        mlp_dim=mlp,
        dtype=dtype,
        scan_unroll=1,
    )
    policy = Model(cfg, numpy_init_params(cfg, 0), "llama", families.hf_config_for(cfg, "llama", "lm"))
    rm_cfg = cfg.replace(heads=("reward",))
    reward = Model(rm_cfg, numpy_init_params(rm_cfg, 1), "llama", families.hf_config_for(rm_cfg, "llama", "reward"))
    m = setup.Models(policy, tok, reward, tok)

    c = base_config()
    c.policy.max_prompt_tokens = prompt_tokens
    c.rollout.prompts, c.rollout.max_new_tokens = prompts, new
    c.reward.batch_size = min(prompts, 32)
    c.reward.encoding.max_length = 2 * (prompt_tokens + new) + 512
    c.reward.encoding.max_response_length = max(new, 64)
    c.eval.batch_size = prompts
    docs = corpus.corpus_documents()
    source = prompts_lib.PromptSource(docs, tok, min_tokens=prompt_tokens // 4, max_tokens=prompt_tokens, seed=0)
    texts = [source.prompt(i).text for i in range(4 * prompts + 1)]
    examples = [data_lib.Example(texts[i], texts[i + 1], f"synthetic:{i}") for i in range(4 * prompts)]
    return c, m, examples


def from_config(spec: str, overrides: list[str], workdir: pathlib.Path):
    """(config, models, examples) of an RFT config (its data: sampled into `workdir` if needed)."""
    config = load_config(spec, overrides)
    m = setup.load_models(config)
    mesh = parallel.make_mesh(dict(config.mesh))
    with parallel.use_rules(mesh):
        target = trainer.Runner(config, m, mesh).target
        examples, _ = trainer.read_data(config, workdir, target, m.policy_tokenizer)
    return config, m, examples


def time_iterations(config, m, examples, warmup: int, repeats: int) -> list[dict]:
    """Metrics of `warmup + repeats` iterations; the timed ones only."""
    mesh = parallel.make_mesh(dict(config.mesh))
    with parallel.use_rules(mesh):
        runner = trainer.Runner(config, m, mesh)
        state = runner.initial_state()
        prompts = data_lib.PromptIterator(examples, config.rollout.prompts, seed=config.seed)
        out = []
        for i in range(warmup + repeats):
            state, metrics = runner.iteration(state, prompts.next_batch(), i)
            if i >= warmup:
                out.append(metrics)
    return out


def table(rows: list[dict]) -> list[dict]:
    """Median seconds and share of each phase, then the whole iteration."""
    med = {key: float(np.median([r[key] for r in rows])) for _, key in PHASES}
    total = sum(med.values())
    out = [{"phase": name, "seconds": f"{med[key]:.3f}", "share": f"{med[key] / total:.0%}"} for name, key in PHASES]
    tokens = float(np.median([r["response_length"] for r in rows]))
    out.append({"phase": "iteration", "seconds": f"{total:.3f}", "share": "100%"})
    out.append({"phase": "response tokens / rollout", "seconds": f"{tokens:.1f}", "share": ""})
    speed = float(np.median([r["tokens_per_s"] for r in rows]))
    out.append({"phase": "tokens/s (prompt + response)", "seconds": f"{speed:,.0f}", "share": ""})
    return out


def main(argv=None) -> None:
    """Parse flags, build the run, time its iterations, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/rft_demo.py", help="an RFT config (with its models on disk)")
    parser.add_argument("--workdir", default=None, help="where a policy_samples config's data is (or goes)")
    parser.add_argument("--synthetic", choices=sorted(SIZES), default=None, help="random models of this size instead")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="--synthetic compute dtype")
    parser.add_argument("--prompts", type=int, default=64, help="--synthetic: prompts per iteration")
    parser.add_argument("--new", type=int, default=256, help="--synthetic: max new tokens")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="--synthetic: prompt width")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args, overrides = parser.parse_known_args(argv)
    unknown = [a for a in overrides if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(args.workdir or tmp)
        if args.synthetic:
            config, m, examples = synthetic(
                args.synthetic, args.dtype, args.prompts, args.new, args.prompt_tokens, workdir
            )
            for item in overrides:
                from polar_jax.config_loading import apply_override

                apply_override(config, item)
            what = (
                f"random {args.synthetic} policy ({m.policy.cfg.num_params() / 1e6:.0f}M), critic and reward "
                f"model, {args.dtype}"
            )
        else:
            config, m, examples = from_config(args.config, overrides, workdir)
            what = (
                f"{args.config}: policy {m.policy.cfg.num_params() / 1e6:.2f}M, reward model "
                f"{m.reward.cfg.num_params() / 1e6:.2f}M"
            )
        rows = time_iterations(config, m, examples, args.warmup, args.repeats)
    device = jax.devices()[0]
    a = config.algorithm
    print_table(
        table(rows),
        f"One RFT iteration ({what}); {config.rollout.prompts} prompts x "
        f"{config.rollout.samples_per_prompt}, up to {config.rollout.max_new_tokens} new tokens, "
        f"{a.estimator}, {a.epochs} epochs x {a.minibatches} mini-batches; median of "
        f"{args.repeats} after {args.warmup} warm-up; jax {jax.__version__} on {device.platform} "
        f"({device.device_kind}, {os.cpu_count()} host cores)",
    )


if __name__ == "__main__":
    main()
