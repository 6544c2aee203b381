"""Where training metrics go: `metrics.jsonl` (one JSON object per logged step), TensorBoard
events, and the throughput / MFU arithmetic (DESIGN.md's model-FLOPs count)."""

from __future__ import annotations

import json
import pathlib

import jax
from tensorboardX import SummaryWriter

from polar_jax.models.config import ModelConfig

# bf16 dense peak per chip, TFLOP/s (datasheets), by a substring of `device.device_kind`.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0,
               "TPU v5e": 197.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0, "TPU v4": 275.0}


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


class MetricsWriter:
    """Append metrics to `DIR/metrics.jsonl` and TensorBoard (process 0 only)."""

    def __init__(self, workdir: str | pathlib.Path, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        if not self.enabled:
            return
        if self.path.exists():
            # Lines past the restored checkpoint describe steps that will be redone: drop them.
            keep = [line for line in self.path.read_text().splitlines()
                    if resume_step is not None and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in keep))
        self.file = self.path.open("a")
        self.tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict, prefix: str = "") -> None:
        """Log one step's scalars."""
        if not self.enabled:
            return
        row = {"step": int(step), **{prefix + k: float(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for k, v in row.items():
            if k != "step":
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush and close both outputs."""
        if self.enabled:
            self.file.close()
            self.tb.close()
