"""Model families: read a Hugging Face `config.json` into a `ModelConfig`, and write one back.

Supported `model_type`s: llama (SmolLM2 included), qwen2, internlm2. A family differs from
the others only in config keys and weight names (`polar_jax/io/hf_names.py`); the
computation is the one decoder in `transformer.py`.
"""

from __future__ import annotations

import copy

from polar_jax.models.config import ModelConfig, RopeScaling

FAMILIES = ("llama", "qwen2", "internlm2")

# Architecture names written on export, by family and head.
ARCHITECTURES = {
    ("llama", "lm"): "LlamaForCausalLM",
    ("llama", "reward"): "LlamaForSequenceClassification",
    ("qwen2", "lm"): "Qwen2ForCausalLM",
    ("qwen2", "reward"): "Qwen2ForSequenceClassification",
    ("internlm2", "lm"): "InternLM2ForCausalLM",
    ("internlm2", "reward"): "InternLM2ForRewardModel",
}

# InternLM2 exports point transformers' Auto classes at the checkpoint's own code (InternLM2 is
# not built into transformers 5). A reward model loads as the released POLAR ones do (xtuner's
# `to_hf`): AutoModel is the reward class, with no causal-LM entry. None removes an entry;
# AutoConfig keeps the base's when it has one.
AUTO_MAP = {
    ("internlm2", "lm"): {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
        "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
    },
    ("internlm2", "reward"): {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModel": "modeling_internlm2.InternLM2ForRewardModel",
        "AutoModelForCausalLM": None,
        "AutoModelForSequenceClassification": None,
    },
}


class UnsupportedModelError(ValueError):
    """A checkpoint whose architecture this library cannot run exactly."""


def family_of(hf_config: dict) -> str:
    """The family of an HF config, or an error that lists the supported ones."""
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported model types: {', '.join(FAMILIES)}"
        )
    return model_type


def _rope(hf_config: dict) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from transformers 5 `rope_parameters` or the older `rope_scaling`."""
    params = dict(hf_config.get("rope_parameters") or {})
    legacy = dict(hf_config.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf_config.get("rope_theta", 10_000.0))
    spec = params or legacy
    kind = spec.get("rope_type", spec.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind == "llama3":
        return float(theta), RopeScaling(
            kind="llama3",
            factor=float(spec["factor"]),
            low_freq_factor=float(spec["low_freq_factor"]),
            high_freq_factor=float(spec["high_freq_factor"]),
            original_max_position=int(spec["original_max_position_embeddings"]),
        )
    if kind == "linear":
        return float(theta), RopeScaling(kind="linear", factor=float(spec["factor"]))
    if kind == "dynamic":
        # Dynamic NTK only changes positions past max_position_embeddings (32k for
        # InternLM2.5); below that it is plain RoPE, which is what runs here.
        return float(theta), None
    raise UnsupportedModelError(f"rope type {kind!r} is not supported (default, llama3, linear)")


def config_from_hf(hf_config: dict, heads: tuple[str, ...] = ("lm",), **runtime) -> ModelConfig:
    """Build the decoder config of an HF `config.json` dict; `runtime` sets dtype, remat, ..."""
    family = family_of(hf_config)
    c = hf_config
    if c.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act {c['hidden_act']!r}: only silu (SwiGLU) runs here")
    if c.get("mlp_bias") or (family == "llama" and c.get("attention_bias")):
        raise UnsupportedModelError("Llama checkpoints with attention_bias or mlp_bias are not supported")
    if family == "qwen2" and c.get("use_sliding_window"):
        raise UnsupportedModelError("Qwen2 with use_sliding_window=true is not supported")
    theta, scaling = _rope(c)
    num_heads = c["num_attention_heads"]
    return ModelConfig(
        vocab_size=c["vocab_size"],
        d_model=c["hidden_size"],
        num_layers=c["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=c.get("num_key_value_heads") or num_heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // num_heads,
        mlp_dim=c["intermediate_size"],
        rms_eps=c.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=family == "qwen2" or bool(family == "internlm2" and c.get("bias", False)),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        heads=heads,
        **runtime,
    )


def hf_config_for(cfg: ModelConfig, family: str, head: str, base: dict | None = None) -> dict:
    """An HF `config.json` dict for exporting `cfg` as `family` with `head` ("lm" | "reward").

    Keys of `base` (the imported checkpoint's config: token ids, reward_token_id, rope_scaling,
    ...) are kept unless the architecture overrides them; InternLM2's `auto_map` follows `AUTO_MAP`.
    """
    out = copy.deepcopy(base or {})
    # The base's own rope keys survive when they mean what `cfg` runs (InternLM2.5's dynamic
    # scaling reads as plain RoPE here, and must reach the remote code unchanged).
    keep_rope = (
        family == "internlm2"
        and "rope_scaling" in out
        and "rope_theta" in out
        and _rope(out) == (cfg.rope_theta, cfg.rope_scaling)
    )
    kept_rope = {k: out[k] for k in ("rope_scaling", "rope_theta")} if keep_rope else None
    for stale in ("rope_scaling", "rope_theta", "rope_parameters", "num_labels", "id2label", "label2id"):
        out.pop(stale, None)
    out.update(
        model_type=family,
        architectures=[ARCHITECTURES[family, head]],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.mlp_dim,
        rms_norm_eps=cfg.rms_eps,
        hidden_act="silu",
        tie_word_embeddings=cfg.tie_embeddings,
        torch_dtype="float32",
    )
    if family != "internlm2" or cfg.head_dim != cfg.d_model // cfg.num_heads:
        out["head_dim"] = cfg.head_dim  # InternLM2's code derives it from hidden_size / heads
    rope: dict = {"rope_type": "default"}
    if cfg.rope_scaling is not None and cfg.rope_scaling.kind == "llama3":
        s = cfg.rope_scaling
        rope = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position,
        }
    elif cfg.rope_scaling is not None:
        rope = {"rope_type": "linear", "factor": cfg.rope_scaling.factor}
    if family == "internlm2":
        # InternLM2's remote code reads the pre-v5 keys.
        out["rope_theta"] = cfg.rope_theta
        out["rope_scaling"] = None if rope["rope_type"] == "default" else {"type": rope["rope_type"], **rope}
        out.update(kept_rope or {})
        out["bias"] = cfg.qkv_bias
    else:
        out["rope_parameters"] = {"rope_theta": cfg.rope_theta, **rope}
    if family == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    if (family, head) in AUTO_MAP:
        auto_map = dict(out.get("auto_map") or {})
        for key, ref in AUTO_MAP[family, head].items():
            if ref is None:
                auto_map.pop(key, None)
            elif key == "AutoConfig":
                auto_map.setdefault(key, ref)
            else:
                auto_map[key] = ref
        out["auto_map"] = auto_map
    if head == "reward" and family != "internlm2":
        out["num_labels"] = 1
        out["id2label"] = {"0": "LABEL_0"}
        out["label2id"] = {"LABEL_0": 0}
    return out
