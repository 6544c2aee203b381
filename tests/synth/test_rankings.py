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


def test_ranked_triplets_rank_the_two_samples_of_one_policy_and_keep_only_clear_gaps():
    tok = _byte_tokenizer()
    truth = rankings.true_continuation(DOCS, "corpus:0:0:4", tok, 16)
    assert truth == "quick brown fox"
    rows = [
        # policy A's second sample is the closer one: it becomes the chosen; B's text is never a candidate
        _row("fox jumps", "quick brown fox", "quick brown fox"),
        _row("quick brown", "nothing alike", "quick brown fox"),
        _row("same words", "same words", "quick brown fox"),  # A's samples are equal: no triplet
        _row("quick brown fox", "quick brown fox.", "x"),  # within the gap (1.0 vs 0.857): none
        _row("quick", "brown", "fox", source="instructions:x:1"),  # not a corpus prompt: skipped
    ]
    out = rankings.ranked_triplets(rows, DOCS, tok, 16, min_gap=0.15)
    assert [(t["chosen"], t["rejected"]) for t in out] == [
        ("quick brown fox", "fox jumps"),
        ("quick brown", "nothing alike"),
    ]
    assert [(t["meta"]["chosen_f1"], t["meta"]["rejected_f1"]) for t in out] == [(1.0, 0.4), (0.8, 0.0)]
    for t in out:
        assert t["reference"] == truth and t["prompt"] == "The " and t["meta"]["author"] == "a"
        schema.validate_row(t, "triplet")
    assert rankings.ranked_triplets(rows, DOCS, tok, 16, min_gap=0.7) == out[1:]
    assert rankings.ranked_triplets(rows, DOCS, tok, 16, min_gap=0.1)[2]["rejected"] == "quick brown fox."


def test_without_reference_replaces_only_the_reference():
    rows = [_row("r1", "c1", "x1"), _row("r2", "c2", "x2")]
    out = rankings.without_reference(rows)
    assert [r["reference"] for r in out] == [rankings.NO_REFERENCE] * 2
    assert [(r["prompt"], r["chosen"], r["rejected"], r["meta"]) for r in out] == [
        (r["prompt"], r["chosen"], r["rejected"], r["meta"]) for r in rows
    ]
    assert rows[0]["reference"] == "r1"  # the input is left as it was
    schema.validate_row(out[0], "triplet")  # the official format's non-empty reference holds


def test_edited_spans_keep_most_of_the_reference_in_the_chosen_and_little_in_the_rejected():
    tok = _byte_tokenizer()  # one token per character: spans are character ranges
    a, d = rankings.following_spans(DOCS, "corpus:0:0:4", tok, 20, 2)
    assert (a, d) == (DOCS[0][4:24].strip(), DOCS[0][24:44].strip())
    rows = [_row("x", "y", "z"), _row("x", "y", "z", source=f"corpus:0:{len(DOCS[0]) - 30}:4")]  # 2nd: text ends
    out = rankings.edited_span_triplets(rows, DOCS, tok, 20, edit_fraction=0.5, seed=3)
    assert len(out) == 1 and out[0]["reference"] == a and out[0]["prompt"] == "The "
    a_w, d_w = a.split(), d.split()
    chosen_w, rejected_w = out[0]["chosen"].split(), out[0]["rejected"].split()
    assert len(chosen_w) == len(a_w) and len(rejected_w) == len(d_w)
    # at most half the positions edited, each edit a word of the other span
    assert sum(c != w for c, w in zip(chosen_w, a_w)) <= round(0.5 * len(a_w))
    assert sum(r != w for r, w in zip(rejected_w, d_w)) <= round(0.5 * len(d_w))
    assert all(c == w or c in d_w for c, w in zip(chosen_w, a_w))
    assert all(r == w or r in a_w for r, w in zip(rejected_w, d_w))
    assert rankings.word_f1(out[0]["chosen"], a) > rankings.word_f1(out[0]["rejected"], a)
    assert rankings.edited_span_triplets(rows, DOCS, tok, 20, edit_fraction=0.5, seed=3) == out  # deterministic
    assert rankings.edited_span_triplets(rows, DOCS, tok, 20, edit_fraction=0.0)[0]["chosen"] == " ".join(a_w)
    schema.validate_row(out[0], "triplet")
