"""Shared-prefix (tree) rows on the splash kernel: two segment-masked calls merged exactly.

The tree rule (`models.attention`): query i sees key j iff both are in the same non-zero
segment, j's branch is 0 (the segment's shared prefix) or i's own branch, and j is not after
i. Splash compares query and key segment ids only for equality, so one call cannot say "the
prefix or my own branch". The visible keys of a query split into two disjoint sets that it can:

- call A ("own run"): ids = one per (segment, branch): a token sees the causal part of its own
  branch (a prefix token: its prefix; a suffix token: its own suffix);
- call B ("prefix"): query ids = the segment for suffix tokens (branch > 0) and an id no key
  carries otherwise; key ids = the segment for prefix tokens (branch 0) and another unmatched
  id otherwise: a suffix token sees its segment's prefix, which lies before it in the row.

A prefix query sees nothing in B, and no key is in both sets, so the union is exactly the tree
mask. Each call returns its output o and log-sum-exp l (over the scaled logits); the merge
    l = logaddexp(lA, lB),  o = e^{lA - l} oA + e^{lB - l} oB
is the softmax over the union. A query without keys in B (a prefix token, padding, a suffix of
a group with an empty prefix) gets lB = mask value + log(count) ~ -2.4e38 from the kernel (its
running max starts at the mask value and the diagonal block always runs, so the count is >= 1
and nothing is NaN); e^{lB - l} is then exactly 0.

Backward (`jax.custom_vjp`): splash's own VJP cannot differentiate its log-sum-exp output, so
the backward calls splash's backward kernels once per call, each with the MERGED output and
MERGED log-sum-exp as residuals (blockwise / ring attention's backward): with the global
softmax statistics, the call over key subset X yields exactly X's share of dq, dk and dv
(P = exp(s - l) restricted to X, di = rowsum(o * do) global), and the shares add up.

With `window` > 0 both calls use the kernel's causal-and-local static mask, so both skip the
key blocks outside the window (exact under the window promise). The run ids are
segment * (T + 1) + branch, which fits int32 for T < 46341.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as _splash

# Largest row length whose (segment, branch) ids segment * (T + 1) + branch fit in int32.
MAX_TREE_SEQ_LEN = 46340
# Query / key ids of call B that no token of the other side carries.
_NO_PREFIX_QUERY = -2
_NO_PREFIX_KEY = -1
# The static options of splash's forward and backward, in the backward's positional order.
_KERNEL_OPTIONS = (
    "mask_value",
    "is_mqa",
    "block_sizes",
    "residual_checkpoint_name",
    "mask_function",
    "attn_logits_soft_cap",
    "interpret",
)


def tree_segment_ids(segment_t: jax.Array, branch_t: jax.Array) -> tuple[_splash.SegmentIds, _splash.SegmentIds]:
    """The splash segment ids of call A (own run) and call B (prefix) for one row [T]."""
    t = segment_t.shape[-1]
    if t > MAX_TREE_SEQ_LEN:
        raise ValueError(f"shared-prefix Pallas attention takes rows up to {MAX_TREE_SEQ_LEN} tokens; got T={t}")
    segment_t = segment_t.astype(jnp.int32)
    branch_t = branch_t.astype(jnp.int32)
    run_t = segment_t * (t + 1) + branch_t
    real_t = segment_t != 0
    q_prefix_t = jnp.where(real_t & (branch_t > 0), segment_t, _NO_PREFIX_QUERY)
    kv_prefix_t = jnp.where(real_t & (branch_t == 0), segment_t, _NO_PREFIX_KEY)
    return _splash.SegmentIds(q=run_t, kv=run_t), _splash.SegmentIds(q=q_prefix_t, kv=kv_prefix_t)


def merge_partial_attention(o_a_hte, lse_a_ht, o_b_hte, lse_b_ht):
    """Softmax over the union of two disjoint key sets from each set's output and log-sum-exp.

    Returns (o [H, T, E] float32, lse [H, T] float32). A set with lse ~ -inf (no keys) weighs 0.
    """
    lse_a_ht = lse_a_ht.astype(jnp.float32)
    lse_b_ht = lse_b_ht.astype(jnp.float32)
    top_ht = jnp.maximum(lse_a_ht, lse_b_ht)
    weight_a_ht = jnp.exp(lse_a_ht - top_ht)
    weight_b_ht = jnp.exp(lse_b_ht - top_ht)
    total_ht = weight_a_ht + weight_b_ht
    lse_ht = top_ht + jnp.log(total_ht)
    o_hte = (weight_a_ht / total_ht)[..., None] * o_a_hte.astype(jnp.float32) + (weight_b_ht / total_ht)[
        ..., None
    ] * o_b_hte.astype(jnp.float32)
    return o_hte, lse_ht


def _collapsed(mask_info):
    """The mask info as `_splash_attention` hands it to the kernels (partial blocks 3-D)."""
    if mask_info is None or mask_info.partial_mask_blocks is None:
        return mask_info
    blocks = mask_info.partial_mask_blocks
    return mask_info._replace(partial_mask_blocks=blocks.reshape(-1, *blocks.shape[-2:]))


def _kernel_options(kernel) -> dict:
    """The static options of a `SplashAttentionKernel` that its forward / backward take."""
    return {name: kernel.kwargs[name] for name in _KERNEL_OPTIONS}


def _forward_with_lse(kernel, q_hte, k_kte, v_kte, segment_ids):
    """One splash forward: (output [H, T, E] in q's dtype, log-sum-exp [H, T] float32)."""
    out, (lse,) = _splash._splash_attention_forward(
        _collapsed(kernel.fwd_mask_info),
        q_hte,
        k_kte,
        v_kte,
        segment_ids,
        None,
        save_residuals=True,
        **_kernel_options(kernel),
    )
    return out, lse


def _backward_share(kernel, q_hte, k_kte, v_kte, segment_ids, o_hte, lse_ht, do_hte):
    """(dq, dk, dv) of one call's key subset, given the merged output and log-sum-exp."""
    residuals = (
        q_hte,
        k_kte,
        v_kte,
        segment_ids,
        None,
        o_hte,
        lse_ht,
        _collapsed(kernel.dq_mask_info),
        _collapsed(kernel.dkv_mask_info),
    )
    options = _kernel_options(kernel)
    grads = _splash._splash_attention_bwd(False, *options.values(), residuals, do_hte)
    return grads[3:6]


def make_tree_attention(kernel):
    """Tree-masked self-attention of one row with splash `kernel` (built with backward blocks).

    Returns fn(q [H, T, E] (already scaled), k, v [K, T, E], segment [T], branch [T]) ->
    [H, T, E] in q's dtype, differentiable in q, k and v; vmap it over rows.
    """

    def merged(q_hte, k_kte, v_kte, segment_t, branch_t):
        ids_a, ids_b = tree_segment_ids(segment_t, branch_t)
        o_a, lse_a = _forward_with_lse(kernel, q_hte, k_kte, v_kte, ids_a)
        o_b, lse_b = _forward_with_lse(kernel, q_hte, k_kte, v_kte, ids_b)
        o_hte, lse_ht = merge_partial_attention(o_a, lse_a, o_b, lse_b)
        return o_hte.astype(q_hte.dtype), lse_ht

    @jax.custom_vjp
    def attention(q_hte, k_kte, v_kte, segment_t, branch_t):
        return merged(q_hte, k_kte, v_kte, segment_t, branch_t)[0]

    def forward(q_hte, k_kte, v_kte, segment_t, branch_t):
        o_hte, lse_ht = merged(q_hte, k_kte, v_kte, segment_t, branch_t)
        return o_hte, (q_hte, k_kte, v_kte, segment_t, branch_t, o_hte, lse_ht)

    def backward(residuals, do_hte):
        q_hte, k_kte, v_kte, segment_t, branch_t, o_hte, lse_ht = residuals
        grads = [
            _backward_share(kernel, q_hte, k_kte, v_kte, ids, o_hte, lse_ht, do_hte)
            for ids in tree_segment_ids(segment_t, branch_t)
        ]
        dq, dk, dv = (a + b for a, b in zip(*grads, strict=True))
        return dq.astype(q_hte.dtype), dk.astype(k_kte.dtype), dv.astype(v_kte.dtype), None, None

    attention.defvjp(forward, backward)
    return attention
