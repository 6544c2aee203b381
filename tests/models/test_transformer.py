"""The decoder against transformers' PyTorch outputs (golden fixtures), and its own invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polar_jax.io import hf
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig

CAUSAL_FIXTURES = ["llama_untied", "llama_gqa3_rope3", "llama_untied_bf16", "qwen2_tied_bias"]
REWARD_FIXTURES = ["llama_reward", "qwen2_reward"]
TOL = 1e-4


def packed_row(ref):
    """The fixture's sequences packed into one row: segment ids 1..N, positions restarting."""
    lengths = ref["seq_lengths"]
    segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])
    positions = np.concatenate([np.arange(n) for n in lengths])
    return ref["tokens_flat"][None], positions[None], segment_ids[None]


@pytest.mark.parametrize("name", CAUSAL_FIXTURES)
def test_padded_rows_match_transformers_logits(hf_fixture, name):
    path, ref = hf_fixture(name)
    model = hf.load_hf(path)
    positions, segment_ids = T.padded_inputs(ref["padded_mask"])
    logits = T.forward(model.cfg, model.params, ref["padded_tokens"], positions, segment_ids).logits_btv
    valid = ref["padded_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], ref["padded_logits"][valid], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", CAUSAL_FIXTURES)
def test_each_packed_segment_equals_its_sequence_run_alone(hf_fixture, name):
    path, ref = hf_fixture(name)
    model = hf.load_hf(path)
    logits = T.forward(model.cfg, model.params, *packed_row(ref)).logits_btv[0]
    np.testing.assert_allclose(np.asarray(logits), ref["logits_flat"], atol=TOL, rtol=0)


def test_fixture_configs_cover_gqa_ratios_tied_biases_and_odd_vocab(hf_fixture):
    cfgs = {n: hf.load_hf(hf_fixture(n)[0]).cfg for n in CAUSAL_FIXTURES}
    assert cfgs["llama_untied"].q_per_kv == 1 and not cfgs["llama_untied"].tie_embeddings
    assert cfgs["llama_gqa3_rope3"].q_per_kv == 3 and cfgs["llama_gqa3_rope3"].rope_scaling.kind == "llama3"
    assert cfgs["qwen2_tied_bias"].tie_embeddings and cfgs["qwen2_tied_bias"].qkv_bias
    assert cfgs["llama_untied"].vocab_size % 2 == 1


@pytest.mark.parametrize("name", ["llama_untied", "llama_gqa3_rope3"])
def test_rope_frequencies_match_transformers(hf_fixture, name):
    path, ref = hf_fixture(name)
    cfg = hf.load_hf(path).cfg
    inv_freq = T.rope_inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    np.testing.assert_allclose(np.asarray(inv_freq), ref["rope_inv_freq"], rtol=1e-6)


@pytest.mark.parametrize("name", REWARD_FIXTURES)
def test_reward_head_equals_sequence_classification_score(hf_fixture, name):
    path, ref = hf_fixture(name)
    model = hf.load_hf(path)
    assert model.cfg.heads == ("reward",)
    tokens = ref["padded_tokens"]
    positions, segment_ids = T.padded_inputs(tokens != ref["pad_token_id"])
    reward_bt = T.forward(model.cfg, model.params, tokens, positions, segment_ids).reward_bt
    last = T.last_token_index(segment_ids)
    np.testing.assert_array_equal(np.asarray(last), ref["last_token_index"])
    scores = T.gather_rows(reward_bt, last[:, None])[:, 0]
    np.testing.assert_allclose(np.asarray(scores), ref["scores"], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", REWARD_FIXTURES)
def test_packed_reward_at_each_segments_last_token(hf_fixture, name):
    path, ref = hf_fixture(name)
    model = hf.load_hf(path)
    reward_bt = T.forward(model.cfg, model.params, *packed_row(ref)).reward_bt
    ends = np.cumsum(ref["seq_lengths"]) - 1
    scores = T.gather_rows(reward_bt, jnp.asarray(ends)[None])[0]
    np.testing.assert_allclose(np.asarray(scores), ref["scores_alone"], atol=TOL, rtol=0)


def tiny_config(**overrides):
    base = dict(
        vocab_size=97,
        d_model=32,
        num_layers=3,
        num_heads=6,
        num_kv_heads=2,
        head_dim=8,
        mlp_dim=40,
        heads=("lm", "reward", "value"),
        qkv_bias=True,
    )
    return ModelConfig(**{**base, **overrides})


def test_kv_cache_decoding_equals_full_forward_token_by_token():
    cfg = tiny_config()
    params = T.init_params(cfg, jax.random.key(0))
    lengths = np.array([9, 5])  # right-padded prompts of different lengths
    prompt_len, new = 9, 6
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, prompt_len + new), 1, cfg.vocab_size))
    mask = np.arange(prompt_len)[None] < lengths[:, None]

    forward = jax.jit(lambda p, t, pos, seg, c=None: T.forward(cfg, p, t, pos, seg, c))
    cache = T.KVCache.empty(cfg, batch=2, max_len=prompt_len + new)
    positions, segment_ids = T.padded_inputs(mask)
    cache = forward(params, tokens[:, :prompt_len] * mask, positions, segment_ids, cache).cache
    # The same sequences run in full, without cache or padding: step s must give position len + s.
    full = []
    for b in range(2):
        seq = np.concatenate([tokens[b, : lengths[b]], tokens[b, prompt_len:]])
        full.append(forward(params, seq[None], np.arange(len(seq))[None], np.ones((1, len(seq)), int)))
    for step in range(new):
        pos = (lengths + step)[:, None]
        tok = tokens[:, prompt_len + step][:, None]
        out = forward(params, tok, pos, np.ones_like(tok), cache)
        cache = out.cache
        for b in range(2):
            np.testing.assert_allclose(out.logits_btv[b, 0], full[b].logits_btv[0, lengths[b] + step], atol=1e-5)
            np.testing.assert_allclose(out.value_bt[b, 0], full[b].value_bt[0, lengths[b] + step], atol=1e-5)
    assert int(cache.index) == prompt_len + new


def test_segments_do_not_attend_to_each_other():
    cfg = tiny_config()
    params = T.init_params(cfg, jax.random.key(0))
    tokens = np.asarray(jax.random.randint(jax.random.key(2), (1, 12), 1, cfg.vocab_size))
    segment_ids = np.array([[1] * 5 + [2] * 7])
    positions = np.array([list(range(5)) + list(range(7))])
    base = T.forward(cfg, params, tokens, positions, segment_ids).logits_btv
    changed = tokens.copy()
    changed[0, :5] = (changed[0, :5] + 1) % cfg.vocab_size  # alter only segment 1
    after = T.forward(cfg, params, changed, positions, segment_ids).logits_btv
    np.testing.assert_array_equal(np.asarray(base[0, 5:]), np.asarray(after[0, 5:]))
    assert np.abs(np.asarray(base[0, :5] - after[0, :5])).max() > 1e-3


@pytest.mark.parametrize("remat, unroll", [("full", 1), ("dots", 1), ("dots_no_batch", 3)])
def test_remat_policies_and_unrolling_keep_outputs_and_gradients(remat, unroll):
    cfg = tiny_config()
    params = T.init_params(cfg, jax.random.key(0))
    tokens = np.asarray(jax.random.randint(jax.random.key(3), (2, 8), 1, cfg.vocab_size))
    positions, segment_ids = T.padded_inputs(np.ones((2, 8)))

    def loss(p, c):
        return T.forward(c, p, tokens, positions, segment_ids).reward_bt.sum()

    g_plain = jax.grad(loss)(params, cfg)
    g_remat = jax.grad(loss)(params, cfg.replace(remat=remat, scan_unroll=unroll))
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_every_parameter_has_logical_axes():
    cfg = tiny_config()
    axes = T.logical_axes(cfg)
    shapes = jax.eval_shape(lambda k: T.init_params(cfg, k), jax.random.key(0))
    flat_axes = dict(
        jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
    )
    flat_shapes = dict(jax.tree_util.tree_flatten_with_path(shapes)[0])
    assert flat_axes.keys() == flat_shapes.keys()
    expected = {
        "embedding": ("vocab", "embed"),
        "final_norm/scale": ("embed",),
        "lm_head": ("embed", "vocab"),
        "reward_head": ("embed",),
        "value_head": ("embed",),
        "layers/attn_norm/scale": ("layers", "embed"),
        "layers/mlp_norm/scale": ("layers", "embed"),
        "layers/attn/wq": ("layers", "embed", "heads", "head_dim"),
        "layers/attn/wk": ("layers", "embed", "kv_heads", "head_dim"),
        "layers/attn/wv": ("layers", "embed", "kv_heads", "head_dim"),
        "layers/attn/wo": ("layers", "heads", "head_dim", "embed"),
        "layers/attn/bq": ("layers", "heads", "head_dim"),
        "layers/attn/bk": ("layers", "kv_heads", "head_dim"),
        "layers/attn/bv": ("layers", "kv_heads", "head_dim"),
        "layers/mlp/w_gate": ("layers", "embed", "mlp"),
        "layers/mlp/w_up": ("layers", "embed", "mlp"),
        "layers/mlp/w_down": ("layers", "mlp", "embed"),
    }
    got = {"/".join(k.key for k in path): tuple(spec) for path, spec in flat_axes.items()}
    assert got == expected
    for path, spec in flat_axes.items():
        assert len(spec) == len(flat_shapes[path].shape)
        assert set(spec) <= set(T.LOGICAL_AXES)


def test_bf16_compute_stays_close_to_float32():
    cfg = tiny_config()
    params = T.init_params(cfg, jax.random.key(0))
    tokens = np.asarray(jax.random.randint(jax.random.key(4), (2, 16), 1, cfg.vocab_size))
    positions, segment_ids = T.padded_inputs(np.ones((2, 16)))
    f32 = T.forward(cfg, params, tokens, positions, segment_ids)
    bf16 = T.forward(cfg.replace(dtype="bfloat16"), params, tokens, positions, segment_ids)
    assert bf16.hidden_btd.dtype == jnp.bfloat16 and bf16.logits_btv.dtype == jnp.float32
    np.testing.assert_allclose(bf16.logits_btv, f32.logits_btv, atol=0.05)


def test_logits_at_given_positions_equal_the_full_logits_there():
    cfg = tiny_config(tie_embeddings=True)
    params = T.init_params(cfg, jax.random.key(0))
    tokens = np.asarray(jax.random.randint(jax.random.key(5), (2, 10), 1, cfg.vocab_size))
    positions, segment_ids = T.padded_inputs(np.ones((2, 10)))
    full = T.forward(cfg, params, tokens, positions, segment_ids).logits_btv
    at_bn = np.array([[9, 3], [4, 0]])
    picked = T.forward(cfg, params, tokens, positions, segment_ids, logits_at_bn=at_bn).logits_btv
    assert picked.shape == (2, 2, cfg.vocab_size)
    np.testing.assert_allclose(picked, np.take_along_axis(np.asarray(full), at_bn[..., None], axis=1), atol=1e-6)
