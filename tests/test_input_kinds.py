"""Every input kind is handled the same way in every command (issue 15, item 5): a directory is
its *.jsonl files in `score`, `evaluate` and `prepare` alike (or refused with one message); a file
named twice is read once; an empty file is an error exit 2 naming it; unknown --seen-policies
names are refused; a model of the wrong kind (a reward model for `generate`, a causal LM for
`score`, a run's workdir anywhere) says what it is and what the command needs; JSONL given where
ArrayRecord is expected says to run `prepare`. Tiny random models over a character tokenizer."""

import json
import shutil

import jax
import pytest

from polar_jax.__main__ import main as cli
from polar_jax.data import sources
from polar_jax.io import hf
from polar_jax.io.model import Model
from polar_jax.models import families
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from tests.test_evaluate import ROWS, _prov, _tokenizer, _triplet, _write


def _save(path, tok, heads):
    cfg = ModelConfig(
        vocab_size=len(tok),
        d_model=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        mlp_dim=32,
        heads=heads,
        tie_embeddings="lm" in heads,
        init_std=0.5,
    )
    hf_config = {**families.hf_config_for(cfg, "llama", heads[0]), "reward_token_id": 2}
    hf.save_hf(Model(cfg, T.init_params(cfg, jax.random.key(0)), "llama", hf_config), path)
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{rm, lm, tokenizer}: a random reward model and a random causal LM (HF directories) sharing a tokenizer."""
    root = tmp_path_factory.mktemp("kinds")
    tok = _tokenizer()
    tok.save_pretrained(str(root / "tokenizer"))
    return {
        "rm": _save(root / "rm", tok, ("reward",)),
        "lm": _save(root / "lm", tok, ("lm",)),
        "tokenizer": root / "tokenizer",
    }


def _score_rows(n, start=0):
    return [{"prompt": f"question {i}?", "reference": f"answer {i}.", "output": "maybe so"} for i in range(start, n)]


def _cmd(kind, tiny, tmp_path, inputs):
    """The command line of `kind` reading `inputs` (paths), with a fresh output under tmp_path."""
    if kind == "score":
        return ["score", "--model", str(tiny["rm"]), "--input", *inputs, "--output", str(tmp_path / "o.jsonl")]
    if kind == "evaluate":
        return ["evaluate", "--model", str(tiny["rm"]), "--input", *inputs, "--no-progress"]
    out = ["prepare", "--tokenizer", str(tiny["tokenizer"]), "--output", str(tmp_path / "prepared"), "--workers", "1"]
    return out + ["--max-length", "64", "--max-response-length", "16", "--input", *inputs]


def _rows_for(kind, n, start=0):
    return _score_rows(n, start) if kind == "score" else [_triplet(i) for i in range(start, n)]


@pytest.mark.parametrize("kind", ["score", "evaluate", "prepare"])
def test_a_directory_is_its_jsonl_files_and_a_file_twice_is_read_once(kind, tiny, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "b.jsonl", _rows_for(kind, 5, 2))
    _write(data / "a.jsonl", _rows_for(kind, 2))
    (data / "notes.txt").write_text("not rows")
    assert cli(_cmd(kind, tiny, tmp_path, [str(data), str(data / "a.jsonl"), str(tmp_path / "data" / "b.jsonl")])) == 0
    out, err = capsys.readouterr()
    if kind == "score":
        scored = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
        assert [r["prompt"] for r in scored] == [f"question {i}?" for i in range(5)]  # a.jsonl, then b.jsonl, once
    elif kind == "evaluate":
        assert out.splitlines()[1].split()[:2] == ["all", "5"]  # not 9: the files named again are read once
    else:
        stats = json.loads((tmp_path / "prepared" / "stats.json").read_text())
        assert stats["rows_written"] == 5 and stats["inputs"] == [str(data / "a.jsonl"), str(data / "b.jsonl")]
    assert err.count("given before: read once") == 2


@pytest.mark.parametrize("kind", ["score", "evaluate", "prepare"])
def test_a_directory_without_jsonl_is_refused_with_one_message(kind, tiny, tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "x.txt").write_text("x")
    assert cli(_cmd(kind, tiny, tmp_path, [str(empty)])) == 2
    assert f"error: --input {empty}: a directory without *.jsonl files" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["score", "evaluate", "prepare"])
def test_an_empty_input_file_is_an_error_naming_it(kind, tiny, tmp_path, capsys):
    good = _write(tmp_path / "good.jsonl", _rows_for(kind, 2))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    assert cli(_cmd(kind, tiny, tmp_path, [str(good), str(empty)])) == 2
    assert f"error: --input: {empty} is empty (no rows)" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "prepared").exists()


def test_score_with_no_valid_row_exits_2(tiny, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "reference": "", "output": "o"}) + "\n")
    assert cli(_cmd("score", tiny, tmp_path, [str(bad)]) + ["--skip-invalid"]) == 2
    assert f"no valid score rows in {bad}" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_unknown_seen_policies_are_refused_with_the_known_names(tiny, tmp_path, capsys, monkeypatch):
    data = _write(tmp_path / "t.jsonl", ROWS + [_triplet(7, _prov("e", "a"))])
    monkeypatch.setattr("polar_jax.io.models.load_model", lambda *a, **k: pytest.fail("loaded the model"))
    args = _cmd("evaluate", tiny, tmp_path, [str(data)])
    assert cli(args + ["--seen-policies", "a,bb,zz"]) == 2
    err = capsys.readouterr().err
    assert "--seen-policies bb, zz: no such policy" in err and "its policies are: a, b, c, d, e" in err


def test_generate_with_a_reward_model_says_what_it_is(tiny, capsys):
    assert cli(["generate", "--model", str(tiny["rm"]), "--max-new-tokens", "2"]) == 2
    assert (
        f"error: {tiny['rm']} is a reward model (heads reward): generate needs a causal LM" in capsys.readouterr().err
    )


@pytest.mark.parametrize("kind", ["score", "evaluate"])
def test_scoring_with_a_causal_lm_says_what_it_is(kind, tiny, tmp_path, capsys):
    data = _write(tmp_path / "d.jsonl", _rows_for(kind, 2))
    args = _cmd(kind, tiny, tmp_path, [str(data)])
    args[args.index("--model") + 1] = str(tiny["lm"])
    assert cli(args) == 2
    assert f"{tiny['lm']} is a causal LM (heads lm): {kind} needs a reward model" in capsys.readouterr().err


def _workdir(tmp_path, tiny, sub="model"):
    """A run's workdir as `train` leaves it: the run's config.json, checkpoints/ and the model in a subdirectory."""
    work = tmp_path / "run"
    (work / "checkpoints" / "10").mkdir(parents=True)
    (work / "config.json").write_text(json.dumps({"steps": 10, "model": {"init": "scratch"}}))
    (work / "metrics.jsonl").write_text("")
    if sub:
        shutil.copytree(tiny["rm"], work / sub)
    return work


@pytest.mark.parametrize("kind", ["convert", "evaluate", "score"])
def test_a_workdir_given_as_model_names_its_model(kind, tiny, tmp_path, capsys):
    work = _workdir(tmp_path, tiny)
    data = _write(tmp_path / "d.jsonl", _rows_for("score" if kind == "score" else "evaluate", 2))
    if kind == "convert":
        args = ["convert", "--model", str(work), "--output", str(tmp_path / "out"), "--format", "polar"]
    else:
        args = _cmd(kind, tiny, tmp_path, [str(data)])
        args[args.index("--model") + 1] = str(work)
    assert cli(args) == 2
    assert f"error: {work} is a training workdir; its model is {work / 'model'}" in capsys.readouterr().err
    assert cli(["convert", "--model", str(work / "model"), "--output", str(tmp_path / "out"), "--format", "polar"]) == 0


def test_a_workdir_without_a_model_yet_says_so(tiny, tmp_path, capsys):
    work = _workdir(tmp_path, tiny, sub=None)
    assert cli(["generate", "--model", str(work)]) == 2
    assert "is a run's workdir (checkpoints/) without a finished model yet" in capsys.readouterr().err


def test_jsonl_where_array_record_is_expected_says_run_prepare(tmp_path):
    jsonl = _write(tmp_path / "train.jsonl", [_triplet(0)])
    with pytest.raises(sources.NotArrayRecordError, match="train.jsonl is JSONL, not ArrayRecord: run `python -m pol"):
        sources.ArrayRecordTriplets(jsonl)
    with pytest.raises(FileNotFoundError, match="it holds JSONL \\(1 \\*.jsonl files\\): run `python -m polar_jax"):
        sources.find_shards(tmp_path)
    other = tmp_path / "x.array_record"
    other.write_bytes(b"\x00" * 100_000)
    with pytest.raises(sources.NotArrayRecordError, match="is not an ArrayRecord file"):
        sources.ArrayRecordTriplets([other])
    sources.write_array_record(tmp_path / "ok.array_record", [])
    assert len(sources.ArrayRecordTriplets([tmp_path / "ok.array_record"])) == 0  # a real one still opens
