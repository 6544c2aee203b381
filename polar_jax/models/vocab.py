"""Growing a model's vocabulary, for tokenizers that gained special tokens (e.g. POLAR's
`<|reward|>` and reward token added to a base LM's tokenizer)."""

from __future__ import annotations

import jax
import numpy as np

from polar_jax.models.config import ModelConfig


def grow_vocab(cfg: ModelConfig, params: dict, new_vocab_size: int, rng: jax.Array) -> tuple[ModelConfig, dict]:
    """New rows for the embedding (and an untied LM head), drawn like the existing ones.

    New rows ~ N(mean, std) of the existing rows, so new tokens start as typical tokens;
    existing rows are unchanged. Returns the updated config and parameters.
    """
    if new_vocab_size < cfg.vocab_size:
        raise ValueError(f"new vocab size {new_vocab_size} < current {cfg.vocab_size}; shrinking is not supported")
    extra = new_vocab_size - cfg.vocab_size
    if extra == 0:
        return cfg, params
    embed_key, head_key = jax.random.split(rng)
    params = dict(params)
    embedding_vd = np.asarray(params["embedding"])
    params["embedding"] = np.concatenate([embedding_vd, _like_rows(embedding_vd, extra, embed_key)], axis=0)
    if "lm_head" in params:
        head_dv = np.asarray(params["lm_head"])
        new_cols = _like_rows(head_dv.T, extra, head_key).T
        params["lm_head"] = np.concatenate([head_dv, new_cols], axis=1)
    return cfg.replace(vocab_size=new_vocab_size), params


def _like_rows(rows_vd: np.ndarray, n: int, key: jax.Array) -> np.ndarray:
    noise = np.asarray(jax.random.normal(key, (n, rows_vd.shape[1]), np.float32))
    return (rows_vd.mean(0) + noise * rows_vd.std(0)).astype(rows_vd.dtype)
