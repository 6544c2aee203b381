"""The host loop of continuous batching: requests wait in a queue, enter free slots (prefilled
in batches, prompts padded to a few width buckets), decode together, and leave as they finish.

    engine = Engine(cfg, sampling, slots=8, max_prompt_tokens=1024)
    gen = engine.generate(params, prompts, keys)         # prompts: lists of token ids; keys [R]
    gen.tokens_bn[r], gen.lengths_b[r], ...               # row r = request r, numpy
    engine.stats.utilisation, engine.stats.tokens_per_s   # useful tokens / slot-steps, ...

Request r's output equals `sampling.generate` of its prompt with key keys[r] (and budget
max_new[r]): the same tokens, log-probs, stop and loop rules, whatever the number of slots
or the order requests arrive in. The engine keeps no state between calls except its counters,
so one engine serves any parameters (pass them per call: a policy being trained, or a pool's
shared weights).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import time
from collections.abc import Sequence

import jax
import numpy as np
from tqdm import tqdm

from polar_jax import parallel
from polar_jax import sampling as sampling_lib
from polar_jax.engine import steps
from polar_jax.models.config import ModelConfig
from polar_jax.sampling import Generation, SamplingConfig


@dataclasses.dataclass
class EngineStats:
    """What the engine did, summed over its `generate` calls."""

    requests: int = 0
    useful_tokens: int = 0  # tokens kept in the outputs (a loop's cut repeats excluded)
    slot_steps: int = 0  # slots x decode steps: the token positions the decode steps computed
    decode_steps: int = 0
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_calls: int = 0
    decode_calls: int = 0

    @property
    def utilisation(self) -> float:
        """Useful tokens per slot-step (1.0: no slot ever idled or decoded a finished row)."""
        return self.useful_tokens / self.slot_steps if self.slot_steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Useful new tokens per second of prefill and decode."""
        seconds = self.prefill_s + self.decode_s
        return self.useful_tokens / seconds if seconds else 0.0

    def metrics(self, prefix: str = "engine_") -> dict[str, float]:
        """Flat metrics for metrics.jsonl / TensorBoard."""
        return {
            f"{prefix}utilisation": self.utilisation,
            f"{prefix}tokens_per_s": self.tokens_per_s,
            f"{prefix}prefill_s": self.prefill_s,
            f"{prefix}decode_s": self.decode_s,
            f"{prefix}useful_tokens": float(self.useful_tokens),
            f"{prefix}slot_steps": float(self.slot_steps),
        }

    def postfix(self) -> dict[str, str]:
        """Short figures for a progress bar."""
        return {
            "tok_s": f"{self.tokens_per_s:.0f}",
            "util": f"{self.utilisation:.2f}",
            "prefill_s": f"{self.prefill_s:.1f}",
            "decode_s": f"{self.decode_s:.1f}",
        }


def host_key_data(keys, num: int) -> np.ndarray:
    """R keys as host key data [R, ...] (uint32, the default PRNG implementation): the engine
    slices them on the host and wraps them inside its compiled steps, so requests of any count
    compile nothing."""
    if isinstance(keys, np.ndarray) and keys.dtype == np.uint32 and keys.ndim == 2:
        data = keys
    else:
        data = np.asarray(jax.random.key_data(sampling_lib.row_keys(keys, num)))
    if len(data) != num:
        raise ValueError(f"{len(data)} keys for {num} requests")
    return data


def width_buckets(max_prompt_tokens: int, smallest: int = 16) -> tuple[int, ...]:
    """Prompt widths: powers of two from `smallest`, the last one `max_prompt_tokens` itself."""
    widths, w = [], smallest
    while w < max_prompt_tokens:
        widths.append(w)
        w *= 2
    return (*widths, max_prompt_tokens)


class Engine:
    """Continuous batching over `slots` decode slots for one model and one sampling setting.

    mesh: with a mesh, the state's slots split over data x fsdp and kv heads over tensor
    (`steps.SLOT_AXES`); `slots` must divide over data x fsdp. Parameters must already be
    placed on that mesh. max_chunk_steps: decode steps between looks at the queue when no
    slot finishes (bounds how stale the progress bar gets). refill_at: while requests wait, the
    decode loop returns to the host once this many slots (or all the waiting requests' worth)
    have finished; default slots / 16, at least 1: fewer host round trips and larger prefill
    batches for a few idle slot-steps.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        sampling: SamplingConfig,
        slots: int = 8,
        max_prompt_tokens: int = 1024,
        *,
        prompt_buckets: Sequence[int] | None = None,
        mesh=None,
        max_chunk_steps: int = 256,
        refill_at: int = 0,
    ):
        if slots < 1 or max_prompt_tokens < 1:
            raise ValueError(f"slots={slots} and max_prompt_tokens={max_prompt_tokens} must be >= 1")
        self.cfg, self.sampling, self.num_slots, self.mesh = cfg, sampling, slots, mesh
        self.max_prompt_tokens = max_prompt_tokens
        self.widths = tuple(sorted(prompt_buckets or width_buckets(max_prompt_tokens)))
        if self.widths[-1] < max_prompt_tokens:
            raise ValueError(f"prompt_buckets {self.widths} do not reach max_prompt_tokens={max_prompt_tokens}")
        shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
        if slots % shards:
            raise ValueError(f"slots={slots} do not divide over data x fsdp = {shards} devices")
        # Prefill batches and the drain's state sizes: the batch shards x powers of 4, and the slot
        # count (few programs to compile: each size is one decode program, each batch a prefill one).
        powers = range(int(math.log2(slots)) + 2)
        self.batches = self.sizes = tuple(sorted({min(shards * 4**i, slots) for i in powers}))
        self.refill_at = refill_at or max(1, slots // 16)
        self.cache_len = max_prompt_tokens + sampling.max_new_tokens
        self.max_chunk_steps = max_chunk_steps
        self.stats = EngineStats()

    def _rules(self):
        return contextlib.nullcontext() if self.mesh is None else parallel.use_rules(self.mesh)

    def generate(
        self, params, prompts: Sequence[Sequence[int]], keys, max_new=None, *, progress: bool = False, desc: str = ""
    ) -> Generation:
        """Outputs [R, N] (numpy, request order) of R prompts (token ids, 1..max_prompt_tokens each).

        keys: R keys (request r draws with keys[r]; typed keys, or their `jax.random.key_data` as a
            numpy array, which costs no device work), or one key (request r: fold_in(key, r)).
        max_new: optional per-request token budgets (<= sampling.max_new_tokens).
        """
        num, n_new = len(prompts), self.sampling.max_new_tokens
        for r, ids in enumerate(prompts):
            if not 1 <= len(ids) <= self.max_prompt_tokens:
                raise ValueError(
                    f"request {r}: prompt of {len(ids)} tokens; the engine takes 1..{self.max_prompt_tokens} "
                    "(raise max_prompt_tokens, or cut prompts as the caller's max_prompt_tokens setting says)"
                )
        out = Generation(
            np.zeros((num, n_new), np.int32),
            np.zeros((num, n_new), np.float32),
            np.zeros(num, np.int32),
            np.zeros(num, bool),
        )
        if not num:
            return out
        keys_r = host_key_data(keys, num)
        limits_r = (
            np.full(num, n_new, np.int32) if max_new is None else np.minimum(np.asarray(max_new, np.int32), n_new)
        )
        bar = tqdm(total=num, desc=desc or "generate", unit="sample", disable=not progress, leave=False)
        with self._rules():
            self._serve(params, prompts, keys_r, limits_r, out, bar)
        bar.close()
        self.stats.requests += num
        self.stats.useful_tokens += int(out.lengths_b.sum())
        return out

    def _serve(self, params, prompts, keys_r, limits_r, out: Generation, bar) -> None:
        """The loop: fill free slots from the queue, decode, harvest finished rows into `out`;
        once the queue is empty, shrink the state as rows finish (`_drain_size`)."""
        slots = steps.empty_slots(self.cfg, self.sampling, self.num_slots, self.cache_len)
        pending, owner = collections.deque(range(len(prompts))), [-1] * self.num_slots
        steps_done = 0
        while pending or max(owner) >= 0:
            free = [s for s, r in enumerate(owner) if r < 0]
            take = [pending.popleft() for _ in range(min(len(free), len(pending)))]
            for r, s in zip(take, free):
                owner[s] = r
            if take:
                slots = self._insert(params, slots, prompts, take, free[: len(take)], keys_r, limits_r)
            # Requests wait: stop once `refill_at` rows finished. The drain: stop when few enough rows
            # decode to shrink the state.
            held = sum(r >= 0 for r in owner)
            min_live = held - min(self.refill_at, len(pending)) if pending else self._drain_threshold(len(owner))
            start = time.perf_counter()
            slots = steps.decode(self.cfg, self.sampling, params, slots, min_live, self.max_chunk_steps)
            slots, gen, ready_s = steps.harvest(slots)
            ready_s, now = np.asarray(ready_s), int(slots.steps)
            self.stats.decode_s += time.perf_counter() - start
            self.stats.decode_calls += 1
            self.stats.slot_steps += len(owner) * (now - steps_done)
            self.stats.decode_steps += now - steps_done
            steps_done = now
            if ready_s.any():
                gen = jax.device_get(gen)
                for s in np.flatnonzero(ready_s):
                    for mine, theirs in zip(out, gen):
                        mine[owner[s]] = theirs[s]
                    owner[s] = -1
                    bar.update(1)
                bar.set_postfix(self.stats.postfix(), refresh=False)
            held = sum(r >= 0 for r in owner)
            size = self._drain_size(held, len(owner))
            if not pending and held and size < len(owner):
                keep = [s for s, r in enumerate(owner) if r >= 0] + [s for s, r in enumerate(owner) if r < 0]
                slots = steps.compact(slots, np.array(keep[:size], np.int32))
                owner = [owner[s] for s in keep[:size]]

    def _drain_threshold(self, size: int) -> int:
        """The largest state size at most half of `size` (0: none): once no request waits and at
        most that many rows still decode, the state shrinks."""
        return max((b for b in self.sizes if b <= size // 2), default=0)

    def _drain_size(self, held: int, size: int) -> int:
        """The state size for `held` rows once no request waits: the smallest batch size that
        holds them when they fit `_drain_threshold(size)`, else `size` (no shrinking)."""
        return next(b for b in self.sizes if b >= held) if held <= self._drain_threshold(size) else size

    def _insert(self, params, slots, prompts, take, free, keys_r, limits_r):
        """Prefill requests `take` into slots `free`, a batch per prompt-width bucket."""
        start = time.perf_counter()
        by_width = collections.defaultdict(list)
        for r, s in zip(take, free):
            by_width[next(w for w in self.widths if w >= len(prompts[r]))].append((r, s))
        for width, group in sorted(by_width.items()):
            batch = next(b for b in self.batches if b >= len(group))
            self.stats.prompt_tokens += sum(len(prompts[r]) for r, _ in group)
            group = group + [(group[0][0], self.num_slots)] * (batch - len(group))  # slot S or more: dropped
            prompt_bt = np.zeros((batch, width), np.int32)
            for row, (r, _) in enumerate(group):
                prompt_bt[row, : len(prompts[r])] = prompts[r]
            rs = np.array([r for r, _ in group])
            slots = steps.prefill_insert(
                self.cfg,
                self.sampling,
                params,
                slots,
                prompt_bt,
                np.array([len(prompts[r]) for r in rs], np.int32),
                np.array([s for _, s in group], np.int32),
                keys_r[rs],
                limits_r[rs],
            )
            self.stats.prefill_calls += 1
        jax.block_until_ready(slots)
        self.stats.prefill_s += time.perf_counter() - start
        return slots
