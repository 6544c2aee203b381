"""Sampling: the logit filter against numpy, the sampled frequencies against the filtered
distribution, the KV-cache log-probs against a full forward pass, stop tokens, the
repetition-loop rule, determinism, and a batch-sharded run on the simulated mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from polar_jax import parallel, sampling
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from polar_jax.sampling import SamplingConfig

VOCAB = 16
CFG = ModelConfig(
    vocab_size=VOCAB, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32, init_std=0.5
)


@pytest.fixture(scope="module")
def params():
    return T.init_params(CFG, jax.random.key(0))


def np_filter(logits_v, temperature, top_k, top_p):
    """Reference: the kept set and the filtered probabilities of one row, plain numpy."""
    x = np.asarray(logits_v, np.float64)
    if temperature == 0:
        keep = np.zeros(len(x), bool)
        keep[np.argmax(x)] = True
        return keep, keep.astype(float)
    x = x / temperature
    keep = np.ones(len(x), bool)
    if top_k:
        kth = np.sort(x)[::-1][min(top_k, len(x)) - 1]
        keep &= x >= kth
    if top_p < 1:
        p = np.where(keep, np.exp(x - x[keep].max()), 0)
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        cum = 0.0
        kept = set()
        for i in order:  # add most-likely-first until the mass reaches top_p
            kept.add(i)
            cum += p[i]
            if cum >= top_p:
                break
        last = min(p[i] for i in kept)
        keep &= p >= last  # ties with the last kept token are kept
    probs = np.where(keep, np.exp(x - x[keep].max()), 0)
    return keep, probs / probs.sum()


FIXED_LOGITS = np.array(
    [
        [2.0, 1.0, 0.5, 0.5, 0.5, -1.0, -3.0, 0.0],  # ties at the top-k cut
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all tied
        [9.0, -9.0, 0.0, 1.0, 1.0, 2.0, 3.0, -2.0],  # one dominant token
        [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7],
    ],
    np.float32,
)


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [
        (1.0, 0, 1.0),
        (0.7, 0, 1.0),
        (1.0, 3, 1.0),
        (1.0, 1, 1.0),
        (1.0, 20, 1.0),
        (1.0, 0, 0.9),
        (1.0, 0, 0.5),
        (1.0, 0, 1e-6),
        (0.5, 0, 0.8),
        (1.0, 4, 0.9),
        (1.5, 3, 0.6),
        (2.0, 5, 0.99),
        (0.0, 0, 1.0),
    ],
)
def test_filter_logits_matches_numpy(temperature, top_k, top_p):
    out = np.asarray(sampling.filter_logits(jnp.asarray(FIXED_LOGITS), temperature, top_k, top_p))
    for row, logits in zip(out, FIXED_LOGITS):
        keep, probs = np_filter(logits, temperature, top_k, top_p)
        np.testing.assert_array_equal(np.isfinite(row), keep)
        assert keep.sum() >= 1
        got = np.exp(row - row.max())
        np.testing.assert_allclose(got / got.sum(), probs, atol=1e-6)


def test_filter_logits_known_sets():
    # top-k 2 with a tie at the cut keeps 2.0, 1.0 only (no tie there); top-k 3 keeps the three 0.5s.
    row = FIXED_LOGITS[0]

    def kept(**kw):
        return np.flatnonzero(np.isfinite(np.asarray(sampling.filter_logits(row[None], 1.0, **kw))[0]))

    assert kept(top_k=2).tolist() == [0, 1]
    assert kept(top_k=3).tolist() == [0, 1, 2, 3, 4]
    assert kept(top_p=1e-6).tolist() == [0]
    assert kept(top_k=1, top_p=1e-6).tolist() == [0]


def test_sampled_frequencies_match_filtered_distribution(params):
    n = 4096
    prompt = jnp.tile(jnp.array([[3, 7, 1]], jnp.int32), (n, 1))
    lengths = jnp.full((n,), 3, jnp.int32)
    logits_v = np.asarray(T.forward(CFG, params, prompt[:1], *T.padded_inputs(jnp.ones((1, 3)))).logits_btv[0, -1])
    for temperature, top_k, top_p in [(1.0, 8, 0.9), (1.3, 0, 0.8), (0.8, 5, 1.0)]:
        keep, probs = np_filter(logits_v, temperature, top_k, top_p)
        assert 3 <= keep.sum() < VOCAB, (keep.sum(), temperature, top_k, top_p)  # a non-trivial test
        config = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=1)
        out = sampling.generate(CFG, params, prompt, lengths, config, jax.random.key(1))
        counts = np.bincount(np.asarray(out.tokens_bn[:, 0]), minlength=VOCAB)
        assert counts[~keep].sum() == 0
        chi2 = stats.chisquare(counts[keep], probs[keep] * n)
        assert chi2.pvalue > 1e-3, (chi2, counts, probs * n)
        np.testing.assert_allclose(
            np.asarray(out.logprobs_bn[:, 0]), jax.nn.log_softmax(logits_v)[np.asarray(out.tokens_bn[:, 0])], atol=1e-5
        )


def _prompts():
    lengths = np.array([5, 2, 7, 1], np.int32)
    tokens = np.array(jax.random.randint(jax.random.key(5), (4, 7), 1, VOCAB), np.int32)
    tokens[np.arange(7)[None] >= lengths[:, None]] = 0
    return jnp.asarray(tokens), jnp.asarray(lengths)


def test_cached_logprobs_equal_full_forward(params):
    prompt, lengths = _prompts()
    config = SamplingConfig(temperature=1.0, top_k=10, top_p=0.95, max_new_tokens=12)
    out = sampling.generate(CFG, params, prompt, lengths, config, jax.random.key(2))
    assert (np.asarray(out.lengths_b) == 12).all()
    for b in range(prompt.shape[0]):
        seq = np.concatenate([np.asarray(prompt[b, : lengths[b]]), np.asarray(out.tokens_bn[b])])[None]
        logits = T.forward(CFG, params, seq, *T.padded_inputs(np.ones_like(seq))).logits_btv[0]
        logp = np.asarray(jax.nn.log_softmax(logits))
        at = np.arange(12) + int(lengths[b]) - 1
        np.testing.assert_allclose(np.asarray(out.logprobs_bn[b]), logp[at, seq[0, at + 1]], atol=1e-5)


def test_temperature_zero_is_argmax_of_full_forward_passes(params):
    prompt, lengths = _prompts()
    out = sampling.generate(CFG, params, prompt, lengths, SamplingConfig(max_new_tokens=6), jax.random.key(0))
    for b in range(prompt.shape[0]):
        seq = list(np.asarray(prompt[b, : lengths[b]]))
        for _ in range(6):
            x = np.asarray(seq)[None]
            seq.append(int(np.argmax(T.forward(CFG, params, x, *T.padded_inputs(np.ones_like(x))).logits_btv[0, -1])))
        np.testing.assert_array_equal(np.asarray(out.tokens_bn[b]), seq[int(lengths[b]) :])


def test_stop_ids_end_a_row(params):
    prompt, lengths = _prompts()
    free = sampling.generate(
        CFG, params, prompt, lengths, SamplingConfig(temperature=1.0, max_new_tokens=16), jax.random.key(3)
    )
    free_tokens = np.asarray(free.tokens_bn)
    stop = int(free_tokens[0, 3])  # row 0 stops at step 3 at the latest
    config = SamplingConfig(temperature=1.0, max_new_tokens=16, stop_ids=(stop, 99))
    out = sampling.generate(CFG, params, prompt, lengths, config, jax.random.key(3))
    tokens, logprobs, out_lengths = map(np.asarray, (out.tokens_bn, out.logprobs_bn, out.lengths_b))
    for b in range(4):
        hits = np.flatnonzero(free_tokens[b] == stop)
        expected = hits[0] + 1 if len(hits) else 16
        assert out_lengths[b] == expected
        np.testing.assert_array_equal(tokens[b, :expected], free_tokens[b, :expected])  # stop token kept
        assert (tokens[b, expected:] == 0).all() and (logprobs[b, expected:] == 0).all()
    assert out_lengths[0] <= 4 and not np.asarray(out.truncated_loop_b).any()


def test_find_repetition_loop_on_planted_loops():
    rows = np.array(
        [
            [5, 6, 1, 2, 3, 1, 2, 3, 1, 2, 3, 9, 9],  # "1 2 3" x3 ends at index 10 -> keep 5 tokens
            [4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0],  # "4" x3 ends at index 2 -> keep 1 token
            [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5],  # no loop
            [1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 7],  # "1 2" x3 ends at index 5 -> keep 2 tokens
            [7, 7, 1, 2, 1, 2, 1, 0, 0, 0, 0, 0, 0],  # loop only after the row's end: none
        ]
    )
    lengths = np.array([13, 5, 13, 13, 4])
    new_lengths, looped = sampling.find_repetition_loop(rows, lengths, max_ngram=4, repeats=3)
    assert new_lengths.tolist() == [5, 1, 13, 2, 4]
    assert looped.tolist() == [True, True, False, True, False]


def test_loop_rule_in_generate_matches_the_reference(params):
    # Greedy on a tiny random model falls into cycles; the in-loop rule must cut where the
    # numpy rule cuts the untruncated output.
    prompts = jnp.asarray(jax.random.randint(jax.random.key(7), (16, 4), 1, VOCAB), jnp.int32)
    lengths = jnp.full((16,), 4, jnp.int32)
    for temperature in (0.0, 0.7):
        base = SamplingConfig(temperature=temperature, top_k=4, max_new_tokens=40)
        free = sampling.generate(CFG, params, prompts, lengths, base, jax.random.key(4))
        looped_cfg = SamplingConfig(
            temperature=temperature, top_k=4, max_new_tokens=40, loop_max_ngram=3, loop_repeats=3
        )
        out = sampling.generate(CFG, params, prompts, lengths, looped_cfg, jax.random.key(4))
        want_lengths, want_looped = sampling.find_repetition_loop(free.tokens_bn, free.lengths_b, 3, 3)
        np.testing.assert_array_equal(np.asarray(out.lengths_b), want_lengths)
        np.testing.assert_array_equal(np.asarray(out.truncated_loop_b), want_looped)
        tokens = np.asarray(out.tokens_bn)
        for b in range(16):
            np.testing.assert_array_equal(
                tokens[b, : want_lengths[b]], np.asarray(free.tokens_bn)[b, : want_lengths[b]]
            )
            assert (tokens[b, want_lengths[b] :] == 0).all()
        if temperature == 0.0:
            assert want_looped.any()


def test_same_key_same_output_other_key_other_output(params):
    prompt, lengths = _prompts()
    config = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=16)
    a = sampling.generate(CFG, params, prompt, lengths, config, jax.random.key(11))
    b = sampling.generate(CFG, params, prompt, lengths, config, jax.random.key(11))
    c = sampling.generate(CFG, params, prompt, lengths, config, jax.random.key(12))
    np.testing.assert_array_equal(np.asarray(a.tokens_bn), np.asarray(b.tokens_bn))
    np.testing.assert_array_equal(np.asarray(a.logprobs_bn), np.asarray(b.logprobs_bn))
    assert not np.array_equal(np.asarray(a.tokens_bn), np.asarray(c.tokens_bn))


def test_batch_sharded_on_the_mesh_gives_the_same_samples(params):
    mesh = parallel.make_mesh({"data": -1})
    n_dev = len(jax.devices())
    prompt, lengths = _prompts()
    prompt = jnp.tile(prompt, (n_dev // 2, 1))
    lengths = jnp.tile(lengths, (n_dev // 2,))
    config = SamplingConfig(temperature=1.0, top_k=8, top_p=0.9, max_new_tokens=8)
    want = sampling.generate(CFG, params, prompt, lengths, config, jax.random.key(6))
    got = sampling.generate(
        CFG,
        jax.device_put(params, parallel.replicated(mesh)),
        jax.device_put(prompt, parallel.batch_sharding(mesh)),
        jax.device_put(lengths, parallel.batch_sharding(mesh, ndim=1)),
        config,
        jax.random.key(6),
    )
    assert len(got.tokens_bn.sharding.device_set) == n_dev
    np.testing.assert_array_equal(np.asarray(got.tokens_bn), np.asarray(want.tokens_bn))
    np.testing.assert_allclose(np.asarray(got.logprobs_bn), np.asarray(want.logprobs_bn), atol=1e-5)
