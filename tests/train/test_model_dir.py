"""A model directory written by `train` is self-contained: its tokenizer (as HF keeps it, in
the directory itself), its encoding and its reward token travel with the weights, so `score`
and `evaluate` need no other flag and score with the encoding the model was trained with."""

import json
import pathlib

import numpy as np
import pytest
from transformers import AutoTokenizer

from polar_jax import scoring
from polar_jax.__main__ import main as cli
from polar_jax.config_loading import load_config
from polar_jax.data import encoding, prepare
from polar_jax.io import models, tokenizers
from polar_jax.synth import corpus, demo_lms
from polar_jax.train import trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRAINED = encoding.EncodingConfig(max_length=64, max_response_length=16)  # far below the client's defaults


def rows(n: int, kind: str) -> list[dict]:
    """Rows whose parts are long enough that the trained encoding cuts them and the defaults do not."""
    rng = np.random.default_rng(0)
    words = "the a value of list dict returns when object class def import error string number".split()

    def text(k: int) -> str:
        return " ".join(rng.choice(words, size=k))

    out = []
    for i in range(n):
        row = {"prompt": text(30), "reference": text(20)}
        if kind == "triplet":
            row.update(chosen=text(20), rejected=text(5 + i))
        else:
            row["output"] = text(5 + 3 * i)
        out.append(row)
    return out


def write_jsonl(path: pathlib.Path, items: list[dict]) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A reward model trained for a few steps on data prepared with a small BPE tokenizer."""
    tmp = tmp_path_factory.mktemp("model_dir")
    tok_dir = demo_lms.train_tokenizer(corpus.corpus_documents()[:40], 300, tmp / "tokenizer")
    triplets = write_jsonl(tmp / "triplets.jsonl", rows(32, "triplet"))
    data = tmp / "prepared"
    prepare.prepare([triplets], tok_dir, data, TRAINED, workers=1, progress=False)
    vocab = json.loads((data / encoding.ENCODING_FILE).read_text())["vocab_size"]
    cfg = load_config(
        ROOT / "configs" / "pretrain_tiny.py",
        [
            "--config.steps=3",
            "--config.eval_every=0",
            "--config.log_every=1",
            "--config.data.kind=array_record",
            f"--config.data.train={data}",
            f"--config.data.eval={data}",
            "--config.data.batch_size=8",
            "--config.data.seq_len=128",
            f"--config.model.vocab_size={vocab}",
            "--config.model.d_model=32",
            "--config.model.mlp_dim=64",
        ],
    )
    trainer.train(cfg, tmp / "run", progress=False)
    return tmp / "run" / "model", tok_dir, tmp


def test_the_model_dir_holds_its_tokenizer_encoding_and_reward_token(trained):
    model_dir, tok_dir, _ = trained
    saved = encoding.read_encoding_file(model_dir)
    assert encoding.EncodingConfig.from_dict(saved["encoding"]) == TRAINED
    source = AutoTokenizer.from_pretrained(str(tok_dir))
    loaded = AutoTokenizer.from_pretrained(str(model_dir))  # what the official client calls
    text = "def f(x):\n    return x <|reward|> [UNUSED_TOKEN_130]"
    assert loaded.encode(text) == source.encode(text)
    assert saved["reward_token_id"] == source.convert_tokens_to_ids(TRAINED.reward_token)
    assert models.load_model(model_dir).hf_config["reward_token_id"] == saved["reward_token_id"]


def test_score_needs_no_flag_and_uses_the_trained_encoding(trained):
    model_dir, _, tmp = trained
    score_rows = rows(6, "score")
    src, out = write_jsonl(tmp / "rows.jsonl", score_rows), tmp / "scored.jsonl"
    assert cli(["score", "--model", str(model_dir), "--input", str(src), "--output", str(out)]) == 0
    got = np.array([json.loads(line)["reward"] for line in out.read_text().splitlines()])
    model, tokenizer = models.load_model(model_dir), tokenizers.load_tokenizer(model_dir)
    want = scoring.score_rows(model, tokenizer, score_rows, TRAINED, progress=False)
    defaults = scoring.score_rows(model, tokenizer, score_rows, encoding.EncodingConfig(), progress=False)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - defaults).max() > 1e-3  # the client's defaults would not cut these rows
    # A flag still wins over the saved encoding.
    assert (
        cli(
            [
                "score",
                "--model",
                str(model_dir),
                "--input",
                str(src),
                "--output",
                str(out),
                "--max-length",
                "16384",
                "--max-response-length",
                "4096",
            ]
        )
        == 0
    )
    flagged = np.array([json.loads(line)["reward"] for line in out.read_text().splitlines()])
    np.testing.assert_allclose(flagged, defaults, atol=1e-5)


def test_evaluate_needs_no_flag_and_uses_the_trained_encoding(trained):
    model_dir, _, tmp = trained
    src, out = write_jsonl(tmp / "eval.jsonl", rows(8, "triplet")), tmp / "results.json"
    assert cli(["evaluate", "--model", str(model_dir), "--data", str(src), "--output", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["encoding"] == TRAINED.to_dict()
