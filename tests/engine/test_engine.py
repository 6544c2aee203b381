"""The continuous-batching engine against `sampling.generate`: for the same prompts and keys the
same tokens, log-probs, lengths and loop flags, whatever the number of slots, the order requests
arrive in, the chunking of the decode loop or the mesh; and its accounting (slot-steps follow
list scheduling: a finished slot takes the next request at once)."""

import heapq

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polar_jax import parallel, sampling
from polar_jax.engine import Engine, width_buckets
from polar_jax.engine import steps as engine_steps
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from polar_jax.sampling import SamplingConfig

CFG = ModelConfig(
    vocab_size=16, d_model=16, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=32, init_std=0.5
)
MAX_PROMPT = 12
NUM = 20
CONFIGS = {
    "greedy-stop": SamplingConfig(max_new_tokens=20, stop_ids=(3,)),
    "sampled-stop-loop": SamplingConfig.polar(
        stop_ids=(3, 7), max_new_tokens=20, top_k=8, loop_max_ngram=3, loop_repeats=3
    ),
    "sampled-no-stop": SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=16),
}


@pytest.fixture(scope="module")
def params():
    return T.init_params(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(1, CFG.vocab_size, rng.integers(1, MAX_PROMPT + 1)).tolist() for _ in range(NUM)]


KEYS = jax.random.split(jax.random.key(5), NUM)


def padded(prompts, width=MAX_PROMPT):
    prompt_bt = np.zeros((len(prompts), width), np.int32)
    for row, ids in enumerate(prompts):
        prompt_bt[row, : len(ids)] = ids
    return jnp.asarray(prompt_bt), jnp.asarray([len(p) for p in prompts], jnp.int32)


_REFERENCE = {}


def reference(params, prompts, name, max_new_b=None):
    """`sampling.generate` of all prompts in one static batch (cached per config)."""
    key = (name, None if max_new_b is None else tuple(max_new_b))
    if key not in _REFERENCE:
        prompt_bt, lengths_b = padded(prompts)
        limits = None if max_new_b is None else jnp.asarray(max_new_b, jnp.int32)
        _REFERENCE[key] = jax.device_get(
            sampling.generate(CFG, params, prompt_bt, lengths_b, CONFIGS[name], KEYS, limits)
        )
    return _REFERENCE[key]


def assert_same(got, want):
    np.testing.assert_array_equal(got.tokens_bn, want.tokens_bn)
    np.testing.assert_array_equal(got.lengths_b, want.lengths_b)
    np.testing.assert_array_equal(got.truncated_loop_b, want.truncated_loop_b)
    np.testing.assert_allclose(got.logprobs_bn, want.logprobs_bn, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("slots", [1, 3, 8])
def test_engine_equals_generate_for_any_slots_and_arrival_order(params, prompts, name, slots):
    want = reference(params, prompts, name)
    order = np.random.default_rng(slots).permutation(NUM)  # requests arrive shuffled
    engine = Engine(CFG, CONFIGS[name], slots=slots, max_prompt_tokens=MAX_PROMPT)
    got = engine.generate(params, [prompts[i] for i in order], KEYS[order])
    back = np.argsort(order)
    assert_same(sampling.Generation(*(np.asarray(x)[back] for x in got)), want)
    assert engine.stats.useful_tokens == int(want.lengths_b.sum()) and engine.stats.requests == NUM
    if name == "sampled-stop-loop":  # the rules under test really fired
        assert want.truncated_loop_b.any() and (want.lengths_b < 20).any()


def test_the_reference_rules_fire_and_rows_do_not_depend_on_their_batch(params, prompts):
    """generate's rows are functions of (prompt, key): a sub-batch gives the same rows."""
    want = reference(params, prompts, "sampled-stop-loop")
    sub = [2, 5, 11]
    prompt_bt, lengths_b = padded([prompts[i] for i in sub], width=MAX_PROMPT + 4)
    config = CONFIGS["sampled-stop-loop"]
    got = jax.device_get(sampling.generate(CFG, params, prompt_bt, lengths_b, config, KEYS[np.array(sub)]))
    np.testing.assert_array_equal(got.tokens_bn, want.tokens_bn[sub])
    assert len({tuple(r) for r in want.tokens_bn}) > NUM // 2  # different keys, different samples


def test_per_request_budgets_equal_generates_max_new(params, prompts):
    budgets = np.random.default_rng(1).integers(1, 17, NUM)
    want = reference(params, prompts, "sampled-no-stop", budgets.tolist())
    got = Engine(CFG, CONFIGS["sampled-no-stop"], slots=3, max_prompt_tokens=MAX_PROMPT).generate(
        params, prompts, KEYS, max_new=budgets
    )
    assert_same(got, want)
    np.testing.assert_array_equal(got.lengths_b, budgets)  # no stop ids: each row makes its budget


def test_short_decode_chunks_batched_refills_and_a_second_call_change_nothing(params, prompts):
    want = reference(params, prompts, "greedy-stop")
    engine = Engine(CFG, CONFIGS["greedy-stop"], slots=4, max_prompt_tokens=MAX_PROMPT, max_chunk_steps=2, refill_at=3)
    assert_same(engine.generate(params, prompts, KEYS), want)
    assert_same(engine.generate(params, prompts, KEYS), want)
    assert engine.stats.requests == 2 * NUM


def list_scheduling_steps(budgets, slots: int) -> int:
    """Decode steps when each request enters the first free slot the moment it frees."""
    free_at = [0] * slots
    for n in budgets:
        heapq.heappush(free_at, heapq.heappop(free_at) + n)
    return max(free_at)


def drained_slot_steps(budgets, slots: int, sizes: tuple[int, ...]) -> int:
    """Slot-steps of the same schedule, step by step, when the state shrinks in the drain: once
    no request waits and at most the largest size <= half the state decode, the state becomes the
    smallest size that holds them."""
    queue, rows, size, total = list(budgets), [], slots, 0
    while queue or rows:
        while queue and len(rows) < size:
            rows.append(queue.pop(0))
        half = max((b for b in sizes if b <= size // 2), default=0)
        if not queue and len(rows) <= half:
            size = min(b for b in sizes if b >= len(rows))
        total += size
        rows = [n - 1 for n in rows if n > 1]
    return total


@pytest.mark.parametrize("slots", [1, 3, 8])
def test_finished_slots_are_refilled_at_once_and_the_drain_shrinks(params, prompts, slots):
    budgets = np.random.default_rng(2).integers(1, 17, NUM)
    engine = Engine(CFG, CONFIGS["sampled-no-stop"], slots=slots, max_prompt_tokens=MAX_PROMPT)
    got = engine.generate(params, prompts, KEYS, max_new=budgets)
    stats = engine.stats
    assert stats.useful_tokens == budgets.sum() == got.lengths_b.sum()
    assert stats.decode_steps == list_scheduling_steps(budgets, slots)  # no step lost to refilling
    assert stats.slot_steps == drained_slot_steps(budgets.tolist(), slots, engine.sizes)
    static_steps = sum(budgets[i : i + slots].max() for i in range(0, NUM, slots))
    if slots > 1:
        assert stats.slot_steps < slots * stats.decode_steps < slots * static_steps
    assert stats.utilisation == pytest.approx(budgets.sum() / stats.slot_steps)
    if slots == 1:
        assert stats.utilisation == 1.0
    assert stats.prompt_tokens == sum(len(p) for p in prompts)
    assert stats.prefill_s > 0 and stats.decode_s > 0 and stats.tokens_per_s > 0


def test_engine_on_a_data_by_tensor_mesh_equals_one_device(params, prompts):
    mesh = parallel.make_mesh({"data": 2, "tensor": 2}, jax.devices()[:4])
    placed = jax.device_put(params, parallel.logical_to_sharding(T.logical_axes(CFG), mesh))
    want = Engine(CFG, CONFIGS["sampled-stop-loop"], slots=4, max_prompt_tokens=MAX_PROMPT).generate(
        params, prompts, KEYS
    )
    engine = Engine(CFG, CONFIGS["sampled-stop-loop"], slots=4, max_prompt_tokens=MAX_PROMPT, mesh=mesh)
    got = engine.generate(placed, prompts, KEYS)
    assert_same(got, want)
    with parallel.use_rules(mesh):  # the decode state really is split: slots over data, kv heads over tensor
        slots = engine_steps.empty_slots(CFG, CONFIGS["sampled-stop-loop"], 4, MAX_PROMPT + 20)
    assert tuple(slots.cache.k_lbske.sharding.spec)[:4] == (None, "data", None, "tensor")  # [L, S, C, K, E]
    assert tuple(slots.rows.tokens_bn.sharding.spec)[:1] == ("data",)
    assert len(slots.cache.k_lbske.sharding.device_set) == 4


def test_slots_must_divide_over_the_batch_axes():
    mesh = parallel.make_mesh({"data": 2}, jax.devices()[:2])
    with pytest.raises(ValueError, match="slots=3 do not divide over data x fsdp = 2"):
        Engine(CFG, CONFIGS["greedy-stop"], slots=3, max_prompt_tokens=MAX_PROMPT, mesh=mesh)


def test_no_requests_and_bad_prompts(params):
    engine = Engine(CFG, CONFIGS["greedy-stop"], slots=2, max_prompt_tokens=4)
    empty = engine.generate(params, [], KEYS[:0])
    assert empty.tokens_bn.shape == (0, 20) and engine.stats.slot_steps == 0
    with pytest.raises(ValueError, match="request 1: prompt of 5 tokens; the engine takes 1..4"):
        engine.generate(params, [[1], [1, 2, 3, 4, 5]], KEYS[:2])
    with pytest.raises(ValueError, match="request 0: prompt of 0 tokens"):
        engine.generate(params, [[]], KEYS[:1])


def test_width_buckets():
    assert width_buckets(12) == (12,)
    assert width_buckets(100) == (16, 32, 64, 100)
    assert width_buckets(64) == (16, 32, 64)
