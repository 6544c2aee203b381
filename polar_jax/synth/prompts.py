"""Prompts for synthesis: prefixes cut from a text corpus, and instruction prompts.

POLAR's pre-training prompts are prefixes of 1 to 1024 tokens cut from a pre-training
corpus, plus a small share of instructions (Dou et al., arXiv 2507.05197). `PromptSource.prompt(i)` is a pure
function of (seed, i): synthesis can stop and resume anywhere and get the same prompts.

Corpus prefixes start at a paragraph of a document (so they read like text, not mid-word)
and run for L tokens of the counting tokenizer, L log-uniform in [min_tokens, max_tokens]
(short prefixes are as common as long ones on a log scale), cut short at the document's end.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import numpy as np

from polar_jax.data import schema


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A prompt and where it came from (recorded in the triplet's provenance)."""

    text: str
    source: str  # "corpus:<document index>:<char offset>:<tokens>" or "instructions:<file>:<line>"


def split_documents(documents: list[str], heldout_every: int) -> tuple[list[int], list[int]]:
    """(train, held-out) document indices: every `heldout_every`-th document is held out
    (0 = none), so held-out prompts come from text the training prompts never saw."""
    if heldout_every <= 0:
        return list(range(len(documents))), []
    heldout = [i for i in range(len(documents)) if i % heldout_every == heldout_every - 1]
    return [i for i in range(len(documents)) if i % heldout_every != heldout_every - 1], heldout


def read_instructions(path: str | pathlib.Path) -> list[Prompt]:
    """Instruction prompts: a JSONL file of {"prompt": text-or-messages, ...} (other fields
    ignored) or a plain text file, one prompt per non-empty line."""
    path = pathlib.Path(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            if path.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise schema.DataError(where, "bad_json", f"invalid JSON: {e.msg}") from None
                if not isinstance(row, dict) or "prompt" not in row:
                    raise schema.DataError(where, "missing_field", "an instruction row needs a 'prompt'", "prompt")
                text = _flatten(row["prompt"], where)
            else:
                text = line.rstrip("\n")
            out.append(Prompt(text, f"instructions:{path.name}:{line_no}"))
    if not out:
        raise ValueError(f"{path}: no instruction prompts found")
    return out


def _flatten(value, where: str) -> str:
    if isinstance(value, str) and value:
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value)
    ):
        return "\n".join(m["content"] for m in value)  # the official flattening
    raise schema.DataError(where, "wrong_type", "prompt must be a non-empty string or message list", "prompt")


class PromptSource:
    """Prompt i for i = 0, 1, ...: a corpus prefix, or (with probability `instruction_fraction`)
    an instruction, chosen by a generator seeded with (seed, i)."""

    def __init__(
        self,
        documents: list[str],
        tokenizer,
        *,
        doc_indices: list[int] | None = None,
        min_tokens: int = 1,
        max_tokens: int = 1024,
        instructions: list[Prompt] = (),
        instruction_fraction: float = 0.0,
        seed: int = 0,
    ):
        if not 1 <= min_tokens <= max_tokens:
            raise ValueError(f"need 1 <= min_tokens ({min_tokens}) <= max_tokens ({max_tokens})")
        if instruction_fraction and not instructions:
            raise ValueError("instruction_fraction > 0 needs instruction prompts")
        if instruction_fraction < 1 and not documents:
            raise ValueError("corpus prefixes need at least one document")
        self.documents, self.tokenizer = documents, tokenizer
        self.doc_indices = list(range(len(documents))) if doc_indices is None else list(doc_indices)
        self.min_tokens, self.max_tokens = min_tokens, max_tokens
        self.instructions, self.instruction_fraction = list(instructions), instruction_fraction
        self.seed = seed
        # Paragraph starts per document; documents are weighted by their number of paragraphs.
        self._starts = {
            i: [0] + [m.end() for m in re.finditer(r"\n\s*\n", documents[i]) if m.end() < len(documents[i])]
            for i in self.doc_indices
        }
        counts_d = np.array([len(self._starts[i]) for i in self.doc_indices], np.float64)
        self._doc_p = counts_d / counts_d.sum() if len(counts_d) else counts_d

    def prompt(self, index: int) -> Prompt:
        """The index-th prompt (pure: the same for the same seed and index)."""
        rng = np.random.default_rng([self.seed, index])
        if self.instructions and rng.random() < self.instruction_fraction:
            return self.instructions[int(rng.integers(len(self.instructions)))]
        doc = self.doc_indices[int(rng.choice(len(self.doc_indices), p=self._doc_p))]
        starts = self._starts[doc]
        offset = starts[int(rng.integers(len(starts)))]
        n_tokens = int(np.exp(rng.uniform(np.log(self.min_tokens), np.log(self.max_tokens + 1))))
        n_tokens = min(max(n_tokens, self.min_tokens), self.max_tokens)
        text = self.documents[doc][offset:]
        ids = self.tokenizer(text[: 16 * n_tokens + 64], add_special_tokens=False)["input_ids"][:n_tokens]
        prefix = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        if not prefix:  # whitespace-only cut (rare): take the paragraph's first word instead
            prefix = text.split()[0]
        return Prompt(prefix, f"corpus:{doc}:{offset}:{len(ids)}")
