"""Reward scores on meshes of 1, 2, 4 and 8 devices (what one RFT process of 8 devices and each of
two processes of 4 score on). One row per rollout (`shared_prefix=False`) gives the same scores
bit for bit on every mesh, which is what makes multi-process RFT with a group baseline equal the
one-process run (tests/rft/test_rft_multiprocess.py). Shared-prefix scoring agrees with it to
float32 rounding; on this CPU its last bit changes with the mesh's size (its per-device batches
get small), so it is not asserted bit for bit."""

import jax
import numpy as np

from polar_jax import parallel, scoring
from polar_jax.models.config import ModelConfig
from polar_jax.rft import setup
from polar_jax.train.lm import numpy_init_params

CFG = ModelConfig(
    vocab_size=320,
    d_model=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    mlp_dim=64,
    heads=("reward",),
    tie_embeddings=False,
    init_std=0.05,
)


def rollout_sequences(groups: int = 16, per_group: int = 2) -> list[np.ndarray]:
    """Groups of sequences sharing a prompt-and-reference prefix, each ending at the reward token (5)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(groups):
        prefix = rng.integers(6, 300, size=rng.integers(20, 60))
        for _ in range(per_group):
            out.append(np.concatenate([prefix, rng.integers(6, 300, size=rng.integers(1, 9)), [5]]))
    return out


def test_one_row_per_rollout_scores_the_same_on_every_mesh_size():
    params, sequences = numpy_init_params(CFG, 2), rollout_sequences()
    scores = {}
    for n in (1, 2, 4, 8):
        mesh = parallel.make_mesh({"data": -1, "fsdp": 2 if n > 1 else 1, "tensor": 1}, jax.devices()[:n])
        with parallel.use_rules(mesh):
            placed = setup.place(CFG, params, mesh)
            for shared in (False, True):
                scores[n, shared] = scoring.reward_scores(
                    CFG, placed, sequences, batch_size=8, progress=False, shared_prefix=shared
                )
    for n in (2, 4, 8):
        np.testing.assert_array_equal(scores[n, False], scores[1, False])
    for n in (1, 2, 4, 8):
        np.testing.assert_allclose(scores[n, True], scores[1, False], rtol=1e-6, atol=1e-6)
    assert np.ptp(scores[1, False]) > 1e-3  # the scores differ from row to row: a real comparison
