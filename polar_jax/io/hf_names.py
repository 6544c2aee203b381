"""Declarative weight-name tables: Hugging Face tensor name <-> parameter path, per family.

Each `Rule` maps one HF tensor (a `{i}` in the name stands for the layer index) to one or
more parameter paths, with a `Layout` that says how the HF array (PyTorch `[out, in]`
linear layout) becomes ours. Layer tensors are stacked along the leading "layers" axis.
Reading the table is reading the conversion; `hf.py` only executes it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from polar_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one HF array maps to ours; dims are `ModelConfig` field names.

    Ours has shape `in_dims + out_dims`. A `linear` HF weight is PyTorch's `[out, in]` with
    each side flattened, so it is transposed; otherwise HF keeps the same order, flattened
    to `[prod(in), prod(out)]` (or `[prod(out)]` without in dims).
    """

    linear: bool = False
    in_dims: tuple[str, ...] = ()
    out_dims: tuple[str, ...] = ()

    def _sizes(self, cfg: ModelConfig, dims: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(getattr(cfg, d) for d in dims)

    def our_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        return self._sizes(cfg, self.in_dims) + self._sizes(cfg, self.out_dims)

    def hf_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        n_in = math.prod(self._sizes(cfg, self.in_dims))
        n_out = math.prod(self._sizes(cfg, self.out_dims))
        if self.linear:
            return (n_out, n_in)
        return (n_in, n_out) if self.in_dims else (n_out,)

    def to_ours(self, cfg: ModelConfig, a: np.ndarray) -> np.ndarray:
        return (a.T if self.linear else a).reshape(self.our_shape(cfg))

    def to_hf(self, cfg: ModelConfig, a: np.ndarray) -> np.ndarray:
        if self.linear:
            return a.reshape(self.hf_shape(cfg)[::-1]).T
        return a.reshape(self.hf_shape(cfg))


VECTOR = Layout(out_dims=("d_model",))
EMBEDDING = Layout(in_dims=("vocab_size",), out_dims=("d_model",))
Q = Layout(linear=True, in_dims=("d_model",), out_dims=("num_heads", "head_dim"))
KV = Layout(linear=True, in_dims=("d_model",), out_dims=("num_kv_heads", "head_dim"))
O = Layout(linear=True, in_dims=("num_heads", "head_dim"), out_dims=("d_model",))  # noqa: E741 (the attention output projection, beside Q and KV)
UP = Layout(linear=True, in_dims=("d_model",), out_dims=("mlp_dim",))
DOWN = Layout(linear=True, in_dims=("mlp_dim",), out_dims=("d_model",))
LM_HEAD = Layout(linear=True, in_dims=("d_model",), out_dims=("vocab_size",))
SCORE = Layout(linear=True, in_dims=("d_model",), out_dims=())  # HF [1, d] -> ours [d]
Q_BIAS = Layout(out_dims=("num_heads", "head_dim"))
KV_BIAS = Layout(out_dims=("num_kv_heads", "head_dim"))


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor <-> one parameter path ("a/b/c"); `when` names a condition (see `applies`)."""

    hf: str
    param: str
    layout: Layout
    when: str = "always"  # always | qkv_bias | untied_lm | reward | value

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf

    def hf_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        return self.layout.hf_shape(cfg)


@dataclasses.dataclass(frozen=True)
class FusedQKVRule:
    """InternLM2's `wqkv`: per KV group, the group's query heads, then its key, then its value."""

    hf: str = "model.layers.{i}.attention.wqkv.weight"
    params: tuple[str, str, str] = ("layers/attn/wq", "layers/attn/wk", "layers/attn/wv")
    when: str = "always"
    per_layer: bool = True

    def hf_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        return ((cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim, cfg.d_model)

    def to_ours(self, cfg: ModelConfig, a: np.ndarray) -> tuple[np.ndarray, ...]:
        k, g, hd, d = cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim, cfg.d_model
        a_kged = a.reshape(k, g + 2, hd, d)  # (kv group, q heads + k + v, head_dim, d_model)
        wq = a_kged[:, :g].reshape(k * g, hd, d).transpose(2, 0, 1)  # query head = group * g + j
        wk = a_kged[:, g].transpose(2, 0, 1)
        wv = a_kged[:, g + 1].transpose(2, 0, 1)
        return wq, wk, wv

    def to_hf(self, cfg: ModelConfig, wq, wk, wv) -> np.ndarray:
        k, g, hd, d = cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim, cfg.d_model
        q_kghd = wq.transpose(1, 2, 0).reshape(k, g, hd, d)
        fused = np.concatenate([q_kghd, wk.transpose(1, 2, 0)[:, None], wv.transpose(1, 2, 0)[:, None]], 1)
        return fused.reshape(-1, d)


_LLAMA_LAYER = (
    Rule("model.layers.{i}.input_layernorm.weight", "layers/attn_norm/scale", VECTOR),
    Rule("model.layers.{i}.self_attn.q_proj.weight", "layers/attn/wq", Q),
    Rule("model.layers.{i}.self_attn.k_proj.weight", "layers/attn/wk", KV),
    Rule("model.layers.{i}.self_attn.v_proj.weight", "layers/attn/wv", KV),
    Rule("model.layers.{i}.self_attn.q_proj.bias", "layers/attn/bq", Q_BIAS, "qkv_bias"),
    Rule("model.layers.{i}.self_attn.k_proj.bias", "layers/attn/bk", KV_BIAS, "qkv_bias"),
    Rule("model.layers.{i}.self_attn.v_proj.bias", "layers/attn/bv", KV_BIAS, "qkv_bias"),
    Rule("model.layers.{i}.self_attn.o_proj.weight", "layers/attn/wo", O),
    Rule("model.layers.{i}.post_attention_layernorm.weight", "layers/mlp_norm/scale", VECTOR),
    Rule("model.layers.{i}.mlp.gate_proj.weight", "layers/mlp/w_gate", UP),
    Rule("model.layers.{i}.mlp.up_proj.weight", "layers/mlp/w_up", UP),
    Rule("model.layers.{i}.mlp.down_proj.weight", "layers/mlp/w_down", DOWN),
)

_LLAMA = (
    Rule("model.embed_tokens.weight", "embedding", EMBEDDING),
    *_LLAMA_LAYER,
    Rule("model.norm.weight", "final_norm/scale", VECTOR),
    Rule("lm_head.weight", "lm_head", LM_HEAD, "untied_lm"),
    Rule("score.weight", "reward_head", SCORE, "reward"),
    Rule("value_head.weight", "value_head", SCORE, "value"),
)

_INTERNLM2 = (
    Rule("model.tok_embeddings.weight", "embedding", EMBEDDING),
    Rule("model.layers.{i}.attention_norm.weight", "layers/attn_norm/scale", VECTOR),
    FusedQKVRule(),
    Rule("model.layers.{i}.attention.wo.weight", "layers/attn/wo", O),
    Rule("model.layers.{i}.ffn_norm.weight", "layers/mlp_norm/scale", VECTOR),
    Rule("model.layers.{i}.feed_forward.w1.weight", "layers/mlp/w_gate", UP),
    Rule("model.layers.{i}.feed_forward.w3.weight", "layers/mlp/w_up", UP),
    Rule("model.layers.{i}.feed_forward.w2.weight", "layers/mlp/w_down", DOWN),
    Rule("model.norm.weight", "final_norm/scale", VECTOR),
    Rule("output.weight", "lm_head", LM_HEAD, "untied_lm"),
    Rule("v_head.weight", "reward_head", SCORE, "reward"),
    Rule("value_head.weight", "value_head", SCORE, "value"),
)

TABLES = {"llama": _LLAMA, "qwen2": _LLAMA, "internlm2": _INTERNLM2}


def applies(rule, cfg: ModelConfig) -> bool:
    """Whether a rule's tensor exists for this config (biases, untied head, reward, value)."""
    return {
        "always": True,
        "qkv_bias": cfg.qkv_bias,
        "untied_lm": "lm" in cfg.heads and not cfg.tie_embeddings,
        "reward": "reward" in cfg.heads,
        "value": "value" in cfg.heads,
    }[rule.when]


def hf_names(rule, cfg: ModelConfig) -> list[str]:
    """The concrete HF names of a rule: one per layer for layer rules."""
    if rule.per_layer:
        return [rule.hf.format(i=i) for i in range(cfg.num_layers)]
    return [rule.hf]
