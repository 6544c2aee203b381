"""Stage "engine": one decode call of the continuous-batching engine (`engine.steps.decode`) of a
config's model as a causal LM: S slots of prompt_len + max_new_tokens cache positions, the state
sharded by `engine.steps.SLOT_AXES` (slots over data x fsdp, kv heads over tensor)."""

from __future__ import annotations

from polar_jax.aot.abstract import abstract_params, tracing_context
from polar_jax.aot.counting import shard_bytes
from polar_jax.aot.report import empty_report


def abstract_slots(model_cfg, sampling, mesh, slots: int, cache_len: int):
    """The engine's decode state as sharded `jax.ShapeDtypeStruct`s (no arrays are made)."""
    import jax

    from polar_jax import parallel
    from polar_jax.engine import steps

    shapes = jax.eval_shape(steps.empty_slots, model_cfg, sampling, slots, cache_len)
    axes = jax.tree.leaves(steps.SLOT_AXES, is_leaf=steps.is_axes)
    leaves, treedef = jax.tree.flatten(shapes)
    out = []
    for shape, axis in zip(leaves, axes):
        spec = ("batch",) if axis is None else axis  # the per-slot keys: split as the slots are
        sharding = parallel.logical_to_sharding(jax.sharding.PartitionSpec(*spec), mesh)
        out.append(jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding))
    return jax.tree.unflatten(treedef, out)


def lower(config, mesh, slots: int, prompt_len: int, max_new_tokens: int):
    """(lowered call, report without the compiled figures) of one engine decode call of `config`'s
    model: `slots` slots, caches of `prompt_len` + `max_new_tokens`, POLAR sampling."""
    import jax
    import jax.numpy as jnp

    from polar_jax import parallel, sampling
    from polar_jax.engine import steps
    from polar_jax.train import setup

    model_cfg = setup.model_config_from_sizes(config, heads=("lm",))
    batch_axes = mesh.shape["data"] * mesh.shape["fsdp"]
    if slots % batch_axes:
        raise ValueError(f"{slots} slots do not divide over data x fsdp = {batch_axes} devices (--sample-batch)")
    params = abstract_params(model_cfg, mesh)
    policy = sampling.SamplingConfig.polar(stop_ids=(2,), max_new_tokens=max_new_tokens)
    state = abstract_slots(model_cfg, policy, mesh, slots, prompt_len + max_new_tokens)
    min_live = jax.ShapeDtypeStruct((), jnp.int32, sharding=parallel.replicated(mesh))
    count = jax.ShapeDtypeStruct((), jnp.int32, sharding=parallel.replicated(mesh))
    with tracing_context(mesh):
        lowered = steps.decode.lower(model_cfg, policy, params, state, min_live, count)
    report = empty_report(
        attention="xla (every slot attends over its own KV cache)",
        tokens_per_step=slots,
        num_params=model_cfg.num_params(),
        state_bytes=shard_bytes(params) + shard_bytes(state),
        model_flops=2.0 * model_cfg.num_params(include_embedding=False) * slots,
        model_flops_rule="2 N per token, one token per slot per decode step, attention excluded",
    )
    report.notes.append(
        f"one engine decode call: {slots} slots x ({prompt_len} + {max_new_tokens}) cache positions, POLAR "
        "sampling (T 1.0, top-p 0.9, top-k 50); XLA's figure counts the decode loop's body once"
    )
    return lowered, report
