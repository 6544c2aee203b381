"""The tokenised record: one triplet as the two token sequences the reward model reads.

    chosen   = encode(prompt, reference, chosen)    int32 ids, reward token last
    rejected = encode(prompt, reference, rejected)  int32 ids, reward token last
    meta     = the row's metadata (policy names, seeds, source file:line), JSON-like

Records are msgpack maps, so they are language-neutral and stable across versions; this is
what ArrayRecord shards written by `prepare` hold, one record per triplet.

Versions: 2 encodes a pair as xtuner does (one prompt budget for chosen and rejected, no "\\n"
before an empty response); 1 gave each candidate its own budget. Readers refuse other versions.
"""

from __future__ import annotations

import msgpack
import numpy as np

VERSION = 2


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


class RecordVersionError(ValueError):
    """Records written by another version of `prepare`: the data must be prepared again."""


def check_version(version, where: str = "a record") -> None:
    """Raise RecordVersionError unless `version` is the one this code reads."""
    if version != VERSION:
        raise RecordVersionError(
            f"{where} has record version {version!r}, this polar_jax reads version {VERSION} (training pairs "
            "are now encoded as xtuner does: one prompt budget per pair); rerun `prepare` on the JSONL triplets"
        )


def decode_record(data: bytes) -> dict:
    """Inverse of `encode_record`: {"chosen": int32[Tc], "rejected": int32[Tr], "meta": dict}."""
    raw = msgpack.unpackb(data, raw=False)
    check_version(raw.get("v"))
    return {
        "chosen": np.frombuffer(raw["chosen"], np.int32),
        "rejected": np.frombuffer(raw["rejected"], np.int32),
        "meta": raw["meta"],
    }
