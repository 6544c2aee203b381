"""Stage "train": the trainer's jitted update step, lowered over abstract state and batch."""

from __future__ import annotations

from polar_jax.aot.abstract import tracing_context
from polar_jax.aot.counting import shard_bytes, traced_matmul_flops
from polar_jax.aot.report import attention_text, empty_report


def lower(config, mesh):
    """(lowered step, report without the compiled figures) of the trainer's update step of
    `config` (`train.setup.jit_train_step`), over the abstract state and one abstract batch
    (`train.setup.abstract_batch`: the batch contract at config.data's sizes) on `mesh`."""
    import jax

    from polar_jax import flops
    from polar_jax.models.attention import resolve_impl
    from polar_jax.train import setup
    from polar_jax.train import state as train_state

    model_cfg = setup.model_config_from_sizes(config)
    optimizer, schedule = setup.build_optimizer(config)
    batch_in = setup.abstract_batch(config, mesh)
    abstract = train_state.abstract_state(model_cfg, optimizer, mesh)
    state_sharding = jax.tree.map(lambda x: x.sharding, abstract)
    step_fn = setup.jit_train_step(config, model_cfg, optimizer, schedule, state_sharding, setup.batch_shardings(mesh))
    with tracing_context(mesh):
        traced = step_fn.trace(abstract, batch_in)
        lowered = traced.lower()
        impl = resolve_impl(model_cfg.attention_impl, model_cfg.dtype, config.data.seq_len)
    batch, seq_len = config.data.batch_size, config.data.seq_len
    tokens = batch * seq_len
    report = empty_report(
        attention=attention_text(impl, model_cfg.attention_impl),
        tokens_per_step=tokens,
        num_params=model_cfg.num_params(),
        traced_flops=traced_matmul_flops(traced.jaxpr),
        state_bytes=shard_bytes(abstract),
        model_flops=flops.train_flops_per_token(model_cfg, seq_len, window=setup.attention_window(config)) * tokens,
    )
    if config.accum_steps > 1:
        report.notes.append(f"accum_steps={config.accum_steps}: micro-batches of {batch // config.accum_steps} rows")
    return lowered, report
