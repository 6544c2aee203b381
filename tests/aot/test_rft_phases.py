"""`compile --stage rft` compiles the whole RFT iteration, not only its PPO update: rollout prefill
and decode through the engine (KV caches at the config's lengths), the reward model's scoring,
experience making and the update, each with its per-chip memory and what stays resident beside
it; the peak phase decides the fit. On a 4-chip v5p slice with tiny models: the decode phase's
arguments grow with rollout.max_new_tokens exactly as the KV cache's size formula says, the peak is
the largest phase, and an engine whose cache alone exceeds HBM is reported as not fitting, the
rollout named as the peak."""

import json

import pytest

from polar_jax import aot
from polar_jax.__main__ import main
from polar_jax.aot import rft_phases
from polar_jax.config_loading import load_config
from polar_jax.models.config import ModelConfig
from tests.aot.test_rft_stage import _save, needs_libtpu

TOPOLOGY, CHIPS = "v5p:2x2x1", 4
# Sixteen kv heads of 128 and 8 slots per chip: the cache's minor dimensions fill TPU tiles (no padding).
POLICY = ModelConfig(
    vocab_size=512, d_model=512, num_layers=1, num_heads=16, num_kv_heads=16, head_dim=128, mlp_dim=512
)
REWARD = ModelConfig(
    vocab_size=512, d_model=128, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=64, mlp_dim=256, heads=("reward",)
)
PROMPTS, SAMPLES, PROMPT = 16, 2, 64  # 32 rollouts: 8 slots per chip on the data mesh
SHORT, LONG = 64, 448  # rollout.max_new_tokens: caches of 128 and 512 positions
CONFIG = """
from polar_jax.rft.defaults import base_config


def get_config():
    c = base_config()
    c.policy.init = {policy!r}
    c.reward.model = {reward!r}
    c.policy.max_prompt_tokens = {prompt}
    c.rollout.max_new_tokens = {response}
    c.rollout.prompts = {prompts}
    c.rollout.samples_per_prompt = {samples}
    c.reward.encoding.max_length = 1024
    c.reward.encoding.max_response_length = 128
    c.mesh.data = -1
    return c
"""
PHASES = ["rollout prefill", "rollout decode", "scoring", "experience", "update"]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("rft_phases")
    path = root / "rft_phases.py"
    path.write_text(
        CONFIG.format(
            policy=_save(POLICY, root / "policy"),
            reward=_save(REWARD, root / "rm"),
            prompt=PROMPT,
            response=SHORT,
            prompts=PROMPTS,
            samples=SAMPLES,
        )
    )
    return str(path)


def _compile(config_file, overrides=()):
    if not aot.libtpu_available():
        pytest.skip("libtpu is not installed")
    config = load_config(config_file, list(overrides))
    return aot.compile_step(config, aot.get_topology(TOPOLOGY), "rft", config_name="rft_phases")


@pytest.fixture(scope="module")
def reports(config_file):
    return {n: _compile(config_file, [f"--config.rollout.max_new_tokens={n}"]) for n in (SHORT, LONG)}


def _phases(report) -> dict:
    return {p.name: p for p in report.phases}


def _expected_cache_bytes(new_tokens: int) -> int:
    """Keys and values [L, S, C, K, E] bfloat16 plus segment ids and positions [S, C] and the index [S]
    int32, the 32 slots split over the 4 chips of the data mesh."""
    slots, cache = PROMPTS * SAMPLES // CHIPS, PROMPT + new_tokens
    kv = 2 * POLICY.num_layers * slots * cache * POLICY.num_kv_heads * POLICY.head_dim * 2
    return kv + 2 * 4 * slots * cache + 4 * slots


@needs_libtpu
@pytest.mark.slow
def test_every_phase_compiles_with_its_memory_and_the_peak_decides(reports):
    report = reports[SHORT]
    printed = report.format()
    print(printed)
    phases = _phases(report)
    assert list(phases) == PHASES
    for p in report.phases:
        assert not p.error and p.argument_bytes > 0 and p.temp_bytes >= 0 and p.total_bytes > p.resident_bytes, p
    # the update's phase is the report's own figures
    assert phases["update"].total_bytes == report.total_bytes
    assert phases["update"].resident_bytes == report.resident_bytes
    peak = max(report.phases, key=lambda p: p.total_bytes)
    assert report.peak_phase == peak.name and report.peak_bytes == peak.total_bytes
    assert report.fits == (report.peak_bytes <= report.hbm_bytes) and report.fits
    # what stays resident beside each program: the reward model beside the engine, the trained states
    # beside the scoring (whose own argument is the reward model), the AdamW moments beside the experience
    reward = 4 * REWARD.num_params()  # float32, replicated
    assert "reward model" in phases["rollout decode"].resident and "reward model" not in phases["scoring"].resident
    assert "actor state" in phases["scoring"].resident and "critic state" in phases["scoring"].resident
    assert phases["scoring"].argument_bytes >= reward
    assert "actor optimiser state" in phases["experience"].resident
    # groups of the reward batch; prefix 2 x 64 prompt + 128 reference + 3 -> 384; suffix 64 + 2 -> 128
    assert "16 groups x 384 prefix tokens, 32 candidates x 128" in phases["scoring"].shapes
    assert "32 prompts x 64 tokens into 32 slots x 128 cache positions" in phases["rollout prefill"].shapes
    assert f"peak: {report.peak_phase}" in printed and "rollout decode" in printed and "FITS" in printed
    as_json = json.loads(json.dumps(report.to_dict()))
    assert [p["name"] for p in as_json["phases"]] == PHASES
    assert as_json["peak_bytes"] == report.peak_bytes and as_json["peak_phase"] == report.peak_phase
    assert all(p["total_bytes"] > 0 for p in as_json["phases"])


@needs_libtpu
@pytest.mark.slow
def test_the_kv_cache_grows_with_max_new_tokens_as_its_size_says(reports):
    short, long = (_phases(reports[n])["rollout decode"] for n in (SHORT, LONG))
    mesh = _data_mesh()
    for n in (SHORT, LONG):  # the report's figure is the same formula
        cache = rft_phases.kv_cache_bytes(POLICY.replace(dtype="bfloat16"), PROMPTS * SAMPLES, PROMPT + n, mesh)
        assert cache == _expected_cache_bytes(n)
    grown = _expected_cache_bytes(LONG) - _expected_cache_bytes(SHORT)  # 25.2 MB per chip
    # the state is the decode call's argument (donated: aliased to its output); the outputs' token rows
    # [8, N] grow too, by 24 KiB
    assert long.argument_bytes - short.argument_bytes == pytest.approx(grown, rel=0.01)
    assert long.alias_bytes - short.alias_bytes == pytest.approx(grown, rel=0.01)
    # the same state is the prefill's argument
    prefill_short, prefill_long = (_phases(reports[n])["rollout prefill"] for n in (SHORT, LONG))
    assert prefill_long.argument_bytes - prefill_short.argument_bytes == pytest.approx(grown, rel=0.01)
    # the update's rows widen as well (P + N tokens), so it needs more too; the resident parts do not change
    assert _phases(reports[LONG])["update"].total_bytes > _phases(reports[SHORT])["update"].total_bytes
    assert long.resident_bytes == short.resident_bytes


def _data_mesh():
    """The data mesh of the 4-chip topology (the engine's slots split over its 4 devices)."""
    from polar_jax import parallel

    return parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, list(aot.get_topology(TOPOLOGY).devices))


@needs_libtpu
@pytest.mark.slow
def test_a_rollout_cache_beyond_hbm_does_not_fit_and_is_named(config_file, tmp_path, capsys):
    # 524288 slots: 131072 per chip of 128 positions x 8200 bytes = 128 GiB of KV cache per chip
    slots = 524288
    assert _expected_cache_bytes(SHORT) * slots // (PROMPTS * SAMPLES) > aot.get_topology(TOPOLOGY).hbm_bytes
    out = tmp_path / "report.json"
    code = main(
        [
            "compile",
            "--config",
            config_file,
            "--topology",
            TOPOLOGY,
            "--stage",
            "rft",
            f"--config.rollout.slots={slots}",
            "--config.algorithm.estimator=group",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    print(printed)
    report = json.loads(out.read_text())
    assert code == 1 and not report["fits"] and "DOES NOT FIT" in printed
    assert report["peak_phase"].startswith("rollout") and f"peak: {report['peak_phase']}" in printed
    phases = {p["name"]: p for p in report["phases"]}
    # the update alone fits: the engine's cache is what does not
    assert phases["update"]["total_bytes"] < report["hbm_bytes"]
    assert phases["rollout decode"]["need_bytes"] > report["hbm_bytes"]
    assert report["peak_bytes"] == max(p["need_bytes"] for p in report["phases"])


@needs_libtpu
def test_update_only_compiles_the_update_alone(config_file, tmp_path, capsys):
    out = tmp_path / "report.json"
    args = ["compile", "--config", config_file, "--topology", TOPOLOGY, "--stage", "rft", "--update-only"]
    assert main(args + ["--config.algorithm.estimator=group", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["phases"] == [] and report["peak_phase"] == "" and report["fits"]
    assert "phases of one RFT iteration" not in capsys.readouterr().out


def test_score_shapes_follow_the_encoding_and_the_rollouts(config_file):
    config = load_config(config_file)
    from polar_jax.rft import setup as rft_setup

    shapes = rft_phases.score_shapes(config, rft_setup.reward_encoding(config))
    assert shapes == rft_phases.ScoreShapes(groups=16, prefix_width=384, rows=32, suffix_width=128)
    config.rollout.max_new_tokens = LONG  # the candidate cut to encoding.max_response_length = 128, + 2 -> 256
    assert rft_phases.score_shapes(config, rft_setup.reward_encoding(config)).suffix_width == 256
    config.rollout.samples_per_prompt = 40  # groups hold at most scoring.MAX_GROUP = 16 candidates
    config.reward.batch_size = 4
    assert rft_phases.score_shapes(config, rft_setup.reward_encoding(config)).rows == 64
