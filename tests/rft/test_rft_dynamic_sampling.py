"""DAPO's dynamic sampling (algorithm.dynamic_sampling, `Runner.dynamic_sample`) with a reward
stub that gives every rollout of some prompts the same score: the batch trained on never holds a
zero-variance group and keeps its size; it is the first kept groups in the order drawn; the rounds
and the kept fraction are counted; round r samples with fold_in(sampling key, r); the data
iterator moves past every batch drawn; too many rounds raise naming algorithm.max_gen_batches;
a run stopped by SIGTERM and resumed equals the uninterrupted one."""

import signal
import zlib

import jax
import numpy as np
import pytest

from polar_jax import config_checks, parallel
from polar_jax.config_loading import load_config
from polar_jax.errors import ConfigError
from polar_jax.io import models
from polar_jax.rft import data as data_lib
from polar_jax.rft import rollout, setup, trainer
from polar_jax.rft.defaults import base_config
from tests.rft.test_rft_loop import ITERATIONS, config_file, metrics, untimed  # noqa: F401 (a fixture)

PROMPTS = ["A function", "Lists and", "Classes define", "The quick", "Modules group", "Loops", "Keys map", "Objects"]
CONSTANT = {"A function", "Classes define", "Modules group", "Keys map"}  # every rollout of these scores 1.0
K = 2  # rollouts per prompt
EXAMPLES = [data_lib.Example(p, f"{p} is in the manual.", f"test:{i}") for i, p in enumerate(PROMPTS)]


class StubReward:
    """1.0 for each rollout of a prompt in `constant` (a zero-variance group); otherwise the row's
    index in the call plus a fraction from its text (distinct within every group). Calls recorded."""

    def __init__(self, constant):
        self.constant, self.calls = constant, []

    def score(self, prompts, references, responses):
        out = np.array(
            [
                1.0 if str(p) in self.constant else i + zlib.crc32(r.encode()) / 2**33
                for i, (p, r) in enumerate(zip(prompts, responses))
            ],
            np.float32,
        )
        self.calls.append((list(prompts), out))
        return out


def make_config(tiny, max_gen_batches=0):
    c = base_config()
    c.policy.init, c.policy.dtype, c.policy.max_prompt_tokens = tiny["policy"], "float32", 16
    c.reward.model, c.reward.dtype, c.reward.batch_size = tiny["reward"], "float32", 8
    c.reward.encoding.max_length, c.reward.encoding.max_response_length = 128, 32
    c.rollout.prompts, c.rollout.samples_per_prompt, c.rollout.max_new_tokens = 4, K, 6
    c.algorithm.estimator, c.algorithm.dynamic_sampling, c.algorithm.max_gen_batches = "grpo", True, max_gen_batches
    c.mesh.update(data=4, fsdp=2, tensor=1)
    return c


@pytest.fixture(scope="module")
def loaded(tiny):
    return setup.load_models(make_config(tiny))


def expected_draws(iterator: data_lib.PromptIterator, first: list) -> list[list]:
    """The prompt batches dynamic sampling draws, from `first` on, until rollout.prompts groups are kept."""
    draws, kept = [first], sum(ex.prompt not in CONSTANT for ex in first)
    while kept < len(first):
        draws.append(iterator.next_batch())
        kept += sum(ex.prompt not in CONSTANT for ex in draws[-1])
    return draws


def test_the_kept_batch_has_no_zero_variance_group_and_keeps_its_size(tiny, loaded):
    config = make_config(tiny)
    mesh = parallel.make_mesh(dict(config.mesh))
    with parallel.use_rules(mesh):
        stub = StubReward(CONSTANT)
        runner = trainer.Runner(config, loaded, mesh, reward=stub)
        seen, returned = [], []
        real_rollouts, real_sample = runner.rollouts, runner.dynamic_sample

        def recording_rollouts(params, rows, sample_key):
            out = real_rollouts(params, rows, sample_key)
            seen.append((sample_key, jax.device_get(out[0])))
            return out

        def recording_sample(*args):
            returned.append(real_sample(*args))
            return returned[-1]

        runner.rollouts, runner.dynamic_sample = recording_rollouts, recording_sample
        prompts = data_lib.PromptIterator(EXAMPLES, config.rollout.prompts, seed=config.seed)
        twin = data_lib.PromptIterator(EXAMPLES, config.rollout.prompts, seed=config.seed)
        state, rounds_seen = runner.initial_state(), []
        for index in range(4):
            seen.clear()
            stub.calls.clear()
            draws = expected_draws(twin, twin.next_batch())
            state, m = runner.iteration(state, prompts.next_batch(), index, more=prompts.next_batch)
            assert prompts.get_state() == twin.get_state()  # every drawn batch is past the iterator's position
            assert m["dynamic_sampling_rounds"] == len(draws) == len(seen) == len(stub.calls)
            kept = [ex.prompt not in CONSTANT for draw in draws for ex in draw]
            assert m["dynamic_sampling_kept_fraction"] == pytest.approx(sum(kept) / len(kept))
            assert [p for prompts_r, _ in stub.calls for p in prompts_r[::K]] == [ex.prompt for d in draws for ex in d]
            rounds_seen.append(len(draws))

            batch, scores_b = returned[-1][0], returned[-1][1]
            rows = config.rollout.prompts * K
            assert batch.tokens_bt.shape[0] == len(scores_b) == rows  # the batch size is unchanged
            assert np.all(np.ptp(scores_b.reshape(-1, K), axis=1) > 0)  # no zero-variance group
            keep_b = np.repeat(kept, K)
            want_scores = np.concatenate([s for _, s in stub.calls])[keep_b][:rows]
            np.testing.assert_array_equal(scores_b, want_scores)  # the first kept groups, in the order drawn
            got = jax.device_get(batch)
            for name in rollout.Rollout._fields:
                want = np.concatenate([getattr(b, name) for _, b in seen])[keep_b][:rows]
                np.testing.assert_array_equal(getattr(got, name), want, err_msg=name)
            sample_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), index))
            for r, (key, _) in enumerate(seen):
                want_key = sample_key if r == 0 else jax.random.fold_in(sample_key, r)
                np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(want_key))
    assert max(rounds_seen) >= 2  # further batches were drawn


def test_too_many_rounds_raise_naming_the_key(tiny, loaded):
    config = make_config(tiny, max_gen_batches=3)
    mesh = parallel.make_mesh(dict(config.mesh))
    with parallel.use_rules(mesh):
        stub = StubReward(set(PROMPTS))  # every group scores the same
        runner = trainer.Runner(config, loaded, mesh, reward=stub)
        prompts = data_lib.PromptIterator(EXAMPLES, config.rollout.prompts, seed=config.seed)
        with pytest.raises(trainer.DynamicSamplingExhausted, match=r"0 of the 4 groups .* 3 generation batches = algo"):
            runner.iteration(runner.initial_state(), prompts.next_batch(), 0, more=prompts.next_batch)
    assert len(stub.calls) == 3
    assert (prompts.epoch, prompts.position) == (1, 4)  # 3 batches of 4 of the 8 prompts drawn


def test_dynamic_sampling_needs_groups(tiny, loaded):
    config = make_config(tiny)
    config.rollout.samples_per_prompt, config.algorithm.estimator = 1, "gae"
    with pytest.raises(ConfigError, match="config.algorithm.dynamic_sampling=True .*rollout.samples_per_prompt=1"):
        config_checks.check(config, "rft")
    config.rollout.prompts = 8
    with pytest.raises(ValueError, match=r"algorithm.dynamic_sampling .* rollout.samples_per_prompt >= 2 \(got 1\)"):
        trainer.Runner(config, loaded, parallel.make_mesh(dict(config.mesh)), reward=StubReward(CONSTANT))


def test_a_dynamically_sampled_run_stopped_and_resumed_equals_the_uninterrupted_one(
    config_file,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    overrides = ["rollout.prompts=4", f"rollout.samples_per_prompt={K}", "algorithm.estimator='grpo'"]
    overrides += ["algorithm.dynamic_sampling=True", "algorithm.max_gen_batches=20"]
    config = load_config(config_file, [f"--config.{o}" for o in overrides], check="rft")
    stub = StubReward(CONSTANT)
    monkeypatch.setattr(setup, "server_reward", lambda config, client=None: stub)  # the run scores with the stub
    reference = trainer.train(config, tmp_path / "reference", progress=False)
    assert (reference.step, reference.stopped_by) == (ITERATIONS, "done")

    def sigterm_at_3(iteration, _metrics):
        if iteration == 3:
            signal.raise_signal(signal.SIGTERM)

    workdir = tmp_path / "resumed"
    assert trainer.train(config, workdir, progress=False, on_iteration=sigterm_at_3).step == 3
    resumed = trainer.train(config, workdir, progress=False)
    assert (resumed.step, resumed.stopped_by) == (ITERATIONS, "done")

    rows = [r for r in metrics(tmp_path / "reference") if "reward" in r]
    assert len(rows) == ITERATIONS and max(r["dynamic_sampling_rounds"] for r in rows) >= 2
    assert untimed(metrics(workdir)) == untimed(metrics(tmp_path / "reference"))
    for a, b in zip(
        jax.tree.leaves(models.load_model(workdir / "policy").params),
        jax.tree.leaves(models.load_model(tmp_path / "reference" / "policy").params),
    ):
        np.testing.assert_array_equal(a, b)
