"""The architecture of a decoder, as one frozen dataclass.

`ModelConfig` holds only what changes the computation. Where a checkpoint came from (its
Hugging Face `config.json`, special tokens) travels beside it, not in it; see `families.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

HEADS = ("lm", "reward", "value")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "pallas")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling: Llama-3 ("llama3") or linear position interpolation."""

    kind: Literal["llama3", "linear"]
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


# The fields that say how a model is run, not what it is: configs set them per stage
# (model.*, policy.*), checkpoints do not carry them.
RUNTIME_FIELDS = ("dtype", "remat", "attention_impl", "scan_unroll")


def runtime_settings(section) -> dict:
    """A config section's (model, policy, ...) `RUNTIME_FIELDS` as `ModelConfig` keyword arguments."""
    return {k: section[k] for k in RUNTIME_FIELDS}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Llama-like decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU, optional heads."""

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rms_eps: float = 1e-6
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    qkv_bias: bool = False
    tie_embeddings: bool = False
    # Which output heads have parameters: "lm" (logits), "reward" (scalar), "value" (per token).
    heads: tuple[str, ...] = ("lm",)
    # A scalar bias on the "value" head (verl's critic, a token-classification head, has one).
    value_head_bias: bool = False
    dtype: str = "float32"  # compute dtype; parameters stay `param_dtype`
    param_dtype: str = "float32"
    remat: str = "none"
    scan_unroll: int = 1  # layers per scan iteration: more = longer compile, sometimes faster steps
    attention_impl: str = "auto"
    init_std: float = 0.02

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        for head in self.heads:
            if head not in HEADS:
                raise ValueError(f"unknown head {head!r}; known heads: {', '.join(HEADS)}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; choose one of {', '.join(REMAT_POLICIES)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r}; choose one of {', '.join(ATTENTION_IMPLS)}")

    @property
    def q_per_kv(self) -> int:
        """Query heads sharing one key/value head."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def runtime(self) -> dict:
        """How this model is run, not what it is (`RUNTIME_FIELDS`): what a model run with
        another's settings copies."""
        return {k: getattr(self, k) for k in RUNTIME_FIELDS}

    def to_dict(self) -> dict:
        """A JSON-ready dict (inverse of `from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Rebuild from `to_dict` output."""
        d = dict(d)
        if d.get("rope_scaling") is not None:
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        d["heads"] = tuple(d.get("heads", ("lm",)))
        return cls(**d)

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count of the decoder and its heads."""
        d, h, k, hd = self.d_model, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * (h + 2 * k) * hd + h * hd * d + (h + 2 * k) * hd * self.qkv_bias
        per_layer = attn + 3 * d * self.mlp_dim + 2 * d
        n = self.num_layers * per_layer + d
        if "lm" in self.heads and not self.tie_embeddings:
            n += d * self.vocab_size
        n += d * (("reward" in self.heads) + ("value" in self.heads)) + ("value" in self.heads and self.value_head_bias)
        if include_embedding:
            n += self.vocab_size * d
        return n
