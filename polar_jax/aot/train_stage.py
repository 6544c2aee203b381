"""Stage "train": the trainer's jitted update step, lowered over abstract state and batch."""

from __future__ import annotations

from polar_jax.aot.abstract import tracing_context
from polar_jax.aot.counting import shard_bytes, traced_matmul_flops
from polar_jax.aot.report import attention_text, empty_report


def lower(config, mesh):
    """(lowered step, report without the compiled figures) of the trainer's update step of
    `config` (`trainer.jit_train_step`), over abstract state and one abstract batch on `mesh`."""
    import jax
    import jax.numpy as jnp

    from polar_jax import flops
    from polar_jax.models.attention import resolve_impl
    from polar_jax.train import state as train_state
    from polar_jax.train import step as steps
    from polar_jax.train import trainer

    model_cfg = trainer.model_config_from_sizes(config)
    optimizer, schedule = trainer.build_optimizer(config)
    batch, seq_len = config.data.batch_size, config.data.seq_len
    batch_axes = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch % batch_axes:
        raise ValueError(f"data.batch_size={batch} does not divide over data x fsdp = {batch_axes} devices")
    abstract = train_state.abstract_state(model_cfg, optimizer, mesh)
    state_sharding = jax.tree.map(lambda x: x.sharding, abstract)
    batch_sharding = trainer.batch_shardings(mesh)
    pairs = config.data.max_pairs_per_row
    shapes = {"tokens_bt": ((batch, seq_len), jnp.int32), "segment_ids_bt": ((batch, seq_len), jnp.int32),
              "positions_bt": ((batch, seq_len), jnp.int32), "reward_index_bp2": ((batch, pairs, 2), jnp.int32),
              "pair_mask_bp": ((batch, pairs), jnp.bool_)}
    assert set(shapes) == set(steps.BATCH_KEYS), "the batch contract changed: update polar_jax/aot/train_stage.py"
    abstract_batch = {k: jax.ShapeDtypeStruct(s, d, sharding=batch_sharding[k]) for k, (s, d) in shapes.items()}
    step_fn = trainer.jit_train_step(config, model_cfg, optimizer, schedule, state_sharding, batch_sharding)
    with tracing_context(mesh):
        traced = step_fn.trace(abstract, abstract_batch)
        lowered = traced.lower()
        impl = resolve_impl(model_cfg.attention_impl, model_cfg.dtype, seq_len)
    tokens = batch * seq_len
    report = empty_report(attention=attention_text(impl, model_cfg.attention_impl), tokens_per_step=tokens,
                          num_params=model_cfg.num_params(), traced_flops=traced_matmul_flops(traced.jaxpr),
                          state_bytes=shard_bytes(abstract),
                          model_flops=flops.train_flops_per_token(model_cfg, seq_len) * tokens)
    if config.accum_steps > 1:
        report.notes.append(f"accum_steps={config.accum_steps}: micro-batches of {batch // config.accum_steps} rows")
    return lowered, report
