"""A synth config (`configs/synth_*.py`) -> the pool, the prompt source and the plan.

Config keys (see configs/synth_smollm2.py):
    seed, num_triplets, shard_size, batch_size, prompt_bucket
    trust_remote_code       (optional, default False) let checkpoints run their own tokenizer code
    policies        list of dicts, the fields of `pool.PolicySpec`
    draw_from       names A and B are drawn from (empty: all policies)
    must_include    names every triplet involves as A or B (empty: no constraint)
    prompts.corpus          "pydoc_topics" (built in) or comma-separated .txt files (one
                            document each) / .jsonl files (one document per row's "text")
    prompts.split           "train" | "heldout" | "all" documents (every heldout_every-th is held out)
    prompts.heldout_every, prompts.min_tokens, prompts.max_tokens
    prompts.tokenizer       what counts prefix tokens (default: the first policy's tokenizer)
    prompts.instructions, prompts.instruction_fraction
"""

from __future__ import annotations

import json
import pathlib

from polar_jax.io import tokenizers
from polar_jax.synth import prompts as prompts_lib
from polar_jax.synth.pool import TRUST_REMOTE_CODE, PolicyPool, PolicySpec
from polar_jax.synth.synthesize import SynthPlan

PYDOC_TOPICS = "pydoc_topics"


def read_corpus(spec: str) -> list[str]:
    """Documents of a corpus spec: the built-in pydoc topics, or .txt / .jsonl files."""
    if spec == PYDOC_TOPICS:
        from polar_jax.synth.corpus import corpus_documents

        return corpus_documents()
    documents = []
    for item in spec.split(","):
        path = pathlib.Path(item)
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for line_no, line in enumerate(f, start=1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                            raise ValueError(f"{path}:{line_no}: a corpus row needs a string 'text' field")
                        documents.append(row["text"])
        else:
            documents.append(path.read_text(encoding="utf-8"))
    return [d for d in documents if d.strip()]


def build(config) -> tuple[PolicyPool, prompts_lib.PromptSource, SynthPlan]:
    """The three pieces `synthesize` needs, from a config."""
    specs = [PolicySpec.from_dict(p) for p in config.policies]
    trust = config.get("trust_remote_code", False)  # the checkpoints' own tokenizer code (InternLM2) may run
    pool = PolicyPool(specs, batch_size=config.batch_size, prompt_bucket=config.prompt_bucket, trust_remote_code=trust)
    p = config.prompts
    documents = read_corpus(p.corpus) if p.corpus else []
    train_docs, heldout_docs = prompts_lib.split_documents(documents, p.heldout_every)
    doc_indices = {"train": train_docs, "heldout": heldout_docs, "all": list(range(len(documents)))}
    if p.split not in doc_indices:
        raise ValueError(f"config.prompts.split={p.split!r}; choose train, heldout or all")
    tokenizer = (
        tokenizers.load_tokenizer(p.tokenizer, trust, TRUST_REMOTE_CODE)
        if p.tokenizer
        else pool.tokenizer(specs[0].name)
    )
    instructions = prompts_lib.read_instructions(p.instructions) if p.instructions else []
    source = prompts_lib.PromptSource(
        documents,
        tokenizer,
        doc_indices=doc_indices[p.split],
        min_tokens=p.min_tokens,
        max_tokens=p.max_tokens,
        instructions=instructions,
        instruction_fraction=p.instruction_fraction,
        seed=config.seed,
    )
    plan = SynthPlan(
        num_triplets=config.num_triplets,
        shard_size=config.shard_size,
        seed=config.seed,
        policies=tuple(config.draw_from),
        must_include=tuple(config.must_include),
    )
    return pool, source, plan
