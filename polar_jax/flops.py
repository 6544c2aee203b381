"""Model FLOPs and chip peaks, for throughput and MFU.

Model FLOPs per training token = 6 x parameters (embedding lookup excluded) + 6 x layers x span x
d_model, span = the keys of its row a query's attention computes over: causal attention counts
half of the 12 x layers x span x d_model of QK^T and PV (forward and backward). Span = the
context, or with an attention window (`train.setup.attention_window`) the key tiles that
`models.attention.windowed_attention` computes, about window plus a tile (`attention_span`). MFU = model
FLOPs per second / the chip's bf16 peak; `peak_tflops` says where its peak came from (a
datasheet, below, or the config).
"""

from __future__ import annotations

import jax

from polar_jax.models import attention
from polar_jax.models.config import ModelConfig

# bf16 dense peak per chip, TFLOP/s (datasheets), by a substring of `device.device_kind`.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "TPU v5p": 459.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
    "TPU v4": 275.0,
}


def peak_tflops(configured: float = 0.0) -> tuple[float | None, str]:
    """(peak bf16 TFLOP/s of one device, where it came from); None where unknown (CPU)."""
    if configured:
        return configured, "config"
    kind = jax.devices()[0].device_kind
    for name, value in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return value, f"{name} datasheet"
    return None, f"unknown for {kind!r}"


def attention_span(context: int, window: int = 0) -> int:
    """Keys of its row that one query's attention computes over in a row of `context` tokens: the
    whole row, or with `window` > 0 the key tiles of the windowed XLA path where `attend` takes it
    (`models.attention.window_keys`: the tile that path picks, never more than the row)."""
    return attention.window_keys(window, context)


def train_flops_per_token(cfg: ModelConfig, context: int, window: int = 0) -> float:
    """6 x parameters (embedding lookup excluded) + 6 x layers x `attention_span` x d_model (causal
    attention; without a window the span is the context)."""
    attention_flops = 6.0 * cfg.num_layers * attention_span(context, window) * cfg.d_model
    return 6.0 * cfg.num_params(include_embedding=False) + attention_flops
