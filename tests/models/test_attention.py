"""The attention back-ends agree inside the model: pallas (interpret mode on CPU) and cuDNN
(GPU only) against the XLA reference, on packed rows with padding."""

import jax
import numpy as np
import pytest

from polar_jax import parallel
from polar_jax.bench.attention import packed_segment_ids, positions_of
from polar_jax.models import attention
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig


def model_and_rows(seq: int, dtype: str):
    cfg = ModelConfig(
        vocab_size=67,
        d_model=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        mlp_dim=96,
        heads=("lm", "reward"),
        dtype=dtype,
        attention_impl="xla",
    )
    params = T.init_params(cfg.replace(init_std=0.1), jax.random.key(0))
    segment_ids = packed_segment_ids(2, seq, np.random.default_rng(1))
    tokens = np.asarray(jax.random.randint(jax.random.key(2), (2, seq), 1, cfg.vocab_size)) * (segment_ids != 0)
    return cfg, params, (tokens, positions_of(segment_ids), segment_ids)


def outputs(cfg, params, rows):
    # Full float32 matmuls: GPUs otherwise use TF32, which the 1e-4 tolerance would catch.
    with jax.default_matmul_precision("float32"):
        out = jax.jit(lambda p, *r: T.forward(cfg, p, *r))(params, *rows)
    return np.asarray(out.logits_btv), np.asarray(out.reward_bt)


def test_pallas_kernel_in_the_model_matches_xla():
    cfg, params, rows = model_and_rows(seq=128, dtype="float32")
    valid = rows[2] != 0
    ref_logits, ref_reward = outputs(cfg, params, rows)
    logits, reward = outputs(cfg.replace(attention_impl="pallas"), params, rows)
    np.testing.assert_allclose(logits[valid], ref_logits[valid], atol=1e-4)
    np.testing.assert_allclose(reward[valid], ref_reward[valid], atol=1e-4)


def test_pallas_kernel_under_a_sharded_mesh_matches_xla():
    """On a data x fsdp x tensor mesh the kernel runs per shard (shard_map), batch and heads split."""
    cfg, params, rows = model_and_rows(seq=128, dtype="float32")
    valid = rows[2] != 0
    ref_logits, _ = outputs(cfg, params, rows)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
    with parallel.use_rules(mesh):
        rows = tuple(jax.device_put(np.asarray(r), parallel.batch_sharding(mesh)) for r in rows)
        logits, _ = outputs(cfg.replace(attention_impl="pallas"), params, rows)
    np.testing.assert_allclose(logits[valid], ref_logits[valid], atol=1e-4)


def test_auto_resolves_by_platform_and_dtype():
    expected = {"cpu": ("xla", "xla"), "gpu": ("cudnn", "xla"), "tpu": ("pallas", "pallas")}
    bf16, f32 = expected[jax.default_backend()]
    assert attention.resolve_impl("auto", "bfloat16") == bf16
    assert attention.resolve_impl("auto", "float32") == f32


def test_cudnn_refuses_float32_with_a_clear_error():
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        attention.resolve_impl("cudnn", "float32")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
def test_cudnn_in_the_model_matches_xla_in_bf16():
    cfg, params, rows = model_and_rows(seq=512, dtype="bfloat16")
    valid = rows[2] != 0
    ref_logits, ref_reward = outputs(cfg, params, rows)
    logits, reward = outputs(cfg.replace(attention_impl="cudnn"), params, rows)
    scale = np.abs(ref_logits[valid]).max()
    assert np.abs(logits[valid] - ref_logits[valid]).max() <= 0.03 * scale
    assert np.abs(reward[valid] - ref_reward[valid]).max() <= 0.03 * max(1.0, np.abs(ref_reward[valid]).max())
