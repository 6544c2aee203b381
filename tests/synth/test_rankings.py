"""Ranked SFT triplets: word F1, the document's true continuation after a corpus prompt, the
ranking and its gap filter, and the no-reference stand-in."""

import pytest

from polar_jax.data import schema
from polar_jax.synth import prompts, rankings
from tests.synth.test_synthesize import _byte_tokenizer

DOCS = ["The quick brown fox jumps over the lazy dog.\n\nA second paragraph follows here, and then it ends."]


def test_word_f1_is_squads_bag_of_words_f1():
    assert rankings.word_f1("the cat sat", "the cat") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert rankings.word_f1("The cat, sat", "the cat , sat") == 1.0  # case and punctuation as words
    assert rankings.word_f1("a a b", "a b b") == pytest.approx(2 / 3)  # counts clip: 2 words in common of 3
    assert rankings.word_f1("", "anything") == rankings.word_f1("x", "") == rankings.word_f1("x", "y") == 0.0


def test_true_continuation_is_the_text_after_the_prompt():
    tok = _byte_tokenizer()  # one token per byte: the continuation is the next characters
    source = prompts.PromptSource(DOCS, tok, min_tokens=4, max_tokens=4, seed=0)
    for i in range(6):
        prompt = source.prompt(i)
        doc, offset, n = (int(f) for f in prompt.source.split(":")[1:])
        after = rankings.true_continuation(DOCS, prompt.source, tok, 10)
        assert after == DOCS[doc][offset + n : offset + n + 10].strip()
        assert DOCS[doc][offset:].startswith(prompt.text)
    assert rankings.true_continuation(DOCS, "instructions:file.jsonl:3", tok, 10) is None
    assert rankings.true_continuation(DOCS, f"corpus:0:{len(DOCS[0]) - 3}:3", tok, 10) is None  # document ends


def _row(reference, chosen, rejected, source="corpus:0:0:4"):
    return {
        "prompt": "The ",
        "reference": reference,
        "chosen": chosen,
        "rejected": rejected,
        "meta": {"prompt_source": source, "reference_policy": "a", "chosen_policy": "a", "rejected_policy": "b"},
    }


def test_ranked_triplets_order_by_f1_and_keep_only_clear_gaps():
    tok = _byte_tokenizer()
    truth = rankings.true_continuation(DOCS, "corpus:0:0:4", tok, 16)
    assert truth == "quick brown fox"
    rows = [
        # the rejected text is the closest: it becomes the chosen of its pairs
        _row("fox jumps", "nothing alike", "quick brown fox"),
        _row("same words", "same words", "quick brown"),  # two equal texts give no pair between them
        _row("quick brown fox", "quick brown fox.", "quick brown fox!"),  # all within the gap: none
        _row("quick", "brown", "fox", source="instructions:x:1"),  # not a corpus prompt: skipped
    ]
    out = rankings.ranked_triplets(rows, DOCS, tok, 16, min_gap=0.15)
    pairs = [(t["chosen"], t["rejected"]) for t in out]
    assert pairs == [
        ("fox jumps", "nothing alike"),
        ("quick brown fox", "fox jumps"),
        ("quick brown fox", "nothing alike"),
        ("quick brown", "same words"),
        ("quick brown", "same words"),
    ]
    for t in out:
        assert t["reference"] == truth and t["prompt"] == "The "
        assert t["meta"]["chosen_f1"] - t["meta"]["rejected_f1"] >= 0.15
        schema.validate_row(t, "triplet")
    assert out[1]["meta"]["chosen_author"] == "b" and out[1]["meta"]["rejected_author"] == "a"
    assert rankings.ranked_triplets(rows, DOCS, tok, 16, min_gap=0.9) == [
        t for t in out if t["meta"]["chosen_f1"] - t["meta"]["rejected_f1"] >= 0.9
    ]


def test_without_reference_replaces_only_the_reference():
    rows = [_row("r1", "c1", "x1"), _row("r2", "c2", "x2")]
    out = rankings.without_reference(rows)
    assert [r["reference"] for r in out] == [rankings.NO_REFERENCE] * 2
    assert [(r["prompt"], r["chosen"], r["rejected"], r["meta"]) for r in out] == [
        (r["prompt"], r["chosen"], r["rejected"], r["meta"]) for r in rows
    ]
    assert rows[0]["reference"] == "r1"  # the input is left as it was
    schema.validate_row(out[0], "triplet")  # the official format's non-empty reference holds
