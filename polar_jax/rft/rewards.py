"""POLAR rewards of rollouts: each response is scored against its prompt's reference through
the official encoding (`data.encoding`), read at the reward token (`scoring.reward_scores`).

The released RFT recipes strip `<think>...</think>` reasoning from a response before scoring,
so the reward model compares answers, not thoughts (`strip_think`, the official rule by default).

`RewardModel` holds the weights on the policy's mesh; `ServerReward` scores through a reward
server (`polar_jax serve`, POST /score) instead, as verl does with a remote reward model: same
`score` interface, thinking stripped here, rows encoded by the server with its own encoding.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from polar_jax import scoring
from polar_jax.data import encoding
from polar_jax.data.encoding import Text

_THINK_SPAN = re.compile(r"<think>.*?</think>", re.DOTALL)
_OFFICIAL_THINK = re.compile(r"<think>(.*?)</think>(.*)", re.DOTALL)
THINK_RULES = ("official", "all_spans", "none")


def strip_think(text: str, rule: str = "official") -> str:
    """The answer part of a response. "official" (POLAR's `reward_func.extract_thinking_content`):
    everything after the first `<think>` ... first `</think>`, stripped; no such pair leaves the
    text unchanged. "all_spans": `strip_think_spans`. "none": the text as is."""
    if rule == "official":
        match = _OFFICIAL_THINK.search(text)
        return match.group(2).strip() if match else text
    if rule == "all_spans":
        return strip_think_spans(text)
    if rule == "none":
        return text
    raise ValueError(f"reward.strip_think={rule!r}; choose one of {', '.join(THINK_RULES)}")


def strip_think_spans(text: str) -> str:
    """The older, broader rule (an option): every `<think>...</think>` span removed; a `</think>`
    with no opening tag drops everything before it; an unclosed `<think>` drops everything after
    it; the result stripped. Texts without tags are returned as is."""
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
    strip_think: str = "official"  # THINK_RULES
    shared_prefix: bool = True  # the rollouts of a prompt share its reference: their prefix is computed once

    def __post_init__(self):
        strip_think("", self.strip_think)  # an unknown rule fails here, not at the first score

    def sequences(self, prompts: list[Text], references: list[Text], responses: list[str]) -> list[np.ndarray]:
        """The token ids the reward model reads, one per (prompt, reference, response)."""
        responses = [strip_think(r, self.strip_think) for r in responses]
        return [
            encoding.encode(self.tokenizer, p, ref, r, self.encoding, self.reward_token_id).ids
            for p, ref, r in zip(prompts, references, responses)
        ]

    def score(self, prompts: list[Text], references: list[Text], responses: list[str]) -> np.ndarray:
        """float32 [B]: the POLAR score of each response against its reference (`shared_prefix`: the
        same scores, each group's common prefix computed once, `scoring.reward_scores`)."""
        return scoring.reward_scores(
            self.cfg,
            self.params,
            self.sequences(prompts, references, responses),
            batch_size=self.batch_size,
            progress=False,
            shared_prefix=self.shared_prefix,
        )


@dataclasses.dataclass
class ServerReward:
    """POLAR scores from a reward server (`polar_jax.serve.client.RewardClient`): rows
    {prompt, reference, output[, wrapper]} sent to POST /score and encoded there exactly as
    `RewardModel.sequences` encodes them with the server's encoding. `wrapper` None: the server's."""

    client: object  # a RewardClient
    strip_think: str = "official"  # THINK_RULES
    wrapper: str | None = None

    def __post_init__(self):
        strip_think("", self.strip_think)

    def rows(self, prompts: list[Text], references: list[Text], responses: list[str]) -> list[dict]:
        """The /score rows of (prompt, reference, response) triples, thinking stripped."""
        extra = {"wrapper": self.wrapper} if self.wrapper else {}
        return [
            {"prompt": p, "reference": ref, "output": strip_think(r, self.strip_think), **extra}
            for p, ref, r in zip(prompts, references, responses)
        ]

    def score(self, prompts: list[Text], references: list[Text], responses: list[str]) -> np.ndarray:
        """float32 [B]: the server's POLAR score of each response against its reference."""
        return self.client.score(self.rows(prompts, references, responses))


def normalize_scores(scores_b: np.ndarray, how: str) -> np.ndarray:
    """ "none": the raw scores (as released); "batch": whitened over the batch."""
    if how == "none":
        return scores_b
    if how == "batch":
        return (scores_b - scores_b.mean()) / (scores_b.std() + 1e-6)
    raise ValueError(f"reward.normalize={how!r}; choose none or batch")
