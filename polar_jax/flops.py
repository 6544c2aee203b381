"""Model FLOPs and chip peaks, for throughput and MFU.

Model FLOPs per training token = 6 x parameters (embedding lookup excluded) + 6 x layers x context
x d_model (causal attention: half of full attention's 12). MFU = model FLOPs per second / the chip's
bf16 peak; `peak_tflops` says where its peak came from (a datasheet, below, or the config).
"""

from __future__ import annotations

import jax

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


def train_flops_per_token(cfg: ModelConfig, context: int) -> float:
    """6 x parameters (embedding lookup excluded) + 6 x layers x context x d_model (causal attention)."""
    return 6.0 * cfg.num_params(include_embedding=False) + 6.0 * cfg.num_layers * context * cfg.d_model
