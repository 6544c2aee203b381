"""`synth`, `score` and `evaluate` on 2 processes (2 x 4 CPU devices, jax.distributed with a
localhost coordinator) write the same files as on 1: synth each shard once (by its process), score
and evaluate one output from process 0, in input order, byte for byte. Tiny random models and a
character-level tokenizer keep it fast; the one-process runs go in-process."""

import json
import pathlib

import jax
import numpy as np
import pytest
import tokenizers as tk
from multiprocess_helpers import run_processes
from transformers import PreTrainedTokenizerFast

from polar_jax.__main__ import main as cli
from polar_jax.io import hf
from polar_jax.io.model import Model
from polar_jax.models import families
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from polar_jax.synth import synthesize as S

pytestmark = pytest.mark.slow  # five two-process launches: about a minute and a half

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.?\n "
SPECIAL = ["<s>", "<|reward|>", "[UNUSED_TOKEN_130]", "<|endoftext|>"]  # 2: the reward token
WORDS = ["yes.", "no idea", "blue sky 42", "maybe so", "the end?", "zebra", "quiet night", "a b c d e f"]


def _tokenizer() -> PreTrainedTokenizerFast:
    """One token per character, plus the specials (the reward token among them)."""
    inner = tk.Tokenizer(tk.models.WordLevel({t: i for i, t in enumerate(SPECIAL + list(CHARS))}, unk_token="?"))
    inner.pre_tokenizer = tk.pre_tokenizers.Split("", behavior="isolated")
    inner.decoder = tk.decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>", eos_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    return fast


def _save(path: pathlib.Path, heads: tuple[str, ...], seed: int, extra: dict) -> pathlib.Path:
    tok = _tokenizer()
    cfg = ModelConfig(
        vocab_size=len(tok), d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32
    ).replace(heads=heads, init_std=0.5)
    params = jax.tree.map(np.asarray, T.init_params(cfg, jax.random.key(seed)))
    hf.save_hf(Model(cfg, params, "llama", families.hf_config_for(cfg, "llama", heads[0], extra)), path)
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(reward model dir, [two policy LM dirs])."""
    root = tmp_path_factory.mktemp("models")
    reward = _save(root / "rm", ("reward",), 0, {"reward_token_id": 2})
    return reward, [_save(root / f"lm{i}", ("lm",), i + 1, {}) for i in range(2)]


def _write(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _triplets(n: int) -> list[dict]:
    return [
        {
            "prompt": f"question {i % 5}?",  # repeated prompts and references: shared-prefix groups
            "reference": f"answer {i % 5}.",
            "chosen": WORDS[i % len(WORDS)] * (1 + i % 3),  # lengths vary: several width buckets
            "rejected": WORDS[(3 * i + 2) % len(WORDS)],
            "meta": {"reference_policy": "a", "chosen_policy": "a", "rejected_policy": "bc"[i % 2]},
        }
        for i in range(n)
    ]


def test_process_shards_cover_every_shard_once():
    for num_shards in (1, 5, 8):
        for count in (1, 2, 3):
            shares = [S.process_shards(num_shards, i, count) for i in range(count)]
            assert sorted(s for share in shares for s in share) == list(range(num_shards))
    assert S.process_shards(5, 1, 2) == [1, 3]
    with pytest.raises(ValueError, match="process index 2"):
        S.process_shards(5, 2, 2)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-processes", "2", "--process-id", "2", "--coordinator", "localhost:1"], "--process-id 2 is out of"),
        (["--num-processes", "0"], "--num-processes 0: must be at least 1"),
        (["--num-processes", "2", "--process-id", "0"], "--coordinator missing"),
        (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "give HOST:PORT"),
    ],
)
@pytest.mark.parametrize("command", ["score", "evaluate", "synth", "train"])
def test_bad_process_flags_are_one_line_naming_the_flag(command, flags, message, tmp_path, capsys):
    args = {
        "score": ["--model", "m", "--input", "i", "--output", str(tmp_path / "o")],
        "evaluate": ["--model", "m", "--input", "i"],
        "synth": ["--config", "configs/synth_smollm2.py", "--output", str(tmp_path / "o")],
        "train": ["--config", "configs/pretrain_tiny.py", "--workdir", str(tmp_path / "w")],
    }[command]
    assert cli([command, *args, *flags]) == 2
    assert message in capsys.readouterr().err


def test_synth_on_two_processes_writes_the_shards_of_one(models, tmp_path):
    _, lms = models
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"word{w} of text." for w in range(60)))
    config = tmp_path / "synth.py"
    config.write_text(f"""
import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.seed, c.num_triplets, c.shard_size, c.batch_size, c.prompt_bucket = 0, 9, 2, 4, 16
    c.policies = [dict(name="x", checkpoint={str(lms[0])!r}, max_new_tokens=6),
                  dict(name="y", checkpoint={str(lms[1])!r}, max_new_tokens=6)]
    c.draw_from, c.must_include = [], []
    c.prompts = ml_collections.ConfigDict(dict(corpus={str(corpus)!r}, split="all", heldout_every=0, min_tokens=2,
        max_tokens=8, tokenizer="", instructions="", instruction_fraction=0.0))
    return c
""")
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli(["synth", "--config", str(config), "--output", str(one), "--no-progress"]) == 0
    run_processes(["synth", "--config", str(config), "--output", str(two), "--no-progress"])

    shards = sorted(p.name for p in one.glob("triplets-*"))
    assert len(shards) == 2 * 5  # 5 shards, each a .jsonl and a .stats.json
    assert sorted(p.name for p in two.glob("triplets-*")) == shards
    for name in shards + ["synth.json"]:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    rows = [json.loads(line) for f in sorted(two.glob("triplets-*.jsonl")) for line in f.read_text().splitlines()]
    summary_one, summary_two = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    indices = [r["meta"]["prompt_index"] for r in rows]
    assert len(set(indices)) == len(indices) == summary_two["triplets"]  # no duplicates
    assert set(indices) <= set(range(9)) and len(indices) + summary_two["empty_response"] == 9  # no gaps
    for key in ("triplets", "empty_response", "loop_truncated", "new_tokens", "shards"):
        assert summary_two[key] == summary_one[key], key
    assert summary_two["engine"]["useful_tokens"] == summary_one["engine"]["useful_tokens"]  # summed over processes
    assert json.loads((two / "run.json").read_text())["devices"]["processes"] == 2
    assert summary_two["triplets"] > 0 and not list(two.glob(".*tmp*")) and not (two / ".polar_jax.lock").exists()

    # A one-process run's directory, two shards lost (one of each process's), resumed on two processes.
    before = {name: (one / name).read_bytes() for name in shards}
    for shard in (1, 2):
        for path in one.glob(f"triplets-{shard:05d}.*"):
            path.unlink()
    run_processes(["synth", "--config", str(config), "--output", str(one), "--no-progress"])
    assert {name: (one / name).read_bytes() for name in shards} == before
    assert json.loads((one / "summary.json").read_text())["resumed_shards"] == 3


def test_score_and_evaluate_on_two_processes_write_the_files_of_one(models, tmp_path):
    reward, _ = models
    triplets = _triplets(23)  # 46 candidates: batches of 4 groups, uneven over the processes
    data = _write(tmp_path / "test.jsonl", triplets)
    rows = _write(
        tmp_path / "rows.jsonl",
        [{"prompt": t["prompt"], "reference": t["reference"], "output": t[k]} for t in triplets for k in ("chosen",)]
        + [{"prompt": t["prompt"], "reference": t["reference"], "output": t["rejected"]} for t in triplets],
    )
    score = ["score", "--model", str(reward), "--input", str(rows), "--batch-size", "4"]
    evaluate = ["evaluate", "--model", str(reward), "--input", str(data), "--batch-size", "4", "--no-progress"]
    evaluate += ["--seen-policies", "a,b"]
    for n in (1, 2):
        outputs = {
            f"score{n}.jsonl": [*score, "--output", str(tmp_path / f"score{n}.jsonl")],
            f"whole{n}.jsonl": [*score, "--no-shared-prefix", "--output", str(tmp_path / f"whole{n}.jsonl")],
            f"eval{n}.json": [*evaluate, "--output", str(tmp_path / f"eval{n}.json")],
        }
        if n == 1:
            for argv in outputs.values():
                assert cli(argv) == 0
        else:
            for name, argv in outputs.items():
                out = run_processes(argv)
                if name.startswith("eval"):
                    assert "accuracy" in out[0] and "accuracy" not in out[1]  # process 0 prints the table
    for name in ("score", "whole", "eval"):
        ext = "json" if name == "eval" else "jsonl"
        assert (tmp_path / f"{name}2.{ext}").read_bytes() == (tmp_path / f"{name}1.{ext}").read_bytes(), name
    scored = [json.loads(line) for line in (tmp_path / "score2.jsonl").read_text().splitlines()]
    assert [r["output"] for r in scored] == [json.loads(line)["output"] for line in rows.read_text().splitlines()]
    groups = json.loads((tmp_path / "eval2.json").read_text())["groups"]
    assert groups["all"]["n"] == 23 and groups["seen_policies"]["n"] + groups["unseen_policies"]["n"] == 23
    assert not list(tmp_path.glob(".*tmp*"))
