"""TPU slices to compile for: per-chip HBM, device kinds, topology names and their compile-only
devices (from libtpu, no TPU touched), and the environment JAX needs before it picks a backend."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

# Per-chip HBM by TPU generation, GiB. "datasheet": Cloud TPU system-architecture pages
# (cloud.google.com/tpu/docs/v4: 32 GiB; /v5e: 16 GB; /v5p: 95 GB; /v6e: 32 GB).
# "usable": what XLA:TPU of libtpu 0.0.48 reports as available HBM per compile device when a
# program does not fit ("exceeds available HBM (95.73G)"), measured here with a 200 GiB
# program: the fit test uses it. v4 topologies come as one device per TensorCore (2 per
# chip, no megacore) from this libtpu, so its usable figure is per core.
HBM_GIB = {
    "v4": {"datasheet": 32.0, "usable": 15.25},
    "v5e": {"datasheet": 16.0, "usable": 15.75},
    "v5p": {"datasheet": 95.0, "usable": 95.73},
    "v6e": {"datasheet": 32.0, "usable": 31.24},
}
# `device.device_kind` of the compile-only devices -> generation.
DEVICE_KINDS = {
    "TPU v4": "v4",
    "TPU v5 lite": "v5e",
    "TPU v5": "v5p",
    "TPU v5p": "v5p",
    "TPU v6 lite": "v6e",
    "TPU v6e": "v6e",
}
# Accelerator-type prefixes of Cloud TPU: generation, whether the number counts TensorCores
# (v4, v5p: 2 per chip) or chips, and the rank of the chip torus.
_ACCELERATOR_TYPES = {
    "v4": ("v4", 2, 3),
    "v5p": ("v5p", 2, 3),
    "v5litepod": ("v5e", 1, 2),
    "v5e": ("v5e", 1, 2),
    "v6e": ("v6e", 1, 2),
}
GIB = 2**30


class LibtpuMissing(RuntimeError):
    """libtpu is not installed, so no TPU topology can be described."""


def libtpu_available() -> bool:
    """Whether the `libtpu` package (XLA's TPU compiler) is installed."""
    return importlib.util.find_spec("libtpu") is not None


def prepare_environment() -> None:
    """Before JAX picks its backends: local platform CPU (unless JAX_PLATFORMS is set) and
    libtpu allowed to load beside another process that holds /tmp/libtpu_lockfile."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    import jax
    from jax._src import xla_bridge

    if "JAX_PLATFORMS" not in os.environ and not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice to compile for: its canonical name, generation and compile-only devices."""

    name: str  # "v5p:4x4x4"
    generation: str  # "v4" | "v5e" | "v5p" | "v6e"
    devices: tuple
    chips: int

    @property
    def device_kind(self) -> str:
        """`device_kind` of the devices, e.g. "TPU v5"."""
        return self.devices[0].device_kind

    @property
    def hbm_bytes(self) -> int:
        """Usable HBM of one compile device (a chip; a TensorCore on v4)."""
        return int(HBM_GIB[self.generation]["usable"] * GIB)


def canonical_topology(name: str) -> tuple[str, str, tuple[int, ...]]:
    """(canonical "gen:AxBxC" name, generation, chip grid) of "v5p:4x4x4", "v5p-128" (Cloud
    accelerator type: TensorCores for v4 / v5p, chips for v5e / v6e), "v5litepod-256", ..."""
    name = name.strip()
    m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e):(\d+(?:x\d+)*)", name)
    if m:
        generation = _ACCELERATOR_TYPES[m.group(1)][0]
        dims = tuple(int(x) for x in m.group(2).split("x"))
        return f"{'v5e' if generation == 'v5e' else m.group(1)}:{m.group(2)}", generation, dims
    m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name)
    if not m:
        raise ValueError(
            f"topology {name!r}: use GEN:AxB[xC] (v5p:4x4x4, v5e:16x16, v6e:8x8, v4:2x2x2) "
            f"or a Cloud accelerator type (v5p-128, v5litepod-256, v6e-64, v4-32)"
        )
    generation, per_chip, rank = _ACCELERATOR_TYPES[m.group(1)]
    count = int(m.group(2))
    if count % per_chip or (count // per_chip) & (count // per_chip - 1):
        raise ValueError(
            f"topology {name!r}: the count must be a power of two"
            + (" of TensorCores (2 per chip)" if per_chip == 2 else " of chips")
        )
    dims = _grid(count // per_chip, rank)
    return f"{generation}:{'x'.join(map(str, dims))}", generation, dims


def _grid(chips: int, rank: int) -> tuple[int, ...]:
    """Cloud TPU's default slice shape for a power-of-two chip count (2x2x1, 2x2x2, 2x2x4,
    2x4x4, 4x4x4, 4x4x8 ... in 3D; 1x1, 2x2, 2x4, 4x4, 4x8 ... in 2D)."""
    if rank == 3 and chips == 4:
        return (2, 2, 1)
    dims = [1] * rank
    for _ in range(int(math.log2(chips))):
        dims[dims.index(min(dims))] *= 2  # double the smallest side, the first of equals
    return tuple(sorted(dims))


def get_topology(name: str) -> Topology:
    """The compile-only devices of a TPU slice (needs libtpu; no TPU is touched)."""
    if not libtpu_available():
        raise LibtpuMissing(
            "libtpu is not installed: run `launch/setup.sh --tpu` (or "
            "`pip install 'libtpu==0.0.48.*'`) to compile for TPU topologies"
        )
    prepare_environment()
    from jax.experimental import topologies

    canonical, generation, dims = canonical_topology(name)
    chips = math.prod(dims)
    kwargs = {}
    host = (2, 2, 1) if len(dims) == 3 else (2, 2)
    if any(d % h for d, h in zip(dims, host)):  # smaller than one host: a host of just these chips
        kwargs["chips_per_host_bounds"] = list(dims) + [1] * (3 - len(dims))
    devices = topologies.get_topology_desc(topology_name=canonical, platform="tpu", **kwargs).devices
    kind_generation = DEVICE_KINDS.get(devices[0].device_kind)
    if kind_generation != generation:
        raise ValueError(f"topology {name!r} gave {devices[0].device_kind!r} devices, not {generation}")
    return Topology(canonical, generation, tuple(devices), chips)
