"""Growing the vocabulary keeps every existing output and adds usable rows."""

import jax
import numpy as np

from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from polar_jax.models.vocab import grow_vocab


def test_grown_model_keeps_old_logits_and_scores_new_tokens():
    cfg = ModelConfig(vocab_size=50, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=24)
    params = T.init_params(cfg, jax.random.key(0))
    new_cfg, new_params = grow_vocab(cfg, params, 52, jax.random.key(1))
    assert (
        new_cfg.vocab_size == 52
        and new_params["embedding"].shape == (52, 16)
        and new_params["lm_head"].shape == (16, 52)
    )
    tokens = np.array([[1, 2, 3, 4]])
    positions, segment_ids = T.padded_inputs(np.ones((1, 4)))
    old = T.forward(cfg, params, tokens, positions, segment_ids).logits_btv
    new = T.forward(new_cfg, new_params, tokens, positions, segment_ids).logits_btv
    np.testing.assert_allclose(new[..., :50], old, atol=1e-6)
    with_new_token = T.forward(new_cfg, new_params, np.array([[1, 2, 51]]), positions[:, :3], segment_ids[:, :3])
    assert np.isfinite(with_new_token.logits_btv).all()
    assert not np.allclose(new_params["embedding"][50], new_params["embedding"][51])
