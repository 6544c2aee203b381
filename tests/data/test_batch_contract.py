"""The batch contract (data/batch.py) is the one declaration: packing lays batches out by it,
the train step reads its step keys, and its abstract shapes are those of a real batch."""

import numpy as np
import pytest

from polar_jax.data import batch as contract
from polar_jax.data import packing
from polar_jax.train import step


def _pairs(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {"chosen": rng.integers(1, 50, 3 + i % 4), "rejected": rng.integers(1, 50, 2 + i % 3), "record_index": i}
        for i in range(n)
    ]


def test_keys_and_ranks():
    assert contract.ALL_KEYS == (
        "tokens_bt",
        "segment_ids_bt",
        "branch_ids_bt",
        "positions_bt",
        "reward_index_bp2",
        "pair_mask_bp",
        "record_index_bp",
    )
    assert contract.STEP_KEYS == contract.ALL_KEYS[:-1]  # record_index_bp is bookkeeping the step does not read
    assert {k: contract.ndim(k) for k in contract.ALL_KEYS} == {
        "tokens_bt": 2,
        "segment_ids_bt": 2,
        "branch_ids_bt": 2,
        "positions_bt": 2,
        "reward_index_bp2": 3,
        "pair_mask_bp": 2,
        "record_index_bp": 2,
    }
    assert all(len(f.dims) == contract.ndim(f.name) and f.name.endswith("_" + f.dims) for f in contract.FIELDS)


def test_the_step_and_packing_derive_from_it():
    assert step.BATCH_KEYS == contract.STEP_KEYS
    assert step.BATCH_NDIM == {k: contract.ndim(k) for k in contract.STEP_KEYS}
    assert packing.BATCH_KEYS == contract.ALL_KEYS
    assert packing.check_batch is contract.check_batch and packing.PAD_ID == contract.PAD_ID


def test_shapes_are_those_of_a_packed_batch():
    batch = packing.pack_pairs(_pairs(9), batch_size=4, seq_len=16, max_pairs_per_row=3)[0]
    contract.check_batch(batch)
    assert contract.shapes(4, 16, 3) == {k: (batch[k].shape, batch[k].dtype) for k in contract.STEP_KEYS}
    assert contract.shapes(4, 16, 3, contract.ALL_KEYS) == {k: (v.shape, v.dtype) for k, v in batch.items()}
    assert contract.shapes(2, 8, 1)["reward_index_bp2"] == ((2, 1, 2), np.dtype(np.int32))
    assert contract.shapes(2, 8, 1)["pair_mask_bp"] == ((2, 1), np.dtype(bool))


def test_check_batch_names_a_missing_key_and_a_wrong_dtype():
    batch = packing.pack_pairs(_pairs(4), batch_size=2, seq_len=16, max_pairs_per_row=2)[0]
    with pytest.raises(ValueError, match=r"batch lacks \['record_index_bp'\]"):
        contract.check_batch({k: v for k, v in batch.items() if k != "record_index_bp"})
    with pytest.raises(ValueError, match=r"positions_bt: \(2, 16\) int64, expected \(2, 16\) int32"):
        contract.check_batch({**batch, "positions_bt": batch["positions_bt"].astype(np.int64)})
