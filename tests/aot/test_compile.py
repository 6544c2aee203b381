"""Ahead-of-time compilation for TPU topologies on this CPU machine (needs libtpu, which CI
installs with `launch/setup.sh --tpu`): the trainer's step compiles for a small v5p slice under
data, fsdp and tensor meshes with the Pallas TPU attention kernel; fsdp divides the per-chip
state; a step that cannot fit is reported so, with a non-zero exit; bad requests exit 2."""

import json

import pytest

from polar_jax import aot
from polar_jax.__main__ import main
from polar_jax.config_loading import load_config

needs_libtpu = pytest.mark.skipif(
    not aot.libtpu_available(),
    reason="libtpu is not installed (launch/setup.sh --tpu installs it; CI does): no TPU topology to compile for",
)

TOPOLOGY = "v5p:2x2x1"  # 4 chips, one host
# pretrain_tiny with tile-sized widths: TPU layouts pad the two minor dimensions of an array to
# (8, 128) tiles, so a 64-wide model would hide the 1/N of sharding behind padding.
MODEL = [
    "--config.model.d_model=512",
    "--config.model.num_heads=8",
    "--config.model.num_kv_heads=4",
    "--config.model.head_dim=64",
    "--config.model.mlp_dim=512",
    "--config.data.seq_len=128",
    "--config.data.batch_size=8",
]
MESHES = {
    "data": ["--config.mesh.data=-1"],
    "fsdp": ["--config.mesh.data=1", "--config.mesh.fsdp=-1"],
    "tensor": ["--config.mesh.data=1", "--config.mesh.tensor=-1"],
}


@pytest.fixture(scope="module")
def reports():
    if not aot.libtpu_available():
        pytest.skip("libtpu is not installed")
    topology = aot.get_topology(TOPOLOGY)
    return {
        name: aot.compile_step(load_config("configs/pretrain_tiny.py", MODEL + overrides), topology, "train")
        for name, overrides in MESHES.items()
    }


@needs_libtpu
@pytest.mark.parametrize("mesh", list(MESHES))
def test_train_step_compiles_for_v5p_with_the_pallas_kernel(reports, mesh):
    report = reports[mesh]
    assert report.fits and not report.error
    assert report.devices == report.chips == 4 and report.device_kind == "TPU v5"
    assert report.mesh == {"data": 1, "fsdp": 1, "tensor": 1, mesh: 4}
    # "auto" attention on a TPU target is the splash kernel, compiled (not interpreted) for TPU
    assert report.attention.startswith("pallas")
    # shared-prefix rows (the default): the own-branch and the prefix call, each forward, dq and dkv
    assert report.pallas_calls >= 6
    assert 0 < report.total_bytes < report.hbm_bytes
    assert report.model_flops > 0 and report.traced_flops > 0 and report.compiled_flops > 0


@needs_libtpu
def test_fsdp_holds_a_quarter_of_the_state_per_chip(reports):
    replicated, sharded = reports["data"].argument_bytes, reports["fsdp"].argument_bytes
    assert sharded == pytest.approx(replicated / 4, rel=0.05)
    assert reports["fsdp"].collectives["all-gather"] > 0  # sharded weights are gathered for the matmuls
    assert reports["data"].collectives["all-gather"] == 0


@needs_libtpu
def test_7b_replica_on_one_chip_does_not_fit_and_exits_1(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["compile", "--config", "configs/polar_7b.py", "--topology", "v5p:1x1x1", "--json", str(out)])
    assert code == 1
    assert "DOES NOT FIT" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["fits"] is False and report["chips"] == 1
    if report["error"]:  # XLA:TPU refuses a program that cannot fit and says what it needs
        assert report["required_bytes"] > report["hbm_bytes"]
    else:
        assert report["total_bytes"] > report["hbm_bytes"]


@needs_libtpu
def test_sample_stage_compiles_the_kv_cache_sampler(capsys):
    code = main(
        [
            "compile",
            "--config",
            "configs/pretrain_tiny.py",
            "--topology",
            TOPOLOGY,
            "--stage",
            "sample",
            "--sample-batch",
            "8",
            "--prompt-len",
            "16",
            "--max-new-tokens",
            "8",
        ]
    )
    assert code == 0
    assert "stage sample" in capsys.readouterr().out


@needs_libtpu
@pytest.mark.parametrize("stage", ["sample", "engine"])
def test_samplers_compile_with_rows_split_over_chips_and_a_real_vocabulary(stage):
    """XLA:TPU aborts on a top-k whose rows are partitioned (vocabularies past a few hundred):
    the samplers filter logits per device (`sampling._filter_per_shard`)."""
    config = load_config("configs/pretrain_tiny.py", ["--config.model.vocab_size=4096"])
    report = aot.compile_step(config, TOPOLOGY, stage, sample_batch=8, prompt_len=16, max_new_tokens=8)
    assert report.fits and report.mesh["data"] == 4


@needs_libtpu
def test_engine_stage_compiles_the_decode_loop_with_a_sharded_cache():
    config = load_config("configs/pretrain_tiny.py", [])
    report = aot.compile_step(
        config, TOPOLOGY, "engine", sample_batch=8, prompt_len=16, max_new_tokens=8, config_name="tiny"
    )
    assert report.fits and report.stage == "engine" and report.tokens_per_step == 8
    assert report.state_bytes > 0 and report.compile_seconds > 0


def test_without_libtpu_the_command_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setattr(aot.topology, "libtpu_available", lambda: False)
    assert main(["compile", "--config", "configs/pretrain_tiny.py", "--topology", TOPOLOGY]) == 2
    assert "launch/setup.sh --tpu" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("v5p:4x4x4", "v5p:4x4x4"),
        ("v5p-128", "v5p:4x4x4"),
        ("v5p-256", "v5p:4x4x8"),
        ("v5p-8", "v5p:2x2x1"),
        ("v5p-32", "v5p:2x2x4"),
        ("v5litepod-256", "v5e:16x16"),
        ("v5e-8", "v5e:2x4"),
        ("v6e-256", "v6e:16x16"),
        ("v6e:8x8", "v6e:8x8"),
        ("v4-32", "v4:2x2x4"),
    ],
)
def test_topology_names(name, canonical):
    assert aot.canonical_topology(name)[0] == canonical


def test_bad_topology_name_is_explained():
    with pytest.raises(ValueError, match="power of two of TensorCores"):
        aot.canonical_topology("v5p-100")
    with pytest.raises(ValueError, match="GEN:AxB"):
        aot.canonical_topology("tpu7:2x2")


def test_collectives_are_counted_by_kind_once_per_instruction():
    hlo = """
  %all-gather-start.1 = (f32[8]{0}, f32[32]{0}) all-gather-start(f32[8]{0} %p), dimensions={0}
  %all-gather-done.1 = f32[32]{0} all-gather-done((f32[8]{0}, f32[32]{0}) %all-gather-start.1)
  all-reduce.7 = f32[] all-reduce(f32[] %x), to_apply=%add
  %rs = f32[2]{0} reduce-scatter(f32[8]{0} %y), dimensions={0}, to_apply=%add
  %cp = f32[2]{0} collective-permute(f32[2]{0} %rs), source_target_pairs={{0,1}}
  %r = f32[] reduce(f32[8]{0} %z, f32[] %c), dimensions={0}, to_apply=%add
"""
    assert aot.count_collectives(hlo) == {
        "all-reduce": 1,
        "all-gather": 1,
        "reduce-scatter": 1,
        "all-to-all": 0,
        "collective-permute": 1,
    }
