"""Synthetic policy-discrimination triplets at the token level: data that needs no files.

A "policy" is a first-order Markov chain with its own style: it mostly writes words from its
own band of the vocabulary (bands of neighbouring policies overlap), with its own sparse
transitions inside the band (Dirichlet-drawn), and now and then (`off_band`) any word. For
each example, policies A != B are picked; A samples the reference and the chosen
continuation, B the rejected one, after a shared random prompt.
Sequences follow the POLAR layout with ids in place of text:

    [BOS] prompt reference [SPLIT] prompt candidate [REWARD]

Example i is a pure function of (seed, i), so the set is a random-access source of any size
(the same record dicts as `records.decode_record`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

PAD, BOS, SPLIT, REWARD = 0, 1, 2, 3
FIRST_WORD = 4


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the synthetic task."""

    vocab_size: int = 128
    num_policies: int = 8
    concentration: float = 0.3  # Dirichlet of transitions inside a band: smaller = sparser
    off_band: float = 0.1  # probability of a word outside the policy's band
    prompt_len: tuple[int, int] = (4, 16)
    response_len: tuple[int, int] = (8, 32)
    seed: int = 0


class SyntheticTriplets:
    """Random-access source: `len(source)` examples, `source[i]` -> {"chosen", "rejected", "meta"}."""

    def __init__(self, cfg: SyntheticConfig, num_examples: int, offset: int = 0):
        self.cfg, self.num_examples, self.offset = cfg, num_examples, offset
        words = cfg.vocab_size - FIRST_WORD
        rng = np.random.default_rng([cfg.seed, 0])
        stride = words // cfg.num_policies
        self.transitions_kww = np.full((cfg.num_policies, words, words), cfg.off_band / words)
        for k in range(cfg.num_policies):
            band = (k * stride + np.arange(2 * stride)) % words  # overlaps the next policy's band
            inside = rng.dirichlet(np.full(len(band), cfg.concentration), size=words)
            self.transitions_kww[k][:, band] += (1 - cfg.off_band) * inside

    def __len__(self) -> int:
        return self.num_examples

    def _response(self, rng, policy: int, start: int) -> np.ndarray:
        length = rng.integers(*self.cfg.response_len, endpoint=True)
        out = np.empty(length, np.int64)
        word = start
        for t in range(length):
            word = rng.choice(len(self.transitions_kww[policy, word]), p=self.transitions_kww[policy, word])
            out[t] = word
        return out + FIRST_WORD

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(index)
        rng = np.random.default_rng([self.cfg.seed, 1, self.offset + int(index)])
        a, b = rng.choice(self.cfg.num_policies, size=2, replace=False)
        prompt = rng.integers(FIRST_WORD, self.cfg.vocab_size, rng.integers(*self.cfg.prompt_len, endpoint=True))
        start = int(prompt[-1]) - FIRST_WORD
        reference, chosen, rejected = (self._response(rng, p, start) for p in (a, a, b))

        def sequence(candidate):
            return np.concatenate([[BOS], prompt, reference, [SPLIT], prompt, candidate, [REWARD]]).astype(np.int32)

        return {
            "chosen": sequence(chosen),
            "rejected": sequence(rejected),
            "meta": {"policy_a": int(a), "policy_b": int(b), "index": self.offset + int(index)},
        }
