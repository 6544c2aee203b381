"""Stage "sample": the KV-cache sampler (`sampling.generate`) of a config's model as a causal
LM, lowered over abstract parameters and prompts."""

from __future__ import annotations

from polar_jax.aot.abstract import abstract_params, abstract_rng, tracing_context
from polar_jax.aot.counting import shard_bytes
from polar_jax.aot.report import empty_report


def lower(config, mesh, batch: int, prompt_len: int, max_new_tokens: int):
    """(lowered call, report without the compiled figures) of one `sampling.generate` call of
    `config`'s model as a causal LM: `batch` prompts of `prompt_len` tokens plus `max_new_tokens`."""
    import jax
    import jax.numpy as jnp

    from polar_jax import parallel, sampling
    from polar_jax.train import setup

    model_cfg = setup.model_config_from_sizes(config, heads=("lm",))
    batch_axes = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch % batch_axes:
        raise ValueError(f"{batch} prompts do not divide over data x fsdp = {batch_axes} devices (--sample-batch)")
    params = abstract_params(model_cfg, mesh)
    prompt = jax.ShapeDtypeStruct((batch, prompt_len), jnp.int32, sharding=parallel.batch_sharding(mesh))
    lengths = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=parallel.batch_sharding(mesh, ndim=1))
    rng = abstract_rng(mesh)
    policy = sampling.SamplingConfig.polar(stop_ids=(2,), max_new_tokens=max_new_tokens)
    with tracing_context(mesh):
        lowered = sampling.generate.lower(model_cfg, params, prompt, lengths, policy, rng)
    tokens = batch * (prompt_len + max_new_tokens)
    report = empty_report(
        attention="xla (prefill and decode read the KV cache; the fused kernels take none)",
        tokens_per_step=tokens,
        num_params=model_cfg.num_params(),
        state_bytes=shard_bytes(params),
        model_flops=2.0 * model_cfg.num_params(include_embedding=False) * tokens,
        model_flops_rule="2 N per token: forward only, attention excluded, every row to the end",
    )
    report.notes.append(
        f"one call: {batch} prompts x ({prompt_len} + {max_new_tokens}) tokens, POLAR sampling "
        "(T 1.0, top-p 0.9, top-k 50); XLA's figure counts the decode loop's body once"
    )
    return lowered, report
