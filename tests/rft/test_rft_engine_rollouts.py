"""RFT rollouts through the continuous-batching engine: an iteration's rollouts equal
`rollout.rollout` of the same padded prompts with keys row_keys(sample_key, B), with one slot
per rollout (rollout.slots = 0) and with fewer slots refilled as rollouts finish; the held-out
measure's samples do not depend on its batch size; a slot count that does not split over the
mesh names its key."""

import jax
import numpy as np
import pytest

from polar_jax import parallel, sampling
from polar_jax.io import models, tokenizers
from polar_jax.rft import data as data_lib
from polar_jax.rft import rollout, setup, trainer
from polar_jax.rft.defaults import base_config

PROMPTS = ["A function", "Lists and tuples are", "Classes", "The quick brown fox jumps over"]
SAMPLES_PER_PROMPT = 4  # 16 rollouts; the mesh's batch shards are 8
MAX_PROMPT = 16


def make_config(tiny, slots: int):
    c = base_config()
    c.policy.init, c.policy.dtype, c.policy.max_prompt_tokens = tiny["policy"], "float32", MAX_PROMPT
    c.reward.model, c.reward.dtype, c.reward.batch_size = tiny["reward"], "float32", 8
    c.reward.encoding.max_length, c.reward.encoding.max_response_length = 128, 32
    c.rollout.prompts, c.rollout.samples_per_prompt, c.rollout.slots = len(PROMPTS), SAMPLES_PER_PROMPT, slots
    # Few likely tokens and short loops cut: rollouts of many lengths, so slots free at different steps.
    c.rollout.max_new_tokens, c.rollout.top_k, c.rollout.loop_max_ngram, c.rollout.loop_repeats = 10, 3, 2, 2
    c.algorithm.estimator = "group"  # no critic: a quicker update
    c.eval.batch_size = 8
    c.mesh.update(data=4, fsdp=2, tensor=1)
    return c


@pytest.fixture(scope="module")
def loaded(tiny):
    return setup.load_models(make_config(tiny, 0))


EXAMPLES = [data_lib.Example(p, f"{p} is in the manual.", f"test:{i}") for i, p in enumerate(PROMPTS)]


def expected_rollout(runner: trainer.Runner, params, sample_key) -> rollout.Rollout:
    """`rollout.rollout` (one jitted `generate` batch) of the iteration's rows with row_keys(sample_key, B)."""
    config = runner.config
    rows = [ex for ex in EXAMPLES for _ in range(SAMPLES_PER_PROMPT)]
    ids = [
        rollout.prompt_ids(runner.models.policy_tokenizer, ex.prompt, "{prompt}", MAX_PROMPT, chat_template=True)
        for ex in rows
    ]
    prompt_bt, lengths_b = rollout.pad_prompts(ids, config.policy.max_prompt_tokens)
    keys_b = sampling.row_keys(sample_key, len(rows))
    out = rollout.rollout(
        runner.actor_cfg, params, runner.put(prompt_bt), runner.put(lengths_b), runner.sampling, keys_b
    )
    return jax.device_get(out)


@pytest.mark.parametrize("slots", [0, 8])
def test_iteration_rollouts_equal_rollout_with_row_keys(tiny, loaded, slots):
    config = make_config(tiny, slots)
    mesh = parallel.make_mesh(dict(config.mesh))
    with parallel.use_rules(mesh):
        runner = trainer.Runner(config, loaded, mesh)
        assert runner.engine.num_slots == (slots or len(PROMPTS) * SAMPLES_PER_PROMPT)
        state = runner.initial_state()
        seen = []

        def recording(params, rows, sample_key):
            seen.append(real(params, rows, sample_key))
            return seen[-1]

        real, runner.rollouts = runner.rollouts, recording
        index = 3
        sample_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), index))
        want = expected_rollout(runner, state["actor"].params, sample_key)  # before the update donates them
        _, metrics = runner.iteration(state, EXAMPLES, index)
    ((batch, stats),) = seen
    got = jax.device_get(batch)
    for name, a, b in zip(rollout.Rollout._fields, got, want):
        np.testing.assert_array_equal(a, b, err_msg=name)
    lengths_b = got.response_lengths_b
    assert len(set(lengths_b.tolist())) > 2  # rollouts ended at different steps (the refill was exercised)
    assert metrics["response_length"] == pytest.approx(float(np.mean(lengths_b)))
    assert metrics["rollout_useful_tokens"] == stats.useful_tokens == int(lengths_b.sum())
    assert metrics["rollout_slot_steps"] == stats.slot_steps >= int(lengths_b.max()) * runner.engine.num_slots
    assert metrics["rollout_utilisation"] == pytest.approx(stats.useful_tokens / stats.slot_steps)
    assert 0 < metrics["rollout_utilisation"] <= 1
    assert metrics["rollout_prefill_s"] > 0 and metrics["rollout_decode_s"] > 0 and metrics["rollout_tokens_per_s"] > 0
    assert stats.prefill_calls >= (2 if slots else 1)  # fewer slots than rollouts: refilled


def test_a_slot_count_that_does_not_split_over_the_mesh_names_the_key(tiny, loaded):
    config = make_config(tiny, 12)
    mesh = parallel.make_mesh(dict(config.mesh))
    with pytest.raises(ValueError, match=r"rollout.slots = 12 must be a multiple of the mesh's batch shards \(data x"):
        trainer.Runner(config, loaded, mesh)


def test_sample_texts_do_not_depend_on_the_batch_size(tiny):
    model = models.load_model(tiny["policy"])
    tok = tokenizers.load_tokenizer(tiny["policy"])
    cfg = sampling.SamplingConfig(temperature=1.0, top_k=4, max_new_tokens=8, stop_ids=(0,))
    prompts = PROMPTS + ["Modules group", "x"]
    key = jax.random.key(7)

    def texts(batch_size, params=model.params):
        return rollout.sample_texts(
            model.cfg, params, tok, prompts, cfg, key, template="{prompt}", prompt_width=12, batch_size=batch_size
        )

    small, large = texts(2), texts(8)
    assert small == large
    # Parameters on a mesh: the engine runs on that mesh (the target policy's references are sampled so).
    mesh = parallel.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    placed = setup.place(model.cfg, model.params, mesh)
    assert rollout.params_mesh(placed) == mesh and rollout.params_mesh(model.params) is None
    assert texts(8, placed) == small
    # Prompt r draws with fold_in(key, r): the texts `generate` gives with those keys.
    ids = [rollout.prompt_ids(tok, p, "{prompt}", 12) for p in prompts]
    prompt_bt, lengths_b = rollout.pad_prompts(ids, 12)
    gen = sampling.generate(model.cfg, model.params, prompt_bt, lengths_b, cfg, sampling.row_keys(key, len(prompts)))
    assert small.texts == rollout.response_texts(tok, gen.tokens_bn, gen.lengths_b, cfg.stop_ids)
    assert small.lengths == np.asarray(gen.lengths_b).tolist()
    assert len(set(small.texts)) == len(prompts)  # real, different samples were compared
