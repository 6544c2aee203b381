"""A smoke run of `python -m polar_jax.bench.serve` at tiny sizes: the table has the offline row and one
server row per client count, every request succeeds, server scores equal offline ones, nothing compiles
after warm-up."""

from __future__ import annotations

import numpy as np
import pytest

from polar_jax.bench import serve as bench_serve
from polar_jax.io import gguf


def test_rows_follow_the_requested_lengths():
    rows = bench_serve.make_rows(200, 512, seed=1)
    assert len(rows) == 200 and all(set(r) == {"prompt", "reference", "output"} for r in rows)
    words = np.array([len(r["output"].split()) for r in rows])
    assert 1 <= words.min() and words.max() <= 2 * 32 * 4  # median 512 / 16 words, capped at 8x it
    assert 16 <= np.median(words) <= 64  # log-normal around the median
    assert words.max() > 128  # a long tail past the response cut (512 / 4 tokens)
    assert rows[3]["prompt"].startswith("Question 3: ")
    assert bench_serve.make_rows(5, 512, seed=1) == rows[:5]


def test_parse_clients():
    assert bench_serve.parse_clients("1, 8,32") == [1, 8, 32]
    assert bench_serve.parse(["--clients", "2,3"]).clients == [2, 3]
    with pytest.raises(Exception, match="counts >= 1"):
        bench_serve.parse_clients("0")


def test_smoke_run_prints_the_table(capsys):
    try:
        gguf.smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    args = bench_serve.parse(
        ["--rows", "24", "--rows-per-request", "4", "--clients", "1,3", "--d-model", "32", "--layers", "1"]
        + ["--max-length", "128", "--max-batch-tokens", "1024", "--offline-batch", "8"]
    )
    result = bench_serve.run_bench(args)
    out = capsys.readouterr().out
    table = out.split("offline scoring.score_rows against POST /pooling\n")[1].splitlines()
    header, rows = table[0].split(), [line.split() for line in table[2:5]]
    assert header[:3] == ["mode", "clients", "rows/s"] and header[-1] == "errors"
    assert [r[:2] for r in rows] == [["offline", "-"], ["server", "1"], ["server", "3"]]
    assert [r[-1] for r in rows] == ["0", "0", "0"]
    assert rows[0][3] == "1.00x" and all(float(r[3].rstrip("x")) > 0 for r in rows[1:])
    assert [run.errors for run in result["runs"]] == [0, 0]
    assert all(len(run.latencies) == 6 for run in result["runs"])  # 24 rows, 4 a request
    assert all(np.isfinite(run.scores).all() for run in result["runs"])
    assert result["max_delta"] <= bench_serve.SCORE_TOLERANCE and result["mismatched"] == 0
    assert result["compiles_after_warmup"] == 0
    assert "compiles: " in out and "0 after it at the end" in out
    assert result["offline"] > 0
