"""Data pipeline benchmarks: throughput, and how much of each row is real tokens.

    python -m polar_jax.bench.data                 # both tables (about 2 minutes on 2 cores)
    python -m polar_jax.bench.data --pairs 2000 --workers 0 2

Throughput: the Grain pipeline reading synthetic ArrayRecord files (the realistic length mix
below), packed rows/s and real tokens/s at row lengths 16384 and 4096 (padding mode beside
it), and `prepare` (JSONL -> ArrayRecord with SmolLM2's tokenizer; `measure_prepare_throughput`).
Packing efficiency: useful-token fraction (real tokens / B*T) of packed mode against padding
mode (one pair per row, power-of-two buckets up to the row length) and against Grain's own
`FirstFitPackIterDataset`, on the same pairs, at row lengths 4096 / 8192 / 16384.

The realistic mix: prompt+reference prefix ~ log-normal (median 320 tokens), shared by the
chosen and rejected sequence of a pair; each response ~ log-normal (median 190); each
sequence is capped at half the row length (as `prepare` with max_length = T/2 would), so the
median sequence is about 600 tokens and every pair fits a row.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from polar_jax.bench.common import print_table
from polar_jax.data import packing, pipeline, records

PREFIX_MEDIAN, PREFIX_SIGMA = 320.0, 0.9
RESPONSE_MEDIAN, RESPONSE_SIGMA = 190.0, 1.0
REWARD_ID = 7  # stands in for the reward token: every sequence ends with it


def synthetic_pair_lengths(n: int, seed: int = 0, cap: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prefix, chosen, rejected) lengths of `n` pairs from the realistic mix; sequences <= `cap`."""
    rng = np.random.default_rng(seed)
    prefix_n = np.maximum(rng.lognormal(np.log(PREFIX_MEDIAN), PREFIX_SIGMA, n).astype(np.int64), 1)
    # +1: the reward token ends every sequence.
    chosen_n, rejected_n = (
        np.minimum(prefix_n + 1 + rng.lognormal(np.log(RESPONSE_MEDIAN), RESPONSE_SIGMA, n).astype(np.int64), cap)
        for _ in range(2)
    )
    return np.minimum(prefix_n, cap - 1), chosen_n, rejected_n


def synthetic_records(n: int, seed: int = 0, cap: int = 8192, vocab_size: int = 32000) -> list[dict]:
    """`n` record dicts of the realistic mix; chosen and rejected share their prefix tokens."""
    prefix_n, chosen_n, rejected_n = synthetic_pair_lengths(n, seed, cap)
    rng = np.random.default_rng(seed + 1)
    out = []
    for i in range(n):
        prefix = rng.integers(8, vocab_size, prefix_n[i], dtype=np.int32)
        seqs = []
        for total in (chosen_n[i], rejected_n[i]):
            response = rng.integers(8, vocab_size, total - prefix_n[i] - 1, dtype=np.int32)
            seqs.append(np.concatenate([prefix, response, [REWARD_ID]]).astype(np.int32))
        out.append({"chosen": seqs[0], "rejected": seqs[1], "meta": {"source": f"synthetic.jsonl:{i + 1}"}})
    return out


def write_synthetic_array_records(directory: str, recs: list[dict], shards: int = 2) -> list[str]:
    """Write records to `shards` ArrayRecord files (group_size:1, as `prepare` does); their paths."""
    from array_record.python import array_record_module

    paths = []
    for k in range(shards):
        path = os.path.join(directory, f"triplets-{k:05d}-of-{shards:05d}.array_record")
        writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
        for rec in recs[k::shards]:
            writer.write(records.encode_record(rec["chosen"], rec["rejected"], rec["meta"]))
        writer.close()
        paths.append(path)
    return paths


def open_source(paths: list[str]):
    """The random-access source over `paths`: `sources.ArrayRecordTriplets` if present, else Grain's."""
    try:
        from polar_jax.data.sources import ArrayRecordTriplets
    except ImportError:
        import grain

        return grain.sources.ArrayRecordDataSource(paths)  # yields bytes; the pipeline decodes them
    return ArrayRecordTriplets(paths)


def grain_first_fit_fraction(lengths: np.ndarray, seq_len: int, max_pairs_per_row: int, bins: int = 16) -> float:
    """Useful-token fraction of Grain's `FirstFitPackIterDataset` with each pair as one element."""
    import grain

    ds = grain.MapDataset.source([np.zeros(int(n), np.int32) for n in lengths]).map(lambda x: {"tokens": x})
    ds = grain.experimental.FirstFitPackIterDataset(
        ds.to_iter_dataset(),
        length_struct={"tokens": seq_len},
        num_packing_bins=bins,
        shuffle_bins=False,
        max_sequences_per_bin=max_pairs_per_row,
    )
    real = rows = 0
    for row in ds:
        real += int(np.count_nonzero(row["tokens_segment_ids"]))
        rows += 1
    return real / (rows * seq_len)


def efficiency_table(num_pairs: int, seed: int = 0, row_lens=(4096, 8192, 16384)) -> list[dict]:
    """Packed vs padded vs Grain first-fit useful-token fractions at each row length."""
    table = []
    for t in row_lens:
        p = max(8, t // 512)
        _, chosen_n, rejected_n = synthetic_pair_lengths(num_pairs, seed, cap=t // 2)
        pair_n = chosen_n + rejected_n
        rows = packing.plan_packed_rows(pair_n, seq_len=t, max_pairs_per_row=p, max_open_rows=16)
        packed = float(pair_n.sum()) / (len(rows) * t)
        buckets = packing.default_buckets(t)
        padded = float(pair_n.sum()) / sum(packing.bucket_for(int(n), buckets) for n in pair_n)
        table.append(
            {
                "row length T": t,
                "pairs": num_pairs,
                "max pairs/row P": p,
                "rows (packed)": len(rows),
                "packed (16 open rows)": f"{packed:.4f}",
                "grain first-fit (16 bins)": f"{grain_first_fit_fraction(pair_n, t, p):.4f}",
                "padded (buckets)": f"{padded:.4f}",
                "buckets": "/".join(str(b) for b in buckets),
            }
        )
    return table


def pipeline_throughput(
    source, *, seq_len: int, batch_size: int, mode: str, num_workers: int, seconds: float = 6.0
) -> dict:
    """Batches from `make_pipeline` for about `seconds` after the first: rows/s, pairs/s, real tokens/s."""
    ds = pipeline.make_pipeline(
        source,
        batch_size=batch_size,
        seq_len=seq_len,
        max_pairs_per_row=max(8, seq_len // 512),
        seed=0,
        num_epochs=None,
        shard_index=0,
        shard_count=1,
        mode=mode,
        num_workers=num_workers,
    )
    it = iter(ds)
    start = time.perf_counter()
    next(it)  # starts threads / worker processes: not steady state
    first_s = time.perf_counter() - start
    rows = pairs = real = slots = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(it)
        rows += int(batch["pair_mask_bp"].any(axis=1).sum())
        pairs += int(batch["pair_mask_bp"].sum())
        real += int(np.count_nonzero(batch["segment_ids_bt"]))
        slots += batch["segment_ids_bt"].size
    elapsed = time.perf_counter() - start
    if hasattr(it, "close"):
        it.close()
    return {
        "stage": f"pipeline, {mode}",
        "row length": seq_len if mode == "packed" else f"<= {seq_len}",
        "batch": batch_size,
        "workers": num_workers,
        "first batch s": f"{first_s:.2f}",
        "rows/s": f"{rows / elapsed:.1f}",
        "pairs/s": f"{pairs / elapsed:.0f}",
        "real tokens/s": f"{real / elapsed / 1e6:.2f}M",
        "useful fraction": f"{real / slots:.4f}",
    }


def synthetic_triplet_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` JSONL triplet rows of plain words (prompt ~ 150, reference ~ 80, responses ~ 80 words)."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(2000)] + ["the", "a", "is", "of", "and", "to", "in", "that"]

    def text(median: float) -> str:
        return " ".join(rng.choice(words, max(1, int(rng.lognormal(np.log(median), 0.8)))))

    return [
        {"prompt": text(150), "reference": text(80), "chosen": text(80), "rejected": text(80), "meta": {"i": i}}
        for i in range(n)
    ]


def measure_prepare_throughput(num_rows: int = 1000, workers: int = 2) -> dict | None:
    """`polar_jax.data.prepare` on synthetic JSONL with SmolLM2's tokenizer: a throughput table row.

    LEAD: this calls `prepare.prepare` as it stood when the data pipeline was written (another
    engineer's module); if its API moved, fix the call here. Timed: the whole call (validation,
    worker start-up, encoding, writing), not the tokenizer load. Returns None (row "n/a") when
    prepare or the SmolLM2 tokenizer is unavailable.
    """
    import json

    try:
        from polar_jax.data import encoding, prepare
        from polar_jax.data.sources import ArrayRecordTriplets, find_shards
        from polar_jax.io import gguf

        tokenizer_path = gguf.smollm2_gguf_path()
    except (ImportError, FileNotFoundError) as e:
        print(f"prepare throughput not measured: {e}")
        return None
    cfg = encoding.EncodingConfig(max_length=8192, max_response_length=2048)  # a pair fits 16k
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "triplets.jsonl")
        with open(src, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in synthetic_triplet_rows(num_rows))
        encoder = prepare.load_encoder(tokenizer_path, cfg, add_special_tokens=True)  # not timed
        start = time.perf_counter()
        prepare.prepare(
            [src], tokenizer_path, os.path.join(tmp, "out"), cfg, encoder=encoder, workers=workers, progress=False
        )
        seconds = time.perf_counter() - start
        written = ArrayRecordTriplets(find_shards(os.path.join(tmp, "out")))
        tokens = sum(len(r["chosen"]) + len(r["rejected"]) for r in written)
    return {
        "stage": "prepare (JSONL -> ArrayRecord)",
        "workers": workers,
        "pairs/s": f"{num_rows / seconds:.0f}",
        "real tokens/s": f"{tokens / seconds / 1e6:.2f}M",
    }


def main(argv=None) -> None:
    """Run both benchmarks and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000, help="records in the synthetic ArrayRecord files")
    parser.add_argument("--efficiency-pairs", type=int, default=10000, help="pairs for the efficiency table")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="Grain worker processes to try")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per throughput measurement")
    args = parser.parse_args(argv)

    print_table(
        efficiency_table(args.efficiency_pairs), "Packing efficiency: useful-token fraction (real tokens / B*T)"
    )

    table = [measure_prepare_throughput() or {"stage": "prepare: n/a (see measure_prepare_throughput)"}]
    with tempfile.TemporaryDirectory() as tmp:
        for seq_len, batch_size in ((16384, 8), (4096, 32)):
            recs = synthetic_records(args.pairs, seed=0, cap=seq_len // 2)
            sub = os.path.join(tmp, str(seq_len))
            os.makedirs(sub)
            source = open_source(write_synthetic_array_records(sub, recs))
            for mode in ("packed", "padded"):
                for workers in args.workers:
                    row = pipeline_throughput(
                        source,
                        seq_len=seq_len,
                        batch_size=batch_size,
                        mode=mode,
                        num_workers=workers,
                        seconds=args.seconds,
                    )
                    table.append(row)
    # print_table takes its columns from the first row: put the widest row first.
    table = table[1:] + table[:1]
    print_table(
        table,
        f"Throughput ({os.cpu_count()} CPUs; pipeline source: {type(source).__name__}; "
        "prepare: SmolLM2 tokenizer, whole call)",
    )


if __name__ == "__main__":
    main()
