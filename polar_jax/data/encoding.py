"""The official POLAR input format: (prompt, reference, candidate) -> token ids.

This reproduces the released client (REFERENCE.md, "The exact input format"), so released
POLAR checkpoints score here exactly as they score there:

1. A message list is flattened by joining its `content` fields with "\\n".
2. Each part is tokenised on its own (with the tokenizer's special tokens, e.g. BOS, counted
   as the client counts them). Reference and candidate are cut to `max_response_length`
   (right cut by default, left optional); the prompt then keeps its LAST
   `(max_length - 4 - len(reference) - len(candidate)) // 2` tokens. Parts are decoded back
   to text (special tokens skipped).
3. Text = prompt + "\\n" + reference + split + prompt + "\\n" + candidate ("sft" wrapper; the
   "pretrain" wrapper has no "\\n"). The client always writes that "\\n"; xtuner training
   omits it when the response is empty (`newline_before_empty_response=False`).
4. The text is tokenised with special tokens and the reward token id is appended (training
   style); the client instead appends the reward token's text and tokenises, which gives the
   same ids (`client_text` builds that string).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple, Union

import numpy as np

Text = Union[str, list]  # a string, or a list of {"role", "content"} messages

# The official client reserves 4 tokens: the reward token, the split token and two "\n".
RESERVED_TOKENS = 4


@dataclasses.dataclass(frozen=True)
class EncodingConfig:
    """How texts become ids; the defaults are the released POLAR client's."""

    max_length: int = 16384
    max_response_length: int = 4096
    response_cut_side: Literal["right", "left"] = "right"
    wrapper: Literal["sft", "pretrain"] = "sft"
    split_text: str = "<|reward|>"
    reward_token: str = "[UNUSED_TOKEN_130]"
    newline_before_empty_response: bool = True

    def __post_init__(self):
        if self.response_cut_side not in ("right", "left"):
            raise ValueError(f"response_cut_side={self.response_cut_side!r}; choose right or left")
        if self.wrapper not in ("sft", "pretrain"):
            raise ValueError(f"wrapper={self.wrapper!r}; choose sft or pretrain")
        if self.prompt_budget(self.max_response_length, self.max_response_length) < 1:
            raise ValueError(
                f"max_length={self.max_length} leaves no room for the prompt after two responses of "
                f"max_response_length={self.max_response_length}; need max_length >= "
                f"{2 * self.max_response_length + RESERVED_TOKENS + 2}"
            )

    def prompt_budget(self, reference_len: int, candidate_len: int) -> int:
        """Tokens the prompt may keep next to responses of these lengths (the client's rule)."""
        return (self.max_length - RESERVED_TOKENS - reference_len - candidate_len) // 2

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EncodingConfig":
        """Inverse of `to_dict`."""
        return cls(**d)


class Encoded(NamedTuple):
    """One encoded (prompt, reference, candidate): ids end with the reward token."""

    ids: np.ndarray  # int32 [T]
    truncated: tuple[str, ...]  # parts that were cut: "prompt", "reference", "candidate"


class TripletEncoding(NamedTuple):
    """A triplet as the two sequences the reward model compares."""

    chosen: np.ndarray  # int32 [Tc]
    rejected: np.ndarray  # int32 [Tr]
    truncated: tuple[str, ...]  # among "prompt", "reference", "chosen", "rejected"


def flatten(text: Text) -> str:
    """A message list becomes its `content` fields joined by "\\n"; a string stays as is."""
    if isinstance(text, list):
        return "\n".join(message["content"] for message in text)
    return text


def _cut(ids: list[int], limit: int, side: str) -> list[int]:
    if len(ids) <= limit:
        return ids
    return ids[:limit] if side == "right" else ids[len(ids) - limit :]


def _tokenize(tokenizer, part: Text) -> list[int]:
    return tokenizer.encode(flatten(part), add_special_tokens=True)


def _assemble(tokenizer, prompt_ids: list[int], reference_ids: list[int], candidate_ids: list[int], cfg: EncodingConfig):
    """Cut the tokenised parts by the client's rules, decode them and join them into the text."""
    truncated = []
    if len(reference_ids) > cfg.max_response_length:
        reference_ids = _cut(reference_ids, cfg.max_response_length, cfg.response_cut_side)
        truncated.append("reference")
    if len(candidate_ids) > cfg.max_response_length:
        candidate_ids = _cut(candidate_ids, cfg.max_response_length, cfg.response_cut_side)
        truncated.append("candidate")
    budget = cfg.prompt_budget(len(reference_ids), len(candidate_ids))
    if len(prompt_ids) > budget:
        prompt_ids = prompt_ids[len(prompt_ids) - budget :]  # keep the prompt's end
        truncated.insert(0, "prompt")
    p, r, c = (tokenizer.decode(ids, skip_special_tokens=True) for ids in (prompt_ids, reference_ids, candidate_ids))

    def join(response: str) -> str:
        if cfg.wrapper == "pretrain" or (not response and not cfg.newline_before_empty_response):
            return p + response
        return p + "\n" + response

    return join(r) + cfg.split_text + join(c), tuple(truncated)


def build_text(tokenizer, prompt: Text, reference: Text, candidate: Text, cfg: EncodingConfig):
    """The model's input text without the reward token, and which parts were truncated."""
    return _assemble(tokenizer, _tokenize(tokenizer, prompt), _tokenize(tokenizer, reference),
                     _tokenize(tokenizer, candidate), cfg)


def client_text(tokenizer, prompt: Text, reference: Text, candidate: Text, cfg: EncodingConfig) -> str:
    """The exact string the official client sends to a server (reward token as text)."""
    return build_text(tokenizer, prompt, reference, candidate, cfg)[0] + cfg.reward_token


def encode(tokenizer, prompt: Text, reference: Text, candidate: Text, cfg: EncodingConfig, reward_token_id: int) -> Encoded:
    """Token ids of one (prompt, reference, candidate), reward token last."""
    text, truncated = build_text(tokenizer, prompt, reference, candidate, cfg)
    ids = tokenizer.encode(text, add_special_tokens=True) + [reward_token_id]
    return Encoded(np.asarray(ids, np.int32), truncated)


def encode_triplet(tokenizer, row: dict, cfg: EncodingConfig, reward_token_id: int) -> TripletEncoding:
    """A `{prompt, reference, chosen, rejected}` row as its chosen and rejected sequences.

    The prompt and reference are tokenised once for both sequences.
    """
    prompt_ids, reference_ids = _tokenize(tokenizer, row["prompt"]), _tokenize(tokenizer, row["reference"])
    out, truncated = [], set()
    for name in ("chosen", "rejected"):
        text, cut = _assemble(tokenizer, prompt_ids, reference_ids, _tokenize(tokenizer, row[name]), cfg)
        out.append(np.asarray(tokenizer.encode(text, add_special_tokens=True) + [reward_token_id], np.int32))
        truncated |= {name if part == "candidate" else part for part in cut}
    order = ("prompt", "reference", "chosen", "rejected")
    return TripletEncoding(out[0], out[1], tuple(n for n in order if n in truncated))


def is_single_token(tokenizer, token: str) -> bool:
    """Whether `token` is one token of this tokenizer (not split into pieces)."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    return len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token


def resolve_reward_token_id(tokenizer, cfg: EncodingConfig, add_missing: bool = False) -> int:
    """The reward token's id. With `add_missing`, the reward and split texts become special
    tokens when the tokenizer lacks them (the vocabulary grows: grow the model's embedding
    to match, `polar_jax.models.vocab.grow_vocab`). Without it, a missing reward token is an
    error; the split text is then plain text, as it is for the official client.
    """
    if not add_missing:
        if not is_single_token(tokenizer, cfg.reward_token):
            raise ValueError(
                f"the tokenizer has no token {cfg.reward_token!r} (the reward token); add it and "
                f"{cfg.split_text!r} as special tokens (--add-special-tokens; the model's embedding "
                "grows to match) or set the encoding's reward_token to a token the tokenizer has"
            )
        return tokenizer.convert_tokens_to_ids(cfg.reward_token)
    missing = [t for t in (cfg.split_text, cfg.reward_token) if not is_single_token(tokenizer, t)]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(cfg.reward_token)
