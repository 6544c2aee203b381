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
    client = E.encode(tok, "abc", "xy", "", E.EncodingConfig(), REWARD)
    training = E.encode(tok, "abc", "xy", "", E.EncodingConfig(newline_before_empty_response=False), REWARD)
    assert client.ids.tolist() == expected("abc\nxy", "abc\n")
    assert training.ids.tolist() == expected("abc\nxy", "abc")


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
    assert text == "what is the capital of china?\nbeijing.<|reward|>what is the capital of china?\nshanghai.[UNUSED_TOKEN_130]"
    assert tok.encode(text) == E.encode(tok, "what is the capital of china?", "beijing.", "shanghai.", cfg, REWARD).ids.tolist()


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
