"""POLAR rewards of rollouts: each response is scored against its prompt's reference through
the official encoding (`data.encoding`), read at the reward token (`scoring.reward_scores`).

The released RFT recipes strip `<think>...</think>` reasoning from a response before scoring,
so the reward model compares answers, not thoughts (`strip_think`).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from polar_jax import scoring
from polar_jax.data import encoding
from polar_jax.data.encoding import Text

_THINK_SPAN = re.compile(r"<think>.*?</think>", re.DOTALL)


def strip_think(text: str) -> str:
    """The answer part of a response: `<think>...</think>` spans removed; a `</think>` with no
    opening tag (the template opened it) drops everything before it; an unclosed `<think>`
    (reasoning cut off) drops everything after it. Texts without tags are returned as is."""
    if "<think>" not in text and "</think>" not in text:
        return text
    text = _THINK_SPAN.sub("", text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        text = text.split("<think>", 1)[0]
    return text.strip()


@dataclasses.dataclass
class RewardModel:
    """A POLAR reward model ready to score: weights (placed on the mesh), tokenizer, reward id, encoding."""

    cfg: object
    params: dict
    tokenizer: object
    reward_token_id: int
    encoding: encoding.EncodingConfig
    batch_size: int = 16
    strip_think: bool = True

    def sequences(self, prompts: list[Text], references: list[Text], responses: list[str]) -> list[np.ndarray]:
        """The token ids the reward model reads, one per (prompt, reference, response)."""
        if self.strip_think:
            responses = [strip_think(r) for r in responses]
        return [encoding.encode(self.tokenizer, p, ref, r, self.encoding, self.reward_token_id).ids
                for p, ref, r in zip(prompts, references, responses)]

    def score(self, prompts: list[Text], references: list[Text], responses: list[str]) -> np.ndarray:
        """float32 [B]: the POLAR score of each response against its reference."""
        return scoring.reward_scores(self.cfg, self.params, self.sequences(prompts, references, responses),
                                     batch_size=self.batch_size, progress=False)


def normalize_scores(scores_b: np.ndarray, how: str) -> np.ndarray:
    """"none": the raw scores (as released); "batch": whitened over the batch."""
    if how == "none":
        return scores_b
    if how == "batch":
        return (scores_b - scores_b.mean()) / (scores_b.std() + 1e-6)
    raise ValueError(f"reward.normalize={how!r}; choose none or batch")
