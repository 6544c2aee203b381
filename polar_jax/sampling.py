"""Generation with a KV cache: one prefill of the (right-padded) prompts, then a compiled
decode loop of one token per step. Greedy for now; sampling arrives with the policy pool."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def greedy_generate(cfg: ModelConfig, params, prompt_bt, prompt_lengths_b, max_new_tokens: int, eos_id: int = -1):
    """Greedy continuation of right-padded prompts; returns (new tokens [B, N], lengths [B]).

    Tokens after a row's first `eos_id` are 0 and not counted in its length.
    """
    batch, prompt_len = prompt_bt.shape
    mask_bt = jnp.arange(prompt_len)[None] < prompt_lengths_b[:, None]
    positions_bt, segment_ids_bt = T.padded_inputs(mask_bt)
    cache = T.KVCache.empty(cfg, batch, prompt_len + max_new_tokens)
    out = T.forward(cfg, params, prompt_bt * mask_bt, positions_bt, segment_ids_bt, cache)
    last_logits_bv = T.gather_rows(out.logits_btv, (prompt_lengths_b - 1)[:, None, None])[:, 0]
    first_b = jnp.argmax(last_logits_bv, axis=-1).astype(jnp.int32)

    def step(carry, _):
        token_b, position_b, done_b, cache = carry
        out = T.forward(cfg, params, token_b[:, None], position_b[:, None], jnp.ones_like(token_b)[:, None], cache)
        next_b = jnp.argmax(out.logits_btv[:, 0], axis=-1).astype(jnp.int32)
        done_b = done_b | (token_b == eos_id)
        return (next_b, position_b + 1, done_b, out.cache), jnp.where(done_b, 0, token_b)

    init = (first_b, prompt_lengths_b.astype(jnp.int32), jnp.zeros(batch, bool), out.cache)
    _, tokens_nb = jax.lax.scan(step, init, None, length=max_new_tokens)
    tokens_bn = tokens_nb.T
    is_eos_bn = tokens_bn == eos_id
    first_eos_b = jnp.where(is_eos_bn.any(1), jnp.argmax(is_eos_bn, 1), max_new_tokens)
    return tokens_bn, first_eos_b
