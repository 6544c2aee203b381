"""RFT scoring through a reward server (reward.server): a tiny run against `polar_jax serve` over
conftest's tiny reward model gives the metrics of the same run with reward.model (same seed),
and the config mistakes (both or neither source, settings that need the weights or the encoding
here, an unreachable server, a server of another max length) fail early with a clear error."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re

import httpx
import numpy as np
import pytest

from polar_jax import config_checks
from polar_jax.rft import defaults, setup, trainer

SERVE_CONFTEST = pathlib.Path(__file__).parents[1] / "serve" / "conftest.py"
MAX_LENGTH, MAX_RESPONSE = 128, 32


def serve_fixtures():
    """tests/serve/conftest.py as a module (its `Server` starts `python -m polar_jax serve`)."""
    spec = importlib.util.spec_from_file_location("serve_conftest_for_rft", SERVE_CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reward_server(tiny, tmp_path_factory):
    """A ready server over the tiny reward model (its directory holds the policy's tokenizer)."""
    flags = ("--max-length", str(MAX_LENGTH), "--max-response-length", str(MAX_RESPONSE), "--dtype", "float32")
    log = tmp_path_factory.mktemp("rft_reward_server") / "server.log"
    server = serve_fixtures().Server(tiny["reward"], *flags, log_path=log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def tiny_config(tiny, rft_jsonl, **reward):
    """One iteration of PPO with a critic on the tiny models; `reward` sets config.reward keys."""
    c = defaults.base_config()
    c.policy.init, c.policy.dtype, c.policy.max_prompt_tokens = tiny["policy"], "float32", 16
    c.reward.dtype, c.reward.batch_size = "float32", 8
    c.reward.encoding.max_length, c.reward.encoding.max_response_length = MAX_LENGTH, MAX_RESPONSE
    c.data.train, c.data.eval = rft_jsonl
    c.eval.batch_size = 8
    c.rollout.prompts, c.rollout.max_new_tokens = 8, 8
    c.algorithm.epochs, c.algorithm.minibatches = 1, 2
    c.actor_optim.lr = c.critic_optim.lr = 1e-3
    c.iterations = 1
    c.reward.update(reward)
    config_checks.check(c, "rft")
    return c


def logged(workdir) -> list[dict]:
    """metrics.jsonl without the wall-clock figures."""
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (k.endswith("_s") or k.endswith("per_s"))} for r in rows]


def test_server_rewards_equal_the_loaded_model(tiny, rft_jsonl, reward_server, tmp_path):
    local = tiny_config(tiny, rft_jsonl, model=tiny["reward"])
    # a server without --api-key ignores the header: the key only has to stay out of every file written
    served = tiny_config(tiny, rft_jsonl, server=reward_server.url, api_key="s3cret-key-42")
    served.reward.encoding.max_response_length = None  # the server's --max-response-length encodes
    trainer.train(local, tmp_path / "local", progress=False)
    result = trainer.train(served, tmp_path / "served", progress=False)
    assert result.step == 1
    scored = httpx.get(f"{reward_server.url}/metrics").text
    assert re.search(r"polar_serve_rows_total ([1-9][0-9.e+]*)", scored)  # the rollouts went to the server
    want, got = logged(tmp_path / "local"), logged(tmp_path / "served")
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    compared = 0
    for w, g in zip(want, got):
        for key, value in w.items():
            if isinstance(value, (int, float)):
                np.testing.assert_allclose(g[key], value, rtol=1e-5, atol=1e-5, err_msg=key)
                compared += 1
    assert {"reward", "reward_std", "eval_reward"} <= {k for r in want for k in r} and compared > 20
    iteration = next(r for r in want if "reward_std" in r)
    assert iteration["reward_std"] > 0  # the rewards differ between responses: a real comparison
    results = [json.loads((tmp_path / d / "rft_results.json").read_text()) for d in ("local", "served")]
    for key in ("reward_before", "reward_after", "train_reward_first"):
        assert results[1][key] == pytest.approx(results[0][key], abs=1e-5), key
    assert results[0]["reward_after"] != results[0]["reward_before"]  # the iteration changed the policy
    written = [f for f in (tmp_path / "served").rglob("*") if f.is_file()]
    assert len(written) > 5 and not [f for f in written if b"s3cret-key-42" in f.read_bytes()]
    assert json.loads((tmp_path / "served" / "config.json").read_text())["reward"]["api_key"] == "<redacted>"


def test_max_length_must_match_the_server(tiny, rft_jsonl, reward_server):
    config = tiny_config(tiny, rft_jsonl, server=reward_server.url)
    config.reward.encoding.max_response_length = None
    assert setup.server_reward(config).client.health()
    config.reward.encoding.max_length = 2 * MAX_LENGTH
    with pytest.raises(ValueError, match=f"encodes up to {MAX_LENGTH} tokens: start it with --max-length 256"):
        setup.server_reward(config)


@pytest.mark.parametrize(
    "reward, other, message",
    [
        ({"model": "RM", "server": "http://127.0.0.1:1"}, {}, "are both set"),
        ({"model": ""}, {}, "neither reward.model nor reward.server"),
        ({"server": "127.0.0.1:30000"}, {}, "give the server's URL"),
        ({"server": "http://127.0.0.1:1"}, {"critic.init": "reward_model"}, "critic.init=reward_model needs"),
        ({"server": "http://127.0.0.1:1", "tokenizer": "TOK"}, {}, "reward.tokenizer='TOK' with reward.server"),
        ({"server": "http://127.0.0.1:1"}, {"max_response_length": 32}, "reward.encoding.max_response_length set"),
    ],
)
def test_config_mistakes_fail_before_any_work(tiny, rft_jsonl, tmp_path, reward, other, message):
    config = tiny_config(tiny, rft_jsonl, **reward)
    config.reward.encoding.max_response_length = other.get("max_response_length")
    if "critic.init" in other:
        config.critic.init = other["critic.init"]
    with pytest.raises(ValueError, match=message):
        trainer.train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before the workdir was made


def test_group_estimator_may_keep_critic_init(tiny, rft_jsonl):
    config = tiny_config(tiny, rft_jsonl, server="http://127.0.0.1:1")
    config.reward.encoding.max_response_length = None
    config.critic.init, config.algorithm.estimator = "reward_model", "group"  # no critic: nothing needs the weights
    config.rollout.samples_per_prompt = 2
    setup.check_reward_source(config)


def test_an_unreachable_server_says_what_to_do(tiny, rft_jsonl, tmp_path):
    port = serve_fixtures().free_port()
    config = tiny_config(tiny, rft_jsonl, server=f"http://127.0.0.1:{port}", server_wait=1.0)
    config.reward.encoding.max_response_length = None
    with pytest.raises(setup.RewardServerUnavailable, match="python -m polar_jax serve --model RM_DIR") as e:
        trainer.train(config, tmp_path / "run", progress=False)
    assert f"reward.server=http://127.0.0.1:{port} is not ready" in str(e.value)
    assert "reward.server_wait" in str(e.value)


class _RecordingClient:
    """A RewardClient stand-in: records the rows it is sent, scores row i as float(i)."""

    def __init__(self):
        self.sent = []

    def score(self, rows):
        self.sent.append([r["prompt"] for r in rows])
        return np.float32([int(r["prompt"]) for r in rows])


@pytest.mark.parametrize("process, rows, mine", [(0, 5, ["0", "1", "2"]), (1, 5, ["3", "4"]), (1, 1, [])])
def test_several_processes_send_each_row_once_and_gather_the_scores(monkeypatch, process, rows, mine):
    """With reward.server on 2 processes each sends its contiguous share of the rows (none when it
    owns none) and the scores come back in row order from `parallel.gather_owned` (here: a stand-in
    filling the other process's rows with their index, as the other process would)."""
    from polar_jax.rft import rewards

    monkeypatch.setattr(rewards.jax, "process_count", lambda: 2)
    monkeypatch.setattr(rewards.jax, "process_index", lambda: process)
    owners = []

    def gather(scores_b, owner_b):
        owners.append(owner_b.tolist())
        other = owner_b != process
        return np.where(other, np.arange(len(owner_b)), scores_b)

    monkeypatch.setattr(rewards.parallel, "gather_owned", gather)
    client = _RecordingClient()
    reward = rewards.ServerReward(client, across_processes=True)
    texts = [str(i) for i in range(rows)]
    got = reward.score(texts, texts, texts)
    assert client.sent == ([mine] if mine else [])
    np.testing.assert_array_equal(got, np.arange(rows, dtype=np.float32))
    assert owners == [[i * 2 // rows for i in range(rows)]]
