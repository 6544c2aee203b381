"""Meshes, logical-axis rules and shardings: the only place that knows about devices.

Parameters and activations name logical axes (`models/transformer.py`); `RULES` maps them to
the mesh axes `data`, `fsdp` and `tensor`. Changing how a model is sharded means changing
the mesh sizes or the rules in a config, never model code.

    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})   # -1 takes the remaining devices
    with use_rules(mesh, RULES):
        state = jax.jit(init, out_shardings=...)(...)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Batch over data and fsdp (FSDP is data parallel with sharded
# weights); weights sharded over fsdp along embed and over tensor along heads / mlp / vocab.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("seq", None),
    ("head_dim", None),
    ("layers", None),
    ("cache_seq", None),
    ("lora", None),  # a LoRA adapter's rank axis: small, replicated; its other axes shard as its weight's
)


def mesh_shape(axes: dict[str, int], num_devices: int) -> dict[str, int]:
    """Resolve one -1 size to the devices left over; check the product."""
    sizes = {name: int(axes.get(name, 1)) for name in MESH_AXES}
    unknown = [k for k in axes if k not in MESH_AXES]
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}")
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {free}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"{num_devices} devices do not divide into mesh {axes}")
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, {num_devices} are present")
    return sizes


def make_mesh(axes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all (or the given) devices with axes data, fsdp, tensor (Auto sharding)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_shape(axes, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    try:  # topology-aware device order on real hardware
        device_array = mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # noqa: BLE001 - simulated or irregular device sets
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def logical_to_sharding(logical_specs, mesh: Mesh, rules=RULES):
    """A pytree of logical PartitionSpecs -> NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules=RULES, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, ...] input array: batch split over the batch mesh axes."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, spec)


def place(params, logical_axes, mesh: Mesh, rules=RULES):
    """Host parameters -> arrays on `mesh`, each sharded by its logical axes (`logical_axes`: the
    same tree of PartitionSpecs, e.g. `models.transformer.logical_axes(cfg)`)."""

    def put(host, sharding):
        host = np.asarray(host)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, params, logical_to_sharding(logical_axes, mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding (scalars, RNG keys, step counters)."""
    return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules=RULES):
    """Make `mesh` and `rules` current, so activation constraints in the model take effect."""
    with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> None:
    """Join a multi-process run (TPU pod slice, GPU cluster); nothing to do for one process.

    `auto`: let JAX detect the cluster (TPU pod slices, Slurm, ...). Otherwise pass all three
    of coordinator, process count and id (e.g. several processes on one machine).
    """
    if not auto and (num_processes in (None, 1) or coordinator_address is None):
        if _cluster_detected():
            log.warning("a cluster environment is set but multi-process was not asked for: running as one process")
        return
    # CPU processes need a collectives library to talk to each other (GPU/TPU ignore this).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # With `auto`, what is given is used and the rest detected (None: JAX's cluster detection).
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    log.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def barrier(name: str) -> None:
    """Wait until every process of the run has reached the barrier called `name` (a no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        with all_devices():  # inside a process-local mesh context too
            multihost_utils.sync_global_devices(name)


def gather_owned(values_n: np.ndarray, owner_n: np.ndarray) -> np.ndarray:
    """Entry i of `values_n` as process `owner_n[i]` computed it, on every process: each process
    fills the entries it owns (any value elsewhere) and calls this with the same `owner_n`. One
    process: `values_n` unchanged."""
    values_n, owner_n = np.asarray(values_n), np.asarray(owner_n)
    if jax.process_count() == 1:
        return values_n
    from jax.experimental import multihost_utils

    with all_devices():  # inside a process-local mesh context too
        all_pn = np.asarray(multihost_utils.process_allgather(values_n))  # [processes, N]
    return all_pn[owner_n, np.arange(len(values_n))]


def _cluster_detected() -> bool:
    return any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"))


def local_mesh(mesh: Mesh) -> Mesh:
    """A mesh over this process's devices shaped like `mesh` (its tensor and fsdp sizes where they
    divide the local device count, data takes the rest): where process-local work (an RFT
    process's share of the rollouts, its scoring) runs. One process: `mesh` itself."""
    if jax.process_count() == 1:
        return mesh
    devices = jax.local_devices()
    n, tensor, fsdp = len(devices), mesh.shape["tensor"], mesh.shape["fsdp"]
    if n % tensor:
        tensor = 1
    if n % (tensor * fsdp):
        fsdp = 1
    return make_mesh({"data": -1, "fsdp": fsdp, "tensor": tensor}, devices)


def allgather_host(tree):
    """Every leaf of `tree` (host arrays, or jax.Arrays on any mesh, also spanning other
    processes) as a numpy array of its global value, on every process. One process: np.asarray."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    with all_devices():
        return jax.tree.map(one, tree)


def concat_processes(local: np.ndarray) -> np.ndarray:
    """Every process's `local` array (the same shape on each), concatenated along axis 0 in
    process order, on every process. One process: `local`."""
    local = np.asarray(local)
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    with all_devices():
        gathered = np.asarray(multihost_utils.process_allgather(local))  # [processes, ...]
    return gathered.reshape((-1,) + local.shape[1:])


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process (every process calls this; one process: `flag`)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    with all_devices():
        return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).any())


@contextlib.contextmanager
def all_devices():
    """A mesh context over every device of every process, for the collectives that gather host
    values (`process_allgather`) where a process-local mesh is the current one."""
    with jax.sharding.set_mesh(Mesh(np.asarray(jax.devices()), ("processes",))):
        yield
