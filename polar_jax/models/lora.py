"""LoRA (Hu et al., 2021) as pure functions over the parameter pytree; the decoder is untouched.

    lora = LoraConfig(rank=8, alpha=16.0, targets=("wq", "wv"))
    adapters = init_adapters(cfg, lora, key)        # {"layers": {"attn": {"wq": {"lora_a", "lora_b"}}}}
    params = merge(base_params, adapters, lora.scaling)   # W + alpha / rank x A @ B per target
    T.forward(cfg, params, ...)                     # the plain decoder on the merged weights

A target is one of the decoder's projections (`transformer.PROJECTIONS`: wq, wk, wv, wo, w_gate,
w_up, w_down), in every layer. A weight [L, *in, *out] gets A [L, *in, r] and B [L, r, *out]
(the scanned "layers" axis kept), so `merge` adds a rank-r update to each layer's weight. As
PEFT initialises them: A uniform in +-1/sqrt(fan_in) (kaiming_uniform with a = sqrt(5)), B
zeros, scaling alpha / rank (plain LoRA; rsLoRA's alpha / sqrt(rank) is not offered): the
zero-initialised adapters give the base model exactly.

Sharding stays in one place: an adapter's logical axes are its weight's (`transformer.logical_axes`,
declared once by `_param`) with the rank axis "lora" in between, A (layers, *in, lora) and B
(layers, lora, *out), so `parallel.RULES` shards A like the weight's input side and B like its
output side, and replicates the rank.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig

ALL_TARGETS = tuple(T.PROJECTIONS)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Which projections get adapters and of what rank (hashable: a static argument of jitted steps)."""

    rank: int
    alpha: float = 16.0
    targets: tuple[str, ...] = ALL_TARGETS

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora.rank={self.rank}: must be >= 1 (0 turns LoRA off where a config allows it)")
        if not self.targets:
            raise ValueError(f"lora.targets is empty; choose some of {', '.join(ALL_TARGETS)}")
        unknown = [t for t in self.targets if t not in T.PROJECTIONS]
        if unknown:
            raise ValueError(
                f"lora.targets: {unknown[0]!r} is not a projection of the decoder; choose from {', '.join(ALL_TARGETS)}"
            )
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"lora.targets={self.targets} names a projection twice")

    @property
    def scaling(self) -> float:
        """alpha / rank: the factor of A @ B in the merged weight."""
        return self.alpha / self.rank


@functools.lru_cache(maxsize=32)
def _axes_and_shapes(cfg: ModelConfig):
    """The decoder's logical-axes tree and parameter shapes (abstract: nothing is allocated)."""
    return T.logical_axes(cfg), jax.eval_shape(functools.partial(T.init_params, cfg), jax.random.key(0))


def _split(cfg: ModelConfig, target: str) -> tuple[tuple[str, ...], int, tuple[int, ...]]:
    """(the weight's logical axes, its number of input axes after "layers", its shape) of one target."""
    path, n_in = T.PROJECTIONS[target]
    axes_tree, shapes = _axes_and_shapes(cfg)
    axes, shape = tuple(get_at(axes_tree, path)), tuple(get_at(shapes, path).shape)
    assert axes[0] == T.LAYERS and len(axes) == len(shape), (target, axes, shape)
    return axes, n_in, shape


def factor_shapes(cfg: ModelConfig, target: str, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(A's shape [L, *in, r], B's shape [L, r, *out]) of one target."""
    _, n_in, shape = _split(cfg, target)
    return (shape[0], *shape[1 : 1 + n_in], rank), (shape[0], rank, *shape[1 + n_in :])


def adapter_axes(cfg: ModelConfig, lora: LoraConfig) -> dict:
    """The adapters' logical axes as `PartitionSpec`s of logical names, nested as the parameters
    ({"layers": {"attn": {"wq": {"lora_a", "lora_b"}}}}, as `transformer.logical_axes` gives the
    weights'), derived from each target weight's: A (layers, *in, lora), B (layers, lora, *out)."""
    out: dict = {}
    for target in lora.targets:
        axes, n_in, _ = _split(cfg, target)
        a_axes = PartitionSpec(T.LAYERS, *axes[1 : 1 + n_in], T.LORA)
        b_axes = PartitionSpec(T.LAYERS, T.LORA, *axes[1 + n_in :])
        set_at(out, T.PROJECTIONS[target][0], {"lora_a": a_axes, "lora_b": b_axes})
    return out


def init_adapters(cfg: ModelConfig, lora: LoraConfig, rng: jax.Array, boxed: bool = False) -> dict:
    """Fresh adapters in `cfg.param_dtype`: A uniform in +-1/sqrt(fan_in) (fan_in = the weight's
    input size, as PEFT's default), B zeros; `boxed=True` wraps each in `nn.LogicallyPartitioned`
    with its logical axes (what the train state's shardings are read from)."""
    dtype = jnp.dtype(cfg.param_dtype)
    axes_tree = adapter_axes(cfg, lora)
    out: dict = {}
    for i, target in enumerate(lora.targets):
        a_shape, b_shape = factor_shapes(cfg, target, lora.rank)
        bound = 1.0 / math.sqrt(math.prod(a_shape[1:-1]))
        a = jax.random.uniform(jax.random.fold_in(rng, i), a_shape, dtype, minval=-bound, maxval=bound)
        b = jnp.zeros(b_shape, dtype)
        path = T.PROJECTIONS[target][0]
        if boxed:
            names = get_at(axes_tree, path)
            a = nn.LogicallyPartitioned(a, tuple(names["lora_a"]))
            b = nn.LogicallyPartitioned(b, tuple(names["lora_b"]))
        set_at(out, path, {"lora_a": a, "lora_b": b})
    return out


def delta(lora_a, lora_b):
    """A [L, *in, r] @ B [L, r, *out] -> [L, *in, *out], float32 at full precision, layer by layer."""
    layers, rank = lora_a.shape[0], lora_a.shape[-1]
    in_shape, out_shape = lora_a.shape[1:-1], lora_b.shape[2:]
    a_lir = lora_a.astype(jnp.float32).reshape(layers, -1, rank)
    b_lro = lora_b.astype(jnp.float32).reshape(layers, rank, -1)
    d_lio = jnp.matmul(a_lir, b_lro, precision=jax.lax.Precision.HIGHEST)
    return d_lio.reshape(layers, *in_shape, *out_shape)


def merge(params: dict, adapters: dict, scaling: float) -> dict:
    """The parameters with each adapted weight replaced by W + scaling x A @ B (in W's dtype);
    every other leaf is the same array. Pure: `params` and `adapters` are not changed."""
    out = _copy_dicts(params)
    for path, factors in _adapter_items(adapters):
        w = get_at(params, path)
        set_at(
            out, path, (w.astype(jnp.float32) + scaling * delta(factors["lora_a"], factors["lora_b"])).astype(w.dtype)
        )
    return out


def policy_params(trained, base, lora: LoraConfig | None):
    """The parameters the decoder runs: `trained` itself without LoRA; with it, the frozen `base`
    merged with the adapters `trained`."""
    if lora is None:
        return trained
    return merge(base, trained, lora.scaling)


_merge_jit = jax.jit(merge, static_argnames=("scaling",))


def merged(trained, base, lora: LoraConfig | None):
    """`policy_params` outside a compiled step (rollouts, evaluation, export): only the adapted
    weights are computed (compiled), every other leaf is the base's own array, not a copy."""
    if lora is None:
        return trained
    targets: dict = {}
    for path, _ in _adapter_items(trained):
        set_at(targets, path, get_at(base, path))
    out = _copy_dicts(base)
    new = _merge_jit(targets, trained, lora.scaling)
    for path, _ in _adapter_items(trained):
        set_at(out, path, get_at(new, path))
    return out


def num_adapter_params(cfg: ModelConfig, lora: LoraConfig) -> int:
    """Trainable parameters: over targets and layers, rank x (input size + output size)."""
    return sum(math.prod(a) + math.prod(b) for a, b in (factor_shapes(cfg, t, lora.rank) for t in lora.targets))


def targets_of(adapters: dict) -> tuple[str, ...]:
    """The target names an adapter tree holds, in `transformer.PROJECTIONS` order."""
    paths = {path for path, _ in _adapter_items(adapters)}
    return tuple(t for t, (path, _) in T.PROJECTIONS.items() if path in paths)


# ------------------------------------------------------------------------------ pytree paths


def _adapter_items(adapters: dict, prefix: str = ""):
    """(path "a/b/c", {"lora_a", "lora_b"}) for every adapted weight."""
    for key, value in adapters.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and set(value) == {"lora_a", "lora_b"}:
            yield path, value
        elif isinstance(value, dict):
            yield from _adapter_items(value, path + "/")


def _copy_dicts(tree):
    return {k: _copy_dicts(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def get_at(tree, path: str):
    """The subtree at "a/b/c"."""
    for p in path.split("/"):
        tree = tree[p]
    return tree


def set_at(tree: dict, path: str, value) -> None:
    """Put `value` at "a/b/c", making the dicts on the way."""
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value
