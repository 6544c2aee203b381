"""The size family of a scaling study and the paper's hyper-parameter fits.

Depth/width rule: a model of `L` layers has `d_model = aspect_ratio x L` (64 in the main
family: 2 layers -> 128 wide, 28 layers -> 1792 wide), heads of `head_dim` (64) dimensions so
`num_heads = d_model / head_dim`, `num_heads / kv_group` key/value heads (1 = full multi-head
attention), and a SwiGLU MLP of `8/3 x d_model` rounded up to a multiple of `mlp_multiple`
(64), which keeps the MLP's parameters at twice the attention's. Per layer that is about
`12 d_model^2` parameters, so N (non-embedding) = 12 L d_model^2 = 12 aspect^2 L^3: the main
family runs from 1.3M (3 layers) to 1.1B (28 layers). Fixing the aspect ratio follows Kaplan et
al. (2020), who found the loss at fixed N nearly independent of shape for aspect ratios
between about 20 and 200. The CPU family (`CPU_RULE`) uses aspect 16 and 16-dim heads, so that
its members (3.4K to 665K parameters) train in minutes on two cores.

Sizes are named by their non-embedding parameter count ("1.3M", "85M", "1.1B"): the count
does not depend on the vocabulary, which each run takes from its data.

The paper's fits (Dou et al., arXiv 2507.05197; N, Dp, Drm in millions of parameters / tokens):
    LR    = 2.306e-4 x N^0.01125 x Dp^-0.66587 x Drm^0.33916      (`paper_lr`)
    batch = 31.9032 x N^0.06944 x Drm^0.52997   samples per step  (`paper_batch`)
The LR fit is for reward models initialised from a base LM pre-trained on Dp tokens; it has
no value for a model trained from scratch (Dp = 0).
"""

from __future__ import annotations

import dataclasses
import math

from polar_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class DepthWidthRule:
    """How a layer count becomes a model shape (see the module docstring)."""

    aspect_ratio: int = 64  # d_model / num_layers
    head_dim: int = 64
    kv_group: int = 1  # query heads per key/value head
    mlp_multiple: int = 64  # mlp_dim is rounded up to a multiple of this

    def shape(self, num_layers: int) -> dict:
        """The ModelConfig size fields (all but vocab_size) of a model with `num_layers` layers."""
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers}: need at least 1")
        d_model = self.aspect_ratio * num_layers
        if d_model % self.head_dim:
            raise ValueError(
                f"d_model={d_model} (aspect_ratio {self.aspect_ratio} x {num_layers} layers) is not a "
                f"multiple of head_dim={self.head_dim}"
            )
        num_heads = d_model // self.head_dim
        if num_heads % self.kv_group:
            raise ValueError(f"{num_heads} heads do not split into groups of kv_group={self.kv_group}")
        mlp_dim = -(-8 * d_model // (3 * self.mlp_multiple)) * self.mlp_multiple
        return dict(
            d_model=d_model,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_heads // self.kv_group,
            head_dim=self.head_dim,
            mlp_dim=mlp_dim,
        )


MAIN_RULE = DepthWidthRule()
MAIN_LAYERS = (3, 4, 6, 8, 12, 16, 20, 24, 28)  # 1.3M ... 1.1B non-embedding parameters
CPU_RULE = DepthWidthRule(aspect_ratio=16, head_dim=16, kv_group=1, mlp_multiple=16)
CPU_LAYERS = (1, 2, 3, 4, 5, 6)  # 3.4K ... 665K


def model_config(shape: dict, vocab_size: int) -> ModelConfig:
    """A reward-model ModelConfig of `shape` (from `DepthWidthRule.shape`) over `vocab_size` ids."""
    return ModelConfig(vocab_size=vocab_size, **shape, heads=("reward",))


def non_embedding_params(shape: dict) -> int:
    """Parameters of a reward model of `shape`, the embedding table excluded (vocabulary-free)."""
    return model_config(shape, vocab_size=1).num_params(include_embedding=False)


def short_count(n: float) -> str:
    """A count in two significant figures with a K/M/B suffix: 1_327_488 -> "1.3M"."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            value = n / scale
            break
    else:
        return f"{n:.0f}"
    text = f"{value:.2g}" if value < 100 else f"{value:.0f}"
    if "e" in text:  # .2g writes 120 as 1.2e+02
        text = f"{float(text):.0f}"
    return text + suffix


def family(rule: DepthWidthRule, layers: tuple[int, ...]) -> dict[str, dict]:
    """{name: shape} for each layer count, smallest first; names are non-embedding counts."""
    out = {}
    for num_layers in sorted(layers):
        shape = rule.shape(num_layers)
        name = short_count(non_embedding_params(shape))
        if name in out:
            name = f"{name}-L{num_layers}"
        out[name] = shape
    return out


def describe(sizes: dict[str, dict]) -> str:
    """A table of a family: name, layers, widths, non-embedding parameters."""
    lines = [
        f"{'name':>8} {'layers':>6} {'d_model':>7} {'heads':>5} {'kv':>3} {'head_dim':>8} {'mlp_dim':>7} "
        f"{'params (non-emb.)':>17}"
    ]
    for name, s in sizes.items():
        lines.append(
            f"{name:>8} {s['num_layers']:>6} {s['d_model']:>7} {s['num_heads']:>5} {s['num_kv_heads']:>3} "
            f"{s['head_dim']:>8} {s['mlp_dim']:>7} {non_embedding_params(s):>17,}"
        )
    return "\n".join(lines)


def paper_lr(params_m: float, base_tokens_m: float, rm_tokens_m: float) -> float:
    """The paper's LR fit: 2.306e-4 N^0.01125 Dp^-0.66587 Drm^0.33916 (all in millions)."""
    for name, value in (("params_m", params_m), ("base_tokens_m", base_tokens_m), ("rm_tokens_m", rm_tokens_m)):
        if not value > 0:
            raise ValueError(
                f"paper_lr: {name}={value} must be > 0 (the fit is for RMs initialised from a base LM "
                "pre-trained on base_tokens_m million tokens; use a fixed LR from scratch)"
            )
    return 2.306e-4 * params_m**0.01125 * base_tokens_m**-0.66587 * rm_tokens_m**0.33916


def paper_batch(params_m: float, rm_tokens_m: float) -> float:
    """The paper's batch fit in samples (triplets) per step: 31.9032 N^0.06944 Drm^0.52997 (millions)."""
    for name, value in (("params_m", params_m), ("rm_tokens_m", rm_tokens_m)):
        if not value > 0:
            raise ValueError(f"paper_batch: {name}={value} must be > 0")
    return 31.9032 * params_m**0.06944 * rm_tokens_m**0.52997


def rows_for_samples(samples: float, pairs_per_row: float, multiple: int = 1) -> int:
    """Packed rows per step that hold about `samples` pairs, rounded up to a multiple of `multiple`."""
    rows = max(1, math.ceil(samples / pairs_per_row))
    return -(-rows // multiple) * multiple
