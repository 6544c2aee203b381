"""RFT with LoRA on the policy (policy.lora) on the tiny models of conftest.py: the actor state and
its optimiser state hold only the adapters, the frozen base is placed once and is the reference
policy, an iteration moves only the adapters; the `rft` command writes the merged policy/ and
the PEFT policy_lora/, which agree; a run stopped by SIGTERM and resumed equals the uninterrupted one."""

import json
import pathlib
import signal

import jax
import numpy as np
import pytest

from polar_jax import config_checks, parallel
from polar_jax.__main__ import main as cli
from polar_jax.config_loading import load_config
from polar_jax.errors import ConfigError
from polar_jax.io import models, peft
from polar_jax.models import lora as L
from polar_jax.rft import setup, trainer
from tests.rft.test_rft_loop import CONFIG, TIMED

ITERATIONS, RANK, ALPHA = 3, 4, 8.0
LORA = f"""
    c.policy.lora.rank, c.policy.lora.alpha = {RANK}, {ALPHA}
    c.policy.lora.targets = ("wq", "wv", "wo", "w_down")
    c.algorithm.kl_coef = 0.1  # the KL reads the reference policy: the frozen base
    return c
"""


@pytest.fixture(scope="module")
def config_file(tiny, rft_jsonl, tmp_path_factory):
    path = tmp_path_factory.mktemp("rft_lora_config") / "rft_lora.py"
    text = CONFIG.format(
        policy=tiny["policy"],
        reward=tiny["reward"],
        target=tiny["target"],
        train=rft_jsonl[0],
        eval=rft_jsonl[1],
        iterations=ITERATIONS,
    )
    path.write_text(text.replace("\n    return c\n", LORA))
    return str(path)


def metrics(workdir) -> list[dict]:
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMED} for r in rows]


def test_the_actor_trains_only_adapters_over_the_shared_frozen_base(config_file, tmp_path):
    config = load_config(config_file)
    m = setup.load_models(config)
    mesh = parallel.make_mesh(dict(config.mesh))
    runner = trainer.Runner(config, m, mesh)
    lora = L.LoraConfig(rank=RANK, alpha=ALPHA, targets=("wq", "wv", "wo", "w_down"))
    assert runner.lora == lora
    assert runner.ref_params is runner.base_params  # one copy of the weights: the reference is the base

    state = runner.initial_state()
    adapters = state["actor"].params
    adapter_shapes = {x.shape for x in jax.tree.leaves(adapters)}
    assert sum(x.size for x in jax.tree.leaves(adapters)) == L.num_adapter_params(m.policy.cfg, lora)
    cfg = m.policy.cfg
    assert L.num_adapter_params(m.policy.cfg, lora) == cfg.num_layers * RANK * (
        (cfg.d_model + cfg.num_heads * cfg.head_dim)
        + (cfg.d_model + cfg.num_kv_heads * cfg.head_dim)
        + (cfg.num_heads * cfg.head_dim + cfg.d_model)
        + (cfg.mlp_dim + cfg.d_model)
    )
    moments = [x for x in jax.tree.leaves(state["actor"].opt_state) if x.ndim]
    assert moments and {x.shape for x in moments} <= adapter_shapes  # AdamW's moments: adapter-shaped only
    assert sum(x.size for x in moments) == 2 * L.num_adapter_params(cfg, lora)
    fsdp_a = adapters["layers"]["attn"]["wq"]["lora_a"].sharding.spec  # sharded like the weight's input side
    assert tuple(fsdp_a)[:2] == (None, "fsdp")

    base_before = jax.tree.map(np.asarray, runner.base_params)
    examples = trainer.read_data(config, tmp_path, runner.target, m.policy_tokenizer)[0][: config.rollout.prompts]
    new_state, iteration_metrics = runner.iteration(state, examples, 0)
    assert iteration_metrics["kl"] == 0.0  # fresh adapters: the policy is the reference exactly
    new_b = new_state["actor"].params["layers"]["mlp"]["w_down"]["lora_b"]
    assert float(np.abs(np.asarray(new_b)).max()) > 0  # the adapters moved
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, runner.base_params), base_before)
    jax.tree.map(np.testing.assert_array_equal, base_before, jax.tree.map(np.asarray, m.policy.params))
    merged = runner.policy_params(new_state["actor"].params)
    assert merged["embedding"] is runner.base_params["embedding"]  # unadapted leaves: the base's own arrays
    assert not np.array_equal(np.asarray(merged["layers"]["mlp"]["w_down"]), base_before["layers"]["mlp"]["w_down"])
    np.testing.assert_array_equal(np.asarray(merged["layers"]["attn"]["wk"]), base_before["layers"]["attn"]["wk"])


@pytest.fixture(scope="module")
def lora_run(config_file, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rft_lora_run")
    assert cli(["rft", "--config", config_file, "--workdir", str(workdir), "--no-progress"]) == 0
    return workdir


def test_lora_run_writes_the_merged_policy_and_its_peft_adapters(lora_run, tiny):
    rows = [r for r in metrics(lora_run) if "reward" in r]
    assert [r["step"] for r in rows] == list(range(1, ITERATIONS + 1)) and all(r["skipped"] == 0 for r in rows)
    assert rows[0]["kl"] == 0.0 and rows[-1]["kl"] != 0.0
    initial = models.load_model(tiny["policy"])
    trained = models.load_model(lora_run / "policy")
    adapters, lora = peft.load_adapters(initial.cfg, initial.family, lora_run / "policy_lora")
    assert lora == L.LoraConfig(rank=RANK, alpha=ALPHA, targets=("wq", "wv", "wo", "w_down"))
    results = json.loads((lora_run / "rft_results.json").read_text())
    assert results["actor_trainable_params"] == L.num_adapter_params(initial.cfg, lora)  # adapters only
    config = json.loads((lora_run / "policy_lora" / peft.CONFIG_FILE).read_text())
    assert config["target_modules"] == ["q_proj", "v_proj", "o_proj", "down_proj"]
    assert config["base_model_name_or_path"] == tiny["policy"]
    # policy/ = the initial policy + alpha / r x A @ B of policy_lora/, and only the targets moved
    expected = jax.tree.map(np.asarray, L.merged(adapters, initial.params, lora))
    for path, _ in L._adapter_items(adapters):
        np.testing.assert_allclose(L.get_at(trained.params, path), L.get_at(expected, path), rtol=1e-6, atol=1e-7)
        assert not np.array_equal(L.get_at(trained.params, path), L.get_at(initial.params, path))
    for path in ("layers/attn/wk", "layers/mlp/w_up", "embedding", "final_norm/scale"):
        np.testing.assert_array_equal(L.get_at(trained.params, path), L.get_at(initial.params, path))


def test_stopped_and_resumed_lora_run_equals_the_uninterrupted_one(config_file, lora_run, tmp_path):
    config = load_config(config_file)

    def sigterm_at_2(iteration, _metrics):
        if iteration == 2:
            signal.raise_signal(signal.SIGTERM)

    stopped = trainer.train(config, tmp_path, progress=False, on_iteration=sigterm_at_2)
    assert (stopped.step, stopped.stopped_by) == (2, "signal") and not (tmp_path / "policy_lora").exists()
    resumed = trainer.train(config, tmp_path, progress=False)
    assert (resumed.step, resumed.stopped_by) == (ITERATIONS, "done")
    assert metrics(tmp_path) == metrics(lora_run)
    for name in ("policy_lora/adapter_model.safetensors", "policy/model.safetensors"):
        assert (tmp_path / name).read_bytes() == (lora_run / name).read_bytes(), name


def test_bad_lora_keys_are_refused_naming_the_key(config_file):
    config = load_config(config_file, ["--config.policy.lora.targets=('q_proj',)"])
    with pytest.raises(ConfigError, match=r"config.policy.lora.targets=\('q_proj',\) .*one of 'wq', 'wk'"):
        config_checks.check(config, "rft", source="rft_lora.py")
    config = load_config(config_file)
    config.policy.lora.targets = ("wq", "wq")
    with pytest.raises(ValueError, match=r"policy.lora.targets=\('wq', 'wq'\) names a projection twice"):
        setup.lora_config(config)
    config.policy.lora.rank = 0  # off: no adapters, the actor trains every weight
    assert setup.lora_config(config) is None
