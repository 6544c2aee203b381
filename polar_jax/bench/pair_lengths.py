"""Token-id pairs and RFT groups of realistic lengths for the shared-prefix benchmarks.

A POLAR sequence is `prompt "\\n" reference <reward> prompt "\\n" candidate <reward>`: the two
sequences of a pair (and the rollouts of one RFT group) share everything before the candidate.
Ids are random (only the structure and the lengths matter for speed), from `FIRST_ID` up, so
that they never collide with padding, the newline or the reward token.
"""

from __future__ import annotations

import numpy as np

NEWLINE_ID = 3
REWARD_ID = 2
FIRST_ID = 4


def random_ids(rng: np.random.Generator, n: int, vocab_size: int) -> np.ndarray:
    """`n` random token ids in [FIRST_ID, vocab_size)."""
    return rng.integers(FIRST_ID, vocab_size, n).astype(np.int32)


def scored_prefix(prompt: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """What every candidate of (prompt, reference) is scored after: prompt \\n reference <reward> prompt \\n."""
    return np.concatenate([prompt, [NEWLINE_ID], reference, [REWARD_ID], prompt, [NEWLINE_ID]]).astype(np.int32)


def scored_sequence(prefix: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """The sequence the reward model reads for one candidate: the prefix, the candidate, the reward token."""
    return np.concatenate([prefix, candidate, [REWARD_ID]]).astype(np.int32)


def pair_from_lengths(
    rng: np.random.Generator, prompt: int, reference: int, chosen: int, rejected: int, vocab_size: int, index: int
) -> dict:
    """One pair {"chosen", "rejected", "record_index"} of random ids with these part lengths."""
    prefix = scored_prefix(random_ids(rng, prompt, vocab_size), random_ids(rng, reference, vocab_size))
    return {
        "chosen": scored_sequence(prefix, random_ids(rng, chosen, vocab_size)),
        "rejected": scored_sequence(prefix, random_ids(rng, rejected, vocab_size)),
        "record_index": index,
    }


def demo_pairs(directory: str, n: int, seed: int = 0) -> list[dict]:
    """`n` pairs read from a prepared directory (`prepare`'s ArrayRecord shards), every k-th record."""
    from polar_jax.data import sources

    records = sources.ArrayRecordTriplets(directory)
    stride = max(len(records) // n, 1)
    picked = [(i * stride + seed) % len(records) for i in range(min(n, len(records)))]
    out = []
    for i, index in enumerate(picked):
        record = records[index]
        out.append({"chosen": record["chosen"], "rejected": record["rejected"], "record_index": i})
    return out


def demo_like_pairs(n: int, vocab_size: int, seed: int = 0) -> list[dict]:
    """`n` pairs shaped as the demo's prepared data: prompts of 3..12 tokens, responses of 16..32
    (the demo samples up to 24 new tokens; max_response_length 96): sequences of median ~64 tokens."""
    rng = np.random.default_rng(seed)
    return [
        pair_from_lengths(
            rng, int(rng.integers(3, 13)), *(int(x) for x in rng.integers(16, 33, 3)), vocab_size=vocab_size, index=i
        )
        for i in range(n)
    ]


def paper_lengths(rng: np.random.Generator, size: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(prompt lengths, response lengths [size, 3]): prompts log-uniform in 1..1024, responses
    (reference, chosen, rejected) log-normal with median 400 and `sigma`, capped at 4096."""
    prompts = np.exp(rng.uniform(0.0, np.log(1024.0), size)).astype(int)
    responses = np.exp(rng.normal(np.log(400.0), sigma, (size, 3))).round().astype(int)
    return np.clip(prompts, 1, 1024), np.clip(responses, 1, 4096)


def paper_pairs(n: int, vocab_size: int, row_len: int, sigma: float = 0.8, seed: int = 0) -> tuple[list[dict], int]:
    """(`n` paper-like pairs whose two whole sequences fit a row of `row_len`, how many drawn pairs did not)."""
    rng = np.random.default_rng(seed)
    out, dropped = [], 0
    while len(out) < n:
        prompts, responses = paper_lengths(rng, 1, sigma)
        prompt, (reference, chosen, rejected) = int(prompts[0]), (int(x) for x in responses[0])
        if 2 * (2 * prompt + reference + 3) + chosen + rejected + 2 > row_len:
            dropped += 1
            continue
        out.append(pair_from_lengths(rng, prompt, reference, chosen, rejected, vocab_size, len(out)))
    return out, dropped


def rft_groups(groups: int, rollouts: int, vocab_size: int, max_prompt: int, max_response: int, seed: int = 0):
    """`groups` RFT groups: (prefix ids, [`rollouts` candidate ids]); prompts log-uniform in
    1..`max_prompt` tokens, the reference and the rollouts uniform in max_response/4..max_response."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(groups):
        prompt = int(np.exp(rng.uniform(0.0, np.log(max_prompt))))
        lengths = rng.integers(max(max_response // 4, 1), max_response + 1, rollouts + 1)
        prefix = scored_prefix(random_ids(rng, prompt, vocab_size), random_ids(rng, int(lengths[0]), vocab_size))
        out.append((prefix, [random_ids(rng, int(m), vocab_size) for m in lengths[1:]]))
    return out
