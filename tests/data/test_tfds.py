"""The `polar_preferences` TFDS builder: built and read without TensorFlow, same ids as `encode_triplet`."""

import json
import sys

import numpy as np
import pytest

from polar_jax.data import encoding, schema, tfds_builder
from polar_jax.io import gguf, tokenizers

CFG = encoding.EncodingConfig(max_length=96, max_response_length=24)

TRAIN = [
    {
        "prompt": "What is the capital of China?",
        "reference": "Beijing.",
        "chosen": "Beijing.",
        "rejected": "Shanghai.",
        "meta": {"policy": "a"},
    },
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}],
        "reference": "4",
        "chosen": [{"role": "assistant", "content": "4 \U0001f600"}],
        "rejected": "5",
    },
    {
        "prompt": "Tell me a long story " + " ".join(f"w{j}" for j in range(60)),
        "reference": "Once.",
        "chosen": "Once upon a time " + " ".join(f"v{j}" for j in range(40)),
        "rejected": "No \u4f60\u597d.",
    },
]
VALIDATION = [{"prompt": "1 + 1?", "reference": "2", "chosen": "2", "rejected": "3", "meta": {"seed": 7}}]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2's tokenizer from its GGUF file (the reference, loaded once) and saved as an HF
    directory (what the builder loads, fast)."""
    tokenizer = tokenizers.load_tokenizer(gguf.smollm2_gguf_path())
    tok_dir = tmp_path_factory.mktemp("smollm2_tokenizer")
    tokenizer.save_pretrained(tok_dir)
    return tokenizer, tok_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory, smollm2):
    """The dataset built once from two small JSONL files (train has one bad and one blank line)."""
    tmp = tmp_path_factory.mktemp("tfds")
    train = tmp / "train.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in TRAIN]
    train.write_text("\n".join(lines[:1] + ["", '{"prompt": 3}'] + lines[1:]) + "\n")
    validation = tmp / "validation.jsonl"
    validation.write_text(json.dumps(VALIDATION[0]) + "\n")
    builder = tfds_builder.build_polar_preferences(
        tmp / "data",
        {"train": [train], "validation": [validation]},
        smollm2[1],
        CFG,
        add_special_tokens=True,
        skip_invalid=True,
    )
    return builder, train, validation


def test_round_trip_gives_encode_triplet_ids_texts_and_meta_in_order(built, smollm2):
    builder, train, _ = built
    tokenizer = smollm2[0]
    reward_id = encoding.resolve_reward_token_id(tokenizer, CFG, add_missing=True)
    split = builder.as_data_source()["train"]
    assert len(split) == 3
    for i, row in enumerate(TRAIN):
        example = split[i]
        want = encoding.encode_triplet(tokenizer, row, CFG, reward_id)
        np.testing.assert_array_equal(example["chosen_ids"], want.chosen)
        np.testing.assert_array_equal(example["rejected_ids"], want.rejected)
        assert example["chosen_ids"].dtype == np.int32
        for part in tfds_builder.TEXT_PARTS:  # texts come back as UTF-8 bytes without TensorFlow
            assert example[part].decode() == encoding.flatten(row[part])
        assert json.loads(example["meta"]) == row.get("meta", {})
    assert [split[i]["source"].decode() for i in range(3)] == [f"{train}:1", f"{train}:4", f"{train}:5"]
    assert len(split[2]["chosen_ids"]) <= CFG.max_length
    assert "tensorflow" not in sys.modules


def test_reading_back_needs_neither_the_class_nor_the_config(built):
    import tensorflow_datasets as tfds

    builder, train, validation = built
    reader = tfds.builder_from_directory(builder.data_dir)
    assert (reader.info.name, str(reader.info.version)) == ("polar_preferences", "1.0.0")
    data = reader.as_data_source()
    assert {name: len(split) for name, split in data.items()} == {"train": 3, "validation": 1}
    assert data["validation"][0]["source"].decode() == f"{validation}:1"
    meta = reader.info.metadata
    assert (meta["reward_token_id"], meta["vocab_size"], meta["base_vocab_size"]) == (49153, 49154, 49152)
    assert meta["added_tokens"] == {"<|reward|>": 49152, "[UNUSED_TOKEN_130]": 49153}
    assert meta["encoding"] == CFG.to_dict()
    assert meta["skipped"]["train"]["blank_line"]["count"] == 1
    assert meta["skipped"]["train"]["missing_field"]["examples"] == [
        f"{train}:3: field 'reference': missing (a triplet row needs prompt, reference, chosen, rejected)"
    ]
    assert meta["skipped"]["validation"] == {}
    assert "tensorflow" not in sys.modules


def test_strict_build_stops_at_the_bad_row(tmp_path, smollm2):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(TRAIN[0]) + "\n" + json.dumps(dict(TRAIN[0], rejected="")) + "\n")
    with pytest.raises(schema.DataError, match=rf"{bad}:2: field 'rejected': empty string \[empty\]"):
        tfds_builder.build_polar_preferences(
            tmp_path / "data", {"train": [bad]}, smollm2[1], CFG, add_special_tokens=True
        )
