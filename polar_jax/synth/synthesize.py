"""Triplet synthesis: for prompt i, pick policies A != B; A writes the reference and the
chosen, B the rejected; rows go to JSONL shards in the official format with provenance.

    OUT/triplets-00000.jsonl ...   {prompt, reference, chosen, rejected, meta}
    OUT/synth.json                 the plan and the pool, inputs by content (a resumed run must match it:
                                   `synth.resume`; paths may be spelled otherwise, or the directory moved)
    OUT/summary.json               counts, tokens, seconds (rewritten at the end of each run)
    OUT/run.json                   the run manifest (polar_jax.run_manifest): code, versions, inputs

Shard s holds prompts [s * shard_size, (s + 1) * shard_size); everything in it (prompts,
policy pairs, samples) is a pure function of (plan, s), and a shard file appears only
complete (written to a temporary name, then renamed). So a killed run, rerun, skips the
finished shards and writes the rest: no duplicates, no gaps, and the same triplets as a run
that was never stopped. Each sample draws with its own key, `sample_keys`: a function of
(plan.seed, prompt index, role, attempt) only, never of the shard, the batch or the pool's
batch size (the number of engine slots).

All requests of one policy in a shard go through its engine in one call (`PolicyPool.sample`).
A response that decodes to nothing (e.g. EOS first) is drawn again with the next attempt's
key, up to `max_redraws` times (one more call with the requests left); if still empty its
triplet is dropped and counted (`empty_response`). A shard's `new_tokens` counts every token
its policies generated, redraws included (what the engines' `useful_tokens` count).

The progress bar shows the engines' figures (tokens/s, slot utilisation, prefill and decode
seconds); summary.json's "engine" holds this run's (per-shard .stats.json files hold counts only,
so reruns write identical files).

Several processes (jax.distributed: `synth --coordinator ... --num-processes N --process-id I`,
or --multihost) share one output directory (a file system all of them see): process i writes the
shards s with s % N == i, each sampled on its own devices (process-local, no global mesh), and
no other; process 0 takes the directory's lock and writes synth.json, run.json and, once every
process has written its shards (a barrier), summary.json (counts over all shards, engine figures
summed over the processes). A shard is a pure function of (plan, s), so the shard files are the
ones one process writes, byte for byte; a rerun on any number of processes resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import time

import jax
import numpy as np
from tqdm import tqdm

from polar_jax import parallel, run_manifest
from polar_jax.engine import EngineStats
from polar_jax.errors import UserError
from polar_jax.io import atomic, content_id
from polar_jax.io.workdir_lock import WorkdirLock
from polar_jax.synth import resume
from polar_jax.synth.pool import PolicyPool, Sample, stats_since
from polar_jax.synth.prompts import PromptSource

log = logging.getLogger(__name__)

ROLES = ("reference", "chosen", "rejected")


@dataclasses.dataclass(frozen=True)
class SynthPlan:
    """What to synthesise.

    policies: names drawn for A and B (default: the whole pool).
    must_include: if set, every triplet has A or B among these (held-out-policy sets).
    """

    num_triplets: int
    shard_size: int = 64
    seed: int = 0
    policies: tuple[str, ...] = ()
    must_include: tuple[str, ...] = ()
    max_redraws: int = 2

    def __post_init__(self):
        if self.num_triplets < 1 or self.shard_size < 1:
            raise ValueError("num_triplets and shard_size must be >= 1")
        object.__setattr__(self, "policies", tuple(self.policies))
        object.__setattr__(self, "must_include", tuple(self.must_include))

    @property
    def num_shards(self) -> int:
        """Shards the plan writes."""
        return -(-self.num_triplets // self.shard_size)


def policy_pairs(names: tuple[str, ...], must_include: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Every ordered (A, B) with A != B, A or B in `must_include` when that is given."""
    pairs = [(a, b) for a in names for b in names if a != b]
    if must_include:
        pairs = [(a, b) for a, b in pairs if a in must_include or b in must_include]
    if not pairs:
        raise ValueError(f"no policy pair A != B from {list(names)} with must_include={list(must_include)}")
    return pairs


def shard_path(out_dir: pathlib.Path, shard: int) -> pathlib.Path:
    """The JSONL file of one shard."""
    return out_dir / f"triplets-{shard:05d}.jsonl"


def sample_keys(seed, indices_r, roles_r, attempt) -> np.ndarray:
    """The key of each request, as host key data [R, 2] (what `Engine.generate` takes without
    device work): fold_in(fold_in(fold_in(key(seed), prompt index), role), attempt), role = its
    position in ROLES. A sample's key is a function of its id alone."""
    num = len(indices_r)
    size = 1 << max(num - 1, 0).bit_length()  # a few compiled sizes, whatever the request count
    pad = lambda x: np.pad(np.asarray(x, np.int32), (0, size - num))  # noqa: E731
    return np.asarray(_folded_key_data(seed, pad(indices_r), pad(roles_r), attempt))[:num]


@jax.jit
def _folded_key_data(seed, indices_r, roles_r, attempt):
    base = jax.random.key(seed)
    fold = lambda index, role: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, index), role), attempt)  # noqa: E731
    return jax.random.key_data(jax.vmap(fold)(indices_r, roles_r))


def _draw_all(pool: PolicyPool, plan: SynthPlan, items: list, requests: dict) -> tuple[dict, int]:
    """Every request's final sample ({(item, role): Sample}) and the tokens generated, redraws included."""
    answers: dict[tuple[int, str], Sample] = {}
    generated = 0
    for name in sorted(requests, key=pool.names.index):
        todo = requests[name]
        for attempt in range(plan.max_redraws + 1):
            indices_r = [items[k][0] for k, _ in todo]
            roles_r = [ROLES.index(role) for _, role in todo]
            keys_r = sample_keys(plan.seed, indices_r, roles_r, attempt)
            samples = pool.sample(name, [items[k][1].text for k, _ in todo], keys_r)
            generated += sum(s.num_tokens for s in samples)
            answers.update(zip(todo, samples))
            todo = [req for req, s in zip(todo, samples) if not s.text.strip()]
            if not todo:
                break
    return answers, generated


def make_shard(pool: PolicyPool, prompts: PromptSource, plan: SynthPlan, shard: int) -> tuple[list[dict], dict]:
    """The rows of one shard and its counts (pure in (pool settings, prompts, plan, shard))."""
    names = plan.policies or tuple(pool.names)
    pairs = policy_pairs(names, plan.must_include)
    first, last = shard * plan.shard_size, min((shard + 1) * plan.shard_size, plan.num_triplets)
    weights_p = np.array([pool.specs[a].weight * pool.specs[b].weight for a, b in pairs])
    items = []
    for index in range(first, last):
        rng = np.random.default_rng([plan.seed, index, 1])
        a, b = pairs[int(rng.choice(len(pairs), p=weights_p / weights_p.sum()))]
        items.append((index, prompts.prompt(index), a, b))
    # Requests grouped by policy: (item, role) pairs; A answers twice, B once.
    requests: dict[str, list[tuple[int, str]]] = {}
    for k, (_, _, a, b) in enumerate(items):
        requests.setdefault(a, []).extend([(k, "reference"), (k, "chosen")])
        requests.setdefault(b, []).append((k, "rejected"))
    answers, generated = _draw_all(pool, plan, items, requests)
    rows, counts = [], {"triplets": 0, "empty_response": 0, "loop_truncated": 0, "new_tokens": generated}
    for k, (index, prompt, a, b) in enumerate(items):
        got = {role: answers[(k, role)] for role in ROLES}
        if any(not s.text.strip() for s in got.values()):
            counts["empty_response"] += 1
            continue
        counts["triplets"] += 1
        counts["loop_truncated"] += sum(s.truncated_loop for s in got.values())
        rows.append(
            {
                "prompt": prompt.text,
                **{role: got[role].text for role in ROLES},
                "meta": {
                    "prompt_index": index,
                    "prompt_source": prompt.source,
                    "reference_policy": a,
                    "chosen_policy": a,
                    "rejected_policy": b,
                    "seed": plan.seed,
                    "shard": shard,
                    "new_tokens": {role: got[role].num_tokens for role in ROLES},
                    "loop_truncated": [role for role in ROLES if got[role].truncated_loop],
                    "policies": {a: _compact(pool.specs[a].settings()), b: _compact(pool.specs[b].settings())},
                },
            }
        )
    return rows, counts


def _compact(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "name" and v not in ("", ())}


class PolicyCheckpointError(UserError, FileNotFoundError):
    """A policy's checkpoint path names nothing."""


def checkpoint_identity(pool: PolicyPool, name: str) -> dict:
    """A policy checkpoint by content (`io.content_id.identity`), never by its path's spelling."""
    try:
        return content_id.identity(pool.checkpoint_path(name))
    except FileNotFoundError:
        raise PolicyCheckpointError(
            f"policy {name}: checkpoint {pool.specs[name].checkpoint!r} does not exist "
            f"(resolved to {pool.checkpoint_path(name)}); fix its path in the pool"
        ) from None


def _instructions_sha256(prompts: PromptSource) -> str:
    return hashlib.sha256(json.dumps([[p.text, p.source] for p in prompts.instructions]).encode()).hexdigest()


def fingerprint(pool: PolicyPool, prompts: PromptSource, plan: SynthPlan) -> dict:
    """Everything that decides the shards' contents, as JSON (stored in synth.json), every input
    by content; "as_given" records the checkpoints' paths as spelled (provenance, never compared:
    see `synth.resume`)."""
    return {
        "version": resume.VERSION,
        "plan": dataclasses.asdict(plan),
        "policies": [{**pool.specs[n].settings(), "checkpoint": checkpoint_identity(pool, n)} for n in pool.names],
        "batch_size": pool.batch_size,
        "prompt_bucket": pool.prompt_bucket,
        "prompts": {
            "seed": prompts.seed,
            "min_tokens": prompts.min_tokens,
            "max_tokens": prompts.max_tokens,
            "doc_indices": prompts.doc_indices,
            "instruction_fraction": prompts.instruction_fraction,
            "documents_sha256": hashlib.sha256("\0".join(prompts.documents).encode()).hexdigest(),
            "instructions": len(prompts.instructions),
            "instructions_sha256": _instructions_sha256(prompts),
            "tokenizer_sha256": content_id.tokenizer_identity(prompts.tokenizer),
        },
        "as_given": {"checkpoints": {n: pool.specs[n].checkpoint for n in pool.names}},
    }


def _engine_stats(pool) -> EngineStats:
    """The pool's summed engine counters (zeros for a pool without engines, e.g. a scripted one)."""
    return pool.engine_stats() if hasattr(pool, "engine_stats") else EngineStats()


def engine_figures(stats: EngineStats) -> dict:
    """summary.json's "engine" entry: what the engines did in this run."""
    return {
        "utilisation": round(stats.utilisation, 4),
        "tokens_per_s": round(stats.tokens_per_s, 1),
        "prefill_s": round(stats.prefill_s, 2),
        "decode_s": round(stats.decode_s, 2),
        "useful_tokens": stats.useful_tokens,
        "slot_steps": stats.slot_steps,
    }


def synthesize(
    pool: PolicyPool, prompts: PromptSource, plan: SynthPlan, out_dir: str | os.PathLike, progress: bool = True
) -> dict:
    """Write (or finish writing) the plan's shards into `out_dir`; returns the summary. One
    synthesis per directory at a time (`io.workdir_lock`). In a multi-process run every process
    calls this with the same arguments and writes its share of the shards (the module docstring);
    each returns the same summary (its timing its own)."""
    out_dir = pathlib.Path(out_dir)
    with WorkdirLock(out_dir, "synth", enabled=jax.process_index() == 0):
        return _synthesize(pool, prompts, plan, out_dir, progress)


def _synthesize(pool: PolicyPool, prompts: PromptSource, plan: SynthPlan, out_dir: pathlib.Path, progress: bool):
    index, count = jax.process_index(), jax.process_count()
    wanted = fingerprint(pool, prompts, plan)
    # Every process checks (so a refused resume is refused by all, none left waiting); process 0 writes.
    resume.check_or_write(out_dir, wanted, write=index == 0)
    instructions = hashlib.sha256("\0".join(p.text for p in prompts.instructions).encode()).hexdigest()
    run_manifest.write(
        out_dir,
        wanted,
        {  # every input by content (the files are read already); their paths are in synth.json's "as_given"
            **{f"policy.{n}": p["checkpoint"] for n, p in zip(pool.names, wanted["policies"])},
            "prompts.documents": "sha256:" + wanted["prompts"]["documents_sha256"],
            "prompts.instructions": "sha256:" + instructions,
            "prompts.tokenizer": "sha256:" + wanted["prompts"]["tokenizer_sha256"],
        },
    )
    done = [s for s in range(plan.num_shards) if shard_path(out_dir, s).exists()]
    parallel.barrier("synth: checked")  # every process has listed the finished shards before any writes one
    if done and index == 0:
        log.info("%s: %d of %d shards already written; continuing", out_dir, len(done), plan.num_shards)
    mine = process_shards(plan.num_shards, index, count)
    start, engines_before = time.perf_counter(), _engine_stats(pool)
    bar = tqdm(
        total=len(mine),
        initial=len(set(mine) & set(done)),
        desc=f"synth {out_dir.name}" + (f" (process {index} of {count})" if count > 1 else ""),
        unit="shard",
        disable=not progress or index != 0,
    )
    for shard in mine:
        if shard in done:
            continue
        rows, counts = make_shard(pool, prompts, plan, shard)
        atomic.write_text(shard_path(out_dir, shard).with_suffix(".stats.json"), json.dumps(counts))
        atomic.write_text(shard_path(out_dir, shard), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        bar.set_postfix(stats_since(engines_before, _engine_stats(pool)).postfix())
        bar.update(1)
    bar.close()
    engine = _summed_over_processes(stats_since(engines_before, _engine_stats(pool)))
    parallel.barrier("synth: shards written")  # every shard's files exist now
    missing = [s for s in range(plan.num_shards) if not shard_path(out_dir, s).with_suffix(".stats.json").exists()]
    if missing:  # written by another process, on a disk this one does not see
        raise UserError(
            f"{out_dir}: shard {missing[0]} (of {len(missing)} missing), written by process {missing[0] % count} "
            f"of {count}, is not there: on several processes --output must be storage every process sees"
        )
    totals = {"triplets": 0, "empty_response": 0, "loop_truncated": 0, "new_tokens": 0}
    for shard in range(plan.num_shards):
        counts = json.loads(shard_path(out_dir, shard).with_suffix(".stats.json").read_text())
        for k in totals:
            totals[k] += counts[k]
    summary = {
        **totals,
        "shards": plan.num_shards,
        "resumed_shards": len(done),
        "seconds_this_run": round(time.perf_counter() - start, 2),
        "engine": engine_figures(engine),
        "out_dir": str(out_dir),
    }
    if index == 0:
        atomic.write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


def process_shards(num_shards: int, process_index: int = 0, process_count: int = 1) -> list[int]:
    """The shards process `process_index` of `process_count` writes: s with s % process_count ==
    process_index (round-robin: consecutive shards, similar in cost, spread over the processes).
    Over all processes: every shard exactly once."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process index {process_index} is not in 0 .. {process_count - 1}")
    return list(range(process_index, num_shards, process_count))


def _summed_over_processes(stats: EngineStats) -> EngineStats:
    """The engines' counters summed over the processes of the run (`stats` for one process)."""
    if jax.process_count() == 1:
        return stats
    from jax.experimental import multihost_utils

    fields = [f.name for f in dataclasses.fields(EngineStats)]
    values = [getattr(stats, f) for f in fields]
    ints = [isinstance(v, int) for v in values]
    # int32 halves keep counters past 2^31 exact (devices carry no int64 without jax_enable_x64).
    whole = np.array([[int(v) >> 30, int(v) & (2**30 - 1)] if i else [0, 0] for v, i in zip(values, ints)], np.int32)
    seconds = np.array([0.0 if i else float(v) for v, i in zip(values, ints)], np.float32)
    whole_p, seconds_p = multihost_utils.process_allgather((whole, seconds))
    whole_f = np.asarray(whole_p, np.int64).sum(axis=0)
    total_f = np.asarray(seconds_p, np.float64).sum(axis=0)
    return EngineStats(
        **{
            f: int((whole_f[k, 0] << 30) + whole_f[k, 1]) if ints[k] else float(total_f[k])
            for k, f in enumerate(fields)
        }
    )
