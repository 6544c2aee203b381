"""The train state and its creation directly in its sharded layout (no full copy on one device)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from polar_jax import parallel
from polar_jax.models import lora as lora_lib
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig


class TrainState(flax.struct.PyTreeNode):
    """Everything a step changes. `skipped` counts updates dropped for non-finite values,
    `bad_streak` how many of the latest steps in a row were dropped."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    skipped: jax.Array
    bad_streak: jax.Array


def apply_guarded(state: TrainState, grads, loss, optimizer: optax.GradientTransformation):
    """One optimiser update of `state` by `grads`, skipped when the loss, the gradient norm or the
    updated parameters are non-finite; returns (new_state, finite, grad_norm).

    A skipped update leaves params and optimiser state as they were and counts the step in
    `skipped` / `bad_streak`; `step` advances either way.
    """
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    # An update that overflows the parameters is as bad as a non-finite gradient.
    finite &= jnp.isfinite(optax.tree.norm(new_params))

    def keep(new, old):
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    new_state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state),
        skipped=state.skipped + (~finite).astype(jnp.int32),
        bad_streak=jnp.where(finite, 0, state.bad_streak + 1),
    )
    return new_state, finite, grad_norm


def _boxed_state(model_cfg: ModelConfig, optimizer: optax.GradientTransformation, rng, lora=None):
    """The state with boxed (logical-axes) leaves: the model's parameters, or with `lora` its adapters only."""
    if lora is None:
        params = T.init_params(model_cfg, rng, boxed=True)
    else:
        params = lora_lib.init_adapters(model_cfg, lora, rng, boxed=True)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(rng),
        skipped=jnp.zeros((), jnp.int32),
        bad_streak=jnp.zeros((), jnp.int32),
    )


def state_shardings(model_cfg: ModelConfig, optimizer, mesh: Mesh, rules=parallel.RULES, lora=None):
    """NamedShardings of every state leaf, from the parameters' logical axes.

    Optimiser moments inherit their parameter's axes (optax maps over the boxed leaves);
    scalars and the RNG are replicated. With `lora` (a `models.lora.LoraConfig`) the trained
    parameters are the adapters alone, sharded by the axes `lora.adapter_axes` derives.
    """
    abstract = jax.eval_shape(lambda k: _boxed_state(model_cfg, optimizer, k, lora), jax.random.key(0))
    specs = nn.get_partition_spec(abstract)
    return parallel.logical_to_sharding(specs, mesh, rules)


def abstract_state(model_cfg: ModelConfig, optimizer, mesh: Mesh, rules=parallel.RULES, lora=None) -> TrainState:
    """The state as ShapeDtypeStructs with their shardings: a restore target, nothing allocated."""
    shardings = state_shardings(model_cfg, optimizer, mesh, rules, lora)
    shapes = jax.eval_shape(lambda k: nn.unbox(_boxed_state(model_cfg, optimizer, k, lora)), jax.random.key(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def create_state(
    model_cfg: ModelConfig, optimizer, rng, mesh: Mesh, rules=parallel.RULES, params: dict | None = None, lora=None
) -> TrainState:
    """A fresh state on `mesh`: random parameters (params=None; with `lora`, fresh adapters) or
    the given host arrays, each placed shard by shard; optimiser state initialised where it lives."""
    shardings = state_shardings(model_cfg, optimizer, mesh, rules, lora)
    with parallel.use_rules(mesh, rules):
        if params is None:

            def init(k):
                return nn.unbox(_boxed_state(model_cfg, optimizer, k, lora))

            return jax.jit(init, out_shardings=shardings)(rng)
        placed = jax.tree.map(_place, params, shardings.params)

        def init_rest(p, k):
            return TrainState(
                step=jnp.zeros((), jnp.int32),
                params=p,
                opt_state=optimizer.init(p),
                rng=jax.random.key_data(k),
                skipped=jnp.zeros((), jnp.int32),
                bad_streak=jnp.zeros((), jnp.int32),
            )

        return jax.jit(init_rest, out_shardings=shardings, donate_argnums=0)(placed, rng)


def _place(host_array, sharding) -> jax.Array:
    """Put a host array on its sharding, each device receiving only its own slice."""
    host_array = np.asarray(host_array)
    return jax.make_array_from_callback(host_array.shape, sharding, lambda index: host_array[index])
