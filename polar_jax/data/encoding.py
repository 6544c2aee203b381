"""The official POLAR input format: (prompt, reference, candidate) -> token ids.

This reproduces the released code exactly, so released POLAR checkpoints, data and recipes
carry over: the official client (InternLM/POLAR `src/polar/reward_func.py`, `RewardModelClient._encode`)
for scoring, and xtuner's `tokenize_ref` (`xtuner/dataset/preference_dataset.py`) for training pairs:

1. A message list is flattened by joining its `content` fields with "\\n".
2. Each part is tokenised on its own (with the tokenizer's special tokens, e.g. BOS, counted
   as the client counts them). Reference and candidates are cut to `max_response_length`
   (right cut by default, left optional); the prompt then keeps its LAST
   `(max_length - 4 - len(reference) - len(candidate)) // 2` tokens. Parts are decoded back
   to text (special tokens skipped).
3. Text = prompt + "\\n" + reference + split + prompt + "\\n" + candidate ("sft" wrapper; the
   "pretrain" wrapper has no "\\n"). A row's own `wrapper` field overrides the config's.
4. The text is tokenised with special tokens and the reward token id is appended (training
   style); the client instead appends the reward token's text and tokenises, which gives the
   same ids (`client_text` builds that string).

Two paths differ in two details, each as its source does it:
- scoring (`encode`, `client_text`: the official client, `RewardModelClient._encode`): one
  candidate, and the "\\n" always written, even before a response that decodes to empty;
- training pairs (`encode_triplet`: xtuner's `tokenize_ref`): ONE prompt budget for the pair,
  `min(budget(ref, chosen), budget(ref, rejected))`, so chosen and rejected see the same cut
  prompt, and no "\\n" before a response that decodes to empty.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Literal, NamedTuple

import numpy as np

Text = str | list  # a string, or a list of {"role", "content"} messages

# The official client reserves 4 tokens: the reward token, the split token and two "\n".
RESERVED_TOKENS = 4
WRAPPERS = ("sft", "pretrain")
ENCODING_FILE = "encoding.json"  # written by `prepare` next to its shards and by `train` into model/
# Keys older encoding files carry that no longer configure anything (the "\n" rule now follows the path).
_RETIRED_KEYS = ("newline_before_empty_response",)


@dataclasses.dataclass(frozen=True)
class EncodingConfig:
    """How texts become ids; the defaults are the released POLAR client's."""

    max_length: int = 16384
    max_response_length: int = 4096
    response_cut_side: Literal["right", "left"] = "right"
    wrapper: Literal["sft", "pretrain"] = "sft"  # the default; a row's "wrapper" field overrides it
    split_text: str = "<|reward|>"
    reward_token: str = "[UNUSED_TOKEN_130]"

    def __post_init__(self):
        if self.response_cut_side not in ("right", "left"):
            raise ValueError(f"response_cut_side={self.response_cut_side!r}; choose right or left")
        check_wrapper(self.wrapper, "wrapper")
        if self.max_response_length < 1:
            raise ValueError(f"max_response_length={self.max_response_length}; it must be at least 1")
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
    def from_dict(cls, d: dict) -> EncodingConfig:
        """Inverse of `to_dict`; unknown keys are an error (retired ones are dropped)."""
        d = {k: v for k, v in d.items() if k not in _RETIRED_KEYS}
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"unknown encoding keys {unknown}; known: {', '.join(f.name for f in dataclasses.fields(cls))}"
            )
        return cls(**d)


def check_wrapper(wrapper: str, where: str) -> str:
    """`wrapper` if it is "sft" or "pretrain", else a ValueError naming `where`."""
    if wrapper not in WRAPPERS:
        raise ValueError(f"{where}={wrapper!r}; choose sft or pretrain")
    return wrapper


def read_encoding_file(directory: str | os.PathLike) -> dict | None:
    """The `encoding.json` of a prepared-data or model directory (None when it has none):
    {"encoding": EncodingConfig fields, "reward_token_id", "vocab_size", ...}."""
    path = os.path.join(os.fspath(directory), ENCODING_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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


def build_texts(
    tokenizer,
    prompt: Text,
    reference: Text,
    candidates: dict[str, Text],
    cfg: EncodingConfig,
    wrapper: str | None = None,
    training: bool = False,
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The model's input text (no reward token) for each named candidate, and the parts cut.

    All candidates share one cut prompt, the tightest of their budgets (xtuner's pair rule;
    with one candidate it is the client's). `training` omits the "\\n" before a response that
    decodes to empty, as xtuner does; the client always writes it.
    """
    wrapper = check_wrapper(wrapper or cfg.wrapper, "wrapper")
    prompt_ids, reference_ids = _tokenize(tokenizer, prompt), _tokenize(tokenizer, reference)
    candidate_ids = {name: _tokenize(tokenizer, text) for name, text in candidates.items()}
    truncated = [
        name
        for name, ids in [("reference", reference_ids), *candidate_ids.items()]
        if len(ids) > cfg.max_response_length
    ]
    reference_ids = _cut(reference_ids, cfg.max_response_length, cfg.response_cut_side)
    candidate_ids = {n: _cut(ids, cfg.max_response_length, cfg.response_cut_side) for n, ids in candidate_ids.items()}
    budget = min(cfg.prompt_budget(len(reference_ids), len(ids)) for ids in candidate_ids.values())
    if len(prompt_ids) > budget:
        prompt_ids = prompt_ids[len(prompt_ids) - budget :]  # keep the prompt's end
        truncated.insert(0, "prompt")
    p, r = (tokenizer.decode(ids, skip_special_tokens=True) for ids in (prompt_ids, reference_ids))

    def join(response: str) -> str:
        if wrapper == "pretrain" or (training and not response):
            return p + response
        return p + "\n" + response

    head = join(r) + cfg.split_text
    texts = {n: head + join(tokenizer.decode(ids, skip_special_tokens=True)) for n, ids in candidate_ids.items()}
    return texts, tuple(truncated)


def build_text(
    tokenizer, prompt: Text, reference: Text, candidate: Text, cfg: EncodingConfig, wrapper: str | None = None
):
    """The client's input text without the reward token, and which parts were truncated."""
    texts, truncated = build_texts(tokenizer, prompt, reference, {"candidate": candidate}, cfg, wrapper)
    return texts["candidate"], truncated


def client_text(
    tokenizer, prompt: Text, reference: Text, candidate: Text, cfg: EncodingConfig, wrapper: str | None = None
) -> str:
    """The exact string the official client sends to a server (reward token as text)."""
    return build_text(tokenizer, prompt, reference, candidate, cfg, wrapper)[0] + cfg.reward_token


def _ids(tokenizer, text: str, reward_token_id: int) -> np.ndarray:
    return np.asarray(tokenizer.encode(text, add_special_tokens=True) + [reward_token_id], np.int32)


def encode(
    tokenizer,
    prompt: Text,
    reference: Text,
    candidate: Text,
    cfg: EncodingConfig,
    reward_token_id: int,
    wrapper: str | None = None,
) -> Encoded:
    """Token ids of one (prompt, reference, candidate) as the client scores it, reward token last."""
    text, truncated = build_text(tokenizer, prompt, reference, candidate, cfg, wrapper)
    return Encoded(_ids(tokenizer, text, reward_token_id), truncated)


def encode_triplet(tokenizer, row: dict, cfg: EncodingConfig, reward_token_id: int) -> TripletEncoding:
    """A `{prompt, reference, chosen, rejected[, wrapper]}` row as its chosen and rejected
    sequences, exactly as xtuner's `tokenize_ref` builds a training pair."""
    candidates = {"chosen": row["chosen"], "rejected": row["rejected"]}
    texts, truncated = build_texts(
        tokenizer, row["prompt"], row["reference"], candidates, cfg, row.get("wrapper"), training=True
    )
    return TripletEncoding(
        _ids(tokenizer, texts["chosen"], reward_token_id),
        _ids(tokenizer, texts["rejected"], reward_token_id),
        truncated,
    )


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
