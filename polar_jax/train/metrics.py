"""Where training metrics go: `metrics.jsonl` (one JSON object per logged step) and TensorBoard
events, and the throughput each logged step reports. The MFU arithmetic is in
`polar_jax/flops.py`."""

from __future__ import annotations

import json
import pathlib
import time

import jax
from tensorboardX import SummaryWriter

from polar_jax.flops import peak_tflops, train_flops_per_token


class MetricsWriter:
    """Append metrics to `DIR/metrics.jsonl` and TensorBoard (process 0 only)."""

    def __init__(self, workdir: str | pathlib.Path, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        if not self.enabled:
            return
        if self.path.exists():
            # Lines past the restored checkpoint describe steps that will be redone: drop them.
            keep = [
                line
                for line in self.path.read_text().splitlines()
                if resume_step is not None and json.loads(line)["step"] <= resume_step
            ]
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


class Throughput:
    """Tokens per second over each log window, and MFU where the chip's peak is known
    (`flops.peak_tflops`; config.peak_tflops overrides). `add` keeps the count on the device,
    so the loop does not wait for a step it does not log."""

    def __init__(self, model_cfg, config, devices: int):
        self.peak, self.peak_source = peak_tflops(config.peak_tflops)
        self.flops_per_token = train_flops_per_token(model_cfg, config.data.seq_len)
        self.devices = devices
        self.start, self.tokens = time.perf_counter(), 0.0

    def add(self, tokens) -> None:
        """Count one step's tokens (a device scalar is fine)."""
        self.tokens = self.tokens + tokens

    def read(self, step: int, metrics: dict) -> dict:
        """The step's metrics as floats, with tokens_per_s (and mfu) since the last read."""
        logged = {k: float(v) for k, v in metrics.items()}
        logged["tokens_per_s"] = float(self.tokens) / (time.perf_counter() - self.start)
        if self.peak:
            logged["mfu"] = logged["tokens_per_s"] * self.flops_per_token / (self.peak * 1e12 * self.devices)
        self.start, self.tokens = time.perf_counter(), 0.0
        return logged
