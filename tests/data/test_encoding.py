"""The official POLAR encoding against hand-computed ids, with a character-level tokenizer
(one token per character, BOS added) so every expectation can be worked out by hand."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from polar_jax.data import encoding as E

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.?\n "
SPECIAL = ["<s>", "<|reward|>", "[UNUSED_TOKEN_130]"]
BOS, SPLIT, REWARD = 0, 1, 2


@pytest.fixture
def tok():
    vocab = {t: i for i, t in enumerate(SPECIAL + list(CHARS))}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    inner.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    inner.decoder = decoders.Fuse()
    inner.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    fast = PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    return fast


def ids(text: str) -> list[int]:
    """Hand encoding of plain characters (no BOS)."""
    return [len(SPECIAL) + CHARS.index(c) for c in text]


def expected(text_before_split: str, text_after_split: str) -> list[int]:
    return [BOS] + ids(text_before_split) + [SPLIT] + ids(text_after_split) + [REWARD]


def test_tokenizer_is_what_the_hand_expectations_assume(tok):
    assert tok.encode("ab\n") == [BOS] + ids("ab\n")
    assert tok.decode(tok.encode("ab\n"), skip_special_tokens=True) == "ab\n"
    assert E.is_single_token(tok, "<|reward|>") and E.resolve_reward_token_id(tok, E.EncodingConfig()) == REWARD


def test_strings_sft_wrapper(tok):
    out = E.encode(tok, "abc", "xy", "z", E.EncodingConfig(), REWARD)
    assert out.ids.tolist() == expected("abc\nxy", "abc\nz")
    assert out.ids[-1] == REWARD and out.truncated == ()


def test_message_lists_are_joined_by_newlines(tok):
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "capital?"}]
    reference = [{"role": "assistant", "content": "beijing."}]
    out = E.encode(tok, prompt, reference, "shanghai.", E.EncodingConfig(), REWARD)
    assert out.ids.tolist() == expected("be brief\ncapital?\nbeijing.", "be brief\ncapital?\nshanghai.")


def test_pretrain_wrapper_has_no_newline(tok):
    out = E.encode(tok, "abc", "xy", "z", E.EncodingConfig(wrapper="pretrain"), REWARD)
    assert out.ids.tolist() == expected("abcxy", "abcz")


def test_empty_response_newline_client_versus_training(tok):
    # The client always writes the "\n"; xtuner's training pairs drop it before an empty response.
    client = E.encode(tok, "abc", "xy", "", E.EncodingConfig(), REWARD)
    training = E.encode_triplet(
        tok, {"prompt": "abc", "reference": "xy", "chosen": "", "rejected": "z"}, E.EncodingConfig(), REWARD
    )
    assert client.ids.tolist() == expected("abc\nxy", "abc\n")
    assert training.chosen.tolist() == expected("abc\nxy", "abc") and training.rejected.tolist() == expected(
        "abc\nxy", "abc\nz"
    )


def test_pair_shares_one_prompt_budget(tok):
    # max_length 24: budgets (24 - 4 - |[BOS a]| - |cand|) // 2 = 8 next to [BOS c] (2 ids) and 5 next to
    # [BOS c d e f g h] (7 ids); the pair keeps min = 5 prompt tokens in BOTH sequences ("56789").
    cfg = E.EncodingConfig(max_length=24, max_response_length=7)
    out = E.encode_triplet(
        tok, {"prompt": "0123456789", "reference": "a", "chosen": "c", "rejected": "cdefgh"}, cfg, REWARD
    )
    assert out.chosen.tolist() == expected("56789\na", "56789\nc")
    assert out.rejected.tolist() == expected("56789\na", "56789\ncdefgh")
    assert out.truncated == ("prompt",)
    # Scored alone (the client's rule), the short candidate keeps its own budget of 8 tokens ("23456789").
    assert E.encode(tok, "0123456789", "a", "c", cfg, REWARD).ids.tolist() == expected("23456789\na", "23456789\nc")


def test_row_wrapper_overrides_the_default(tok):
    row = {"prompt": "q", "reference": "a", "chosen": "b", "rejected": "c", "wrapper": "pretrain"}
    out = E.encode_triplet(tok, row, E.EncodingConfig(wrapper="sft"), REWARD)
    assert out.chosen.tolist() == expected("qa", "qb")
    assert E.encode(
        tok, "q", "a", "b", E.EncodingConfig(wrapper="pretrain"), REWARD, wrapper="sft"
    ).ids.tolist() == expected("q\na", "q\nb")
    with pytest.raises(ValueError, match="wrapper='chat'"):
        E.encode_triplet(tok, {**row, "wrapper": "chat"}, E.EncodingConfig(), REWARD)


def tokenize_ref(tokenizer, pair, max_length, max_response_length, reward_token_id, cut_side="right"):
    """xtuner's `tokenize_ref` (xtuner/dataset/preference_dataset.py) re-implemented from its
    source, with the client's left cut added: the reference the pair encoding is checked against."""
    budget_total = max_length - 4
    flat = {
        k: "\n".join(m["content"] for m in v) if isinstance(v, list) else v
        for k, v in pair.items()
        if k in ("prompt", "reference", "chosen", "rejected")
    }
    ids = {k: tokenizer.encode(v, add_special_tokens=True) for k, v in flat.items()}
    for k in ("reference", "chosen", "rejected"):
        if len(ids[k]) > max_response_length:
            ids[k] = ids[k][:max_response_length] if cut_side == "right" else ids[k][-max_response_length:]
    max_prompt = min(
        (budget_total - len(ids["reference"]) - len(ids["chosen"])) // 2,
        (budget_total - len(ids["reference"]) - len(ids["rejected"])) // 2,
    )
    if len(ids["prompt"]) > max_prompt:
        ids["prompt"] = ids["prompt"][-max_prompt:]
    text = {k: tokenizer.decode(v, skip_special_tokens=True) for k, v in ids.items()}
    wrapper = pair.get("wrapper", "sft")

    def cat(response):
        return (
            text["prompt"] + response if wrapper == "pretrain" or response == "" else text["prompt"] + "\n" + response
        )

    return [
        tokenizer.encode(cat(text["reference"]) + "<|reward|>" + cat(text[k]), add_special_tokens=True)
        + [reward_token_id]
        for k in ("chosen", "rejected")
    ]


def random_rows(rng, words, n):
    """Rows of random lengths (empty responses included), as strings or message lists, some with a wrapper."""

    def text(lo, hi, allow_messages=True):
        s = " ".join(rng.choice(words, size=int(rng.integers(lo, hi)))) if hi > 0 else ""
        if allow_messages and s and rng.random() < 0.3:
            cut = len(s) // 2
            return [{"role": "user", "content": s[:cut] or "x"}, {"role": "assistant", "content": s[cut:] or "y"}]
        return s

    rows = []
    for _ in range(n):
        row = {"prompt": text(1, 40), "reference": text(1, 25), "chosen": text(0, 25), "rejected": text(0, 25)}
        if rng.random() < 0.5:
            row["wrapper"] = str(rng.choice(["sft", "pretrain"]))
        rows.append(row)
    return rows


def check_pairs_equal_tokenize_ref(tokenizer, reward_id, words, seed):
    rng = np.random.default_rng(seed)
    rows, cut = random_rows(rng, words, 60), {"prompt": 0, "reference": 0, "chosen": 0, "rejected": 0}
    for i, row in enumerate(rows):
        mrl = int(rng.integers(3, 30))
        side = ("right", "left")[i % 2]
        wrapper = ("sft", "pretrain")[(i // 2) % 2]
        max_length = int(rng.integers(2 * mrl + 6, 2 * mrl + 60))
        cfg = E.EncodingConfig(max_length=max_length, max_response_length=mrl, response_cut_side=side, wrapper=wrapper)
        out = E.encode_triplet(tokenizer, row, cfg, reward_id)
        want = tokenize_ref(tokenizer, {"wrapper": wrapper, **row}, max_length, mrl, reward_id, side)
        assert [out.chosen.tolist(), out.rejected.tolist()] == want, (i, row, cfg)
        for part in out.truncated:
            cut[part] += 1
    assert min(cut.values()) >= 5, cut  # truncation bound on every part, many times


def test_pairs_equal_xtuner_tokenize_ref_char_tokenizer(tok):
    check_pairs_equal_tokenize_ref(tok, REWARD, ["ab", "c", "de.", "fgh", "0", "?", "\n"], seed=0)


def test_pairs_equal_xtuner_tokenize_ref_smollm2_tokenizer():
    from polar_jax.io import gguf, tokenizers

    try:
        tokenizer = tokenizers.load_tokenizer(gguf.smollm2_gguf_path())
    except FileNotFoundError as e:
        pytest.skip(str(e))
    reward_id = E.resolve_reward_token_id(tokenizer, E.EncodingConfig(), add_missing=True)
    words = [
        "The",
        "capital",
        "of",
        "China",
        "is",
        "Beijing.",
        "\n",
        "naïve",
        "café",
        "ünïcode",
        "42",
        "  ",
        "->",
        "日本",
    ]
    check_pairs_equal_tokenize_ref(tokenizer, reward_id, words, seed=1)


def test_encoding_config_from_dict_drops_retired_keys_and_refuses_unknown():
    d = E.EncodingConfig(max_length=64, max_response_length=8).to_dict()
    assert E.EncodingConfig.from_dict({**d, "newline_before_empty_response": True}) == E.EncodingConfig.from_dict(d)
    with pytest.raises(ValueError, match="unknown encoding keys \\['max_len'\\]"):
        E.EncodingConfig.from_dict({**d, "max_len": 3})


@pytest.mark.parametrize("side, kept", [("right", "uv"), ("left", "wxy")])
def test_response_cut_sides(tok, side, kept):
    # "uvwxy" is [BOS u v w x y]: six ids, cut to three. Right keeps [BOS u v] ("uv" once the
    # BOS is skipped on decode); left keeps [w x y].
    cfg = E.EncodingConfig(max_length=40, max_response_length=3, response_cut_side=side)
    out = E.encode(tok, "p", "uvwxy", "ab", cfg, REWARD)
    assert out.ids.tolist() == expected(f"p\n{kept}", "p\nab")
    assert out.truncated == ("reference",)


def test_prompt_keeps_its_last_tokens(tok):
    # max_length 20: budget = (20 - 4 - len([BOS a b]) - len([BOS c])) // 2 = (16 - 3 - 2) // 2 = 5
    # prompt "0123456789" is [BOS 0 ... 9]: its last five tokens are "56789".
    cfg = E.EncodingConfig(max_length=20, max_response_length=4)
    out = E.encode(tok, "0123456789", "ab", "c", cfg, REWARD)
    assert out.ids.tolist() == expected("56789\nab", "56789\nc")
    assert out.truncated == ("prompt",)


def test_client_text_tokenises_to_the_same_ids(tok):
    cfg = E.EncodingConfig()
    text = E.client_text(tok, "what is the capital of china?", "beijing.", "shanghai.", cfg)
    assert (
        text
        == "what is the capital of china?\nbeijing.<|reward|>what is the capital of china?\nshanghai.[UNUSED_TOKEN_130]"
    )
    assert (
        tok.encode(text)
        == E.encode(tok, "what is the capital of china?", "beijing.", "shanghai.", cfg, REWARD).ids.tolist()
    )


def test_triplet_gives_chosen_and_rejected_sequences(tok):
    row = {"prompt": "q", "reference": "a", "chosen": "aa", "rejected": "b"}
    out = E.encode_triplet(tok, row, E.EncodingConfig(), REWARD)
    assert out.chosen.tolist() == expected("q\na", "q\naa") and out.rejected.tolist() == expected("q\na", "q\nb")
    assert out.chosen.dtype == np.int32 and out.truncated == ()


def test_triplet_names_the_cut_candidate(tok):
    cfg = E.EncodingConfig(max_length=40, max_response_length=3)
    out = E.encode_triplet(tok, {"prompt": "q", "reference": "a", "chosen": "abcdef", "rejected": "b"}, cfg, REWARD)
    assert out.truncated == ("chosen",)


def test_missing_reward_token_is_an_error_or_added(tok):
    cfg = E.EncodingConfig(split_text="<|split2|>", reward_token="<|score|>")
    with pytest.raises(ValueError, match=r"no token '<\|score\|>'.*--add-special-tokens"):
        E.resolve_reward_token_id(tok, cfg)
    n = len(tok)
    reward_id = E.resolve_reward_token_id(tok, cfg, add_missing=True)
    assert len(tok) == n + 2 and reward_id == n + 1 and E.is_single_token(tok, "<|split2|>")


def test_config_without_room_for_a_prompt_is_refused():
    with pytest.raises(ValueError, match="no room for the prompt"):
        E.EncodingConfig(max_length=100, max_response_length=48)
