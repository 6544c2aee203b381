"""Synthesis through the continuous-batching engine: every sample a pure function of its id
(plan seed, prompt index, role, attempt), whatever the slot count, the shard size or the other
prompts of a call; the engines' figures in summary.json."""

import json

import jax
import pytest

from polar_jax.synth import resume
from polar_jax.synth import synthesize as S
from polar_jax.synth.pool import PolicyPool, PolicySpec, stats_since, sum_stats
from polar_jax.synth.prompts import PromptSource
from tests.synth.test_synthesize import DOCS, _tiny_lm


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two random tiny LMs (HF directories with the byte tokenizer)."""
    root = tmp_path_factory.mktemp("engine_lms")
    return [_tiny_lm(root / f"lm{i}", seed=i) for i in range(2)]


def _pool(checkpoints, slots: int) -> PolicyPool:
    specs = [PolicySpec(f"p{i}", c, max_new_tokens=10, max_prompt_tokens=48) for i, c in enumerate(checkpoints)]
    specs.append(PolicySpec("p0-hot", checkpoints[0], temperature=2.0, max_new_tokens=10, max_prompt_tokens=48))
    return PolicyPool(specs, batch_size=slots, prompt_bucket=16)


def _prompts(pool) -> PromptSource:
    return PromptSource(DOCS, pool.tokenizer("p0"), min_tokens=2, max_tokens=30, seed=4)


def _files(out_dir, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.glob(pattern))}


def test_triplet_files_are_byte_identical_for_1_3_and_8_slots(checkpoints, tmp_path):
    plan = S.SynthPlan(num_triplets=10, shard_size=4, seed=5)
    written = {}
    for slots in (1, 3, 8):
        pool = _pool(checkpoints, slots)
        S.synthesize(pool, _prompts(pool), plan, tmp_path / f"slots{slots}", progress=False)
        written[slots] = (
            _files(tmp_path / f"slots{slots}", "triplets-*.jsonl"),
            _files(tmp_path / f"slots{slots}", "*.stats.json"),
        )
    assert len(written[1][0]) == 3 and len(written[1][1]) == 3
    assert written[1] == written[3] == written[8]
    rows = [json.loads(line) for data in written[1][0].values() for line in data.decode().splitlines()]
    assert len({r["chosen"] for r in rows}) > len(rows) // 2  # real samples, not one repeated answer


def test_a_sample_does_not_depend_on_the_other_prompts_of_the_call(checkpoints):
    pool = _pool(checkpoints, slots=3)
    prompts = ["Hello there", "x", "a longer prompt of several words to pad", "word3_1 word3_2", "Second"]
    keys_r = jax.random.split(jax.random.key(7), len(prompts))
    whole = pool.sample("p0", prompts, keys_r)
    picked = [3, 1]
    assert pool.sample("p0", [prompts[i] for i in picked], keys_r[jax.numpy.array(picked)]) == [
        whole[i] for i in picked
    ]
    assert pool.sample("p0", prompts[::-1], keys_r[::-1]) == whole[::-1]
    others = pool.sample("p0", prompts, jax.random.split(jax.random.key(8), len(prompts)))
    assert others != whole  # the key decides the sample
    assert len({s.text for s in whole}) > 1


def test_samples_do_not_depend_on_the_shard_they_fall_in(checkpoints, tmp_path):
    pool = _pool(checkpoints, slots=4)
    rows = {}
    for shard_size in (3, 7):
        plan = S.SynthPlan(num_triplets=9, shard_size=shard_size, seed=2)
        out = tmp_path / f"shards{shard_size}"
        S.synthesize(pool, _prompts(pool), plan, out, progress=False)
        rows[shard_size] = [
            json.loads(line) for f in sorted(out.glob("triplets-*.jsonl")) for line in f.read_text().splitlines()
        ]
        for r in rows[shard_size]:
            assert r["meta"].pop("shard") == r["meta"]["prompt_index"] // shard_size
    assert rows[3] == rows[7] and len(rows[3]) >= 7


def test_summary_holds_this_runs_engine_figures(checkpoints, tmp_path):
    pool = _pool(checkpoints, slots=4)
    summary = S.synthesize(
        pool, _prompts(pool), S.SynthPlan(num_triplets=9, shard_size=4, seed=1), tmp_path, progress=False
    )
    engine = json.loads((tmp_path / "summary.json").read_text())["engine"]
    assert engine == summary["engine"]
    shard_tokens = sum(json.loads(f.read_text())["new_tokens"] for f in tmp_path.glob("*.stats.json"))
    assert engine["useful_tokens"] == shard_tokens == summary["new_tokens"] > 0
    assert 0 < engine["utilisation"] <= 1 and engine["slot_steps"] >= engine["useful_tokens"]
    assert engine["tokens_per_s"] > 0 and engine["prefill_s"] > 0 and engine["decode_s"] > 0
    per_policy = sum_stats([pool.engine_stats(n) for n in pool.names])
    assert per_policy == pool.engine_stats() and per_policy.useful_tokens == shard_tokens
    again = S.synthesize(
        pool, _prompts(pool), S.SynthPlan(num_triplets=9, shard_size=4, seed=1), tmp_path, progress=False
    )
    assert again["resumed_shards"] == 3 and again["engine"]["useful_tokens"] == 0  # this run sampled nothing
    assert stats_since(pool.engine_stats(), pool.engine_stats()).useful_tokens == 0


def test_a_directory_of_the_previous_fingerprint_version_is_refused_clearly(tmp_path):
    (tmp_path / "synth.json").write_text(json.dumps({"version": resume.VERSION - 1, "plan": {}}))
    with pytest.raises(
        resume.SynthResumeError,
        match=rf"fingerprint version {resume.VERSION - 1}, this polar_jax writes {resume.VERSION}",
    ):
        resume.check_or_write(tmp_path, {"version": resume.VERSION, "plan": {}})
