"""`compile --stage rft`: the RFT loop's PPO update (actor and critic states, one rollout batch)
compiled for a small v5p slice from the policy's config.json alone (no weights read): it fits;
the group estimator has no critic state; fsdp divides the per-chip state. The model shapes come
from the model files' configs, as the RFT loop's `load_models` / `critic_model` would make them.
The released Qwen2.5-7B recipe on a v5p-128: the update fits, the whole iteration does not (its
rollout prefill; `test_rft_phases.py` covers the phases on tiny models)."""

import json
import pathlib

import pytest

from polar_jax import aot
from polar_jax.__main__ import main
from polar_jax.config_loading import load_config
from polar_jax.io import hf, models
from polar_jax.io.model import Model
from polar_jax.models import families
from polar_jax.models.config import ModelConfig
from polar_jax.train.lm import numpy_init_params

needs_libtpu = pytest.mark.skipif(
    not aot.libtpu_available(),
    reason="libtpu is not installed (launch/setup.sh --tpu installs it; CI does): no TPU topology to compile for",
)

TOPOLOGY = "v5p:2x2x1"  # 4 chips, one host
# Tile-sized widths (TPU layouts pad the two minor dimensions to (8, 128)), so 1/N sharding shows.
POLICY = ModelConfig(
    vocab_size=512,
    d_model=512,
    num_layers=1,
    num_heads=8,
    num_kv_heads=4,
    head_dim=64,
    mlp_dim=512,
    tie_embeddings=True,
)
REWARD = ModelConfig(
    vocab_size=512, d_model=128, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=64, mlp_dim=256, heads=("reward",)
)
BATCH, EPOCHS, MINIBATCHES, PROMPT, RESPONSE = 16, 2, 2, 64, 64
CONFIG = """
from polar_jax.rft.defaults import base_config


def get_config():
    c = base_config()
    c.policy.init = {policy!r}
    c.reward.model = {reward!r}
    c.policy.max_prompt_tokens = {prompt}
    c.rollout.max_new_tokens = {response}
    c.rollout.prompts = {prompts}
    c.rollout.samples_per_prompt = 2
    c.algorithm.epochs = {epochs}
    c.algorithm.minibatches = {minibatches}
    return c
"""
MESHES = {"data": ["--config.mesh.data=-1"], "fsdp": ["--config.mesh.data=1", "--config.mesh.fsdp=-1"]}


def _save(cfg: ModelConfig, path: pathlib.Path) -> str:
    head = "reward" if "reward" in cfg.heads else "lm"
    hf.save_hf(Model(cfg, numpy_init_params(cfg, 0), "llama", families.hf_config_for(cfg, "llama", head)), path)
    return str(path)


@pytest.fixture(scope="module")
def rft_config(tmp_path_factory) -> str:
    """configs/rft_tiny.py-like file over a tiny HF policy and an HF reward model, in a temp dir."""
    root = tmp_path_factory.mktemp("rft_aot")
    path = root / "rft_tiny.py"
    path.write_text(
        CONFIG.format(
            policy=_save(POLICY, root / "policy"),
            reward=_save(REWARD, root / "rm"),
            prompt=PROMPT,
            response=RESPONSE,
            prompts=BATCH // 2,
            epochs=EPOCHS,
            minibatches=MINIBATCHES,
        )
    )
    return str(path)


@pytest.fixture(scope="module")
def reports(rft_config):
    if not aot.libtpu_available():
        pytest.skip("libtpu is not installed")
    topology = aot.get_topology(TOPOLOGY)
    return {  # the update alone: the iteration's other phases are test_rft_phases.py's
        name: aot.compile_step(
            load_config(rft_config, overrides), topology, "rft", config_name="rft_tiny", phases=False
        )
        for name, overrides in MESHES.items()
    }


def _state_bytes(cfg: ModelConfig) -> int:
    return 3 * 4 * cfg.num_params()  # float32 parameters and two AdamW moments, replicated


@needs_libtpu
def test_ppo_update_compiles_and_fits(reports):
    report = reports["data"]
    print(report.format())
    assert report.fits and not report.error and report.stage == "rft"
    assert report.mesh == {"data": 4, "fsdp": 1, "tensor": 1}
    assert 0 < report.total_bytes < report.hbm_bytes
    assert report.attention.startswith("pallas") and report.pallas_calls >= 3  # forward, dq and dkv kernels
    assert report.tokens_per_step == BATCH * (PROMPT + RESPONSE) * EPOCHS
    critic = POLICY.replace(heads=("value",), tie_embeddings=False, value_head_bias=True)
    assert report.num_params == POLICY.num_params() + critic.num_params()
    # actor and critic states, replicated; the scalars (step, counters, key) add a few bytes
    assert report.state_bytes == pytest.approx(_state_bytes(POLICY) + _state_bytes(critic), abs=1024)
    # the donated states come back in place: outputs are aliased to the arguments
    assert report.alias_bytes >= report.state_bytes
    # the traced matmuls are the model count less the attention inside the Pallas kernels
    attention = 2 * 6.0 * POLICY.num_layers * (PROMPT + RESPONSE) ** 2 * POLICY.d_model * BATCH * EPOCHS
    assert report.traced_flops == pytest.approx(report.model_flops - attention, rel=0.02)
    assert report.compiled_flops > 0
    notes = " ".join(report.notes)
    assert f"PPO update: {EPOCHS} epoch(s) x {MINIBATCHES} mini-batch(es) of {BATCH // MINIBATCHES} rollouts" in notes
    assert "reference policy" in notes and "reward model" in notes
    # the frozen reference policy and reward model (float32, replicated) count toward the verdict
    assert report.resident_bytes == pytest.approx(4 * (POLICY.num_params() + REWARD.num_params()), abs=1024)
    assert report.total_bytes == (
        report.argument_bytes
        + report.output_bytes
        - report.alias_bytes
        + report.temp_bytes
        + report.code_bytes
        + report.resident_bytes
    )


@needs_libtpu
def test_fsdp_holds_a_quarter_of_the_actor_and_critic_per_chip(reports):
    replicated, sharded = reports["data"], reports["fsdp"]
    assert sharded.fits
    assert sharded.argument_bytes == pytest.approx(replicated.argument_bytes / 4, rel=0.05)
    assert sharded.state_bytes == pytest.approx(replicated.state_bytes / 4, rel=0.01)
    assert sharded.collectives["all-gather"] > 0 and replicated.collectives["all-gather"] == 0


@needs_libtpu
def test_group_estimator_has_no_critic_state(rft_config, reports, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(
        [
            "compile",
            "--config",
            rft_config,
            "--topology",
            "v5p-8",
            "--stage",
            "rft",
            "--config.algorithm.estimator=group",
            "--update-only",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "stage rft" in printed and "FITS" in printed
    group, gae = json.loads(out.read_text()), reports["data"]
    assert group["num_params"] == POLICY.num_params()
    critic = _state_bytes(POLICY.replace(heads=("value",), tie_embeddings=False, value_head_bias=True))
    assert gae.state_bytes - group["state_bytes"] == pytest.approx(critic, abs=1024)
    assert gae.argument_bytes - group["argument_bytes"] == pytest.approx(critic, rel=0.05)
    assert group["model_flops"] < gae.model_flops


def test_critic_shapes_follow_critic_init(rft_config):
    config = load_config(rft_config, ["--config.policy.dtype=float32", "--config.policy.remat=full"])
    actor, critic = aot.rft_model_configs(config)
    assert actor == POLICY.replace(dtype="float32", remat="full")
    assert critic == POLICY.replace(
        heads=("value",), tie_embeddings=False, value_head_bias=True, dtype="float32", remat="full"
    )
    config.critic.init = "reward_model"
    _, critic = aot.rft_model_configs(config)
    assert critic == REWARD.replace(heads=("value",), value_head_bias=True, dtype="float32", remat="full")
    config.critic.value_head_bias = False  # the option off: verl's critic head has a bias, ours then has none
    assert not aot.rft_model_configs(config)[1].value_head_bias
    config.algorithm.estimator = "group"
    assert aot.rft_model_configs(config)[1] is None


def test_reading_a_config_reads_no_weights_and_matches_loading(rft_config):
    config = load_config(rft_config)
    for path in (config.policy.init, config.reward.model):
        assert models.read_model_config(path, dtype="float32") == models.load_model(path, dtype="float32").cfg
    (pathlib.Path(config.policy.init) / "model.safetensors").rename(pathlib.Path(config.policy.init) / "gone")
    try:  # no weights at all: the config alone gives the shapes
        assert models.read_model_config(config.policy.init) == POLICY
    finally:
        (pathlib.Path(config.policy.init) / "gone").rename(pathlib.Path(config.policy.init) / "model.safetensors")


def test_rft_stage_needs_an_rft_config_and_its_policy(rft_config, capsys):
    assert main(["compile", "--config", "configs/pretrain_tiny.py", "--topology", TOPOLOGY, "--stage", "rft"]) == 2
    assert "needs an RFT config" in capsys.readouterr().err
    assert (
        main(
            [
                "compile",
                "--config",
                rft_config,
                "--topology",
                TOPOLOGY,
                "--stage",
                "rft",
                "--config.policy.init=/nonexistent/policy",
            ]
        )
        == 2
    )
    assert "policy.init '/nonexistent/policy' not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the released Qwen2.5-7B recipe

# config.json of Qwen/Qwen2.5-7B-Instruct and of internlm/POLAR-7B (InternLM2-7B with a reward head), the
# real sizes; the directories hold nothing else (no weights, no tokenizer).
QWEN2_5_7B_INSTRUCT = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1e6,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}
POLAR_7B = {
    "architectures": ["InternLM2ForRewardModel"],
    "model_type": "internlm2",
    "vocab_size": 92544,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 5e7,
    "rope_scaling": {"type": "dynamic", "factor": 2.0},
    "bias": False,
    "tie_word_embeddings": False,
    "reward_token_id": 92527,
}
RECIPE_TOPOLOGY, RECIPE_CHIPS = "v5p-128", 64  # 64 chips: the update 40.3 of 95.7 GiB per chip (libtpu 0.0.48)


@needs_libtpu
@pytest.mark.slow
def test_the_released_qwen2_5_7b_recipe_compiles_for_a_v5p_slice(tmp_path, capsys):
    for name, cfg in (("qwen", QWEN2_5_7B_INSTRUCT), ("polar", POLAR_7B)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "report.json"
    code = main(
        [
            "compile",
            "--config",
            "configs/rft_qwen2_5_7b.py",
            "--topology",
            RECIPE_TOPOLOGY,
            "--stage",
            "rft",
            f"--config.policy.init={tmp_path / 'qwen'}",
            f"--config.reward.model={tmp_path / 'polar'}",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    print(printed)
    report = json.loads(out.read_text())
    # the whole iteration does not fit this slice: the engine's prefill of all 1024 prompts at 1024 tokens
    # (one batch) is refused, 114.6 GiB of temporaries (libtpu 0.0.48.1); every other phase fits
    assert code == 1 and not report["fits"] and "DOES NOT FIT" in printed
    phases = {p["name"]: p for p in report["phases"]}
    assert list(phases) == ["rollout prefill", "rollout decode", "scoring", "experience", "update"]
    assert report["peak_phase"] == "rollout prefill" and "RESOURCE_EXHAUSTED" in phases["rollout prefill"]["error"]
    assert all(p["total_bytes"] < report["hbm_bytes"] for n, p in phases.items() if n != "rollout prefill")
    assert phases["update"]["total_bytes"] == report["total_bytes"]
    assert report["mesh"] == {"data": 1, "fsdp": RECIPE_CHIPS, "tensor": 1}  # every chip in FSDP
    assert report["tokens_per_step"] == 1024 * (1024 + 1024)  # 1024 rollouts of 1024 prompt + 1024 response tokens
    actor = families.config_from_hf(QWEN2_5_7B_INSTRUCT)
    critic = actor.replace(heads=("value",), value_head_bias=True)  # the policy's trunk, a biased value head
    assert actor.num_params() == pytest.approx(7.62e9, rel=1e-3)  # Qwen2.5-7B's 7.62B
    assert report["num_params"] == actor.num_params() + critic.num_params()
    # float32 parameters and two AdamW moments of both, split over the 64 chips
    assert report["state_bytes"] == pytest.approx(12 * report["num_params"] / RECIPE_CHIPS, rel=0.01)
    # POLAR-7B (float32) stays on the chips beside the step; no reference policy (no KL term reads one)
    reward = families.config_from_hf(POLAR_7B, heads=("reward",))
    assert reward.rope_theta == 5e7 and reward.num_params() == pytest.approx(7.36e9, rel=1e-3)  # no LM head
    assert report["resident_bytes"] == pytest.approx(4 * reward.num_params() / RECIPE_CHIPS, rel=0.01)
    notes = " ".join(report["notes"])
    assert "1 epoch(s) x 1 mini-batch(es) of 1024 rollouts x 2048 tokens (1024 prompt + 1024 response)" in notes
    resident = next(n for n in report["notes"] if n.startswith("also held on the devices"))
    assert "reward model" in resident and "reference policy" not in resident
    assert report["attention"].startswith("pallas")
    assert 0.3 * report["hbm_bytes"] < report["total_bytes"] < report["hbm_bytes"]  # the update alone fits
