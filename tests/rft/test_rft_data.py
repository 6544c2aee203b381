"""RFT data: {prompt, reference} JSONL and verl parquet rows, strict errors at FILE:LINE, the
skip report, and the prompt iterator's deterministic, checkpointable order."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polar_jax.data import schema
from polar_jax.rft import data as D

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of China?"}]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_jsonl_rows_keep_strings_and_message_lists(tmp_path):
    f = write_lines(
        tmp_path / "rows.jsonl",
        [
            json.dumps({"prompt": "What is 2+2?", "reference": "4."}),
            "",
            json.dumps(
                {"prompt": MESSAGES, "reference": [{"role": "assistant", "content": "Beijing."}], "meta": {"k": 1}}
            ),
        ],
    )
    rows = D.read_jsonl(f)
    assert [r.prompt for r in rows] == ["What is 2+2?", MESSAGES]
    assert rows[1].reference == [{"role": "assistant", "content": "Beijing."}]
    assert [r.source for r in rows] == [f"{f}:1", f"{f}:3"]


def test_bad_jsonl_rows_stop_at_file_and_line_or_are_counted_when_skipped(tmp_path):
    f = write_lines(
        tmp_path / "rows.jsonl",
        [
            json.dumps({"prompt": "ok", "reference": "fine"}),
            json.dumps({"prompt": "no reference"}),
            "{not json",
            json.dumps({"prompt": "p", "reference": "r", "output": "o"}),
            json.dumps({"prompt": "", "reference": "r"}),
        ],
    )
    with pytest.raises(schema.DataError) as err:
        D.read_jsonl(f)
    assert str(err.value).startswith(f"{f}:2: field 'reference': missing")
    assert err.value.reason == "missing_field"
    report = schema.SkipReport()
    rows = D.read_jsonl(f, skip_invalid=True, report=report)
    assert [r.prompt for r in rows] == ["ok"]
    assert report.counts == {"missing_field": 1, "bad_json": 1, "unknown_field": 1, "empty": 1}
    assert "this looks like a score row" in report.examples["unknown_field"][0]
    assert report.examples["empty"][0].startswith(f"{f}:5: field 'prompt'")


def test_read_examples_joins_files_and_names_missing_ones(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", [json.dumps({"prompt": "p1", "reference": "r1"})])
    b = write_lines(tmp_path / "b.jsonl", [json.dumps({"prompt": "p2", "reference": "r2"})])
    assert [e.prompt for e in D.read_examples(f"{a},{b}", "jsonl")] == ["p1", "p2"]
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        D.read_examples(str(tmp_path / "missing.jsonl"), "jsonl")


def verl_table(rows):
    return pa.Table.from_pylist(
        [
            {
                "data_source": "polar",
                "prompt": p,
                "ability": "general",
                "reward_model": {"style": "model", "ground_truth": g},
                "extra_info": {"index": i},
            }
            for i, (p, g) in enumerate(rows)
        ]
    )


def test_verl_parquet_layout_is_read(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(
        verl_table(
            [
                ([{"role": "user", "content": "What is the capital of China?"}], "Beijing."),
                ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "4"),
            ]
        ),
        path,
    )
    rows = D.read_examples(str(path), "parquet")
    assert rows[0].prompt == [{"role": "user", "content": "What is the capital of China?"}]
    assert rows[0].reference == "Beijing."
    assert rows[1].prompt[0] == {"role": "system", "content": "Be brief."}
    assert rows[1].source == f"{path}:row 1"


def test_bad_verl_rows_name_their_row(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(
        verl_table(
            [([{"role": "user", "content": "fine"}], "ok"), ([{"role": "user", "content": ""}], "empty prompt content")]
        ),
        path,
    )
    with pytest.raises(schema.DataError, match=r"bad.parquet:row 1: field 'prompt\[0\].content': empty"):
        D.read_verl_parquet(path)
    report = schema.SkipReport()
    assert len(D.read_verl_parquet(path, skip_invalid=True, report=report)) == 1
    assert report.counts == {"empty": 1}
    no_reward = tmp_path / "plain.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "p"}]), no_reward)
    with pytest.raises(schema.DataError, match="needs columns 'prompt' and 'reward_model'"):
        D.read_verl_parquet(no_reward)


def test_prompt_iterator_order_is_deterministic_and_resumable():
    examples = [D.Example(f"p{i}", f"r{i}", "") for i in range(5)]
    it = D.PromptIterator(examples, batch_size=3, seed=7)
    batches = [[e.prompt for e in it.next_batch()] for _ in range(4)]  # 12 rows: crosses two epochs
    assert sorted(batches[0] + batches[1][:2]) == [f"p{i}" for i in range(5)]  # epoch 0 is a permutation
    again = D.PromptIterator(examples, batch_size=3, seed=7)
    again.next_batch()
    state = again.get_state()
    resumed = D.PromptIterator(examples, batch_size=3, seed=7)
    resumed.set_state(state)
    assert [[e.prompt for e in resumed.next_batch()] for _ in range(3)] == batches[1:]
    with pytest.raises(ValueError, match="resume with the same data"):
        D.PromptIterator(examples[:4], batch_size=3).set_state(state)
