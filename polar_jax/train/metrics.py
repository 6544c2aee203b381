"""Where training metrics go: `metrics.jsonl` (one JSON object per logged step) and TensorBoard
events, and the throughput each logged step reports. The MFU arithmetic is in
`polar_jax/flops.py`."""

from __future__ import annotations

import json
import logging
import pathlib
import time

import jax
from tensorboardX import SummaryWriter

from polar_jax.flops import peak_tflops, train_flops_per_token
from polar_jax.io import atomic

log = logging.getLogger(__name__)


class MetricsWriter:
    """Append metrics to `DIR/metrics.jsonl` and TensorBoard (process 0 only).

    On a rerun the file is read back first: lines past `resume_step` (steps that will be redone)
    are dropped, a line that does not parse (a partial last line after a kill or a full disk) is
    dropped with a warning naming FILE:LINE, and a (step, key) already in the kept lines is not
    written again (RFT logs its iteration-0 and final evaluations again on every rerun)."""

    def __init__(self, workdir: str | pathlib.Path, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.logged: set[tuple[int, str]] = set()  # (step, key) pairs the kept lines already hold
        if not self.enabled:
            return
        if self.path.exists():
            keep = self._read_back(resume_step)
            atomic.write_text(self.path, "".join(json.dumps(row) + "\n" for row in keep))
            self.logged = {(row["step"], k) for row in keep for k in row if k != "step"}
        self.file = self.path.open("a")
        self.tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

    def _read_back(self, resume_step: int | None) -> list[dict]:
        """The file's rows at or before `resume_step` (none when None); unreadable lines warned of and dropped."""
        lines = self.path.read_bytes().split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        keep = []
        for line_no, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
                step = row["step"]
                if not isinstance(step, int):
                    raise TypeError(f"step is {type(step).__name__}")
            except (ValueError, KeyError, TypeError) as e:
                where = "its last line, cut short (a kill or a full disk?)" if line_no == len(lines) else "a bad line"
                log.warning(
                    "%s:%d: dropped %s: %s (%d bytes); the run goes on without it",
                    self.path,
                    line_no,
                    where,
                    type(e).__name__,
                    len(line),
                )
                continue
            if resume_step is not None and step <= resume_step:
                keep.append(row)
        return keep

    def write(self, step: int, metrics: dict, prefix: str = "") -> None:
        """Log one step's scalars (keys this step already holds in the kept file are skipped)."""
        if not self.enabled:
            return
        values = {prefix + k: float(v) for k, v in metrics.items()}
        values = {k: v for k, v in values.items() if (int(step), k) not in self.logged}
        if not values:
            return
        row = {"step": int(step), **values}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for k, v in values.items():
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
