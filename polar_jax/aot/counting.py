"""Counting in lowered and compiled programs: collectives in HLO text, per-device bytes of
sharded abstract values, matmul FLOPs of a traced jaxpr and of XLA's cost analysis, and the
model-count FLOPs (`flops.py`'s 6 N + 6 L T d per token) of one PPO row."""

from __future__ import annotations

import math
import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Collective instructions in HLO text by kind (async `-start` forms count once, `-done` not)."""
    counts = {}
    for kind in COLLECTIVES:
        counts[kind] = len(re.findall(rf"(?<![\w%.-]){kind}(?:-start)?\(", hlo_text))
    return counts


def shard_bytes(tree) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (before TPU tile padding)."""
    import jax

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def traced_matmul_flops(jaxpr) -> float:
    """FLOPs of every matmul (2 x multiply-adds of each dot_general) in a traced program, loops
    expanded: a scan body counts `length` times, a shard_map body once per device, a while body
    once, the costlier branch of a cond. Pallas kernels count nothing (their insides are opaque)."""
    from jax.extend import core as jcore

    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
            (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
            rhs_free = math.prod(d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch)
            total += 2.0 * math.prod(lhs) * rhs_free
            continue
        if name == "pallas_call":
            continue
        inner = [traced_matmul_flops(sub) for sub in jcore.jaxprs_in_params(eqn.params)]
        if not inner:
            continue
        flops = max(inner) if name == "cond" else sum(inner)
        if name == "scan":
            flops *= eqn.params["length"]
        elif name == "shard_map":
            flops *= eqn.params["mesh"].size
        total += flops
    return total


def cost_analysis_flops(compiled) -> float | None:
    """FLOPs of one device's compiled program by XLA's cost analysis (a loop body counts once), if it gives any."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def ppo_row_flops(cfg, width: int, logit_positions: int = 0) -> float:
    """Training FLOPs (forward + backward) of one row of `width` tokens in the PPO update:
    `flops.py`'s 6 x decoder parameters (embedding and heads excluded) + 6 x layers x context
    x d_model per token, plus 6 d V per position whose LM logits are computed (the actor's
    `logits_at_bn`: the response positions) and 6 d per token of a reward or value head."""
    d = cfg.d_model
    scalar_heads = d * (("reward" in cfg.heads) + ("value" in cfg.heads))
    lm_head = d * cfg.vocab_size if "lm" in cfg.heads and not cfg.tie_embeddings else 0
    trunk = cfg.num_params(include_embedding=False) - lm_head - scalar_heads
    per_token = 6.0 * (trunk + scalar_heads) + 6.0 * cfg.num_layers * width * d
    return per_token * width + (6.0 * d * cfg.vocab_size * logit_positions if "lm" in cfg.heads else 0.0)
