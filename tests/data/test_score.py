"""`polar_jax score` on a reward model gives transformers' scores for the official client's
texts (tests/fixtures/make_score_reference.py), and reports bad rows like `prepare`."""

import json
import shutil

import numpy as np
import pytest

from polar_jax.__main__ import main as cli
from polar_jax.data import encoding
from polar_jax.io import gguf, hf, tokenizers


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, request):
    """The fixture's reward model exported by polar_jax, with SmolLM2's tokenizer plus the two tokens."""
    src = request.config.rootpath / "tests" / "fixtures" / "score"
    try:
        tokenizer = tokenizers.load_tokenizer(gguf.smollm2_gguf_path())
    except FileNotFoundError as e:
        pytest.skip(str(e))
    encoding.resolve_reward_token_id(tokenizer, encoding.EncodingConfig(), add_missing=True)
    out = tmp_path_factory.mktemp("rm")
    hf.save_hf(hf.load_hf(src), out)  # through our exporter: the foundation's output format
    tokenizer.save_pretrained(str(out))
    shutil.copy(src / "rows.jsonl", out / "rows.jsonl")
    return out, json.loads((src / "reference.json").read_text())


def test_score_equals_transformers_on_client_texts(model_dir, tmp_path):
    path, ref = model_dir
    assert (
        cli(["score", "--model", str(path), "--input", str(path / "rows.jsonl"), "--output", str(tmp_path / "o.jsonl")])
        == 0
    )
    scored = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    expected = [r["score"] for r in ref["rows"]]
    np.testing.assert_allclose([r["reward"] for r in scored], expected, atol=1e-4)
    assert [r["prompt"] for r in scored] == [
        json.loads(line)["prompt"] for line in (path / "rows.jsonl").read_text().splitlines()
    ]


def test_encoding_gives_the_client_ids(model_dir):
    path, ref = model_dir
    tokenizer = tokenizers.load_tokenizer(path)
    rows = [json.loads(line) for line in (path / "rows.jsonl").read_text().splitlines()]
    cfg = encoding.EncodingConfig()
    for row, expected in zip(rows, ref["rows"]):
        assert encoding.client_text(tokenizer, row["prompt"], row["reference"], row["output"], cfg) == expected["text"]
        ids = encoding.encode(
            tokenizer, row["prompt"], row["reference"], row["output"], cfg, ref["reward_token_id"]
        ).ids
        assert ids.tolist() == expected["ids"]


def test_bad_row_stops_with_file_line_or_is_skipped(model_dir, tmp_path, capsys):
    path, _ = model_dir
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "p", "reference": "r", "output": "o"}\n{"prompt": "p", "reference": "", "output": "o"}\n'
    )
    assert (
        cli(["score", "--model", str(path), "--input", str(bad), "--output", str(tmp_path / "o.jsonl")]) == 2
    )  # a user error
    assert f"{bad}:2" in capsys.readouterr().err
    assert (
        cli(
            [
                "score",
                "--model",
                str(path),
                "--input",
                str(bad),
                "--output",
                str(tmp_path / "o.jsonl"),
                "--skip-invalid",
            ]
        )
        == 0
    )
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 1
