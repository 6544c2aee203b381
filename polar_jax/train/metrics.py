"""Where training metrics go: `metrics.jsonl` (one JSON object per logged step) and TensorBoard
events. The MFU arithmetic is in `polar_jax/flops.py`."""

from __future__ import annotations

import json
import pathlib

import jax
from tensorboardX import SummaryWriter


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
