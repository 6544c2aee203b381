"""JSONL triplets -> tokenised ArrayRecord shards: the library side of `python -m polar_jax prepare`.

    DIR/triplets-00000-of-0000N.array_record   one `records.encode_record` per valid row, in input order
    DIR/encoding.json                          EncodingConfig, tokenizer source, reward token id, vocab size
    DIR/tokenizer/                             the tokenizer as used (added special tokens included)
    DIR/stats.json                             counts, skips by reason, truncations, length histogram, speed

Two passes over the inputs: the first validates every row (strict mode fails here, before any
tokenising) and counts them, so shard k can hold a contiguous slice and the shards read in
order are the input order; the second encodes. Encoding runs in a process pool (spawn: the
parent may have imported JAX, which does not survive a fork) whose workers unpickle the
parent's tokenizer once each, so added special tokens get the same ids everywhere. Results
come back in submission order, so the output does not depend on the number of workers.

Everything is written into a temporary sibling directory that is renamed to DIR at the end
(stats.json last), so a failed run never leaves a DIR that looks complete.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import multiprocessing
import os
import pickle
import time
from collections.abc import Iterable, Iterator, Sequence

from polar_jax.data import encoding, records, schema, sources
from polar_jax.data.batch import shared_prefix_length
from polar_jax.errors import UserError
from polar_jax.io import atomic, stale_partials

log = logging.getLogger(__name__)

PARTS = ("prompt", "reference", "chosen", "rejected")
TOKENIZER_DIR = "tokenizer"  # DIR/tokenizer: the tokenizer with any added tokens, loadable by load_tokenizer
ROWS_PER_TASK = 16  # rows per pool task: large enough to amortise IPC, small enough to balance
TASKS_IN_FLIGHT_PER_WORKER = 4  # bounds memory: the reader never runs far ahead of the encoders


class PrepareError(UserError, ValueError):
    """A `prepare` run that cannot go on (bad output directory, tokenizer, empty input...)."""


@dataclasses.dataclass
class Encoder:
    """A tokenizer made ready for the encoding: special tokens resolved (and added if asked)."""

    tokenizer: object
    cfg: encoding.EncodingConfig
    reward_token_id: int
    source: str
    base_vocab_size: int
    added_tokens: dict[str, int]

    def info(self) -> dict:
        """What a trainer needs to know about the ids (goes into encoding.json)."""
        split_ids = self.tokenizer.encode(self.cfg.split_text, add_special_tokens=False)
        return {
            "encoding": self.cfg.to_dict(),
            "tokenizer_source": self.source,
            "reward_token_id": int(self.reward_token_id),
            "split_token_id": int(split_ids[0]) if len(split_ids) == 1 else None,
            "vocab_size": len(self.tokenizer),
            "base_vocab_size": self.base_vocab_size,
            # Non-empty: the model's embedding must grow from base_vocab_size to vocab_size.
            "added_tokens": self.added_tokens,
        }


def load_tokenizer(src: str | os.PathLike, trust_remote_code: bool = False):
    """A tokenizer from a model source or a tokenizer-only HF directory (`io.tokenizers.load_tokenizer`)."""
    from polar_jax.io import tokenizers  # here, not at the top: pool workers that never load one skip io/

    if not os.path.exists(src):
        raise FileNotFoundError(f"tokenizer {src} does not exist (give an HF tokenizer directory or a .gguf file)")
    return tokenizers.load_tokenizer(src, trust_remote_code)


def load_encoder(
    tokenizer_src: str | os.PathLike,
    cfg: encoding.EncodingConfig,
    add_special_tokens: bool = False,
    trust_remote_code: bool = False,
) -> Encoder:
    """Load a tokenizer (HF directory or .gguf) and resolve the reward token, adding tokens if asked."""
    tokenizer = load_tokenizer(tokenizer_src, trust_remote_code)
    base = len(tokenizer)
    try:
        reward_id = encoding.resolve_reward_token_id(tokenizer, cfg, add_missing=add_special_tokens)
    except ValueError as e:
        hint = "" if "--add-special-tokens" in str(e) else "; --add-special-tokens adds the missing tokens"
        raise PrepareError(f"tokenizer {tokenizer_src}: {e}{hint}") from None
    added = {
        token: int(i) for token, i in sorted(tokenizer.get_added_vocab().items(), key=lambda kv: kv[1]) if i >= base
    }
    return Encoder(tokenizer, cfg, int(reward_id), os.path.abspath(tokenizer_src), base, added)


# ---- encoding, in this process or in a pool ------------------------------------------------

_WORKER: tuple | None = None  # (tokenizer, cfg, reward_token_id) of this pool worker


def _init_worker(tokenizer_pickle: bytes, cfg_dict: dict, reward_token_id: int) -> None:
    global _WORKER
    _WORKER = (pickle.loads(tokenizer_pickle), encoding.EncodingConfig.from_dict(cfg_dict), reward_token_id)


def _encode_batch(batch: list[tuple[str, dict]], tokenizer=None, cfg=None, reward_token_id=None) -> list:
    if tokenizer is None:
        tokenizer, cfg, reward_token_id = _WORKER
    out = []
    for source, row in batch:
        try:
            out.append(encoding.encode_triplet(tokenizer, row, cfg, reward_token_id))
        except Exception as e:  # name the row: a bare tokenizer error from a worker says nothing
            raise RuntimeError(f"{source}: encoding failed: {type(e).__name__}: {e}") from None
    return out


def _batches(rows: Iterable[schema.Row], size: int) -> Iterator[list[schema.Row]]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_rows(
    rows: Iterable[schema.Row], encoder: Encoder, workers: int = 1, rows_per_task: int = ROWS_PER_TASK
) -> Iterator[tuple[schema.Row, encoding.TripletEncoding]]:
    """Yield (row, its TripletEncoding) in input order, encoding on `workers` processes (1: here)."""
    if workers <= 1:
        for batch in _batches(rows, rows_per_task):
            encoded = _encode_batch(
                [(r.source, r.data) for r in batch], encoder.tokenizer, encoder.cfg, encoder.reward_token_id
            )
            yield from zip(batch, encoded)
        return
    init_args = (pickle.dumps(encoder.tokenizer), encoder.cfg.to_dict(), encoder.reward_token_id)
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        pending: collections.deque = collections.deque()
        for batch in _batches(rows, rows_per_task):
            pending.append((batch, pool.apply_async(_encode_batch, ([(r.source, r.data) for r in batch],))))
            # Waiting on the oldest task keeps results in input order and bounds what is queued.
            while len(pending) >= workers * TASKS_IN_FLIGHT_PER_WORKER:
                done, result = pending.popleft()
                yield from zip(done, result.get())
        while pending:
            done, result = pending.popleft()
            yield from zip(done, result.get())


def iter_rows(
    inputs: Sequence[str | os.PathLike],
    skip_invalid: bool,
    report: schema.SkipReport | None,
    max_row_bytes: int = schema.MAX_ROW_BYTES,
) -> Iterator[schema.Row]:
    """The valid triplet rows of all inputs, file after file (a line over `max_row_bytes` is a bad row)."""
    for path in inputs:
        yield from schema.read_jsonl(path, "triplet", skip_invalid, report, max_row_bytes)


# ---- statistics ---------------------------------------------------------------------------


def length_stats(length_counts: collections.Counter) -> dict:
    """min / median / max / mean and a power-of-two histogram ("17-32": n) of sequence lengths."""
    total = sum(length_counts.values())
    if not total:
        return {"count": 0}
    lengths = sorted(length_counts)

    def nth(k: int) -> int:  # the k-th smallest length (0-based)
        seen = 0
        for length in lengths:
            seen += length_counts[length]
            if seen > k:
                return length
        raise AssertionError(k)

    median = (nth((total - 1) // 2) + nth(total // 2)) / 2
    histogram = {}
    low, high = 1, 16
    while low <= lengths[-1]:
        histogram[f"{low}-{high}"] = sum(n for length, n in length_counts.items() if low <= length <= high)
        low, high = high + 1, high * 2
    return {
        "count": total,
        "tokens": sum(length * n for length, n in length_counts.items()),
        "min": lengths[0],
        "median": median,
        "max": lengths[-1],
        "mean": round(sum(length * n for length, n in length_counts.items()) / total, 2),
        "histogram": histogram,
    }


# ---- the whole run ------------------------------------------------------------------------


def _check_output(output: str) -> None:
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise PrepareError(
            f"output {output} exists and is not an empty directory; delete it or choose another --output"
        )


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def default_workers() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def prepare(
    inputs: Sequence[str | os.PathLike],
    tokenizer: str | os.PathLike,
    output: str | os.PathLike,
    cfg: encoding.EncodingConfig = encoding.EncodingConfig(),
    *,
    skip_invalid: bool = False,
    workers: int | None = None,
    shards: int = 1,
    add_special_tokens: bool = False,
    progress: bool | None = None,
    encoder: Encoder | None = None,
    trust_remote_code: bool = False,
    max_row_bytes: int = schema.MAX_ROW_BYTES,
) -> dict:
    """Validate, encode and write triplet JSONL `inputs` to ArrayRecord shards in `output`; returns the stats.

    Strict mode raises `schema.DataError` at the first bad row (nothing is written); with
    `skip_invalid` bad rows are skipped and counted by reason. `encoder` reuses a loaded tokenizer;
    `trust_remote_code` lets a tokenizer that ships its own code (InternLM2's) run it. A line over
    `max_row_bytes` is a bad row ("too_long"), refused before it is read whole or tokenised.
    """
    start = time.perf_counter()
    inputs = [os.fspath(p) for p in inputs]
    output = os.fspath(output)
    workers = _checked_workers(inputs, shards, workers)
    _check_output(output)  # now, not after minutes of work
    stale_partials.remove_stale(output, "partial")  # a killed run's .DIR.partial-PID (its PID gone)

    # Pass 1: validate and count (strict mode stops here, before the slow part).
    report = schema.SkipReport()
    n_rows = sum(1 for _ in iter_rows(inputs, skip_invalid, report, max_row_bytes))
    if n_rows == 0:
        raise PrepareError(
            f"no valid triplet rows in {', '.join(inputs)}"
            + (f"; skipped:\n{report.summary()}" if report.counts else "")
        )
    if encoder is None:
        encoder = load_encoder(tokenizer, cfg, add_special_tokens, trust_remote_code)
    elif encoder.cfg != cfg:
        raise PrepareError("the given encoder was made for another EncodingConfig")
    workers = min(workers, n_rows)
    # Small inputs get smaller tasks so that every worker has some.
    rows_per_task = max(1, min(ROWS_PER_TASK, n_rows // (workers * TASKS_IN_FLIGHT_PER_WORKER)))

    _check_output(output)
    encoded = None
    try:
        # Everything goes into a temporary sibling (.DIR.partial-PID) that replaces DIR (if empty) at the end.
        with atomic.directory(output, tag="partial", overwrite=False) as tmp:
            encode_start = time.perf_counter()
            encoded = encode_rows(iter_rows(inputs, skip_invalid, None, max_row_bytes), encoder, workers, rows_per_task)
            written = _write_shards(tmp, encoded, n_rows, shards, progress)
            encode_seconds = time.perf_counter() - encode_start

            seconds = time.perf_counter() - start
            _write_encoding(tmp, encoder, n_rows, written.shard_info)
            stats = _stats(inputs, report, written, workers, seconds, encode_seconds)
            _write_json(os.path.join(tmp, "stats.json"), stats)  # last: its presence marks a complete run
        log.info("prepared %d triplets (%d skipped) into %s in %.1fs", n_rows, report.invalid, output, seconds)
    finally:
        if encoded is not None:
            encoded.close()  # stops the worker pool now, not whenever the generator is collected
    return stats


def _checked_workers(inputs: list[str], shards: int, workers: int | None) -> int:
    """Check the inputs exist and the shard and worker counts; the number of workers to use."""
    if not inputs:
        raise PrepareError("no input files")
    for path in inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input {path} does not exist")
    if shards < 1:
        raise PrepareError(f"--shards must be at least 1, got {shards}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise PrepareError(f"--workers must be at least 1, got {workers}")
    return workers


@dataclasses.dataclass
class _Written:
    """What `_write_shards` wrote: per shard {file, records}, and counts over every written row."""

    shard_info: list[dict]
    length_counts: collections.Counter
    truncated: collections.Counter
    rows_truncated: int
    rows: int
    # Tokens of each pair in the shared-prefix layout (its common prefix once) and of that prefix:
    # the trainer's attention window and the sharing ratio come from these.
    shared_pair_counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    prefix_counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def _write_shards(tmp, encoded: Iterator, n_rows: int, shards: int, progress: bool | None) -> _Written:
    """Pass 2: write the `n_rows` encoded rows into `shards` shards under `tmp`, shard k holding rows
    [k*n/N, (k+1)*n/N): contiguous slices, so shard order = input order."""
    from tqdm import tqdm

    bounds = [k * n_rows // shards for k in range(shards + 1)]
    written = _Written([], collections.Counter(), collections.Counter(), 0, n_rows)
    with tqdm(total=n_rows, unit="row", desc="prepare", disable=None if progress is None else not progress) as bar:
        for k in range(shards):
            name = sources.shard_name(k, shards)
            with sources.RecordWriter(os.path.join(tmp, name)) as writer:
                for _ in range(bounds[k + 1] - bounds[k]):
                    row, enc = next(encoded, (None, None))
                    if row is None:
                        raise RuntimeError(
                            f"the inputs changed while prepare ran ({n_rows} valid rows in the first pass, fewer now)"
                        )
                    meta = {"source": row.source, "row_meta": row.data.get("meta", {})}
                    writer.write(records.encode_record(enc.chosen, enc.rejected, meta))
                    written.length_counts[len(enc.chosen)] += 1
                    written.length_counts[len(enc.rejected)] += 1
                    prefix = shared_prefix_length(enc.chosen, enc.rejected)
                    written.shared_pair_counts[len(enc.chosen) + len(enc.rejected) - prefix] += 1
                    written.prefix_counts[prefix] += 1
                    written.truncated.update(enc.truncated)
                    written.rows_truncated += bool(enc.truncated)
                    bar.update(1)
            written.shard_info.append({"file": name, "records": writer.count})
    if next(encoded, None) is not None:
        raise RuntimeError(f"the inputs changed while prepare ran (more than {n_rows} valid rows now)")
    return written


def _write_encoding(tmp, encoder: Encoder, n_rows: int, shard_info: list[dict]) -> None:
    """DIR/tokenizer and DIR/encoding.json, under `tmp`."""
    # The tokenizer as used, added tokens included: scoring and training must see these ids.
    encoder.tokenizer.save_pretrained(os.path.join(tmp, TOKENIZER_DIR))
    info = encoder.info()
    info.update(
        tokenizer_dir=TOKENIZER_DIR,
        record_version=records.VERSION,
        records=n_rows,
        shards=[s["file"] for s in shard_info],
    )
    _write_json(os.path.join(tmp, "encoding.json"), info)


def _stats(
    inputs: list[str], report: schema.SkipReport, written: _Written, workers: int, seconds: float, encode_seconds: float
) -> dict:
    """The content of DIR/stats.json."""
    n_rows = written.rows
    return {
        "inputs": inputs,
        "rows_read": n_rows + report.invalid,
        "rows_written": n_rows,
        "rows_skipped": report.invalid,
        "blank_lines": report.counts.get("blank_line", 0),
        "skipped": {r: v for r, v in report.to_dict().items() if r != "blank_line"},
        "rows_truncated": written.rows_truncated,
        "truncated": {part: written.truncated.get(part, 0) for part in PARTS},
        "sequence_length": length_stats(written.length_counts),
        "shared_pair_length": length_stats(written.shared_pair_counts),
        "shared_prefix_length": length_stats(written.prefix_counts),
        "shards": written.shard_info,
        "workers": workers,
        # seconds: the whole call (validation, tokenizer load, worker start-up included);
        # encode_seconds: encoding and writing only.
        "seconds": round(seconds, 3),
        "encode_seconds": round(encode_seconds, 3),
        "examples_per_s": round(n_rows / seconds, 1),
    }
