"""Scoring with shared-prefix groups (`data.groups`, `scoring.reward_scores(shared_prefix=True)`) gives the
scores of laying each sequence out whole (the reference), in input order: for random groups, unrelated,
identical and 1-token-suffix candidates, whatever the grouping; a candidate never changes another's score;
`RewardModel.score`, evaluate's accuracy and `score --no-shared-prefix` do not move with the switch; a group
too long is named."""

import json

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from polar_jax import evaluate as ev
from polar_jax import scoring
from polar_jax.data import encoding, groups
from polar_jax.io.model import Model
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from polar_jax.rft import rewards

CFG = ModelConfig(
    vocab_size=64,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    heads=("reward",),
    init_std=0.1,
    dtype="float32",
)


@pytest.fixture(scope="module")
def params():
    return T.init_params(CFG, jax.random.key(0))


def _random_groups(seed: int, n_groups: int = 12) -> list[np.ndarray]:
    """Sequences of random groups of 1 to 8 candidates sharing a prefix (0 to 80 ids), shuffled; some
    groups hold an identical candidate twice, some a candidate cut to 1 token past the prefix, some a
    prefix of another candidate; a few sequences are unrelated to all others."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_groups):
        prefix = list(rng.integers(1, 64, rng.integers(0, 80)))
        group = [prefix + list(rng.integers(1, 64, rng.integers(1, 40))) for _ in range(rng.integers(1, 9))]
        if rng.random() < 0.4:
            group.append(list(group[0]))  # identical candidates
        if rng.random() < 0.4:
            group.append(prefix + [int(rng.integers(1, 64))])  # 1 token of suffix
        if rng.random() < 0.3 and len(group[0]) > len(prefix) + 2:
            group.append(group[0][: len(prefix) + 2])  # a truncated candidate: a prefix of another one
        out += group
    out += [list(rng.integers(1, 64, rng.integers(1, 50))) for _ in range(5)]  # unrelated
    return [np.array(out[i], np.int32) for i in rng.permutation(len(out))]


def _scores(params, sequences, shared: bool, batch_size: int = 4, pad_multiple: int = 128) -> np.ndarray:
    return scoring.reward_scores(
        CFG, params, sequences, batch_size=batch_size, pad_multiple=pad_multiple, progress=False, shared_prefix=shared
    )


def test_common_prefix_length_of_k_sequences_leaves_each_its_last_token():
    assert groups.common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert groups.common_prefix_length([[1, 2, 3], [1, 2, 3], [1, 2, 3]]) == 2  # identical: the last token stays
    assert groups.common_prefix_length([[7, 8, 9], [7, 8, 9, 10], [7]]) == 0
    assert groups.common_prefix_length([[1, 2, 3, 4]]) == 3
    assert groups.common_prefix_length([[1, 2], [3, 2]]) == 0


def test_grouping_puts_each_sequence_once_and_shared_candidates_together():
    rng = np.random.default_rng(5)
    prefixes = [list(rng.integers(1, 64, 30)) for _ in range(3)]
    seqs = [np.array(prefixes[i % 3] + list(rng.integers(1, 64, 5)), np.int32) for i in range(12)]
    seqs.append(np.array(rng.integers(1, 64, 20), np.int32))  # unrelated
    got = groups.group_by_prefix(seqs, max_group=16, min_shared=16)
    assert sorted(i for g in got for i in g) == list(range(13))
    assert sorted(got) == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11], [12]]
    capped = groups.group_by_prefix(seqs, max_group=3, min_shared=16)
    assert max(len(g) for g in capped) == 3 and sorted(i for g in capped for i in g) == list(range(13))
    spans = groups.group_by_prefix(seqs, max_group=16, min_shared=16, max_span=40)  # 30 + 2 x 5: pairs only
    assert all(len(g) <= 2 for g in spans)


def test_layout_of_a_group_prefix_once_then_each_suffix_on_its_branch():
    laid = groups.layout_rows(
        [[np.array([5, 6, 7, 8]), np.array([5, 6, 9])], [np.array([3, 4])]], [[10, 11], [12]], [[0, 1]], 8, 4
    )
    np.testing.assert_array_equal(laid.tokens_bt, [[5, 6, 7, 8, 9, 3, 4, 0]])
    np.testing.assert_array_equal(laid.segment_ids_bt, [[1, 1, 1, 1, 1, 2, 2, 0]])
    np.testing.assert_array_equal(laid.branch_ids_bt, [[0, 0, 1, 1, 2, 0, 1, 0]])  # a lone candidate: prefix too
    np.testing.assert_array_equal(laid.positions_bt, [[0, 1, 2, 3, 2, 0, 1, 0]])
    np.testing.assert_array_equal(laid.reward_index_bn, [[3, 4, 6, 0]])
    np.testing.assert_array_equal(laid.candidate_bn, [[10, 11, 12, -1]])
    np.testing.assert_array_equal(laid.candidate_mask_bn, [[True, True, True, False]])
    assert laid.longest_segment == 5


def test_a_group_longer_than_a_row_is_refused_naming_it():
    with pytest.raises(groups.GroupTooLongError, match=r"group 1 \(rows\.jsonl:7\): 3 candidates in 300 tokens"):
        groups.plan_rows([100, 300], [2, 3], 256, 32, sources=["rows.jsonl:2", "rows.jsonl:7"])
    with pytest.raises(groups.GroupTooLongError, match=r"group 0: 9 candidates in 50 tokens"):
        groups.plan_rows([50], [9], 256, 8)
    assert groups.plan_rows([200, 100, 50, 10], [1, 1, 1, 1], 256, 32) == [[0, 2], [1, 3]]  # first fit, in order


@pytest.mark.parametrize("seed,batch_size,pad_multiple", [(0, 4, 128), (1, 2, 1024), (2, 8, 128)])
def test_shared_scores_equal_the_unshared_in_input_order(params, seed, batch_size, pad_multiple, monkeypatch):
    """pad_multiple 1024: prefixes padded far wider than any group (padding cache slots stay masked)."""
    seqs = _random_groups(seed)
    unshared = _scores(params, seqs, False, batch_size, pad_multiple)
    cached_calls = []
    cached = scoring._prefix_cached_rewards
    monkeypatch.setattr(scoring, "_prefix_cached_rewards", lambda *a: cached_calls.append(a[4].shape) or cached(*a))
    shared = _scores(params, seqs, True, batch_size, pad_multiple)
    assert cached_calls and all(rows >= 1 for rows, _ in cached_calls)  # the prefix-cache path scored them
    assert len(set(np.round(unshared, 5))) > len(seqs) // 2  # real, varied scores were compared
    np.testing.assert_allclose(shared, unshared, rtol=1e-5, atol=1e-6)
    twins = [(i, j) for i in range(len(seqs)) for j in range(i) if np.array_equal(seqs[i], seqs[j])]
    assert twins and all(shared[i] == shared[j] for i, j in twins)  # identical sequences: one score, bit for bit
    members = groups.group_by_prefix(seqs, scoring.MAX_GROUP, scoring.MIN_SHARED_TOKENS)
    assert len(members) < len(seqs) // 2  # the groups formed: the shared path shared something


def test_a_group_of_unrelated_sequences_changes_no_score(params):
    """Any grouping is exact: unrelated sequences (no common prefix) laid out as one group."""
    rng = np.random.default_rng(7)
    seqs = [np.array(rng.integers(1, 64, n), np.int32) for n in (9, 1, 30, 17)]
    laid = groups.layout_rows([seqs], [[0, 1, 2, 3]], [[0]], 128, 4)
    reward_bt = T.forward(
        CFG, params, laid.tokens_bt, laid.positions_bt, laid.segment_ids_bt, branch_ids_bt=laid.branch_ids_bt
    ).reward_bt
    got = np.asarray(T.gather_rows(reward_bt, laid.reward_index_bn))[0]
    np.testing.assert_allclose(got, _scores(params, seqs, False), rtol=1e-5, atol=1e-6)


def test_perturbing_one_candidate_leaves_every_other_score_bit_identical(params):
    seqs = _random_groups(3)
    # a candidate with >= 3 suffix tokens that no other sequence matches up to its second-to-last token
    target = next(
        i
        for i, s in enumerate(seqs)
        if len(s) > 3
        and not any(len(o) >= len(s) - 1 and (o[: len(s) - 1] == s[:-1]).all() for o in seqs if o is not s)
    )
    changed = list(seqs)
    changed[target] = seqs[target].copy()
    changed[target][-2] = seqs[target][-2] % 63 + 1
    before, after = _scores(params, seqs, True), _scores(params, changed, True)
    others = np.arange(len(seqs)) != target
    np.testing.assert_array_equal(after[others], before[others])
    assert after[target] != before[target]


CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.?\n "
SPECIAL = ["<s>", "<|reward|>", "[UNUSED_TOKEN_130]"]
REWARD = 2


def _tokenizer():
    """A character-level tokenizer with a BOS and the POLAR split and reward tokens (offline)."""
    vocab = {t: i for i, t in enumerate(SPECIAL + list(CHARS))}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    inner.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    inner.decoder = decoders.Fuse()
    inner.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    return fast


@pytest.fixture(scope="module")
def reward_model():
    tok = _tokenizer()
    cfg = ModelConfig(
        vocab_size=len(tok),
        d_model=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        mlp_dim=32,
        heads=("reward",),
        init_std=0.5,
        dtype="float32",
    )
    return Model(cfg, T.init_params(cfg, jax.random.key(1)), "llama", {"reward_token_id": REWARD}), tok


def test_reward_model_scores_do_not_move_with_the_switch(reward_model):
    model, tok = reward_model
    enc = encoding.EncodingConfig(max_length=256, max_response_length=64)
    prompts = [f"what is {i} plus {i}?" for i in range(3) for _ in range(4)]
    refs = [f"it is {2 * i}." for i in range(3) for _ in range(4)]
    outs = [
        "it is 0.",
        "<think>hmm</think>zero",
        "no idea",
        "0",
        "two",
        "2",
        "it is 2.",
        "maybe 3",
        "4",
        "four",
        "",
        "x",
    ]
    scores = {}
    for shared in (True, False):
        rm = rewards.RewardModel(model.cfg, model.params, tok, REWARD, enc, batch_size=2, shared_prefix=shared)
        scores[shared] = rm.score(prompts, refs, outs)
    np.testing.assert_allclose(scores[True], scores[False], rtol=1e-5, atol=1e-6)
    assert len(set(np.round(scores[False], 5))) >= 10  # real, different scores
    assert len(groups.group_by_prefix(rm.sequences(prompts, refs, outs))) == 3  # one group per prompt


def test_evaluate_accuracy_does_not_move_with_the_switch(reward_model):
    model, tok = reward_model
    words = ["yes.", "no idea", "blue sky 42", "maybe so", "the end?", "zebra", "quiet night"]
    rows = [
        {"prompt": f"question {i % 4}?", "reference": f"answer {i % 4}.", "chosen": words[i % 7], "rejected": w}
        for i in range(16)
        for w in [words[(3 * i + 2) % 7]]
    ]
    got = {}
    for shared in (True, False):
        chosen_n, rejected_n = ev.pair_rewards(model, tok, rows, batch_size=4, progress=False, shared_prefix=shared)
        got[shared] = (chosen_n, rejected_n, ev.group_stats(rows, chosen_n, rejected_n)["all"])
    np.testing.assert_allclose(got[True][0], got[False][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[True][1], got[False][1], rtol=1e-5, atol=1e-6)
    assert got[True][2]["accuracy"] == got[False][2]["accuracy"]
    assert np.abs(got[False][0] - got[False][1]).max() > 1e-3  # real margins, not a constant model


def test_score_command_gives_the_same_rewards_with_no_shared_prefix(reward_model, tmp_path):
    from polar_jax.__main__ import main as cli
    from polar_jax.io import hf

    model, tok = reward_model
    model_dir = tmp_path / "rm"
    hf.save_hf(model, model_dir)
    tok.save_pretrained(str(model_dir))
    rows = [{"prompt": f"say {i % 2}", "reference": f"i say {i % 2}.", "output": f"{i} {'x' * i}"} for i in range(6)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = {}
    for flags in ([], ["--no-shared-prefix"]):
        out = tmp_path / f"scored{len(flags)}.jsonl"
        assert (
            cli(
                ["score", "--model", str(model_dir), "--input", str(tmp_path / "rows.jsonl"), "--output", str(out)]
                + flags
            )
            == 0
        )
        got[bool(flags)] = [json.loads(line)["reward"] for line in out.read_text().splitlines()]
    np.testing.assert_allclose(got[False], got[True], rtol=1e-5, atol=1e-6)
    assert len(set(np.round(got[True], 5))) == 6  # six different rewards: a real comparison
