"""Ranked triplets (A > B > C, A the reference) for POLAR's SFT stage, checkable without people.

The paper fine-tunes on human rankings of three answers: the best is the reference, the second
the chosen, the third the rejected. The demo's rankings come from measures it states instead,
built from synthesis rows whose prompt is a corpus prefix (`prompt_source`
"corpus:DOC:OFFSET:TOKENS"); A is always the document's own text right after the prompt.

`edited_span_triplets` (the demo's default): B = A with a fraction of its words swapped for
words of the span after A, C = that next span with as many swapped for A's words. Both are real
text of one document edited alike, so only closeness to A ranks them: a ranking that needs
the reference by construction.

`ranked_triplets` (word F1): B and C = the row's two samples of one policy, ordered by their
word F1 (SQuAD's bag-of-words F1) against A, kept when at least `min_gap` apart. Same-policy
samples, because ranking texts of different policies lets a model that never sees A score well
by preferring the more fluent policy (measured on the demo: the no-reference run came out best).

    rows = evaluate.read_triplets(files)
    triplets = edited_span_triplets(rows, corpus.corpus_documents(), tokenizer, span_tokens=24)
    without_reference(triplets)  # the ablation: the same triplets, the reference replaced by NO_REFERENCE
"""

from __future__ import annotations

import collections
import re

import numpy as np

SAME_POLICY_ROLES = ("reference", "chosen")  # a synthesis row's two samples of its policy A
RANKING = "word_f1_to_true_continuation"
# The no-reference ablation's stand-in: the official format (and this library's schema) needs a non-empty
# reference, so every row gets this same text, which says nothing about the row.
NO_REFERENCE = "(no reference)"
_WORDS = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of `text`."""
    return _WORDS.findall(text.lower())


def word_f1(candidate: str, reference: str) -> float:
    """Bag-of-words F1 of `candidate` against `reference` (SQuAD's token F1; 0 when either is
    empty)."""
    c, r = collections.Counter(words(candidate)), collections.Counter(words(reference))
    common = sum((c & r).values())
    if not common:
        return 0.0
    precision, recall = common / sum(c.values()), common / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def following_spans(documents: list[str], source: str, tokenizer, span_tokens: int, count: int) -> list[str] | None:
    """The `count` consecutive spans of `span_tokens` tokens of the document that follow the
    corpus prompt `source` ("corpus:DOC:OFFSET:TOKENS", as `synth.prompts.PromptSource` writes
    it), each decoded and stripped; None for other sources or where the document ends first."""
    kind, *fields = source.split(":")
    if kind != "corpus" or len(fields) != 3:
        return None
    doc, offset, n_prompt = (int(f) for f in fields)
    text = documents[doc][offset:]
    end = n_prompt + count * span_tokens
    # PromptSource tokenises text[: 16 * n + 64]; as many characters again per following token.
    ids = tokenizer(text[: 16 * end + 64], add_special_tokens=False)["input_ids"]
    if len(ids) < end:
        return None
    spans = [
        tokenizer.decode(ids[start : start + span_tokens], skip_special_tokens=True).strip()
        for start in range(n_prompt, end, span_tokens)
    ]
    return spans if all(spans) else None


def true_continuation(documents: list[str], source: str, tokenizer, continuation_tokens: int) -> str | None:
    """The `continuation_tokens` tokens of the document that follow the corpus prompt `source`,
    decoded and stripped (`following_spans`); None for other sources or where the document ends."""
    spans = following_spans(documents, source, tokenizer, continuation_tokens, 1)
    return spans[0] if spans else None


def ranked_triplets(
    rows: list[dict], documents: list[str], tokenizer, continuation_tokens: int, min_gap: float = 0.15
) -> list[dict]:
    """SFT triplets from synthesis rows (module docstring): reference = the true continuation,
    chosen / rejected = the row's two samples of its policy A ranked by word F1 against it, kept
    when they are at least `min_gap` apart (at most one triplet a row). `meta` keeps the row's
    prompt source, the policy and both F1s."""
    out = []
    for row in rows:
        meta = row.get("meta", {})
        continuation = true_continuation(documents, meta.get("prompt_source", ""), tokenizer, continuation_tokens)
        if continuation is None:
            continue
        (chosen, chosen_f1), (rejected, rejected_f1) = sorted(
            ((row[role], word_f1(row[role], continuation)) for role in SAME_POLICY_ROLES), key=lambda t: -t[1]
        )
        if chosen_f1 - rejected_f1 < min_gap:
            continue
        out.append(
            {
                "prompt": row["prompt"],
                "reference": continuation,
                "chosen": chosen,
                "rejected": rejected,
                "meta": {
                    "ranking": RANKING,
                    "prompt_source": meta["prompt_source"],
                    "author": meta.get("reference_policy", ""),
                    "chosen_f1": round(chosen_f1, 4),
                    "rejected_f1": round(rejected_f1, 4),
                },
            }
        )
    return out


def without_reference(rows: list[dict]) -> list[dict]:
    """The same rows with every reference replaced by `NO_REFERENCE` (the paper's "w/o
    reference" ablation, in a format that still needs a reference)."""
    return [{**row, "reference": NO_REFERENCE} for row in rows]


EDITED_SPANS = "edited_spans"


def _mixed(words_w: list[str], donor_w: list[str], fraction: float, rng) -> str:
    """`words_w` with round(fraction x len) of its positions (chosen by `rng`) replaced by words
    drawn from `donor_w`, joined by single spaces."""
    out_w = list(words_w)
    for i in rng.choice(len(out_w), size=round(fraction * len(out_w)), replace=False):
        out_w[i] = donor_w[int(rng.integers(len(donor_w)))]
    return " ".join(out_w)


def edited_span_triplets(
    rows: list[dict], documents: list[str], tokenizer, span_tokens: int, edit_fraction: float = 0.25, seed: int = 0
) -> list[dict]:
    """SFT triplets whose ranking needs the reference: for each synthesis row with a corpus
    prompt, A (the reference) = the `span_tokens` tokens after the prompt, D = the span after A;

        B (chosen)    A with `edit_fraction` of its words replaced by words of D
        C (rejected)  D with the same fraction replaced by words of A

    B keeps most of the reference's words in order and C few, so B > C by construction; both
    are real text of the same document edited alike (no fluency or topic shortcut), and without
    the reference only their fit to the prompt (B follows it, C follows A) tells them apart.
    Deterministic in (seed, the row's prompt index)."""
    out = []
    for row in rows:
        meta = row.get("meta", {})
        spans = following_spans(documents, meta.get("prompt_source", ""), tokenizer, span_tokens, 2)
        if spans is None:
            continue
        a_w, d_w = spans[0].split(), spans[1].split()
        rng = np.random.default_rng([seed, int(meta.get("prompt_index", 0))])
        chosen, rejected = _mixed(a_w, d_w, edit_fraction, rng), _mixed(d_w, a_w, edit_fraction, rng)
        if chosen == rejected:
            continue
        out.append(
            {
                "prompt": row["prompt"],
                "reference": spans[0],
                "chosen": chosen,
                "rejected": rejected,
                "meta": {
                    "ranking": EDITED_SPANS,
                    "prompt_source": meta["prompt_source"],
                    "edit_fraction": edit_fraction,
                },
            }
        )
    return out
