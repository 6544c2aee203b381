"""Scoring with a POLAR reward model: rows {prompt, reference, output} -> one reward each.

This is the inference path users run with released checkpoints: the official encoding
(`data.encoding`), the model's reward head read at the reward token (the last token), rows
batched by length so that each compiled shape is reused.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from polar_jax.data import encoding
from polar_jax.io.model import Model
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig

log = logging.getLogger(__name__)


def reward_token_id_for(model: Model, tokenizer, enc_cfg: encoding.EncodingConfig) -> int:
    """The model config's `reward_token_id` (official checkpoints carry it), else the tokenizer's."""
    from_config = model.hf_config.get("reward_token_id")
    from_tokenizer = None
    if encoding.is_single_token(tokenizer, enc_cfg.reward_token):
        from_tokenizer = tokenizer.convert_tokens_to_ids(enc_cfg.reward_token)
    if from_config is not None:
        if from_tokenizer is not None and from_tokenizer != from_config:
            log.warning(
                "config reward_token_id %d differs from the tokenizer's %r = %d; using the config's",
                from_config,
                enc_cfg.reward_token,
                from_tokenizer,
            )
        return int(from_config)
    return encoding.resolve_reward_token_id(tokenizer, enc_cfg)


@functools.partial(jax.jit, static_argnames="cfg")
def _last_token_rewards(cfg: ModelConfig, params, tokens_bt, lengths_b):
    mask_bt = jnp.arange(tokens_bt.shape[1])[None] < lengths_b[:, None]
    positions_bt, segment_ids_bt = T.padded_inputs(mask_bt)
    reward_bt = T.forward(cfg, params, tokens_bt, positions_bt, segment_ids_bt).reward_bt
    return T.gather_rows(reward_bt, (lengths_b - 1)[:, None])[:, 0]


def reward_scores(
    cfg: ModelConfig,
    params,
    sequences: list[np.ndarray],
    batch_size: int = 8,
    pad_multiple: int = 128,
    progress: bool = True,
) -> np.ndarray:
    """Reward at the last token of each id sequence; float32 [N], in input order.

    Sequences are sorted by length and padded to a multiple of `pad_multiple`, so a run
    compiles one program per length bucket.
    """
    if "reward" not in cfg.heads:
        raise ValueError(f"this model has heads {cfg.heads}; scoring needs a reward model")
    too_big = [i for i, s in enumerate(sequences) if len(s) and int(np.max(s)) >= cfg.vocab_size]
    if too_big:
        raise ValueError(
            f"sequence {too_big[0]} has token id {int(np.max(sequences[too_big[0]]))} >= the model's vocab size "
            f"{cfg.vocab_size}: the tokenizer has tokens the model lacks (grow the embedding, polar_jax.models.vocab)"
        )
    order = np.argsort([len(s) for s in sequences], kind="stable")
    scores = np.zeros(len(sequences), np.float32)
    bar = tqdm(total=len(sequences), desc="score", unit="row", disable=not progress)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        lengths = np.array([len(sequences[i]) for i in index], np.int32)
        width = -(-lengths.max() // pad_multiple) * pad_multiple
        tokens = np.zeros((batch_size, width), np.int32)  # a full batch always: one shape per width
        for row, i in enumerate(index):
            tokens[row, : lengths[row]] = sequences[i]
        lengths = np.pad(lengths, (0, batch_size - len(index)), constant_values=1)
        scores[index] = np.asarray(_last_token_rewards(cfg, params, tokens, lengths))[: len(index)]
        bar.update(len(index))
    bar.close()
    return scores


def score_rows(
    model: Model,
    tokenizer,
    rows: list[dict],
    enc_cfg: encoding.EncodingConfig | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """Rewards of `{prompt, reference, output[, wrapper]}` rows under the official encoding
    (a row's `wrapper` overrides `enc_cfg.wrapper`, as in the official client)."""
    enc_cfg = enc_cfg or encoding.EncodingConfig()
    reward_id = reward_token_id_for(model, tokenizer, enc_cfg)
    sequences = [
        encoding.encode(tokenizer, r["prompt"], r["reference"], r["output"], enc_cfg, reward_id, r.get("wrapper")).ids
        for r in rows
    ]
    return reward_scores(model.cfg, model.params, sequences, batch_size=batch_size, progress=progress)
