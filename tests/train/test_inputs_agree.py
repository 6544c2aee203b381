"""Inputs agree before work starts (issue 15): the data's ids must fit a scratch model's
vocabulary, and every prepared directory of a run must come from one tokenizer."""

import json
import pathlib

import pytest

from polar_jax.config_loading import load_config
from polar_jax.errors import ConfigError
from polar_jax.train import setup

ROOT = pathlib.Path(__file__).resolve().parents[2]


def prepared(path: pathlib.Path, vocab: int = 2048, reward_token_id: int = 2, tokenizer: str = "A") -> str:
    """A directory shaped as `prepare` writes it: encoding.json and the tokenizer as used."""
    (path / "tokenizer").mkdir(parents=True)
    (path / "tokenizer" / "tokenizer.json").write_text(tokenizer)
    info = {"vocab_size": vocab, "reward_token_id": reward_token_id, "tokenizer_dir": "tokenizer", "encoding": {}}
    (path / "encoding.json").write_text(json.dumps(info))
    return str(path)


def config(train: str, eval_: str, *overrides):
    return load_config(
        ROOT / "configs" / "pretrain_tiny.py",
        ["--config.data.kind=array_record", f"--config.data.train={train}", f"--config.data.eval={eval_}", *overrides],
    )


def test_a_scratch_model_smaller_than_the_datas_vocabulary_is_refused_by_name(tmp_path):
    data = prepared(tmp_path / "train", vocab=49153)
    with pytest.raises(
        ConfigError,
        match=r"config.model.vocab_size=128, but .*train was prepared with a tokenizer of "
        r"49153 tokens .*--config.model.vocab_size=49153",
    ):
        setup.build_model(config(data, data))
    model = setup.build_model(config(data, data, "--config.model.vocab_size=49153"))
    assert model.cfg.vocab_size == 49153


def test_train_and_eval_data_from_different_tokenizers_are_refused(tmp_path):
    train = prepared(tmp_path / "train")
    with pytest.raises(
        ConfigError,
        match=r"data.eval .*other and data.train .*train were prepared with different tokenizers \(vocab_size "
        r"2048 vs 49153\).*same --tokenizer",
    ):
        setup.check_prepared_data(config(train, prepared(tmp_path / "other", vocab=49153)))
    with pytest.raises(ConfigError, match=r"\(reward_token_id 2 vs 7\)"):
        setup.check_prepared_data(config(train, prepared(tmp_path / "reward", reward_token_id=7)))
    with pytest.raises(ConfigError, match=r"\(different tokenizer files\)"):
        setup.check_prepared_data(config(train, prepared(tmp_path / "files", tokenizer="B")))
    with pytest.raises(ConfigError, match=r"data.train .*second and data.train .*train were"):  # two train sets too
        setup.check_prepared_data(config(f"{train},{prepared(tmp_path / 'second', tokenizer='B')}", train))


def test_data_from_one_tokenizer_passes(tmp_path):
    train, eval_ = prepared(tmp_path / "train"), prepared(tmp_path / "eval")
    info = setup.check_prepared_data(config(train, eval_))
    assert (info["dir"], info["vocab_size"]) == (train, 2048)
    assert info["tokenizer"] == setup.tokenizer_fingerprint(tmp_path / "eval" / "tokenizer")
