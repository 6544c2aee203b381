"""Accounting of the shared-prefix layout: pairs, the tokens the rows compute and the tokens the
unshared layout would compute for the same pairs (host counts, no device), MFU of the FLOPs the
windowed attention computes, and the device prefetch that hands each step its batch in order with
the iterator state of the last batch a step took."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polar_jax import flops
from polar_jax.config_loading import load_config
from polar_jax.data import packing, synthetic
from polar_jax.data import pipeline as data_pipeline
from polar_jax.models import attention
from polar_jax.models.config import ModelConfig
from polar_jax.train import metrics, setup, trainer
from polar_jax.train.prefetch import DevicePrefetch

ROOT = pathlib.Path(__file__).resolve().parents[2]
CFG = ModelConfig(
    vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, heads=("reward",)
)


def _pairs(n: int, seed: int = 0) -> list[dict]:
    """Pairs with a common prefix of 0..39 tokens (0 included) and suffixes of 1..29 tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shared = list(rng.integers(1, 64, rng.integers(0, 40)))
        chosen = shared + list(rng.integers(1, 64, rng.integers(1, 30)))
        rejected = shared + list(rng.integers(1, 64, rng.integers(1, 30)))
        out.append({"chosen": np.array(chosen, np.int32), "rejected": np.array(rejected, np.int32), "record_index": i})
    return out


def _rows(pairs, per_row: int = 3) -> list[list[dict]]:
    return [pairs[i : i + per_row] for i in range(0, len(pairs), per_row)]


def test_unshared_equivalent_tokens_are_what_the_unshared_layout_computes():
    pairs = _pairs(12)
    pairs[0] = {"chosen": np.array([5, 6, 7], np.int32), "rejected": np.array([9, 6, 7], np.int32)}  # no prefix
    kwargs = dict(row_len=512, max_pairs_per_row=3, batch_size=5)
    shared = metrics.batch_counts(packing.make_batch(_rows(pairs), shared_prefix=True, **kwargs))
    unshared = metrics.batch_counts(packing.make_batch(_rows(pairs), shared_prefix=False, **kwargs))
    whole = sum(len(p["chosen"]) + len(p["rejected"]) for p in pairs)
    prefixes = sum(packing.shared_prefix_length(p["chosen"], p["rejected"]) for p in pairs)
    assert prefixes > 0 and any(packing.shared_prefix_length(p["chosen"], p["rejected"]) == 0 for p in pairs)
    assert unshared == {"pairs": 12, "tokens": whole, "unshared_tokens": whole}
    assert shared == {"pairs": 12, "tokens": whole - prefixes, "unshared_tokens": whole}


def _keys_per_query_computed(window: int, t: int = 2048, heads: int = 4) -> float:
    """Key slots per query of `windowed_attention`'s logits, read off its traced QK^T product."""
    q_bthe, k_bske, seg_bt = jnp.zeros((1, t, heads, 8)), jnp.zeros((1, t, 2, 8)), jnp.ones((1, t), jnp.int32)
    fn = functools.partial(attention.windowed_attention, window=window)
    jaxpr = jax.make_jaxpr(fn)(q_bthe, k_bske, k_bske, seg_bt, seg_bt, seg_bt).jaxpr
    logits = next(eqn.outvars[0].aval for eqn in jaxpr.eqns if eqn.primitive.name == "dot_general")
    return logits.size / (t * heads)


def test_windowed_attention_is_counted_as_the_key_tiles_it_computes():
    assert flops.attention_span(2048) == 2048  # the whole row
    assert flops.attention_span(2048, window=2048) == 2048  # no shorter than the row: whole-row attention
    for window in (1, 128, 129, 300, 1000):
        assert window <= flops.attention_span(2048, window) < window + 128
        assert flops.attention_span(2048, window) == _keys_per_query_computed(window), window
    dense = 6.0 * CFG.num_params(include_embedding=False)
    assert flops.train_flops_per_token(CFG, 2048) == dense + 6.0 * 2 * 2048 * 32  # 6 N + 6 L T d, as before
    span = _keys_per_query_computed(300)
    assert flops.train_flops_per_token(CFG, 2048, window=300) == dense + 6.0 * 2 * span * 32


def test_throughput_reports_pairs_tokens_unshared_tokens_step_time_and_mfu():
    clock = iter([100.0, 104.0, 104.0])  # the window starts at 100 s and is read at 104 s
    config = load_config(ROOT / "configs" / "pretrain_tiny.py", ["--config.peak_tflops=1e-6"])
    throughput = metrics.Throughput(CFG, config, devices=2, window=200, clock=lambda: next(clock))
    pairs = _pairs(12)
    batches = [
        packing.make_batch(_rows(pairs[:6]), row_len=512, max_pairs_per_row=3, shared_prefix=True),
        packing.make_batch(_rows(pairs[6:]), row_len=256, max_pairs_per_row=3, shared_prefix=True),
    ]
    for batch in batches:
        throughput.add(batch)
    logged = throughput.read(2, {"loss": np.float32(0.5)})
    counts = [metrics.batch_counts(b) for b in batches]
    computed = sum(
        c["tokens"] * flops.train_flops_per_token(CFG, b["tokens_bt"].shape[1], 200) for c, b in zip(counts, batches)
    )
    assert logged["loss"] == 0.5
    assert logged["pairs_per_s"] == pytest.approx(12 / 4)
    assert logged["tokens_per_s"] == pytest.approx(sum(c["tokens"] for c in counts) / 4)
    assert logged["unshared_tokens_per_s"] == pytest.approx(sum(c["unshared_tokens"] for c in counts) / 4)
    assert logged["unshared_tokens_per_s"] > logged["tokens_per_s"]
    assert logged["step_s"] == pytest.approx(2.0)
    assert logged["mfu"] == pytest.approx(computed / 4 / (1e-6 * 1e12 * 2))
    assert flops.train_flops_per_token(CFG, 512, 200) < flops.train_flops_per_token(CFG, 512)  # the window counted


def _pipeline():
    source = synthetic.SyntheticTriplets(synthetic.SyntheticConfig(vocab_size=128, seed=0), 64)
    cfg = data_pipeline.PipelineConfig(batch_size=4, seq_len=256, max_pairs_per_row=2, seed=0, shared_prefix=True)
    return iter(data_pipeline.build_pipeline(source, cfg))


def test_prefetch_hands_out_the_same_batches_with_the_state_after_the_last_one_taken():
    reference = _pipeline()
    with DevicePrefetch(_pipeline(), put=lambda b: {k: v * 2 for k, v in b.items()}, depth=3) as batches:
        for _ in range(5):
            expected_state = json.loads(json.dumps(reference.get_state()))
            assert json.loads(batches.get_state()) == expected_state  # not moved by the batches fetched ahead
            host, device = next(batches)
            expected = next(reference)
            for key in expected:
                np.testing.assert_array_equal(host[key], expected[key])
                np.testing.assert_array_equal(device[key], expected[key] * 2)
        resumed = _pipeline()
        resumed.set_state(json.loads(batches.get_state()))
    for _ in range(3):  # a checkpoint of that state resumes at the next batch
        np.testing.assert_array_equal(next(resumed)["tokens_bt"], next(reference)["tokens_bt"])


def test_prefetch_raises_the_iterator_error_at_the_batch_it_replaces():
    def failing():
        yield {"x": np.zeros(2)}
        raise ValueError("record 7 does not fit")

    batches = DevicePrefetch(failing(), put=lambda b: b)
    assert next(batches)[0]["x"].shape == (2,)
    with pytest.raises(ValueError, match="record 7 does not fit"):
        next(batches)
    batches.close()
    assert not batches._thread.is_alive()


def test_the_trainer_logs_pairs_and_unshared_equivalent_tokens_per_second(tmp_path):
    overrides = [
        "--config.steps=3",
        "--config.log_every=3",
        "--config.eval_every=0",
        "--config.checkpoint_every=0",
        "--config.data.batch_size=8",
        "--config.model.d_model=32",
        "--config.model.mlp_dim=64",
        "--config.data.seq_len=256",
    ]
    cfg = load_config(ROOT / "configs" / "pretrain_tiny.py", overrides)
    assert trainer.train(cfg, tmp_path, progress=False).step == 3
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_source, _ = setup.build_sources(cfg)
    stream = iter(data_pipeline.build_pipeline(train_source, setup.pipeline_config(cfg)))
    counts = [metrics.batch_counts(next(stream)) for _ in range(3)]  # the batches of steps 1..3
    seconds = row["step_s"] * 3
    assert row["pairs_per_s"] * seconds == pytest.approx(sum(c["pairs"] for c in counts), rel=1e-6)
    assert row["tokens_per_s"] * seconds == pytest.approx(sum(c["tokens"] for c in counts), rel=1e-6)
    assert row["unshared_tokens_per_s"] * seconds == pytest.approx(sum(c["unshared_tokens"] for c in counts), rel=1e-6)
    assert row["unshared_tokens_per_s"] > row["tokens_per_s"]  # synthetic pairs share their prompt and reference
