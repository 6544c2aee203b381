"""What the stage lowerings share: abstract (sharded `jax.ShapeDtypeStruct`) parameters, and
the context a step is traced in on a mesh of compile-only devices."""

from __future__ import annotations

import contextlib


def abstract_params(cfg, mesh):
    """The model's parameters as `jax.ShapeDtypeStruct`s sharded by their logical axes on `mesh`."""
    import jax

    from polar_jax import parallel
    from polar_jax.models import transformer as T

    shardings = parallel.logical_to_sharding(T.logical_axes(cfg), mesh)
    shapes = jax.eval_shape(lambda k: T.init_params(cfg, k), jax.random.key(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def abstract_rng(mesh):
    """A replicated abstract PRNG key (`jax.random.key`'s shape and dtype) on `mesh`."""
    import jax

    from polar_jax import parallel

    key = jax.eval_shape(jax.random.key, 0)
    return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=parallel.replicated(mesh))


@contextlib.contextmanager
def tracing_context(mesh):
    """What `parallel.use_rules(mesh)` gives the trainer's step, as an abstract mesh: the model
    reads only the abstract mesh (activation constraints, the attention back-end's target
    platform, shard_map), while eager work done during tracing (the splash kernel's mask
    tables) stays on the host CPU; a concrete mesh of compile-only devices would try to run it
    there."""
    import flax.linen as nn
    import jax

    from polar_jax import parallel

    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(parallel.RULES):
        yield
