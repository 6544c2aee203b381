"""The decoder: a Flax Linen module used only through `init` / `apply`.

    out = Transformer(cfg).apply({"params": params}, tokens_bt, positions_bt, segment_ids_bt)

Inputs are one mechanism for every use: `segment_ids_bt` is 0 on padding and 1, 2, ... for
the sequences packed into a row; `positions_bt` restart at 0 per segment. Attention never
crosses segments. `branch_ids_bt` (optional) is the shared-prefix layout of `data.batch`: a
segment's prefix (branch 0) is seen by each of its suffixes (branches 1, 2, ...), a suffix
never by a sibling. `attention_window` (a module attribute, static) promises that no segment
spans more tokens than that, so attention computes only that far back (`attention.attend`).
Passing a `KVCache` appends the new tokens to it and attends over it.

Every parameter is declared once, with its shape and logical axes, by `_param` below; layers
are stacked with `nn.scan`, which adds the leading "layers" axis. Sharding is then only a
mapping from logical axes to mesh axes (rules), never code here.

Shape suffixes (one meaning per letter, here and in `attention*.py`): b batch, t input tokens
(time), s key slots (the row itself, or the KV cache), l layers, d d_model, h query heads,
k kv heads, e head_dim, r rotary frequencies (head_dim / 2), f MLP hidden, v vocabulary,
n positions picked per row.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from polar_jax.models.attention import attend
from polar_jax.models.config import ModelConfig, RopeScaling

# Logical axis names. Parameters and key activations are annotated with these only.
BATCH, SEQ, EMBED, HEADS, KV_HEADS = "batch", "seq", "embed", "heads", "kv_heads"
HEAD_DIM, MLP, VOCAB, LAYERS, CACHE_SEQ = "head_dim", "mlp", "vocab", "layers", "cache_seq"
LORA = "lora"  # the rank axis of a LoRA adapter (`models/lora.py`), beside its weight's own axes
LOGICAL_AXES = (BATCH, SEQ, EMBED, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB, LAYERS, CACHE_SEQ, LORA)

# The linear projections of a layer: name -> (parameter path, how many of the weight's axes after
# "layers" are its input axes, contracted with the activation). `x_btd @ wq_dhe`: one input axis
# (embed), the rest (heads, head_dim) are outputs; `out_bthe @ wo_hed`: two (heads, head_dim).
# What LoRA may adapt; its factors take their logical axes from the weight's (`models/lora.py`).
PROJECTIONS = {
    "wq": ("layers/attn/wq", 1),
    "wk": ("layers/attn/wk", 1),
    "wv": ("layers/attn/wv", 1),
    "wo": ("layers/attn/wo", 2),
    "w_gate": ("layers/mlp/w_gate", 1),
    "w_up": ("layers/mlp/w_up", 1),
    "w_down": ("layers/mlp/w_down", 1),
}


def _param(module: nn.Module, name: str, axes: tuple[str, ...], shape: tuple[int, ...], init):
    """Declare one parameter with its logical axes; the single place axes are attached."""
    assert len(axes) == len(shape), (name, axes, shape)
    boxed_init = nn.with_logical_partitioning(init, axes)
    return module.param(name, boxed_init, shape, jnp.dtype(module.cfg.param_dtype))


def _constrain(x, axes: tuple[str, ...]):
    """Name an activation's logical axes (a no-op without a mesh and rules)."""
    return nn.with_logical_constraint(x, axes)


def _normal(cfg: ModelConfig):
    return nn.initializers.normal(stddev=cfg.init_std)


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / rms(x) * scale, statistics in float32 (as transformers' LlamaRMSNorm)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_btd):
        scale_d = _param(self, "scale", (EMBED,), (x_btd.shape[-1],), nn.initializers.ones)
        x32_btd = x_btd.astype(jnp.float32)
        variance_bt1 = jnp.mean(jnp.square(x32_btd), axis=-1, keepdims=True)
        normed_btd = (x32_btd * jax.lax.rsqrt(variance_bt1 + self.cfg.rms_eps)).astype(x_btd.dtype)
        return scale_d.astype(x_btd.dtype) * normed_btd


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None):
    """Per-pair inverse frequencies [head_dim // 2], with Llama-3 or linear scaling."""
    inv_freq_r = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling is None:
        return inv_freq_r
    if scaling.kind == "linear":
        return inv_freq_r / scaling.factor
    # Llama 3: long wavelengths slowed by `factor`, short ones kept, a smooth band between.
    low_wavelen = scaling.original_max_position / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position / scaling.high_freq_factor
    wavelen_r = 2 * math.pi / inv_freq_r
    scaled_r = jnp.where(wavelen_r > low_wavelen, inv_freq_r / scaling.factor, inv_freq_r)
    smooth_r = (scaling.original_max_position / wavelen_r - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed_r = (1 - smooth_r) * scaled_r / scaling.factor + smooth_r * scaled_r
    is_medium_r = (wavelen_r >= high_wavelen) & (wavelen_r <= low_wavelen)
    return jnp.where(is_medium_r, smoothed_r, scaled_r)


def apply_rope(x_bthe, positions_bt, inv_freq_r):
    """Rotary embedding in the "rotate half" layout of transformers' Llama, in float32; `x_bthe`'s
    heads are query or kv heads."""
    angles_btr = positions_bt[..., None].astype(jnp.float32) * inv_freq_r
    cos_bt1r, sin_bt1r = jnp.cos(angles_btr)[:, :, None], jnp.sin(angles_btr)[:, :, None]
    x1, x2 = jnp.split(x_bthe.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos_bt1r - x2 * sin_bt1r, x2 * cos_bt1r + x1 * sin_bt1r], -1)
    return rotated.astype(x_bthe.dtype)


class KVCache(NamedTuple):
    """Keys and values of every layer, plus what the mask needs to know about each slot.

    Slot s of row b holds a token when `segment_ids_bs[b, s] != 0`. New tokens are written
    at `index`: a scalar shared by all rows (rows of different prompt lengths simply carry
    padding slots, which the mask ignores), or one index per row [B] (the continuous-batching
    engine, whose rows entered at different times).
    """

    k_lbske: jax.Array
    v_lbske: jax.Array
    segment_ids_bs: jax.Array
    positions_bs: jax.Array
    index: jax.Array  # int32 scalar or [B]: the next slot to write

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty cache of `max_len` slots per row."""
        dtype = jnp.dtype(dtype or cfg.dtype)
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        return cls(
            k_lbske=jnp.zeros(shape, dtype),
            v_lbske=jnp.zeros(shape, dtype),
            segment_ids_bs=jnp.zeros((batch, max_len), jnp.int32),
            positions_bs=jnp.zeros((batch, max_len), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )


def write_at(cache_bs, new_bt, index):
    """`new_bt` [B, T, ...] written into `cache_bs` [B, S, ...] from slot `index` (a scalar, or [B]
    one per row) on."""
    if jnp.ndim(index) == 0:
        return jax.lax.dynamic_update_slice(cache_bs, new_bt, (0, index) + (0,) * (cache_bs.ndim - 2))
    tail = (0,) * (cache_bs.ndim - 2)
    return jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice(c, n, (i,) + tail))(cache_bs, new_bt, index)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and optional q/k/v biases."""

    cfg: ModelConfig
    attention_window: int = 0

    @nn.compact
    def __call__(self, x_btd, positions_bt, segment_ids_bt, branch_ids_bt, layer_cache, cache_meta):
        cfg = self.cfg
        d, h, k, e = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        init = _normal(cfg)
        wq_dhe = _param(self, "wq", (EMBED, HEADS, HEAD_DIM), (d, h, e), init)
        wk_dke = _param(self, "wk", (EMBED, KV_HEADS, HEAD_DIM), (d, k, e), init)
        wv_dke = _param(self, "wv", (EMBED, KV_HEADS, HEAD_DIM), (d, k, e), init)
        wo_hed = _param(self, "wo", (HEADS, HEAD_DIM, EMBED), (h, e, d), init)
        dtype = x_btd.dtype
        q_bthe = jnp.einsum("btd,dhe->bthe", x_btd, wq_dhe.astype(dtype))
        k_btke = jnp.einsum("btd,dke->btke", x_btd, wk_dke.astype(dtype))
        v_btke = jnp.einsum("btd,dke->btke", x_btd, wv_dke.astype(dtype))
        if cfg.qkv_bias:
            zeros = nn.initializers.zeros
            q_bthe += _param(self, "bq", (HEADS, HEAD_DIM), (h, e), zeros).astype(dtype)
            k_btke += _param(self, "bk", (KV_HEADS, HEAD_DIM), (k, e), zeros).astype(dtype)
            v_btke += _param(self, "bv", (KV_HEADS, HEAD_DIM), (k, e), zeros).astype(dtype)
        q_bthe = _constrain(q_bthe, (BATCH, SEQ, HEADS, HEAD_DIM))
        k_btke = _constrain(k_btke, (BATCH, SEQ, KV_HEADS, HEAD_DIM))

        inv_freq_r = rope_inverse_frequencies(e, cfg.rope_theta, cfg.rope_scaling)
        q_bthe = apply_rope(q_bthe, positions_bt, inv_freq_r)
        k_btke = apply_rope(k_btke, positions_bt, inv_freq_r)

        if layer_cache is None:
            out_bthe = attend(
                q_bthe,
                k_btke,
                v_btke,
                q_segment_bt=segment_ids_bt,
                kv_segment_bs=segment_ids_bt,
                q_pos_bt=positions_bt,
                kv_pos_bs=positions_bt,
                q_branch_bt=branch_ids_bt,
                kv_branch_bs=branch_ids_bt,
                impl=cfg.attention_impl,
                window=self.attention_window,
            )
            new_cache = None
        else:
            k_bske, v_bske = layer_cache
            k_bske = write_at(k_bske, k_btke.astype(k_bske.dtype), cache_meta.index)
            v_bske = write_at(v_bske, v_btke.astype(v_bske.dtype), cache_meta.index)
            out_bthe = attend(
                q_bthe,
                k_bske.astype(dtype),
                v_bske.astype(dtype),
                q_segment_bt=segment_ids_bt,
                kv_segment_bs=cache_meta.segment_ids_bs,
                q_pos_bt=positions_bt,
                kv_pos_bs=cache_meta.positions_bs,
                impl="xla",
                self_attention=False,
            )
            new_cache = (k_bske, v_bske)
        out_btd = jnp.einsum("bthe,hed->btd", out_bthe, wo_hed.astype(dtype))
        return out_btd, new_cache


class Mlp(nn.Module):
    """SwiGLU: down(silu(gate x) * up x)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_btd):
        cfg, init = self.cfg, _normal(self.cfg)
        w_gate_df = _param(self, "w_gate", (EMBED, MLP), (cfg.d_model, cfg.mlp_dim), init)
        w_up_df = _param(self, "w_up", (EMBED, MLP), (cfg.d_model, cfg.mlp_dim), init)
        w_down_fd = _param(self, "w_down", (MLP, EMBED), (cfg.mlp_dim, cfg.d_model), init)
        dtype = x_btd.dtype
        gate_btf = jnp.einsum("btd,df->btf", x_btd, w_gate_df.astype(dtype))
        up_btf = jnp.einsum("btd,df->btf", x_btd, w_up_df.astype(dtype))
        hidden_btf = _constrain(nn.silu(gate_btf) * up_btf, (BATCH, SEQ, MLP))
        return jnp.einsum("btf,fd->btd", hidden_btf, w_down_fd.astype(dtype))


class Block(nn.Module):
    """One pre-norm decoder layer; the scan body (carry = residual stream)."""

    cfg: ModelConfig
    attention_window: int = 0

    @nn.compact
    def __call__(self, x_btd, layer_cache, positions_bt, segment_ids_bt, branch_ids_bt, cache_meta):
        attn_out_btd, new_cache = Attention(self.cfg, self.attention_window, name="attn")(
            RMSNorm(self.cfg, name="attn_norm")(x_btd),
            positions_bt,
            segment_ids_bt,
            branch_ids_bt,
            layer_cache,
            cache_meta,
        )
        x_btd = x_btd + attn_out_btd
        x_btd = x_btd + Mlp(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(x_btd))
        return _constrain(x_btd, (BATCH, SEQ, EMBED)), new_cache


_REMAT_POLICIES = {
    "full": None,  # save nothing; recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _stacked_blocks(cfg: ModelConfig):
    """Block wrapped in remat (per config) and scanned over layers."""
    block = Block
    if cfg.remat != "none":
        block = nn.remat(block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
    return nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_layers,
        unroll=cfg.scan_unroll,
        metadata_params={nn.PARTITION_NAME: LAYERS},
    )


class Output(NamedTuple):
    """What one forward pass returns; heads absent from the config are None."""

    hidden_btd: jax.Array  # after the final RMSNorm
    logits_btv: jax.Array | None  # float32; [B, N, V] at `logits_at_bn` when given
    reward_bt: jax.Array | None  # float32; read it at reward-token positions (`gather_rows`)
    value_bt: jax.Array | None  # float32
    cache: KVCache | None


class _CacheMeta(NamedTuple):
    segment_ids_bs: jax.Array
    positions_bs: jax.Array
    index: jax.Array


class Transformer(nn.Module):
    """Embedding, scanned decoder layers, final norm, and the heads named in `cfg.heads`."""

    cfg: ModelConfig
    attention_window: int = 0  # > 0: no segment spans more tokens (see the module docstring)

    @nn.compact
    def __call__(
        self,
        tokens_bt,
        positions_bt,
        segment_ids_bt,
        cache: KVCache | None = None,
        logits_at_bn=None,
        branch_ids_bt=None,
    ):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        embedding_vd = _param(self, "embedding", (VOCAB, EMBED), (cfg.vocab_size, cfg.d_model), _normal(cfg))
        x_btd = _constrain(embedding_vd[tokens_bt].astype(dtype), (BATCH, SEQ, EMBED))

        cache_meta, layer_caches = None, None
        if cache is not None:
            cache_meta = _CacheMeta(
                write_at(cache.segment_ids_bs, segment_ids_bt, cache.index),
                write_at(cache.positions_bs, positions_bt, cache.index),
                cache.index,
            )
            layer_caches = (cache.k_lbske, cache.v_lbske)
        x_btd, new_layer_caches = _stacked_blocks(cfg)(cfg, self.attention_window, name="layers")(
            x_btd, layer_caches, positions_bt, segment_ids_bt, branch_ids_bt, cache_meta
        )
        hidden_btd = RMSNorm(cfg, name="final_norm")(x_btd)

        logits_btv = reward_bt = value_bt = None
        if "lm" in cfg.heads:
            # A sampler's prefill needs one position per row, not [B, T, V] logits.
            lm_in_btd = (
                hidden_btd if logits_at_bn is None else jnp.take_along_axis(hidden_btd, logits_at_bn[..., None], axis=1)
            )
            if cfg.tie_embeddings:
                logits_btv = jnp.einsum("btd,vd->btv", lm_in_btd, embedding_vd.astype(dtype))
            else:
                w_dv = _param(self, "lm_head", (EMBED, VOCAB), (cfg.d_model, cfg.vocab_size), _normal(cfg))
                logits_btv = jnp.einsum("btd,dv->btv", lm_in_btd, w_dv.astype(dtype))
            logits_btv = _constrain(logits_btv.astype(jnp.float32), (BATCH, SEQ, VOCAB))
        if "reward" in cfg.heads:
            w_d = _param(self, "reward_head", (EMBED,), (cfg.d_model,), _normal(cfg))
            reward_bt = jnp.einsum("btd,d->bt", hidden_btd, w_d.astype(dtype)).astype(jnp.float32)
        if "value" in cfg.heads:
            w_d = _param(self, "value_head", (EMBED,), (cfg.d_model,), _normal(cfg))
            value_bt = jnp.einsum("btd,d->bt", hidden_btd, w_d.astype(dtype)).astype(jnp.float32)
            if cfg.value_head_bias:
                value_bt = value_bt + _param(self, "value_head_bias", (), (), nn.initializers.zeros).astype(jnp.float32)

        new_cache = None
        if cache is not None:
            k_lbske, v_lbske = new_layer_caches
            new_cache = KVCache(
                k_lbske,
                v_lbske,
                cache_meta.segment_ids_bs,
                cache_meta.positions_bs,
                cache.index + tokens_bt.shape[1],
            )
        return Output(hidden_btd, logits_btv, reward_bt, value_bt, new_cache)


# ---------------------------------------------------------------------------------------------
# Helpers around the module
# ---------------------------------------------------------------------------------------------


def init_params(cfg: ModelConfig, rng: jax.Array, boxed: bool = False):
    """Random parameters; `boxed=True` keeps the `nn.LogicallyPartitioned` axis metadata."""
    tokens_bt = jnp.zeros((1, 1), jnp.int32)
    variables = Transformer(cfg).init(rng, tokens_bt, tokens_bt, tokens_bt + 1)
    return variables["params"] if boxed else nn.unbox(variables["params"])


def logical_axes(cfg: ModelConfig):
    """The logical-axes pytree of the parameters (no arrays are made)."""
    boxed = jax.eval_shape(functools.partial(init_params, cfg, boxed=True), jax.random.key(0))
    return nn.get_partition_spec(boxed)


def forward(
    cfg: ModelConfig,
    params,
    tokens_bt,
    positions_bt,
    segment_ids_bt,
    cache=None,
    logits_at_bn=None,
    *,
    branch_ids_bt=None,
    attention_window: int = 0,
):
    """One forward pass: `Transformer(cfg, attention_window).apply` with plain (unboxed) parameters;
    LM logits at every position, or only at `logits_at_bn` [B, N]; `branch_ids_bt` for rows in
    the shared-prefix layout."""
    return Transformer(cfg, attention_window).apply(
        {"params": params}, tokens_bt, positions_bt, segment_ids_bt, cache, logits_at_bn, branch_ids_bt
    )


def padded_inputs(mask_bt):
    """Positions and segment ids for right- or left-padded rows from a 0/1 mask."""
    mask_bt = jnp.asarray(mask_bt, jnp.int32)
    positions_bt = jnp.maximum(jnp.cumsum(mask_bt, axis=1) - 1, 0)
    return positions_bt, mask_bt


def last_token_index(segment_ids_bt):
    """Index of each row's last non-padding token (right padding): where a padded row's reward is read."""
    t = segment_ids_bt.shape[1]
    is_real_bt = segment_ids_bt != 0
    return t - 1 - jnp.argmax(is_real_bt[:, ::-1], axis=1)


def gather_rows(values_bt, index_bn):
    """values_bt[b, index_bn[b, n]] -> [B, N]: read a per-token output at given positions."""
    return jnp.take_along_axis(values_bt, index_bn, axis=1)
