"""The tokenised record: one triplet as the two token sequences the reward model reads.

    chosen   = encode(prompt, reference, chosen)    int32 ids, reward token last
    rejected = encode(prompt, reference, rejected)  int32 ids, reward token last
    meta     = the row's metadata (policy names, seeds, source file:line), JSON-like

Records are msgpack maps, so they are language-neutral and stable across versions; this is
what ArrayRecord shards written by `prepare` hold, one record per triplet.
"""

from __future__ import annotations

import msgpack
import numpy as np

VERSION = 1


def encode_record(chosen_ids, rejected_ids, meta: dict | None = None) -> bytes:
    """Serialise one triplet's two token sequences (and metadata) to bytes."""
    return msgpack.packb(
        {
            "v": VERSION,
            "chosen": np.asarray(chosen_ids, np.int32).tobytes(),
            "rejected": np.asarray(rejected_ids, np.int32).tobytes(),
            "meta": meta or {},
        },
        use_bin_type=True,
    )


def decode_record(data: bytes) -> dict:
    """Inverse of `encode_record`: {"chosen": int32[Tc], "rejected": int32[Tr], "meta": dict}."""
    raw = msgpack.unpackb(data, raw=False)
    if raw.get("v") != VERSION:
        raise ValueError(f"record version {raw.get('v')!r} is not {VERSION}; re-run `prepare`")
    return {
        "chosen": np.frombuffer(raw["chosen"], np.int32),
        "rejected": np.frombuffer(raw["rejected"], np.int32),
        "meta": raw["meta"],
    }
