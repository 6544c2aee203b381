"""Smoke test of `python -m polar_jax.bench.sampling --engine` (bench.engine_lengths) on a tiny model:
the static accounting follows the budgets, both modes count the same useful tokens, and the
engine's outputs equal the static batches'."""

import jax
import numpy as np

from polar_jax import sampling
from polar_jax.bench import engine_lengths
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig

CFG = ModelConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
CAP, MAX_PROMPT = 12, 10


def test_workload_budgets_are_clipped_log_normal_and_prompts_in_range():
    work = engine_lengths.make_workload(200, 3, MAX_PROMPT, median=4, sigma=1.0, cap=CAP, vocab=32)
    lengths = [len(p) for p in work.prompts]
    assert min(lengths) >= 3 and max(lengths) <= MAX_PROMPT
    assert work.budgets_r.min() >= 1 and work.budgets_r.max() == CAP  # the tail reaches the cap
    assert 3 <= np.median(work.budgets_r) <= 5
    assert work.keys_r.shape == (200,)


def test_fifo_slot_steps_is_list_scheduling_in_arrival_order():
    # 2 slots: 5 -> slot 0 (ends 5), 1 -> slot 1 (ends 1), 1 -> slot 1 (2), 6 -> slot 1 (8), 2 -> slot 0 (7)
    assert engine_lengths.fifo_slot_steps(np.array([5, 1, 1, 6, 2]), 2) == 2 * 8
    assert engine_lengths.fifo_slot_steps(np.array([4, 4, 4]), 4) == 4 * 4


def test_static_and_engine_agree_and_count_slot_steps():
    params = T.init_params(CFG, jax.random.key(0))
    config = sampling.SamplingConfig.polar(max_new_tokens=CAP, loop_max_ngram=0)
    work = engine_lengths.make_workload(7, 1, MAX_PROMPT, median=4, sigma=1.0, cap=CAP, vocab=32, seed=3)
    static = engine_lengths.run_static(CFG, params, work, config, 3, MAX_PROMPT)
    engine = engine_lengths.run_engine(CFG, params, work, config, 3, MAX_PROMPT)
    np.testing.assert_array_equal(static.gen.lengths_b, work.budgets_r)  # no stop ids: every budget is used
    assert static.useful_tokens == engine.useful_tokens == int(work.budgets_r.sum())
    batches = [work.budgets_r[i : i + 3] for i in range(0, 7, 3)]
    assert static.slot_steps == sum(len(b) * int(b.max()) for b in batches)
    assert engine.slot_steps <= engine_lengths.fifo_slot_steps(work.budgets_r, 3)  # the drain shrinks below it
    assert engine_lengths.same_outputs(static.gen, engine.gen)
    rows, ratio, equal = engine_lengths.compare(CFG, params, work, config, 3, MAX_PROMPT)
    assert equal and ratio > 0 and [r["mode"] for r in rows] == ["static", "engine"]
