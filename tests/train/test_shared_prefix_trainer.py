"""The trainer in the shared-prefix layout (the default) follows the unshared run's losses step for
step, with and without the attention window; the window comes from the prepared data's stats and a
pair that does not fit it stops the run naming the pair."""

import json
import pathlib

import pytest

from polar_jax.config_loading import load_config
from polar_jax.data import packing
from polar_jax.train import setup, trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "pretrain_tiny.py"
# Rows of 512 always hold two synthetic pairs (sequences of at most 99 tokens) in either layout, so
# both layouts put the same pairs in the same rows and steps: only the layout differs.
SMALL = [
    "--config.steps=6",
    "--config.log_every=1",
    "--config.eval_every=0",
    "--config.checkpoint_every=0",
    "--config.data.batch_size=8",
    "--config.model.d_model=32",
    "--config.model.mlp_dim=64",
    "--config.data.seq_len=512",
    "--config.data.max_pairs_per_row=2",
]


def _losses(workdir) -> list[float]:
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _run(tmp_path, name, *overrides):
    cfg = load_config(CONFIG, SMALL + list(overrides))
    result = trainer.train(cfg, tmp_path / name, progress=False)
    assert result.step == 6
    return _losses(tmp_path / name)


def test_shared_prefix_and_window_follow_the_unshared_losses(tmp_path):
    unshared = _run(tmp_path, "unshared", "--config.data.shared_prefix=False", "--config.data.attention_window=0")
    shared = _run(tmp_path, "shared", "--config.data.attention_window=0")
    windowed = _run(tmp_path, "windowed", "--config.data.attention_window=160")
    assert len(unshared) == 6
    assert shared == pytest.approx(unshared, rel=1e-4)
    assert windowed == pytest.approx(unshared, rel=1e-4)
    assert unshared[-1] < unshared[0]  # it trains


def test_a_pair_longer_than_the_window_stops_the_run_naming_it(tmp_path):
    cfg = load_config(CONFIG, SMALL + ["--config.data.attention_window=40"])
    with pytest.raises(packing.PairTooLongError, match="exceeds the attention window of 40"):
        trainer.train(cfg, tmp_path / "run", progress=False)


def _prepared(tmp_path, name, shared_max, sequence_max):
    directory = tmp_path / name
    directory.mkdir()
    stats = {"sequence_length": {"max": sequence_max}, "shared_pair_length": {"max": shared_max}}
    (directory / "stats.json").write_text(json.dumps(stats))
    return str(directory)


def test_the_window_is_the_longest_segment_of_the_prepared_data(tmp_path):
    train = _prepared(tmp_path, "train", shared_max=300, sequence_max=200)
    held_out = _prepared(tmp_path, "eval", shared_max=350, sequence_max=180)
    base = ["--config.data.kind=array_record", f"--config.data.train={train}", f"--config.data.eval={held_out}"]
    cfg = load_config(CONFIG, base + ["--config.data.seq_len=1024"])
    assert setup.attention_window(cfg) == 350  # shared layout: the longest pair with its prefix once
    cfg = load_config(CONFIG, base + ["--config.data.seq_len=1024", "--config.data.shared_prefix=False"])
    assert setup.attention_window(cfg) == 200  # unshared: the longest sequence
    cfg = load_config(CONFIG, base + ["--config.data.seq_len=256"])
    assert setup.attention_window(cfg) == 0  # no shorter than the row: whole rows
    cfg = load_config(CONFIG, base + ["--config.data.seq_len=1024", "--config.data.attention_window=500"])
    assert setup.attention_window(cfg) == 500
    (tmp_path / "eval" / "stats.json").unlink()  # a directory without the statistic: no promise
    cfg = load_config(CONFIG, base + ["--config.data.seq_len=1024"])
    assert setup.attention_window(cfg) == 0
