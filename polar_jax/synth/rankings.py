"""Ranked triplets (A > B > C, A the reference) for POLAR's SFT stage, checkable without people.

The paper fine-tunes on human rankings of three answers: the best is the reference, the second
the chosen, the third the rejected. The demo's rankings come from a measure it states instead:
for a synthesis row whose prompt is a corpus prefix (`prompt_source` "corpus:DOC:OFFSET:TOKENS"),

    A   the document's true continuation (the next `continuation_tokens` tokens after the prompt)
    B   of the row's three policy texts, one closer to A by word F1 (SQuAD's bag-of-words F1)
    C   another, at least `min_gap` F1 further from A than B

so "better" means "closer to what the document says next". Every pair of the row's three texts
with an F1 gap of at least `min_gap` gives a triplet (up to 3 a row; two texts that are equal
give none). Rows whose prompt is not a corpus prefix are skipped.

    rows = evaluate.read_triplets(files)
    triplets = ranked_triplets(rows, corpus.corpus_documents(), tokenizer, continuation_tokens=24)
    without_reference(triplets)  # the ablation: the same triplets, the reference replaced by NO_REFERENCE
"""

from __future__ import annotations

import collections
import itertools
import re

ROLES = ("reference", "chosen", "rejected")  # a synthesis row's three policy texts
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


def true_continuation(documents: list[str], source: str, tokenizer, continuation_tokens: int) -> str | None:
    """The `continuation_tokens` tokens of the document that follow the corpus prompt `source`
    ("corpus:DOC:OFFSET:TOKENS", as `synth.prompts.PromptSource` writes it), decoded and
    stripped; None for other sources or where the document ends."""
    kind, *fields = source.split(":")
    if kind != "corpus" or len(fields) != 3:
        return None
    doc, offset, n_prompt = (int(f) for f in fields)
    text = documents[doc][offset:]
    # PromptSource tokenises text[: 16 * n + 64]; as many characters again per continuation token.
    ids = tokenizer(text[: 16 * (n_prompt + continuation_tokens) + 64], add_special_tokens=False)["input_ids"]
    out = tokenizer.decode(ids[n_prompt : n_prompt + continuation_tokens], skip_special_tokens=True).strip()
    return out or None


def ranked_triplets(
    rows: list[dict], documents: list[str], tokenizer, continuation_tokens: int, min_gap: float = 0.15
) -> list[dict]:
    """SFT triplets from synthesis rows (module docstring): reference = the true continuation,
    chosen / rejected = two of the row's texts ranked by word F1 against it, gap >= `min_gap`.
    `meta` keeps the row's prompt source, each text's author policy and F1."""
    out = []
    for row in rows:
        meta = row.get("meta", {})
        continuation = true_continuation(documents, meta.get("prompt_source", ""), tokenizer, continuation_tokens)
        if continuation is None:
            continue
        texts = [(row[role], meta.get(f"{role}_policy", ""), word_f1(row[role], continuation)) for role in ROLES]
        for (text_i, pol_i, f1_i), (text_j, pol_j, f1_j) in itertools.combinations(texts, 2):
            if text_i == text_j or abs(f1_i - f1_j) < min_gap:
                continue
            (chosen, chosen_by, chosen_f1), (rejected, rejected_by, rejected_f1) = sorted(
                [(text_i, pol_i, f1_i), (text_j, pol_j, f1_j)], key=lambda t: -t[2]
            )
            out.append(
                {
                    "prompt": row["prompt"],
                    "reference": continuation,
                    "chosen": chosen,
                    "rejected": rejected,
                    "meta": {
                        "ranking": RANKING,
                        "prompt_source": meta["prompt_source"],
                        "chosen_author": chosen_by,
                        "rejected_author": rejected_by,
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
