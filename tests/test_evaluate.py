"""`evaluate`: pair accuracy (ties 0.5) from the model's own rewards, grouped overall, by seen /
unseen policies and by category; the CLI's errors and JSON output. A tiny random reward
model over a character-level tokenizer keeps it fast."""

import json

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from polar_jax import evaluate as ev
from polar_jax import scoring
from polar_jax.__main__ import main as cli
from polar_jax.data import encoding
from polar_jax.io import hf
from polar_jax.io.model import Model
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.?\n "
SPECIAL = ["<s>", "<|reward|>", "[UNUSED_TOKEN_130]"]
REWARD = 2
WORDS = ["yes.", "no idea", "blue sky 42", "maybe so", "the end?", "zebra", "quiet night"]


def _tokenizer():
    vocab = {t: i for i, t in enumerate(SPECIAL + list(CHARS))}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    inner.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    inner.decoder = decoders.Fuse()
    inner.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    return fast


def _triplet(i: int, meta: dict | None = None) -> dict:
    row = {
        "prompt": f"question {i}?",
        "reference": f"answer {i}.",
        "chosen": WORDS[i % len(WORDS)],
        "rejected": WORDS[(3 * i + 2) % len(WORDS)],
    }
    if meta is not None:
        row["meta"] = meta
    return row


def _prov(ref: str, rej: str, **extra) -> dict:
    return {"reference_policy": ref, "chosen_policy": ref, "rejected_policy": rej, **extra}


# seen set {a, b}: rows 0-2 seen, 3-4 unseen, 5-6 without provenance; categories on 0, 1, 3, 6.
ROWS = [
    _triplet(0, _prov("a", "b", category="stem")),
    _triplet(1, _prov("b", "a", category="writing")),
    _triplet(2, _prov("a", "b")),
    _triplet(3, _prov("a", "c", category="stem")),
    _triplet(4, _prov("c", "d")),
    _triplet(5),
    _triplet(6, {"category": "stem"}),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model, tokenizer, model_dir): a random 1-layer reward model saved as HF with its tokenizer."""
    tok = _tokenizer()
    cfg = ModelConfig(
        vocab_size=len(tok),
        d_model=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        mlp_dim=32,
        heads=("reward",),
        init_std=0.5,
    )
    model = Model(cfg, T.init_params(cfg, jax.random.key(0)), "llama", {"reward_token_id": REWARD})
    out = tmp_path_factory.mktemp("rm")
    hf.save_hf(model, out)
    tok.save_pretrained(str(out))
    return model, tok, out


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _own_scores(model, tok, rows):
    """The model's rewards for chosen and rejected, through the plain client encoding."""
    cfg = encoding.EncodingConfig()
    seqs = [
        encoding.encode(tok, r["prompt"], r["reference"], r[k], cfg, REWARD).ids
        for k in ("chosen", "rejected")
        for r in rows
    ]
    scores = scoring.reward_scores(model.cfg, model.params, seqs, batch_size=4, progress=False)
    return scores[: len(rows)], scores[len(rows) :]


def test_pair_stats_counts_ties_as_half():
    s = ev.pair_stats(np.array([1.0, 0.0, 2.0, 3.0]), np.array([0.0, 0.0, 3.0, 1.0]))
    ci = s.pop("ci95")
    assert s == {"n": 4, "accuracy": 0.625, "margin": 0.5, "mean_chosen": 1.5, "mean_rejected": 1.0, "ties": 1}
    assert ci == list(ev.wilson_interval(0.625, 4))
    empty = ev.pair_stats(np.zeros(0), np.zeros(0))
    assert empty["accuracy"] is None and empty["ci95"] is None


def test_wilson_interval_matches_the_textbook_values():
    # 8 of 10: the 95% Wilson interval is [0.4902, 0.9433] (Newcombe 1998, Table I); it stays inside [0, 1].
    low, high = ev.wilson_interval(0.8, 10)
    assert abs(low - 0.4902) < 1e-4 and abs(high - 0.9433) < 1e-4
    assert ev.wilson_interval(1.0, 256)[1] == 1.0 and ev.wilson_interval(1.0, 256)[0] > 0.98
    assert ev.wilson_interval(0.0, 5)[0] == 0.0
    assert ev.wilson_interval(0.5, 0) == (0.0, 1.0)
    # Narrower with more trials, centred near p.
    lo1, hi1 = ev.wilson_interval(0.75, 64)
    lo2, hi2 = ev.wilson_interval(0.75, 1024)
    assert lo1 < lo2 < 0.75 < hi2 < hi1


def test_groups_by_seen_policies_and_category():
    r_c = np.array([1.0, 2.0, 0.0, 5.0, 1.0, 3.0, 2.0])
    r_r = np.array([0.0, 3.0, 0.0, 1.0, 4.0, 1.0, 2.0])  # wins: 1, 0, tie, 1, 0, 1, tie
    out = ev.group_stats(ROWS, r_c, r_r, seen_policies={"a", "b"})
    assert list(out) == [
        "all",
        "seen_policies",
        "unseen_policies",
        "no_provenance",
        "category=stem",
        "category=writing",
    ]
    assert {k: v["n"] for k, v in out.items()} == {
        "all": 7,
        "seen_policies": 3,
        "unseen_policies": 2,
        "no_provenance": 2,
        "category=stem": 3,
        "category=writing": 1,
    }
    assert out["all"]["accuracy"] == pytest.approx(4 / 7)
    assert out["seen_policies"]["accuracy"] == pytest.approx(0.5)  # 1 + 0 + 0.5 of 3
    assert out["seen_policies"]["margin"] == pytest.approx((1 - 1 + 0) / 3)
    assert out["unseen_policies"]["accuracy"] == 0.5 and out["unseen_policies"]["margin"] == pytest.approx(0.5)
    assert out["no_provenance"]["accuracy"] == 0.75
    assert out["category=stem"]["accuracy"] == pytest.approx(2.5 / 3)  # rows 0, 3, 6
    assert out["category=stem"]["mean_rejected"] == pytest.approx(1.0)
    assert out["category=writing"]["accuracy"] == 0.0
    # A policy outside the seen set makes a row unseen; no seen set means no split at all.
    assert ev.group_stats(ROWS, r_c, r_r, seen_policies={"a"})["seen_policies"]["n"] == 0
    assert "seen_policies" not in ev.group_stats(ROWS, r_c, r_r)


def test_accuracy_equals_the_models_own_scores(setup):
    model, tok, _ = setup
    r_c, r_r = _own_scores(model, tok, ROWS)
    out = ev.evaluate_triplets(model, tok, ROWS, seen_policies={"a", "b"}, batch_size=4, progress=False)
    expected = np.mean((r_c > r_r) + 0.5 * (r_c == r_r))
    assert 0 < expected < 1  # the random model does not rank all pairs one way
    assert out["all"]["accuracy"] == pytest.approx(expected)
    np.testing.assert_allclose(out["all"]["margin"], np.mean(r_c - r_r), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        [out["all"]["mean_chosen"], out["all"]["mean_rejected"]], [r_c.mean(), r_r.mean()], rtol=1e-5, atol=1e-6
    )
    seen = [0, 1, 2]
    assert out["seen_policies"]["accuracy"] == pytest.approx(
        np.mean((r_c[seen] > r_r[seen]) + 0.5 * (r_c[seen] == r_r[seen]))
    )


def test_zero_reward_head_scores_exactly_chance(setup):
    model, tok, _ = setup
    params = {**model.params, "reward_head": np.zeros_like(model.params["reward_head"])}
    out = ev.evaluate_triplets(
        Model(model.cfg, params, model.family, model.hf_config), tok, ROWS, batch_size=4, progress=False
    )
    assert out["all"] == {
        "n": 7,
        "accuracy": 0.5,
        "ci95": list(ev.wilson_interval(0.5, 7)),
        "margin": 0.0,
        "mean_chosen": 0.0,
        "mean_rejected": 0.0,
        "ties": 7,
    }


def test_policies_from_files_and_directories(tmp_path):
    shards = tmp_path / "train"
    shards.mkdir()
    _write(shards / "00.jsonl", [_triplet(0, _prov("a", "b"))])
    _write(shards / "01.jsonl", [_triplet(1, _prov("a", "e")), _triplet(2)])
    (shards / "notes.txt").write_text("not a shard")
    single = _write(tmp_path / "more.jsonl", [_triplet(3, {"reference_policy": "f"})])
    assert ev.expand_paths([shards, single]) == [shards / "00.jsonl", shards / "01.jsonl", single]
    assert ev.policies_in([shards]) == {"a", "b", "e"}
    assert ev.policies_in([shards, single]) == {"a", "b", "e", "f"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without \\*.jsonl"):
        ev.expand_paths([tmp_path / "empty"])


def test_cli_writes_json_and_splits_by_seen_policies(setup, tmp_path, capsys):
    model, tok, model_dir = setup
    data = tmp_path / "test"
    data.mkdir()
    _write(data / "a.jsonl", ROWS[:4])
    _write(data / "b.jsonl", ROWS[4:])
    train = _write(tmp_path / "train.jsonl", [_triplet(9, _prov("a", "b"))])
    base = ["evaluate", "--model", str(model_dir), "--data", str(data), "--batch-size", "4", "--no-progress"]
    assert cli(base + ["--train-data", str(train), "--output", str(tmp_path / "t.json")]) == 0
    table = capsys.readouterr().out
    assert "unseen_policies" in table and "category=stem" in table and "chance 0.5" in table
    from_train = json.loads((tmp_path / "t.json").read_text())
    assert set(from_train) == {"groups", "model", "data", "seen_policies", "skipped", "encoding"}
    assert from_train["seen_policies"] == ["a", "b"]
    assert from_train["data"] == [str(data / "a.jsonl"), str(data / "b.jsonl")]
    expected = ev.evaluate_triplets(model, tok, ROWS, seen_policies={"a", "b"}, batch_size=4, progress=False)
    assert list(from_train["groups"]) == list(expected)
    for name, stats in expected.items():
        assert from_train["groups"][name]["n"] == stats["n"]
        assert from_train["groups"][name]["accuracy"] == pytest.approx(stats["accuracy"])
        assert from_train["groups"][name]["margin"] == pytest.approx(stats["margin"], rel=1e-5, abs=1e-6)
    assert cli(base + ["--seen-policies", "a, b", "--output", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["groups"] == from_train["groups"]


def test_cli_bad_row_stops_with_file_line_or_is_skipped(setup, tmp_path, capsys):
    _, _, model_dir = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({**ROWS[1], "rejected": ""}) + "\n")
    args = [
        "evaluate",
        "--model",
        str(model_dir),
        "--data",
        str(bad),
        "--no-progress",
        "--output",
        str(tmp_path / "o.json"),
    ]
    assert cli(args) == 2  # a user error
    assert f"{bad}:2: field 'rejected'" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
    assert cli(args + ["--skip-invalid"]) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["groups"]["all"]["n"] == 1 and out["skipped"]["empty"]["count"] == 1
    # Training files that name no policy cannot give a seen set.
    assert cli(args + ["--skip-invalid", "--train-data", str(_write(tmp_path / "t.jsonl", [_triplet(1)]))]) == 2
    assert "no row names a policy" in capsys.readouterr().err


def test_format_table_lists_groups():
    table = ev.format_table({"all": ev.pair_stats([1.0, 0.0], [0.0, 0.0]), "unseen_policies": ev.pair_stats([], [])})
    lines = table.splitlines()
    assert lines[1].split() == ["all", "2", "0.7500", "[0.198,", "0.973]", "+0.5000", "+0.5000", "+0.0000"]
    assert lines[2].split() == ["unseen_policies", "0", "-", "-", "-", "-", "-"]
    assert "chance 0.5" in lines[-1]
