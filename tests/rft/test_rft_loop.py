"""The RFT loop end to end on tiny random models (policy, target, reward model built in
conftest.py): the `rft` command runs, logs the metrics, checkpoints, saves the policy and
the before/after results; a run stopped by SIGTERM and resumed equals the uninterrupted one."""

import json
import pathlib
import signal

import jax
import numpy as np
import pytest

from polar_jax.__main__ import main as cli
from polar_jax.config_loading import load_config
from polar_jax.io import models, tokenizers
from polar_jax.rft import setup, trainer

ITERATIONS = 4
# Wall-clock measurements differ between runs; everything else must not.
TIMED = (
    "time_rollout_s",
    "time_score_s",
    "time_experience_s",
    "time_update_s",
    "tokens_per_s",
    "rollout_tokens_per_s",
    "rollout_prefill_s",
    "rollout_decode_s",
)

CONFIG = """
from polar_jax.rft.defaults import base_config

def get_config():
    c = base_config()
    c.policy.init, c.policy.dtype, c.policy.max_prompt_tokens = {policy!r}, "float32", 16
    c.reward.model, c.reward.dtype, c.reward.batch_size = {reward!r}, "float32", 8
    c.reward.encoding.max_length, c.reward.encoding.max_response_length = 128, 32
    c.target.checkpoint, c.target.max_prompt_tokens, c.eval.batch_size = {target!r}, 16, 8
    c.data.train, c.data.eval = {train!r}, {eval!r}
    c.rollout.prompts, c.rollout.max_new_tokens = 8, 8
    c.algorithm.epochs, c.algorithm.minibatches = 2, 2
    c.actor_optim.lr = c.critic_optim.lr = 1e-3
    c.iterations, c.checkpoint_every = {iterations}, 2
    c.mesh.update(data=4, fsdp=2, tensor=1)  # parameters sharded (fsdp) and batches split
    c.setup_hint = "build the tiny models first"
    return c
"""


@pytest.fixture(scope="module")
def config_file(tiny, rft_jsonl, tmp_path_factory):
    path = tmp_path_factory.mktemp("rft_config") / "rft_tiny.py"
    path.write_text(
        CONFIG.format(
            policy=tiny["policy"],
            reward=tiny["reward"],
            target=tiny["target"],
            train=rft_jsonl[0],
            eval=rft_jsonl[1],
            iterations=ITERATIONS,
        )
    )
    return str(path)


def metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMED} for r in rows]


@pytest.fixture(scope="module")
def reference_run(config_file, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rft_reference")
    assert cli(["rft", "--config", config_file, "--workdir", str(workdir), "--no-progress"]) == 0
    return workdir


def test_rft_command_logs_checkpoints_and_writes_results(reference_run, tiny):
    rows = metrics(reference_run)
    train_rows = [r for r in rows if "reward" in r]
    assert [r["step"] for r in train_rows] == list(range(1, ITERATIONS + 1))
    for key in (
        "reward",
        "kl",
        "entropy",
        "clip_frac",
        "value_loss",
        "response_length",
        "tokens_per_s",
        "policy_loss",
        "ppo_kl",
        "vf_clip_frac",
        "clip_frac_lower",
        "rollout_utilisation",
        *TIMED,
    ):
        assert all(np.isfinite(r[key]) for r in train_rows), key
    assert train_rows[0]["kl"] == 0.0 and train_rows[-1]["kl"] != 0.0  # the policy moved away from the reference
    assert all(r["skipped"] == 0 for r in train_rows)
    assert [r["step"] for r in rows if "eval_reward" in r] == [0, ITERATIONS]
    assert sorted(int(p.name) for p in (reference_run / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    assert (reference_run / "tensorboard").is_dir()
    from polar_jax import run_manifest

    manifest = json.loads((reference_run / "run.json").read_text())  # the run's inputs, fingerprinted
    assert manifest["inputs"]["policy.init"] == run_manifest.fingerprint(tiny["policy"])
    assert manifest["inputs"]["reward.model"]["sha256"] == run_manifest.fingerprint(tiny["reward"])["sha256"]

    results = json.loads((reference_run / "rft_results.json").read_text())
    evals = {r["step"]: r for r in rows if "eval_reward" in r}
    assert results["reward_before"] == evals[0]["eval_reward"]
    assert results["reward_after"] == evals[ITERATIONS]["eval_reward"]
    assert results["target_loglik_before"] == evals[0]["eval_target_loglik"] < 0
    assert results["target_loglik_after"] == evals[ITERATIONS]["eval_target_loglik"]
    assert results["heldout_prompts"] == 4
    # The reward-gaming check: the target's own fresh samples, scored and judged by the target.
    assert np.isfinite(results["target_samples_reward"]) and results["target_samples_reward"] != results["reward_after"]
    assert results["target_samples_loglik"] < 0
    assert results["actor_trainable_params"] == models.load_model(tiny["policy"]).cfg.num_params()  # full fine-tuning
    assert 0 < results["run_seconds"] < 3600
    # The over-long training prompt (line 6) was filtered out and counted, not cut.
    data_row = next(r for r in rows if "data_train_prompts" in r)
    assert data_row == {
        "step": 0,
        "data_train_prompts": 8,
        "data_train_overlong": 1,
        "data_eval_prompts": 4,
        "data_eval_overlong": 0,
    }
    assert (results["data_train_prompts"], results["data_train_overlong"]) == (8, 1)

    # The saved policy is an HF directory with its tokenizer, and it is not the initial policy.
    trained = models.load_model(reference_run / "policy")
    initial = models.load_model(tiny["policy"])
    assert tokenizers.load_tokenizer(reference_run / "policy").eos_token_id == 0
    diffs = [
        float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(initial.params))
    ]
    assert max(diffs) > 1e-4


def test_stopped_and_resumed_run_equals_the_uninterrupted_one(config_file, reference_run, tmp_path):
    config = load_config(config_file)

    def sigterm_at_3(iteration, _metrics):
        if iteration == 3:
            signal.raise_signal(signal.SIGTERM)

    stopped = trainer.train(config, tmp_path, progress=False, on_iteration=sigterm_at_3)
    assert (stopped.step, stopped.stopped_by) == (3, "signal")
    assert (tmp_path / "checkpoints" / "3").is_dir() and not (tmp_path / "policy").exists()

    resumed = trainer.train(config, tmp_path, progress=False)
    assert (resumed.step, resumed.stopped_by) == (ITERATIONS, "done")
    assert untimed(metrics(tmp_path)) == untimed(metrics(reference_run))
    for a, b in zip(
        jax.tree.leaves(models.load_model(tmp_path / "policy").params),
        jax.tree.leaves(models.load_model(reference_run / "policy").params),
    ):
        np.testing.assert_array_equal(a, b)
    results = json.loads((tmp_path / "rft_results.json").read_text())
    reference = json.loads((reference_run / "rft_results.json").read_text())
    assert results.pop("run_seconds") > 0 and reference.pop("run_seconds") > 0  # each process's own time
    assert results == {**reference, "policy": str(tmp_path / "policy")}

    logged = (tmp_path / "metrics.jsonl").read_text()
    again = trainer.train(config, tmp_path, progress=False)  # a finished run, rerun: its final evaluation again
    assert again.step == ITERATIONS and again.results.pop("run_seconds") > 0 and again.results == results
    assert (tmp_path / "metrics.jsonl").read_text() == logged  # no repeated rows (issue 15)


def test_a_missing_model_names_the_config_key_and_the_hint(config_file, tmp_path):
    override = "--config.policy.init=/nonexistent/policy"
    with pytest.raises(FileNotFoundError, match="policy.init '/nonexistent/policy' not found; build the tiny models"):
        setup.load_models(load_config(config_file, [override]))
    assert cli(["rft", "--config", config_file, "--workdir", str(tmp_path), "--no-progress", override]) == 2
