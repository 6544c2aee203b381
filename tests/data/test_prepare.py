"""`prepare`: JSONL -> ArrayRecord with SmolLM2's real tokenizer, read back through
`ArrayRecordTriplets` (and Grain), equal to `encoding.encode_triplet` row for row."""

import collections
import json
import os
import pickle

import grain
import numpy as np
import pytest

from polar_jax.__main__ import main
from polar_jax.data import batch as batch_contract
from polar_jax.data import encoding, prepare, records, sources
from polar_jax.io import gguf, tokenizers

# Small limits so that a few rows exercise every truncation rule.
CFG = encoding.EncodingConfig(max_length=96, max_response_length=24)
CLI_LIMITS = ["--max-length", "96", "--max-response-length", "24"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(gguf path, the same tokenizer saved as an HF directory, Encoder with the split and reward
    tokens added): the GGUF tokenizer (slow to build) loads once; the directory loads fast."""
    path = gguf.smollm2_gguf_path()
    tokenizer = tokenizers.load_tokenizer(path)
    tok_dir = tmp_path_factory.mktemp("smollm2_tokenizer")
    tokenizer.save_pretrained(tok_dir)
    reward_id = encoding.resolve_reward_token_id(tokenizer, CFG, add_missing=True)
    encoder = prepare.Encoder(
        tokenizer, CFG, reward_id, str(path), 49152, {"<|reward|>": 49152, "[UNUSED_TOKEN_130]": 49153}
    )
    return path, tok_dir, encoder


def make_rows(n: int) -> list[dict]:
    """Varied triplets: strings, message lists, unicode, meta, and long parts that get cut."""
    rows = []
    for i in range(n):
        long = " ".join(f"word{i}_{j}" for j in range(40))
        prompt = (
            [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": f"Question {i}: what is {i} + {i}?"},
            ]
            if i % 3 == 1
            else (f"Context {long}. Question {i}?" if i % 5 == 4 else f"Question {i}: what is {i} + {i}? \u4f60\u597d")
        )
        chosen = f"It is {2 * i}." if i % 4 else [{"role": "assistant", "content": f"{2 * i} \U0001f600"}]
        rejected = f"It is {2 * i + 1}, surely. {long}" if i % 7 == 3 else f"Maybe {i}."
        rows.append(
            {
                "prompt": prompt,
                "reference": f"{2 * i}.",
                "chosen": chosen,
                "rejected": rejected,
                "meta": {"i": i, "policy": f"p{i % 3}"},
            }
        )
    return rows


def write_jsonl(path, rows, extra_lines=()):
    """Rows as JSON lines; `extra_lines` are (index, raw bytes) inserted before row `index`."""
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
    for index, raw in sorted(extra_lines, reverse=True):
        lines.insert(index, raw)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def expected(encoder, rows):
    """The reference: `encode_triplet` on each row directly."""
    return [encoding.encode_triplet(encoder.tokenizer, r, CFG, encoder.reward_token_id) for r in rows]


def test_cli_round_trip_one_worker_matches_encode_triplet(smollm2, tmp_path):
    gguf_path, tok_dir, encoder = smollm2
    rows = make_rows(12)
    src = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "out"
    code = main(
        [
            "prepare",
            "--input",
            str(src),
            "--tokenizer",
            str(gguf_path),
            "--output",
            str(out),
            "--add-special-tokens",
            "--workers",
            "1",
            *CLI_LIMITS,
        ]
    )
    assert code == 0
    assert sorted(os.listdir(out)) == [
        "encoding.json",
        "stats.json",
        "tokenizer",
        "triplets-00000-of-00001.array_record",
    ]
    data = sources.ArrayRecordTriplets(out)
    want = expected(encoder, rows)
    assert len(data) == len(rows)
    for i, (record, enc) in enumerate(zip(data, want)):
        np.testing.assert_array_equal(record["chosen"], enc.chosen)
        np.testing.assert_array_equal(record["rejected"], enc.rejected)
        assert record["meta"] == {"source": f"{src}:{i + 1}", "row_meta": rows[i]["meta"]}
        assert record["chosen"][-1] == encoder.reward_token_id and record["chosen"].dtype == np.int32

    info = json.loads((out / "encoding.json").read_text())
    assert info["encoding"] == CFG.to_dict()
    assert info["tokenizer_source"] == os.path.abspath(gguf_path)
    assert (info["base_vocab_size"], info["vocab_size"]) == (49152, 49154)
    assert info["added_tokens"] == {"<|reward|>": 49152, "[UNUSED_TOKEN_130]": 49153}
    assert (info["reward_token_id"], info["split_token_id"]) == (49153, 49152)
    assert info["records"] == 12
    saved = prepare.load_tokenizer(out / info["tokenizer_dir"])  # the grown tokenizer, ready for scoring
    assert encoding.resolve_reward_token_id(saved, CFG) == 49153
    assert (
        saved.encode(encoding.client_text(saved, rows[1]["prompt"], rows[1]["reference"], rows[1]["chosen"], CFG))
        == want[1].chosen.tolist()
    )

    stats = json.loads((out / "stats.json").read_text())
    lengths = sorted(len(s) for e in want for s in (e.chosen, e.rejected))
    truncated = {p: sum(p in e.truncated for e in want) for p in prepare.PARTS}
    assert truncated["prompt"] > 0 and truncated["rejected"] > 0  # the data exercises truncation
    assert (stats["rows_read"], stats["rows_written"], stats["rows_skipped"], stats["blank_lines"]) == (12, 12, 0, 0)
    assert stats["truncated"] == truncated
    assert stats["rows_truncated"] == sum(bool(e.truncated) for e in want)
    length = stats["sequence_length"]
    assert (length["count"], length["min"], length["max"]) == (24, lengths[0], lengths[-1])
    assert length["median"] == (lengths[11] + lengths[12]) / 2
    assert sum(length["histogram"].values()) == 24
    assert max(lengths) <= CFG.max_length
    # The shared-prefix layout's statistics: each pair with its common prefix once (the trainer's window).
    prefixes = [batch_contract.shared_prefix_length(e.chosen, e.rejected) for e in want]
    shared = [len(e.chosen) + len(e.rejected) - n for e, n in zip(want, prefixes)]
    assert min(prefixes) > 0  # the official format: every pair shares at least its prompt and reference
    assert (stats["shared_pair_length"]["count"], stats["shared_pair_length"]["max"]) == (12, max(shared))
    assert (stats["shared_prefix_length"]["min"], stats["shared_prefix_length"]["max"]) == (
        min(prefixes),
        max(prefixes),
    )


def test_cli_two_workers_three_shards_skip_invalid_keeps_input_order(smollm2, tmp_path):
    gguf_path, tok_dir, encoder = smollm2
    rows_a, rows_b = make_rows(20), make_rows(30)[20:]
    a = write_jsonl(tmp_path / "a.jsonl", rows_a, extra_lines=[(3, b""), (5, b'{"prompt": "p"}'), (9, b"{not json")])
    b = write_jsonl(
        tmp_path / "b.jsonl",
        rows_b,
        extra_lines=[(0, b'{"prompt": "p", "reference": "r", "chosen": "", "rejected": "x"}')],
    )
    out = tmp_path / "out"
    code = main(
        [
            "prepare",
            "--input",
            str(a),
            str(b),
            "--tokenizer",
            str(tok_dir),
            "--output",
            str(out),
            "--add-special-tokens",
            "--skip-invalid",
            "--workers",
            "2",
            "--shards",
            "3",
            *CLI_LIMITS,
        ]
    )
    assert code == 0
    shards = sources.find_shards(out)
    assert [os.path.basename(p) for p in shards] == [f"triplets-0000{k}-of-00003.array_record" for k in range(3)]
    data = sources.ArrayRecordTriplets(shards)
    rows = rows_a + rows_b
    assert len(data) == 30
    got = data._getitems(list(range(30)))
    for record, enc in zip(got, expected(encoder, rows)):
        np.testing.assert_array_equal(record["chosen"], enc.chosen)
        np.testing.assert_array_equal(record["rejected"], enc.rejected)
    assert [r["meta"]["row_meta"]["i"] for r in got] == list(range(30))
    # Source lines count the inserted lines: a.jsonl is r0 r1 r2 blank r3 r4 missing r5 ... r8 bad r9 ...
    assert [r["meta"]["source"] for r in got[:7]] == [f"{a}:{n}" for n in (1, 2, 3, 5, 6, 8, 9)]
    assert got[20]["meta"]["source"] == f"{b}:2"

    info = json.loads((out / "encoding.json").read_text())
    assert (info["tokenizer_source"], info["vocab_size"], info["reward_token_id"]) == (str(tok_dir), 49154, 49153)
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["rows_read"], stats["rows_written"], stats["rows_skipped"], stats["blank_lines"]) == (33, 30, 3, 1)
    assert stats["workers"] == 2
    assert [s["records"] for s in stats["shards"]] == [10, 10, 10]
    assert stats["skipped"] == {
        "bad_json": {
            "count": 1,
            "examples": [f"{a}:12: invalid JSON: Expecting property name enclosed in double quotes at column 2"],
        },
        "empty": {"count": 1, "examples": [f"{b}:1: field 'chosen': empty string"]},
        "missing_field": {
            "count": 1,
            "examples": [
                f"{a}:7: field 'reference': missing (a triplet row needs prompt, reference, chosen, rejected)"
            ],
        },
    }


def test_cli_strict_mode_stops_at_the_first_bad_row(smollm2, tmp_path, capsys):
    gguf_path, tok_dir, _ = smollm2
    src = write_jsonl(
        tmp_path / "rows.jsonl",
        make_rows(4),
        extra_lines=[(2, b'{"prompt": "p", "reference": "r", "chosen": 1, "rejected": "x"}')],
    )
    out = tmp_path / "out"
    code = main(["prepare", "--input", str(src), "--tokenizer", str(gguf_path), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2  # a user error: one line, exit 2
    assert f"{src}:3: field 'chosen': expected a string or a list of messages, got number [wrong_type]" in err
    assert "--skip-invalid" in err and "Traceback" not in err
    assert not out.exists() and os.listdir(tmp_path) == ["rows.jsonl"]


def test_cli_without_add_special_tokens_names_the_flag(smollm2, tmp_path, capsys):
    gguf_path, tok_dir, _ = smollm2
    src = write_jsonl(tmp_path / "rows.jsonl", make_rows(2))
    code = main(["prepare", "--input", str(src), "--tokenizer", str(tok_dir), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2  # a user error: one line, exit 2
    assert "[UNUSED_TOKEN_130]" in err and "--add-special-tokens" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_output_and_missing_inputs(smollm2, tmp_path):
    _, _, encoder = smollm2
    src = write_jsonl(tmp_path / "rows.jsonl", make_rows(2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(prepare.PrepareError, match="exists and is not an empty directory"):
        prepare.prepare([src], "unused", out, CFG, encoder=encoder)
    with pytest.raises(FileNotFoundError, match="input .*nope.jsonl does not exist"):
        prepare.prepare([tmp_path / "nope.jsonl"], "unused", tmp_path / "o2", CFG, encoder=encoder)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(prepare.PrepareError, match="no valid triplet rows"):
        prepare.prepare([tmp_path / "blank.jsonl"], "unused", tmp_path / "o3", CFG, encoder=encoder)


class _FailingTokenizer:
    """Encodes like the real one until it meets the text "boom"."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def encode(self, text, **kwargs):
        if "boom" in text:
            raise RuntimeError("tokenizer exploded")
        return self._tokenizer.encode(text, **kwargs)

    def decode(self, ids, **kwargs):
        return self._tokenizer.decode(ids, **kwargs)


def test_a_failed_run_leaves_no_output_directory(smollm2, tmp_path):
    _, _, encoder = smollm2
    rows = make_rows(40)
    rows[37]["chosen"] = "boom"
    src = write_jsonl(tmp_path / "rows.jsonl", rows)
    broken = prepare.Encoder(_FailingTokenizer(encoder.tokenizer), CFG, encoder.reward_token_id, "x", 0, {})
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=rf"{src}:38: encoding failed: RuntimeError: tokenizer exploded"):
        prepare.prepare([src], "unused", out, CFG, encoder=broken, workers=1, shards=2)
    assert os.listdir(tmp_path) == ["rows.jsonl"]  # no DIR, no temporary directory


def test_length_stats_median_and_power_of_two_histogram():
    counts = {3: 2, 16: 1, 17: 1, 40: 1, 100: 1}
    stats = prepare.length_stats(collections.Counter(counts))
    assert stats == {
        "count": 6,
        "tokens": 179,
        "min": 3,
        "median": 16.5,
        "max": 100,
        "mean": 29.83,
        "histogram": {"1-16": 3, "17-32": 1, "33-64": 1, "65-128": 1},
    }


def test_array_record_triplets_is_a_grain_source_that_pickles(tmp_path):
    recs = [records.encode_record(np.arange(i + 1), np.arange(i + 2) * 2, {"i": i}) for i in range(7)]
    paths = [tmp_path / sources.shard_name(k, 3) for k in range(3)]
    assert [sources.write_array_record(p, part) for p, part in zip(paths, (recs[:3], [], recs[3:]))] == [3, 0, 4]
    data = sources.ArrayRecordTriplets(tmp_path)  # a directory: its shards in order
    assert isinstance(data, grain.sources.RandomAccessDataSource)
    assert len(data) == 7
    assert [data[i]["meta"]["i"] for i in range(7)] == list(range(7))
    np.testing.assert_array_equal(data[5]["rejected"], np.arange(7) * 2)
    assert data[-1]["meta"] == {"i": 6}
    with pytest.raises(IndexError, match="index 7 out of range for 7 records"):
        data[7]
    assert [r["meta"]["i"] for r in data._getitems([6, 0, 3, 2])] == [6, 0, 3, 2]

    clone = pickle.loads(pickle.dumps(data))  # readers are not pickled; the clone opens its own
    assert clone._readers == [None, None, None] and repr(clone) == repr(data)
    np.testing.assert_array_equal(clone[4]["chosen"], np.arange(5))

    dataset = grain.MapDataset.source(data).shuffle(seed=0).map(lambda r: int(r["meta"]["i"]))
    assert sorted(dataset[i] for i in range(len(dataset))) == list(range(7))
    assert list(grain.MapDataset.source(data).map(lambda r: len(r["chosen"]))) == [1, 2, 3, 4, 5, 6, 7]


def test_find_shards_rejects_an_incomplete_set(tmp_path):
    sources.write_array_record(tmp_path / sources.shard_name(0, 2), [records.encode_record([1], [2])])
    with pytest.raises(ValueError, match="incomplete or mixed set of shards"):
        sources.find_shards(tmp_path)
    with pytest.raises(FileNotFoundError, match="run `prepare` first"):
        sources.find_shards(tmp_path / "empty")


def test_prepared_shards_through_the_grain_pipeline_give_encode_triplet_ids(smollm2, tmp_path):
    """JSONL -> prepare -> ArrayRecord -> packed Grain batches: every pair's ids are exactly
    what `encode_triplet` gives for its row."""
    from polar_jax.data import packing, pipeline

    gguf_path, _, encoder = smollm2
    rows = make_rows(10)
    src = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "out"
    assert (
        main(
            [
                "prepare",
                "--input",
                str(src),
                "--tokenizer",
                str(gguf_path),
                "--output",
                str(out),
                "--add-special-tokens",
                "--workers",
                "1",
                "--shards",
                "2",
                *CLI_LIMITS,
            ]
        )
        == 0
    )
    ds = pipeline.make_pipeline(
        sources.ArrayRecordTriplets(out),
        batch_size=2,
        seq_len=256,
        max_pairs_per_row=4,
        shuffle=False,
        num_epochs=1,
        shard_index=0,
        shard_count=1,
    )
    seen = {}
    for batch in ds:
        packing.check_batch(batch)
        for pair in packing.unpack_batch(batch):
            seen[pair["record_index"]] = pair
    want = expected(encoder, rows)
    assert sorted(seen) == list(range(len(rows)))
    for i, enc in enumerate(want):
        np.testing.assert_array_equal(seen[i]["chosen"], enc.chosen)
        np.testing.assert_array_equal(seen[i]["rejected"], enc.rejected)


def test_records_of_an_older_prepare_are_refused_when_opened(tmp_path):
    import msgpack

    old = msgpack.packb(
        {
            "v": 1,
            "chosen": np.arange(3, dtype=np.int32).tobytes(),
            "rejected": np.arange(2, dtype=np.int32).tobytes(),
            "meta": {},
        },
        use_bin_type=True,
    )
    sources.write_array_record(tmp_path / sources.shard_name(0, 1), [old])
    with pytest.raises(
        records.RecordVersionError, match=r"record version 1, this polar_jax reads version 2.*rerun `prepare`"
    ):
        sources.ArrayRecordTriplets(tmp_path)  # at open time, before any training step compiles
    with pytest.raises(records.RecordVersionError, match="rerun `prepare`"):
        records.decode_record(old)
    assert records.decode_record(records.encode_record([5], [6]))["chosen"].tolist() == [5]
