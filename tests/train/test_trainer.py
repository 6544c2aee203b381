"""The training loop: bit-exact determinism and resume (SIGTERM included), the non-finite
stop, the corrupt-checkpoint fallback and restoring onto another mesh."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from polar_jax.config_loading import load_config
from polar_jax.io import hf, polar_format
from polar_jax.train import loop, setup, trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "pretrain_tiny.py"
SMALL = [
    "--config.steps=12",
    "--config.log_every=1",
    "--config.eval_every=0",
    "--config.checkpoint_every=4",
    "--config.data.batch_size=8",
    "--config.model.d_model=32",
    "--config.model.mlp_dim=64",
    "--config.data.seq_len=256",
    "--config.data.max_pairs_per_row=2",
]


def config(*overrides):
    return load_config(CONFIG, SMALL + list(overrides))


def losses(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def final_params(workdir):
    return jax.tree.leaves(polar_format.load_polar(pathlib.Path(workdir) / "model").params)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    result = trainer.train(config(), workdir, progress=False)
    assert result.step == 12 and result.stopped_by == "done"
    return workdir


def test_two_runs_log_bit_identical_losses(reference_run, tmp_path):
    trainer.train(config(), tmp_path, progress=False)
    assert losses(tmp_path) == losses(reference_run)
    assert len(losses(tmp_path)) == 12
    for a, b in zip(final_params(tmp_path), final_params(reference_run)):
        np.testing.assert_array_equal(a, b)


def test_sigterm_then_resume_equals_the_uninterrupted_run(reference_run, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "polar_jax",
        "train",
        "--config",
        str(CONFIG),
        "--workdir",
        str(tmp_path),
        "--no-progress",
        *SMALL,
    ]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 6:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output
    assert "SIGTERM received" in output
    stopped_at = max(losses(tmp_path))
    assert 6 <= stopped_at < 12, "the run should have stopped early"
    assert (tmp_path / "checkpoints" / str(stopped_at)).is_dir()
    assert not (tmp_path / "model").exists()

    result = trainer.train(config(), tmp_path, progress=False)  # the same command again resumes
    assert result.step == 12
    assert losses(tmp_path) == losses(reference_run)
    for a, b in zip(final_params(tmp_path), final_params(reference_run)):
        np.testing.assert_array_equal(a, b)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(reference_run, tmp_path, caplog):
    trainer.train(config(), tmp_path, progress=False)  # checkpoints at 4, 8, 12
    for f in (tmp_path / "checkpoints" / "12" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"corrupted")
    shutil.rmtree(tmp_path / "model")
    with caplog.at_level("WARNING"):
        result = trainer.train(config(), tmp_path, progress=False)
    assert "checkpoint step 12" in caplog.text and "trying the previous one" in caplog.text
    assert result.step == 12
    assert losses(tmp_path) == losses(reference_run)  # steps 9..12 redone from step 8, exactly
    assert any(p.name.startswith("unreadable-12-") for p in (tmp_path / "checkpoints").iterdir())


def test_non_finite_steps_stop_the_run_and_keep_the_good_checkpoint(tmp_path):
    cfg = config("--config.optim.lr=1e30", "--config.max_bad_steps=3", "--config.checkpoint_every=1")
    with pytest.raises(loop.TrainingDiverged, match="3 non-finite steps in a row"):
        trainer.train(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["finite"] for r in rows] == [1.0, 0.0, 0.0, 0.0]
    assert rows[-1]["skipped"] == 3.0
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and max(steps) <= 4
    restarted = load_config(
        CONFIG, SMALL + ["--config.steps=5", "--config.max_bad_steps=100", "--config.allow_changed_config=True"]
    )
    result = trainer.train(restarted, tmp_path, progress=False)  # the checkpoint loads and trains on
    assert result.step == 5
    assert all(np.isfinite(p).all() for p in final_params(tmp_path))


def test_restore_onto_another_mesh_continues_the_same_run(tmp_path):
    data_parallel = tmp_path / "data"
    trainer.train(config("--config.steps=8", "--config.mesh.data=8"), data_parallel, progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(data_parallel, moved)
    shutil.rmtree(moved / "model")
    shutil.rmtree(moved / "checkpoints" / "8")
    trainer.train(
        config("--config.steps=8", "--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.mesh.tensor=2"),
        moved,
        progress=False,
    )
    a, b = losses(data_parallel), losses(moved)
    assert a.keys() == b.keys()
    np.testing.assert_allclose([b[k] for k in sorted(b)], [a[k] for k in sorted(a)], rtol=1e-5)
    for x, y in zip(final_params(moved), final_params(data_parallel)):
        np.testing.assert_allclose(x, y, atol=1e-5)


@pytest.mark.slow
def test_tiny_pretraining_learns_to_discriminate_policies(tmp_path):
    """configs/pretrain_tiny.py as shipped (300 steps): held-out pairs, prompts never seen."""
    result = trainer.train(load_config(CONFIG), tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_accuracy" in r]
    assert result.step == 300 and evals[-1]["step"] == 300
    assert evals[-1]["eval_pairs"] >= 100
    assert evals[-1]["eval_accuracy"] >= 0.8, evals
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] < 0.69


@pytest.mark.parametrize("head_init", ["zeros", "normal"])
def test_pretraining_starts_from_an_imported_base_lm(tmp_path, head_init):
    """A Llama checkpoint (HF fixture) becomes a reward model: its LM head is dropped, a reward
    head added; with a zero head every first-step reward is 0 and the loss exactly log 2."""
    base = ROOT / "tests" / "fixtures" / "hf" / "llama_untied"
    cfg = load_config(
        CONFIG,
        SMALL + ["--config.steps=2", f"--config.model.init={base}", f"--config.model.reward_head_init={head_init}"],
    )
    for size in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"):
        cfg.model[size] = None  # from the checkpoint
    result = trainer.train(cfg, tmp_path, progress=False)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    if head_init == "zeros":
        assert first["loss"] == pytest.approx(np.log(2), abs=1e-6) and first["chosen_reward"] == 0.0
    else:
        assert first["loss"] != pytest.approx(np.log(2), abs=1e-4)
    model = polar_format.load_polar(tmp_path / "model")
    assert result.step == 2 and model.cfg.heads == ("reward",) and "lm_head" not in model.params
    assert model.cfg.vocab_size == 251 and model.cfg.mlp_dim == 96
    original = hf.load_hf(base).params["layers"]["mlp"]["w_up"]
    assert np.abs(model.params["layers"]["mlp"]["w_up"] - original).max() < 0.05  # two small steps


def _write_triplets(directory: pathlib.Path, n: int, seed: int, length: int) -> str:
    """n random triplet records (token ids 1..127) of sequences `length` tokens long."""
    from polar_jax.data import records, sources

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    sources.write_array_record(
        directory / sources.shard_name(0, 1),
        [records.encode_record(rng.integers(1, 128, length), rng.integers(1, 128, length)) for _ in range(n)],
    )
    return str(directory)


def test_several_eval_sets_are_logged_pooled_and_each_on_its_own(tmp_path):
    data = tmp_path / "data"
    train_dir = _write_triplets(data / "train", 64, seed=0, length=40)
    eval_a = _write_triplets(data / "heldout_prompts", 12, seed=1, length=40)
    eval_b = _write_triplets(data / "heldout_policies", 20, seed=2, length=60)
    cfg = config(
        "--config.steps=2",
        "--config.eval_every=2",
        "--config.eval_batches=64",
        "--config.data.kind=array_record",
        f"--config.data.train={train_dir}",
        f"--config.data.eval={eval_a},{eval_b}",
    )
    trainer.train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = {k: v for r in rows if r["step"] == 2 for k, v in r.items()}
    a, b = ("heldout_prompts", "heldout_policies")
    assert final[f"eval_{a}_pairs"] == 12 and final[f"eval_{b}_pairs"] == 20 and final["eval_pairs"] == 32
    # the pooled loss is the pair-weighted mean of the two sets' losses: the same model, the same pairs
    pooled = (12 * final[f"eval_{a}_loss"] + 20 * final[f"eval_{b}_loss"]) / 32
    np.testing.assert_allclose(final["eval_loss"], pooled, rtol=1e-5)
    assert final[f"eval_{a}_loss"] != final[f"eval_{b}_loss"]
    assert setup.eval_split_sources(config()) == {}  # one set (or synthetic data): nothing extra


def test_a_base_with_remote_code_passes_its_code_to_the_trained_model(tmp_path):
    """A base that ships its own modeling code (as InternLM2 and POLAR do): the trained model
    dir keeps those files, so its HF export carries them where the released models have them."""
    base = tmp_path / "base"
    shutil.copytree(ROOT / "tests" / "fixtures" / "hf" / "llama_untied", base)
    (base / "modeling_custom.py").write_text("# the base's own modeling code\n")
    cfg = load_config(CONFIG, SMALL + ["--config.steps=1", f"--config.model.init={base}"])
    for size in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"):
        cfg.model[size] = None  # from the checkpoint
    trainer.train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "model" / "modeling_custom.py").read_text() == "# the base's own modeling code\n"
    from polar_jax.io import models

    models.convert(tmp_path / "run" / "model", tmp_path / "export", "hf")
    assert (tmp_path / "export" / "modeling_custom.py").exists()
