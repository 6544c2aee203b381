"""A JSONL line over the row-size limit is a bad row ("too_long") at FILE:LINE, found before it
is parsed and without reading it whole (bounded memory), or a counted skip with --skip-invalid."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from polar_jax.__main__ import main
from polar_jax.data import schema

ROW = {"prompt": "p", "reference": "r", "chosen": "c", "rejected": "d"}


def _write(path, long_bytes: int) -> None:
    """Three lines: a valid row, a valid row whose `chosen` makes it `long_bytes` long, a valid row."""
    long = dict(ROW, chosen="x" * (long_bytes - len(json.dumps(ROW)) + 1))
    path.write_text("".join(json.dumps(r) + "\n" for r in (ROW, long, ROW)))
    assert len(json.dumps(long)) == long_bytes


def test_long_row_is_refused_at_its_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    _write(path, 4096)
    with pytest.raises(schema.DataError) as err:
        list(schema.read_jsonl(path, "triplet", max_row_bytes=1024))
    assert err.value.reason == "too_long"
    assert str(err.value).startswith(f"{path}:2: the line is 4096 bytes, over the limit of 1024 bytes [too_long]")
    assert "--max-row-bytes" in str(err.value)


def test_long_row_is_a_counted_skip(tmp_path):
    path = tmp_path / "rows.jsonl"
    _write(path, 4096)
    report = schema.SkipReport()
    rows = list(schema.read_jsonl(path, "triplet", skip_invalid=True, report=report, max_row_bytes=1024))
    assert [r.line for r in rows] == [1, 3]
    assert report.counts == {"too_long": 1}
    assert len(list(schema.read_jsonl(path, "triplet", max_row_bytes=4096))) == 3  # at the limit: a row


def test_prepare_refuses_a_long_row_before_loading_the_tokenizer(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    _write(path, 4096)
    code = main(["prepare", "--input", str(path), "--tokenizer", str(tmp_path / "no-tokenizer"),
                 "--output", str(tmp_path / "out"), "--max-row-bytes", "1024"])  # fmt: skip
    assert code == 2
    assert f"{path}:2: the line is 4096 bytes, over the limit of 1024 bytes [too_long]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_memory_stays_bounded_on_a_huge_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    _write(path, 64 * 2**20)
    report = schema.SkipReport()
    tracemalloc.start()
    try:
        rows = list(schema.read_jsonl(path, "triplet", skip_invalid=True, report=report, max_row_bytes=2**20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.line for r in rows] == [1, 3] and report.counts == {"too_long": 1}
    assert peak < 8 * 2**20, f"peak allocation {peak} bytes for a 64 MiB row and a 1 MiB limit"
