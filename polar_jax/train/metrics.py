"""Where training metrics go: `metrics.jsonl` (one JSON object per logged step) and TensorBoard
events, and the throughput each logged step reports. The MFU arithmetic is in
`polar_jax/flops.py`."""

from __future__ import annotations

import json
import logging
import pathlib
import time

import jax
import numpy as np
from tensorboardX import SummaryWriter

from polar_jax.flops import peak_tflops, train_flops_per_token
from polar_jax.io import atomic, storage

log = logging.getLogger(__name__)


class MetricsWriter:
    """Append metrics to `DIR/metrics.jsonl` and TensorBoard (process 0 only).

    On a rerun the file is read back first: lines past `resume_step` (steps that will be redone)
    are dropped, a line that does not parse (a partial last line after a kill or a full disk) is
    dropped with a warning naming FILE:LINE, and a (step, key) already in the kept lines is not
    written again (RFT logs its iteration-0 and final evaluations again on every rerun).

    In a bucket workdir (`gs://`, no appends) the kept rows are held in memory and the whole file
    is uploaded again at each write, so what is in the bucket is always complete up to the last
    logged step; TensorBoard writes its events there itself (through google-cloud-storage)."""

    def __init__(self, workdir: str | pathlib.Path, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.path = storage.path(workdir) / "metrics.jsonl"
        self.logged: set[tuple[int, str]] = set()  # (step, key) pairs the kept lines already hold
        if not self.enabled:
            return
        keep = []
        if self.path.exists():
            keep = self._read_back(resume_step)
            atomic.write_text(self.path, "".join(json.dumps(row) + "\n" for row in keep))
            self.logged = {(row["step"], k) for row in keep for k in row if k != "step"}
        self.bucket_lines = [json.dumps(row) + "\n" for row in keep] if storage.is_bucket(self.path) else None
        self.file = None if self.bucket_lines is not None else self.path.open("a")
        self.tb = SummaryWriter(str(storage.path(workdir) / "tensorboard"))

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
        line = json.dumps({"step": int(step), **values}) + "\n"
        if self.file is None:
            self.bucket_lines.append(line)
            self.path.write_text("".join(self.bucket_lines))
        else:
            self.file.write(line)
            self.file.flush()
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush and close both outputs."""
        if self.enabled:
            if self.file is not None:
                self.file.close()
            self.tb.close()


# What `Throughput` counts per second, from `batch_counts`.
COUNT_KEYS = ("pairs", "tokens", "unshared_tokens")


def batch_counts(batch) -> dict[str, int]:
    """A host batch's real pairs, the tokens its rows compute (real, non-padding tokens) and the
    tokens the unshared layout would compute for the same pairs (each pair's chosen + rejected
    length). In the shared-prefix layout (`data.batch`) that is the real tokens plus each pair's
    prefix once more: the branch-0 tokens of a segment that also holds branch 1 / 2 tokens. Pure numpy."""
    segment_bt, branch_bt = np.asarray(batch["segment_ids_bt"]), np.asarray(batch["branch_ids_bt"])
    # (row, segment) as one number, so a segment id means the same segment in its row only
    row_segment_bt = np.arange(segment_bt.shape[0])[:, None] * (int(segment_bt.max(initial=0)) + 1) + segment_bt
    branched = np.unique(row_segment_bt[branch_bt != 0])  # the segments with suffixes: shared-prefix pairs
    prefix_t = (branch_bt == 0) & (segment_bt != 0) & np.isin(row_segment_bt, branched)
    tokens = int(np.count_nonzero(segment_bt))
    prefix_tokens = int(np.count_nonzero(prefix_t))
    return {
        "pairs": int(np.count_nonzero(batch["pair_mask_bp"])),
        "tokens": tokens,
        "unshared_tokens": tokens + prefix_tokens,
    }


class Throughput:
    """Pairs, tokens computed and unshared-equivalent tokens per second over each log window, the
    seconds per step, and MFU of the FLOPs computed where the chip's peak is known
    (`flops.peak_tflops`; config.peak_tflops overrides). `add` counts a step's host batch before it
    goes to the device (`batch_counts`), so nothing waits for the device; with several processes
    `read` sums every process's counts (a collective at log steps, which every process reaches).
    `window`: the attention window the step computes with (`train.setup.attention_window`)."""

    def __init__(self, model_cfg, config, devices: int, window: int = 0, clock=time.perf_counter):
        self.peak, self.peak_source = peak_tflops(config.peak_tflops)
        self.clock = clock
        self.model_cfg, self.window, self.devices = model_cfg, window, devices
        self._flops_per_token: dict[int, float] = {}  # by row length: the attention term depends on it
        self._reset()

    def _reset(self) -> None:
        self.start = self.clock()
        self.counts = np.zeros(len(COUNT_KEYS) + 1)  # COUNT_KEYS, then FLOPs
        self.steps = 0

    def flops_per_token(self, row_len: int) -> float:
        """Training FLOPs per real token of a row of `row_len` tokens (`flops.train_flops_per_token`)."""
        if row_len not in self._flops_per_token:
            self._flops_per_token[row_len] = train_flops_per_token(self.model_cfg, row_len, self.window)
        return self._flops_per_token[row_len]

    def add(self, batch) -> None:
        """Count one step's host batch (this process's rows)."""
        counts = batch_counts(batch)
        flops = counts["tokens"] * self.flops_per_token(int(np.shape(batch["tokens_bt"])[1]))
        self.counts += np.array([*(counts[k] for k in COUNT_KEYS), flops])
        self.steps += 1

    def read(self, step: int, metrics: dict) -> dict:
        """The step's metrics as floats, with pairs_per_s, tokens_per_s (computed),
        unshared_tokens_per_s, step_s (seconds per step) and mfu, since the last read."""
        logged = {k: float(v) for k, v in metrics.items()}
        seconds = self.clock() - self.start
        counts = _sum_over_processes(self.counts)
        for key, value in zip(COUNT_KEYS, counts):
            logged[f"{key}_per_s"] = float(value) / seconds
        logged["step_s"] = seconds / max(self.steps, 1)
        if self.peak:
            logged["mfu"] = float(counts[-1]) / seconds / (self.peak * 1e12 * self.devices)
        self._reset()
        return logged


def _sum_over_processes(counts: np.ndarray) -> np.ndarray:
    """`counts` summed over every process (itself when there is one)."""
    if jax.process_count() == 1:
        return counts
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(counts)).reshape(jax.process_count(), -1).sum(axis=0)
