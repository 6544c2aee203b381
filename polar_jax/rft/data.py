"""RFT data: prompts with their references, from JSONL or verl's parquet layout, and the
checkpointable iterator that deals them out in batches.

    {"prompt": "...", "reference": "..."}                    JSONL (strings or message lists)
    prompt: [{"role", "content"}, ...], reward_model: {"ground_truth": ...}   verl's POLAR parquet

Every row is validated by `data.schema` (kind "rft"): strict mode stops at the first bad row
with its FILE:LINE (parquet: FILE:row N, 0-based); `skip_invalid` counts and reports it.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import NamedTuple

import numpy as np

from polar_jax.data import schema
from polar_jax.data.encoding import Text
from polar_jax.io import atomic, storage

log = logging.getLogger(__name__)


class Example(NamedTuple):
    """One prompt with its reference answer, and where it came from."""

    prompt: Text
    reference: Text
    source: str  # FILE:LINE (JSONL) or FILE:row N (parquet)


def read_jsonl(
    path: str | pathlib.Path, skip_invalid: bool = False, report: schema.SkipReport | None = None
) -> list[Example]:
    """The valid `{prompt, reference}` rows of a JSONL file, in file order."""
    return [
        Example(r.data["prompt"], r.data["reference"], r.source)
        for r in schema.read_jsonl(path, "rft", skip_invalid=skip_invalid, report=report)
    ]


def read_verl_parquet(
    path: str | pathlib.Path, skip_invalid: bool = False, report: schema.SkipReport | None = None
) -> list[Example]:
    """Rows of a verl parquet file: `prompt` (messages or a string) and the reference in
    `reward_model.ground_truth` (or a top-level `reference` column); other columns are ignored."""
    import pyarrow.parquet as pq

    path = pathlib.Path(path)
    columns = pq.read_schema(path).names
    if "prompt" not in columns or not {"reward_model", "reference"} & set(columns):
        raise schema.DataError(
            str(path),
            "missing_field",
            f"a verl RFT parquet needs columns 'prompt' and 'reward_model' (with 'ground_truth'); found {columns}",
            hint="write it as verl's POLAR examples do",
        )
    reference_column = "reference" if "reference" in columns else "reward_model"
    table = pq.read_table(path, columns=["prompt", reference_column])
    out = []
    for i, row in enumerate(table.to_pylist()):
        source = f"{path}:row {i}"
        try:
            reference = row[reference_column]
            if reference_column == "reward_model":
                if not isinstance(reference, dict) or "ground_truth" not in reference:
                    raise schema.DataError(
                        source, "missing_field", "reward_model has no ground_truth", "reward_model.ground_truth"
                    )
                reference = reference["ground_truth"]
            data = schema.validate_row(
                {"prompt": _messages(row["prompt"]), "reference": _messages(reference)}, "rft", source
            )
        except schema.DataError as e:
            if not skip_invalid:
                raise
            if report is not None:
                report.add(e.reason, f"{e.location}: {e.detail}")
            continue
        out.append(Example(data["prompt"], data["reference"], source))
    return out


def _messages(value):
    """Arrow gives message structs as dicts with every struct field; drop the absent (None) ones."""
    if isinstance(value, list):
        return [{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m for m in value]
    return value


def read_examples(spec: str, kind: str, skip_invalid: bool = False) -> list[Example]:
    """Rows of comma-separated files of `kind` ("jsonl" | "parquet"); skipped rows are logged."""
    reader = {"jsonl": read_jsonl, "parquet": read_verl_parquet}.get(kind)
    if reader is None:
        raise ValueError(f"data.kind={kind!r}; choose jsonl, parquet or policy_samples")
    report = schema.SkipReport()
    out = []
    for item in [s for s in spec.split(",") if s]:
        if not storage.path(item).exists():  # a file, or one in the run's gs:// workdir
            raise FileNotFoundError(f"data file {item} does not exist")
        out += reader(item, skip_invalid=skip_invalid, report=report)
    if report.invalid:
        log.warning("skipped %d invalid rows of %s:\n%s", report.invalid, spec, report.summary())
    if not out:
        raise ValueError(f"no valid {{prompt, reference}} rows in {spec!r}")
    return out


TRUNCATIONS = ("error", "left")


def filter_overlong(
    examples: list[Example],
    length,
    max_tokens: int,
    drop: bool = True,
    truncation: str = "error",
    what: str = "data.train",
) -> tuple[list[Example], int]:
    """(kept examples, how many were dropped) as verl's `filter_overlong_prompts`: a prompt of
    `length(prompt)` > `max_tokens` policy tokens is dropped when `drop`; else `truncation`
    "error" stops at it (its FILE:LINE), "left" keeps it (its last tokens are used)."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"data.truncation={truncation!r}; choose one of {', '.join(TRUNCATIONS)}")
    kept, longest = [], 0
    for ex in examples:
        n = length(ex.prompt)
        if n <= max_tokens:
            kept.append(ex)
            continue
        longest = max(longest, n)
        if drop:
            continue
        if truncation == "error":
            raise ValueError(
                f"{ex.source}: the prompt has {n} policy tokens > policy.max_prompt_tokens={max_tokens} "
                "(data.truncation=error, as verl's); filter such prompts "
                "(data.filter_overlong_prompts=True), keep their last tokens (data.truncation=left) or "
                "raise policy.max_prompt_tokens"
            )
        kept.append(ex)
    dropped = len(examples) - len(kept)
    if examples and not kept:
        raise ValueError(
            f"all {len(examples)} prompts of {what} are longer than policy.max_prompt_tokens={max_tokens} "
            f"policy tokens (the longest has {longest}); nothing is left to train on: raise "
            "policy.max_prompt_tokens, or use shorter prompts"
        )
    if dropped:
        log.warning(
            "%s: dropped %d of %d prompts longer than policy.max_prompt_tokens=%d policy tokens (the longest "
            "has %d; data.filter_overlong_prompts)",
            what,
            dropped,
            len(examples),
            max_tokens,
            longest,
        )
    return kept, dropped


def write_jsonl(examples: list[Example], path: str | pathlib.Path, meta: list[dict] | None = None) -> None:
    """Write `{prompt, reference[, meta]}` rows atomically (a temporary file, then a rename; in a
    bucket one upload)."""
    path = storage.path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ex in enumerate(examples):
        row = {"prompt": ex.prompt, "reference": ex.reference}
        if meta is not None:
            row["meta"] = meta[i]
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    atomic.write_text(path, "".join(lines))


class PromptIterator:
    """Batches of examples, epoch after epoch, each epoch in the order of a permutation drawn
    from (seed, epoch). Its position is its whole state: `get_state` / `set_state` make it
    part of a checkpoint (the Checkpointer stores it like a Grain iterator)."""

    def __init__(self, examples: list[Example], batch_size: int, seed: int = 0, shuffle: bool = True):
        if not examples:
            raise ValueError("no examples to iterate over")
        self.examples, self.batch_size, self.seed, self.shuffle = examples, batch_size, seed, shuffle
        self.epoch, self.position = 0, 0

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.examples))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def next_batch(self) -> list[Example]:
        """The next `batch_size` examples (an epoch boundary is crossed when needed)."""
        out = []
        while len(out) < self.batch_size:
            order = self._order(self.epoch)
            take = order[self.position : self.position + self.batch_size - len(out)]
            out += [self.examples[i] for i in take]
            self.position += len(take)
            if self.position == len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def get_state(self) -> bytes:
        """The position as JSON bytes."""
        return json.dumps({"epoch": self.epoch, "position": self.position, "size": len(self.examples)}).encode()

    def set_state(self, state: bytes) -> None:
        """Restore a position saved by `get_state` (the examples must be the same)."""
        d = json.loads(state)
        if d["size"] != len(self.examples):
            raise ValueError(
                f"the checkpoint's data had {d['size']} examples, these have {len(self.examples)}: "
                "resume with the same data"
            )
        self.epoch, self.position = d["epoch"], d["position"]

    def start_prefetch(self) -> None:
        """Nothing to prefetch (the Grain checkpoint handler calls this after a restore)."""
