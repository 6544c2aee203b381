"""HF checkpoint import / export: name tables, InternLM2's fused wqkv, round trips, errors."""

import json
import os
import subprocess

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from polar_jax.__main__ import main as cli
from polar_jax.io import hf, models, tokenizers
from polar_jax.models import families
from polar_jax.models import transformer as T

ALL_FIXTURES = [
    "llama_untied",
    "llama_gqa3_rope3",
    "llama_untied_bf16",
    "qwen2_tied_bias",
    "llama_reward",
    "qwen2_reward",
]


def scores_of(model, ref):
    tokens = ref["padded_tokens"]
    positions, segment_ids = T.padded_inputs(tokens != ref["pad_token_id"])
    reward_bt = T.forward(model.cfg, model.params, tokens, positions, segment_ids).reward_bt
    return np.asarray(T.gather_rows(reward_bt, T.last_token_index(segment_ids)[:, None])[:, 0])


def internlm2_from_llama(path, reward_token_id=None):
    """An InternLM2 checkpoint written by hand from a Llama one: `wqkv` fuses q, k, v per KV group as
    (num_kv_heads, q_per_kv + 2, head_dim) rows (the group's query heads, its key head, its value head)."""
    llama = json.loads((path / "config.json").read_text())
    tensors = hf.read_safetensors(path)
    h, k, hd, d = llama["num_attention_heads"], llama["num_key_value_heads"], llama["head_dim"], llama["hidden_size"]
    g = h // k
    out = {
        "model.tok_embeddings.weight": tensors["model.embed_tokens.weight"],
        "model.norm.weight": tensors["model.norm.weight"],
    }
    if "lm_head.weight" in tensors:
        out["output.weight"] = tensors["lm_head.weight"]
    if "score.weight" in tensors:
        out["v_head.weight"] = tensors["score.weight"]
    for i in range(llama["num_hidden_layers"]):
        p = f"model.layers.{i}."
        q = tensors[p + "self_attn.q_proj.weight"].reshape(k, g, hd, d)  # query head = group * g + j
        kk = tensors[p + "self_attn.k_proj.weight"].reshape(k, 1, hd, d)
        v = tensors[p + "self_attn.v_proj.weight"].reshape(k, 1, hd, d)
        out[p + "attention.wqkv.weight"] = np.concatenate([q, kk, v], axis=1).reshape(-1, d)
        out[p + "attention.wo.weight"] = tensors[p + "self_attn.o_proj.weight"]
        out[p + "feed_forward.w1.weight"] = tensors[p + "mlp.gate_proj.weight"]
        out[p + "feed_forward.w3.weight"] = tensors[p + "mlp.up_proj.weight"]
        out[p + "feed_forward.w2.weight"] = tensors[p + "mlp.down_proj.weight"]
        out[p + "attention_norm.weight"] = tensors[p + "input_layernorm.weight"]
        out[p + "ffn_norm.weight"] = tensors[p + "post_attention_layernorm.weight"]
    rope = llama["rope_parameters"]
    config = {
        "model_type": "internlm2",
        "architectures": ["InternLM2ForCausalLM"],
        "vocab_size": llama["vocab_size"],
        "hidden_size": d,
        "num_hidden_layers": llama["num_hidden_layers"],
        "num_attention_heads": h,
        "num_key_value_heads": k,
        "intermediate_size": llama["intermediate_size"],
        "rms_norm_eps": llama["rms_norm_eps"],
        "rope_theta": rope["rope_theta"],
        "bias": False,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "auto_map": {"AutoModel": "modeling_internlm2.InternLM2ForRewardModel"},
    }
    if rope["rope_type"] != "default":
        config["rope_scaling"] = {
            "type": rope["rope_type"],
            **{k_: v_ for k_, v_ in rope.items() if k_ not in ("rope_type", "rope_theta")},
        }
    if reward_token_id is not None:
        config.update(architectures=["InternLM2ForRewardModel"], reward_token_id=reward_token_id)
    return config, out


def write_checkpoint(dir_, config, tensors):
    dir_.mkdir(parents=True)
    (dir_ / "config.json").write_text(json.dumps(config))
    save_file(tensors, dir_ / "model.safetensors")
    return dir_


@pytest.mark.parametrize("name", ["llama_untied", "llama_gqa3_rope3"])
def test_internlm2_fused_wqkv_gives_the_llama_fixture_logits(hf_fixture, tmp_path, name):
    path, ref = hf_fixture(name)
    src = write_checkpoint(tmp_path / "internlm2", *internlm2_from_llama(path))
    model = hf.load_hf(src)
    assert model.family == "internlm2" and model.cfg.q_per_kv == (3 if "gqa3" in name else 1)
    positions, segment_ids = T.padded_inputs(ref["padded_mask"])
    logits = T.forward(model.cfg, model.params, ref["padded_tokens"], positions, segment_ids).logits_btv
    valid = ref["padded_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], ref["padded_logits"][valid], atol=1e-4, rtol=0)


def test_official_internlm2_reward_layout_round_trips_with_identical_values(hf_fixture, tmp_path):
    path, ref = hf_fixture("llama_reward")
    config, tensors = internlm2_from_llama(path, reward_token_id=249)
    src = write_checkpoint(tmp_path / "polar_official", config, tensors)
    model = hf.load_hf(src)
    assert model.cfg.heads == ("reward",)
    np.testing.assert_allclose(scores_of(model, ref), ref["scores"], atol=1e-4)

    out = hf.save_hf(model, tmp_path / "exported")
    exported = hf.read_safetensors(out)
    assert exported.keys() == tensors.keys() and "v_head.weight" in exported
    for name, value in tensors.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == ["InternLM2ForRewardModel"]
    assert written["reward_token_id"] == 249
    assert written["auto_map"] == {"AutoConfig": "configuration_internlm2.InternLM2Config", **config["auto_map"]}


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_export_reproduces_the_transformers_checkpoint(hf_fixture, tmp_path, name):
    """Exported tensors equal transformers' own file and the config means the same to transformers,
    so transformers loads the export into the very model that made the fixture's reference."""
    from transformers import AutoConfig

    path, _ = hf_fixture(name)
    original = hf.read_safetensors(path)
    dtype = str(next(iter(original.values())).dtype)
    out = hf.save_hf(hf.load_hf(path), tmp_path / name, dtype=dtype)
    exported = hf.read_safetensors(out)
    assert exported.keys() == original.keys()
    for key in original:
        assert exported[key].dtype == original[key].dtype
        np.testing.assert_array_equal(exported[key], original[key], err_msg=key)
    a, b = AutoConfig.from_pretrained(path), AutoConfig.from_pretrained(out)
    for field in (
        "model_type",
        "architectures",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "rms_norm_eps",
        "tie_word_embeddings",
        "rope_parameters",
        "num_labels",
        "pad_token_id",
    ):
        assert getattr(a, field, None) == getattr(b, field, None), field
    head_dim = [getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads for c in (a, b)]
    assert head_dim[0] == head_dim[1]


TORCH_PYTHON = os.environ.get("POLAR_TORCH_PYTHON")


@pytest.mark.skipif(not TORCH_PYTHON, reason="set POLAR_TORCH_PYTHON to a Python with torch 2.13 + transformers 5.17")
@pytest.mark.parametrize("name", ["llama_gqa3_rope3", "qwen2_tied_bias", "llama_reward"])
def test_export_loads_in_transformers_with_same_outputs(hf_fixture, tmp_path, name):
    path, ref = hf_fixture(name)
    out = hf.save_hf(hf.load_hf(path), tmp_path / name)
    script = (
        "import sys, json, torch, numpy as np, transformers as tf\n"
        "d, toks, mask = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3])\n"
        "arch = json.load(open(d + '/config.json'))['architectures'][0]\n"
        "m = getattr(tf, arch).from_pretrained(d, attn_implementation='eager').eval()\n"
        "with torch.no_grad(): o = m(input_ids=torch.tensor(toks), attention_mask=torch.tensor(mask)).logits\n"
        "np.save(sys.argv[4], o.float().numpy())\n"
    )
    np.save(tmp_path / "t.npy", ref["padded_tokens"].astype(np.int64))
    np.save(tmp_path / "m.npy", ref["padded_mask"].astype(np.int64))
    subprocess.run(
        [
            TORCH_PYTHON,
            "-c",
            script,
            str(out),
            str(tmp_path / "t.npy"),
            str(tmp_path / "m.npy"),
            str(tmp_path / "o.npy"),
        ],
        check=True,
    )
    got = np.load(tmp_path / "o.npy")
    if "scores" in ref:
        np.testing.assert_allclose(got[:, 0], ref["scores"], atol=1e-4)
    else:
        valid = ref["padded_mask"].astype(bool)
        np.testing.assert_allclose(got[valid], ref["padded_logits"][valid], atol=1e-4)


def test_polar_format_round_trip_and_convert_cli(hf_fixture, tmp_path):
    path, ref = hf_fixture("qwen2_reward")
    assert cli(["convert", "--from", str(path), "--to", str(tmp_path / "polar"), "--format", "polar"]) == 0
    polar = models.load_model(tmp_path / "polar")
    np.testing.assert_allclose(scores_of(polar, ref), ref["scores"], atol=1e-4)
    assert cli(["convert", "--from", str(tmp_path / "polar"), "--to", str(tmp_path / "hf"), "--format", "hf"]) == 0
    original, back = hf.read_safetensors(path), hf.read_safetensors(tmp_path / "hf")
    assert original.keys() == back.keys()
    for key in original:
        np.testing.assert_array_equal(original[key], back[key])


def test_missing_tensor_is_an_error_naming_it(hf_fixture, tmp_path):
    path, _ = hf_fixture("llama_untied")
    tensors = hf.read_safetensors(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    src = write_checkpoint(tmp_path / "m", json.loads((path / "config.json").read_text()), tensors)
    with pytest.raises(hf.CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        hf.load_hf(src)


def test_misshaped_tensor_is_an_error_naming_it_and_both_shapes(hf_fixture, tmp_path):
    path, _ = hf_fixture("llama_untied")
    tensors = hf.read_safetensors(path)
    tensors["model.norm.weight"] = np.ones(63, np.float32)
    src = write_checkpoint(tmp_path / "m", json.loads((path / "config.json").read_text()), tensors)
    with pytest.raises(hf.CheckpointError, match=r"model\.norm\.weight.*\(63,\), expected \(64,\)"):
        hf.load_hf(src)


def test_unused_tensors_are_reported(hf_fixture, tmp_path, caplog):
    path, _ = hf_fixture("llama_untied")
    tensors = hf.read_safetensors(path)
    tensors["model.extra_adapter.weight"] = np.zeros(3, np.float32)
    src = write_checkpoint(tmp_path / "m", json.loads((path / "config.json").read_text()), tensors)
    with caplog.at_level("WARNING"):
        hf.load_hf(src)
    assert "model.extra_adapter.weight" in caplog.text


def test_unsupported_model_type_lists_the_supported_ones():
    with pytest.raises(families.UnsupportedModelError, match="llama, qwen2, internlm2"):
        families.config_from_hf({"model_type": "gpt2"})


def test_legacy_rope_keys_are_read_like_rope_parameters():
    base = {
        "model_type": "llama",
        "vocab_size": 10,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
    }
    legacy = families.config_from_hf(
        {
            **base,
            "rope_theta": 5e5,
            "rope_scaling": {
                "type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        }
    )
    modern = families.config_from_hf(
        {
            **base,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 5e5,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        }
    )
    assert legacy == modern and modern.rope_scaling.factor == 8.0 and modern.rope_theta == 5e5


@pytest.mark.slow
def test_smollm2_gguf_converts_to_hf_with_its_tokenizer(tmp_path):
    from polar_jax.io import gguf

    src = gguf.smollm2_gguf_path()
    model = models.convert(src, tmp_path / "smollm2", "hf")
    back = models.load_model(tmp_path / "smollm2")
    assert back.cfg == model.cfg
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(back.params)):
        np.testing.assert_array_equal(a, b)
    tokenizer = tokenizers.load_tokenizer(tmp_path / "smollm2")
    assert tokenizer("The capital of France is")["input_ids"] == [504, 3575, 282, 4649, 314]
