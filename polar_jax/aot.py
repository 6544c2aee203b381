"""Ahead-of-time compilation for TPU topologies, on a machine without TPUs.

With `libtpu` installed (`launch/setup.sh --tpu`), XLA compiles for a TPU slice described
only by its name ("v5p:4x4x4", "v5p-128", "v5litepod-256", "v6e:16x16"): the devices are
compile-only, nothing runs and no weights or data are read. The step compiled is the one
training runs (`trainer.jit_train_step`, with the TPU attention kernel that "auto" picks on
TPU), over `jax.ShapeDtypeStruct`s carrying the config's shardings on a mesh built from the
topology's devices. The report gives per-chip memory against the chip's usable HBM (a program
that cannot fit is refused by XLA:TPU itself, with what it needs), FLOPs per step (DESIGN.md's
model count, the traced step's matmuls, XLA's cost analysis of the compiled program) and the
collectives in the compiled HLO. Stage "rft" compiles the RFT loop's PPO update
(`rft.step.ppo_update`) of an RFT config, with model shapes read from the configs of its
model files (`io.models.read_model_config`), not their weights.

    report = compile_step(load_config("configs/polar_7b.py"), "v5p:4x4x4")
    print(report.format()); report.fits

Call `prepare_environment()` before JAX initialises a backend (the `compile` command does):
it keeps the local platform on CPU and lets libtpu load next to other processes (it only
compiles, so it claims no chip and needs no lock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import pathlib
import re
import time

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
DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p", "TPU v6 lite": "v6e",
                "TPU v6e": "v6e"}
# Accelerator-type prefixes of Cloud TPU: generation, whether the number counts TensorCores
# (v4, v5p: 2 per chip) or chips, and the rank of the chip torus.
_ACCELERATOR_TYPES = {"v4": ("v4", 2, 3), "v5p": ("v5p", 2, 3), "v5litepod": ("v5e", 1, 2), "v5e": ("v5e", 1, 2),
                      "v6e": ("v6e", 1, 2)}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
GIB = 2**30
STAGES = ("train", "sample", "rft")


class LibtpuMissing(RuntimeError):
    """libtpu is not installed, so no TPU topology can be described."""


class StageUnavailable(RuntimeError):
    """The asked-for stage has no step to compile (yet)."""


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


# ------------------------------------------------------------------------------------ topology


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
        raise ValueError(f"topology {name!r}: use GEN:AxB[xC] (v5p:4x4x4, v5e:16x16, v6e:8x8, v4:2x2x2) "
                         f"or a Cloud accelerator type (v5p-128, v5litepod-256, v6e-64, v4-32)")
    generation, per_chip, rank = _ACCELERATOR_TYPES[m.group(1)]
    count = int(m.group(2))
    if count % per_chip or (count // per_chip) & (count // per_chip - 1):
        raise ValueError(f"topology {name!r}: the count must be a power of two"
                         + (" of TensorCores (2 per chip)" if per_chip == 2 else " of chips"))
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
        raise LibtpuMissing("libtpu is not installed: run `launch/setup.sh --tpu` (or "
                            "`pip install 'libtpu==0.0.48.*'`) to compile for TPU topologies")
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


# ------------------------------------------------------------------------------------ report


@dataclasses.dataclass
class Report:
    """What compiling one step for one topology found. Byte counts are per compile device."""

    config: str
    stage: str
    topology: str
    device_kind: str
    chips: int
    devices: int
    mesh: dict
    hbm_bytes: int
    fits: bool
    argument_bytes: int | None = None
    output_bytes: int | None = None
    alias_bytes: int | None = None
    temp_bytes: int | None = None
    code_bytes: int | None = None
    compiled_flops: float | None = None  # XLA cost analysis x devices (a loop body counts once)
    traced_flops: float | None = None  # matmuls of the traced step, loops expanded (`traced_matmul_flops`)
    model_flops: float | None = None  # DESIGN.md's count for the same step
    model_flops_rule: str = "DESIGN.md: 6 N + 6 L T d per token"
    collectives: dict = dataclasses.field(default_factory=dict)
    attention: str = ""
    pallas_calls: int = 0
    tokens_per_step: int = 0
    num_params: int = 0
    state_bytes: int = 0  # the train state (params, optimiser) or the sampler's params, per device, unpadded
    compile_seconds: float = 0.0
    error: str = ""  # the compiler's message when it refused the program
    required_bytes: int | None = None  # what the compiler said the refused program needs per device
    resident_bytes: int = 0  # held on the devices beside this step during a run (RFT: reference policy, reward model)
    notes: list = dataclasses.field(default_factory=list)

    @property
    def total_bytes(self) -> int | None:
        """Peak per-device footprint: arguments + outputs - aliased (donated) + temporaries + code,
        plus what a run keeps resident beside the step (`resident_bytes`)."""
        if self.argument_bytes is None:
            return None
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes
                + self.resident_bytes)

    def mesh_text(self) -> str:
        """"data=1 fsdp=64 tensor=1"."""
        return " ".join(f"{k}={v}" for k, v in self.mesh.items())

    def format(self) -> str:
        """The human-readable report the `compile` command prints."""
        unit = "chip" if self.devices == self.chips else "device (TensorCore)"
        lines = [
            f"{self.config}, stage {self.stage}: topology {self.topology} ({_plural(self.chips, 'chip')}, "
            f"{_plural(self.devices, 'device')}, "
            f"{self.device_kind}), mesh {self.mesh_text()}",
            f"model {_count(self.num_params)} parameters; {self.tokens_per_step:,} tokens per step; "
            f"attention: {self.attention}",
        ]
        if self.total_bytes is not None:
            lines += [
                f"per {unit}: arguments {_gib(self.argument_bytes)}, outputs {_gib(self.output_bytes)} "
                f"(aliased to arguments {_gib(self.alias_bytes)}), temporaries {_gib(self.temp_bytes)}, "
                f"code {_gib(self.code_bytes)}"
                + (f", resident beside the step {_gib(self.resident_bytes)}" if self.resident_bytes else ""),
                f"per {unit}: total {_gib(self.total_bytes)} of {_gib(self.hbm_bytes)} usable HBM "
                f"({100 * self.total_bytes / self.hbm_bytes:.0f}%)",
            ]
        if self.error:
            lines.append(f"the TPU compiler refused the program: {self.error}")
            lines.append(f"per {unit}: the state alone is {_gib(self.state_bytes)} of {_gib(self.hbm_bytes)} usable HBM")
        if self.model_flops:
            lines.append(f"FLOPs per step: model {self.model_flops:.4g} ({self.model_flops_rule})")
            if self.traced_flops:
                lines.append(f"  traced step {self.traced_flops:.4g} = {self.traced_flops / self.model_flops:.2f} x "
                             "model (matmuls of the jitted step, loops expanded: remat recompute and attention as "
                             "computed; Pallas kernels excluded)")
            if self.compiled_flops is not None:
                lines.append(f"  compiled {self.compiled_flops:.4g} (XLA cost analysis x {self.devices} devices; "
                             "XLA counts a loop body once, so the scanned layers count as one)")
        if self.collectives:
            listed = ", ".join(f"{k} {v}" for k, v in self.collectives.items() if v) or "none"
            lines.append(f"collectives in the compiled HLO: {sum(self.collectives.values())} ({listed}); "
                         "one inside the layer scan counts once")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"compiled in {self.compile_seconds:.1f} s: {'FITS' if self.fits else 'DOES NOT FIT'}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """A JSON-ready dict (with total_bytes)."""
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes}


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / 2**20:.1f} MiB"


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


def _cost_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


# ------------------------------------------------------------------------------------ stages


def compile_step(config, topology: str | Topology, stage: str = "train", config_name: str = "config",
                 sample_batch: int | None = None, prompt_len: int = 1024, max_new_tokens: int = 4096,
                 hlo_path: str | None = None) -> Report:
    """Lower and compile `stage`'s step of `config` for `topology`; the report says if it fits.

    "train": the trainer's update step over the config's batch. "sample": the KV-cache
    sampler (`sampling.generate`) of the config's model as a causal LM, `sample_batch`
    prompts (default data.batch_size) of `prompt_len` tokens plus `max_new_tokens`.
    "rft": the PPO update of an RFT config (`rft.step.ppo_update`: actor and critic states,
    one rollout batch), model shapes from the configs of policy.init / reward.model (no weights
    read). `hlo_path`: write the compiled HLO text there.
    """
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: choose one of {', '.join(STAGES)}")
    if stage == "rft":
        rft_models = rft_model_configs(config)  # a config that is not an RFT run's fails before libtpu starts
    topo = topology if isinstance(topology, Topology) else get_topology(topology)
    from polar_jax import parallel

    mesh = parallel.make_mesh(dict(config.mesh), list(topo.devices))
    if stage == "train":
        lowered, report = _lower_train(config, mesh)
    elif stage == "rft":
        lowered, report = _lower_rft(config, mesh, *rft_models)
    else:
        lowered, report = _lower_sample(config, mesh, sample_batch or config.data.batch_size, prompt_len,
                                        max_new_tokens)
    report.config, report.stage, report.topology = config_name, stage, topo.name
    report.device_kind, report.chips, report.devices = topo.device_kind, topo.chips, len(topo.devices)
    report.mesh, report.hbm_bytes = dict(mesh.shape), topo.hbm_bytes
    return _compile(lowered, report, hlo_path)


def _compile(lowered, report: Report, hlo_path: str | None = None) -> Report:
    import jax

    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        report.compile_seconds = time.perf_counter() - start
        report.error = str(e).split("\n")[0]
        need = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT])\)", report.error)
        if need:
            report.required_bytes = int(float(need.group(1)) * 2 ** (10 * "KMGT".index(need.group(2)) + 10))
        report.fits = False
        return report
    report.compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    report.argument_bytes = memory.argument_size_in_bytes
    report.output_bytes = memory.output_size_in_bytes
    report.alias_bytes = memory.alias_size_in_bytes
    report.temp_bytes = memory.temp_size_in_bytes
    report.code_bytes = memory.generated_code_size_in_bytes
    flops = _cost_flops(compiled)
    report.compiled_flops = None if flops is None else flops * report.devices
    hlo = compiled.as_text()
    if hlo_path:
        pathlib.Path(hlo_path).write_text(hlo)
    report.collectives = count_collectives(hlo)
    report.pallas_calls = hlo.count('custom_call_target="tpu_custom_call"')
    if report.pallas_calls:
        report.notes.append(f"{report.pallas_calls} Pallas TPU kernel calls (tpu_custom_call) in the compiled HLO; "
                            "FLOP counts see nothing inside them")
    report.fits = report.total_bytes <= report.hbm_bytes
    return report


def _lower_train(config, mesh):
    """The trainer's jitted update step, lowered over abstract state and batch."""
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
    assert set(shapes) == set(steps.BATCH_KEYS), "the batch contract changed: update aot._lower_train"
    abstract_batch = {k: jax.ShapeDtypeStruct(s, d, sharding=batch_sharding[k]) for k, (s, d) in shapes.items()}
    step_fn = trainer.jit_train_step(config, model_cfg, optimizer, schedule, state_sharding, batch_sharding)
    with tracing_context(mesh):
        traced = step_fn.trace(abstract, abstract_batch)
        lowered = traced.lower()
        impl = resolve_impl(model_cfg.attention_impl, model_cfg.dtype, seq_len)
    tokens = batch * seq_len
    report = _empty_report(attention=_attention_text(impl, model_cfg.attention_impl), tokens_per_step=tokens,
                           num_params=model_cfg.num_params(), traced_flops=traced_matmul_flops(traced.jaxpr),
                           state_bytes=shard_bytes(abstract),
                           model_flops=flops.train_flops_per_token(model_cfg, seq_len) * tokens)
    if config.accum_steps > 1:
        report.notes.append(f"accum_steps={config.accum_steps}: micro-batches of {batch // config.accum_steps} rows")
    return lowered, report


def _lower_sample(config, mesh, batch: int, prompt_len: int, max_new_tokens: int):
    """`sampling.generate` of the config's model as a causal LM, lowered over abstract inputs."""
    import jax
    import jax.numpy as jnp

    from polar_jax import parallel, sampling
    from polar_jax.train import trainer

    model_cfg = trainer.model_config_from_sizes(config, heads=("lm",))
    batch_axes = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch % batch_axes:
        raise ValueError(f"{batch} prompts do not divide over data x fsdp = {batch_axes} devices (--sample-batch)")
    params = abstract_params(model_cfg, mesh)
    prompt = jax.ShapeDtypeStruct((batch, prompt_len), jnp.int32, sharding=parallel.batch_sharding(mesh))
    lengths = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=parallel.batch_sharding(mesh, ndim=1))
    key = jax.eval_shape(jax.random.key, 0)
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=parallel.replicated(mesh))
    policy = sampling.SamplingConfig.polar(stop_ids=(2,), max_new_tokens=max_new_tokens)
    with tracing_context(mesh):
        lowered = sampling.generate.lower(model_cfg, params, prompt, lengths, policy, rng)
    tokens = batch * (prompt_len + max_new_tokens)
    report = _empty_report(attention="xla (prefill and decode read the KV cache; the fused kernels take none)",
                           tokens_per_step=tokens, num_params=model_cfg.num_params(), state_bytes=shard_bytes(params),
                           model_flops=2.0 * model_cfg.num_params(include_embedding=False) * tokens,
                           model_flops_rule="2 N per token: forward only, attention excluded, every row to the end")
    report.notes.append(f"one call: {batch} prompts x ({prompt_len} + {max_new_tokens}) tokens, POLAR sampling "
                        "(T 1.0, top-p 0.9, top-k 50); XLA's figure counts the decode loop's body once")
    return lowered, report


def rft_model_configs(config):
    """(actor, critic or None) `ModelConfig`s of an RFT config, from the configs of its model
    files alone (no weights read), with the runtime settings `rft.trainer.load_models` and
    `critic_model` give them: the actor is policy.init's LM; the critic (none with
    algorithm.estimator=group) the policy's or reward.model's trunk with a "value" head."""
    missing = [k for k in ("policy", "rollout", "algorithm", "critic", "reward", "actor_optim") if k not in config]
    if missing:
        raise ValueError(f"--stage rft needs an RFT config (from polar_jax.rft.defaults.base_config, as "
                         f"configs/rft_demo.py); this one has no {', '.join(missing)}")
    from polar_jax.io import models
    from polar_jax.rft import trainer as rft_trainer

    actor = models.read_model_config(_model_path(config.policy.init, "policy.init", config),
                                     **rft_trainer.policy_runtime(config))
    if not rft_trainer.ppo_config(config).uses_critic:
        rft_trainer.require_heads(config, actor)
        return actor, None
    reward = None
    if config.critic.init == "reward_model":
        # heads given: a directory of config.json alone has no tensor names to tell a reward head from an LM's
        reward = models.read_model_config(_model_path(config.reward.model, "reward.model", config),
                                          heads=("reward",), dtype=config.reward.dtype)
    rft_trainer.require_heads(config, actor, reward)
    return actor, rft_trainer.critic_config(config, actor, reward)


def ppo_row_flops(cfg, width: int, logit_positions: int = 0) -> float:
    """Training FLOPs (forward + backward) of one row of `width` tokens in the PPO update:
    DESIGN.md's 6 x decoder parameters (embedding and heads excluded) + 6 x layers x context
    x d_model per token, plus 6 d V per position whose LM logits are computed (the actor's
    `logits_at_bn`: the response positions) and 6 d per token of a reward or value head."""
    d = cfg.d_model
    scalar_heads = d * (("reward" in cfg.heads) + ("value" in cfg.heads))
    lm_head = d * cfg.vocab_size if "lm" in cfg.heads and not cfg.tie_embeddings else 0
    trunk = cfg.num_params(include_embedding=False) - lm_head - scalar_heads
    per_token = 6.0 * (trunk + scalar_heads) + 6.0 * cfg.num_layers * width * d
    return per_token * width + (6.0 * d * cfg.vocab_size * logit_positions if "lm" in cfg.heads else 0.0)


def _model_path(path: str, what: str, config) -> str:
    if not path or not pathlib.Path(path).exists():
        hint = config.get("setup_hint", "")
        raise FileNotFoundError(f"{what} {path!r} not found (--stage rft reads its config.json / metadata, not its "
                                f"weights)" + (f"; {hint}" if hint else f"; set --config.{what}"))
    return path


def _lower_rft(config, mesh, actor_cfg, critic_cfg):
    """The RFT loop's PPO update (`rft.step.ppo_update`), lowered over abstract actor and critic
    states and one abstract rollout batch (`Experience`), as `rft.trainer.Runner` calls it."""
    import jax
    import jax.numpy as jnp

    from polar_jax import parallel
    from polar_jax.models.attention import resolve_impl
    from polar_jax.rft import step as rft_step
    from polar_jax.rft import trainer as rft_trainer
    from polar_jax.train.optim import OptimConfig, make_optimizer
    from polar_jax.train.state import abstract_state

    ppo = rft_trainer.ppo_config(config)
    ro = config.rollout
    batch = ro.prompts * ro.samples_per_prompt
    prompt_len, new_tokens = config.policy.max_prompt_tokens, ro.max_new_tokens
    width = prompt_len + new_tokens
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch % shards:
        raise ValueError(f"rollout.prompts x rollout.samples_per_prompt = {batch} must be a multiple of the "
                         f"mesh's batch shards (data x fsdp = {shards})")
    if batch % ppo.minibatches:
        raise ValueError(f"{batch} rollouts per iteration do not split into algorithm.minibatches={ppo.minibatches}")
    total_steps = config.iterations * ppo.epochs * ppo.minibatches
    actor_optim = OptimConfig(**config.actor_optim)
    critic_optim = OptimConfig(**config.critic_optim) if critic_cfg else None
    actor = abstract_state(actor_cfg, make_optimizer(actor_optim, total_steps), mesh)
    critic = abstract_state(critic_cfg, make_optimizer(critic_optim, total_steps), mesh) if critic_cfg else None

    rows = parallel.batch_sharding(mesh, ndim=2)  # as Runner.put places [B, ...] arrays; Experience has no [B] one
    shapes = {"tokens_bt": ((batch, width), jnp.int32), "mask_bt": ((batch, width), jnp.int32),
              **{k: ((batch, new_tokens), jnp.float32) for k in (
                  "response_mask_bn", "old_logp_bn", "ref_logp_bn", "old_values_bn", "advantages_bn", "returns_bn")}}
    assert tuple(shapes) == rft_step.Experience._fields, "the Experience contract changed: update aot._lower_rft"
    exp = rft_step.Experience(**{k: jax.ShapeDtypeStruct(s, d, sharding=rows) for k, (s, d) in shapes.items()})
    key = jax.eval_shape(jax.random.key, 0)
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=parallel.replicated(mesh))
    with tracing_context(mesh):
        traced = rft_step.ppo_update.trace(actor, critic, exp, rng, actor_cfg=actor_cfg, critic_cfg=critic_cfg,
                                           ppo=ppo, actor_optim=actor_optim, critic_optim=critic_optim,
                                           total_steps=total_steps, mesh=mesh)
        lowered = traced.lower()
        impl = resolve_impl(actor_cfg.attention_impl, actor_cfg.dtype, width)

    tokens = batch * width * ppo.epochs
    per_row = ppo_row_flops(actor_cfg, width, new_tokens) + (ppo_row_flops(critic_cfg, width) if critic_cfg else 0.0)
    num_params = actor_cfg.num_params() + (critic_cfg.num_params() if critic_cfg else 0)
    state_bytes = shard_bytes(actor) + (shard_bytes(critic) if critic else 0)
    report = _empty_report(
        attention=_attention_text(impl, actor_cfg.attention_impl), tokens_per_step=tokens, num_params=num_params,
        traced_flops=traced_matmul_flops(traced.jaxpr), state_bytes=state_bytes,
        model_flops=per_row * batch * ppo.epochs,
        model_flops_rule=("per epoch and rollout row of W tokens: actor 6 N W + 6 L W^2 d + LM head 6 d V x R "
                          "response positions" + (", critic 6 N W + 6 L W^2 d" if critic_cfg else "")
                          + "; N = decoder parameters without embedding and heads"))
    mb = batch // ppo.minibatches
    report.notes.append(
        f"PPO update: {ppo.epochs} epoch(s) x {ppo.minibatches} mini-batch(es) of {mb} rollouts x {width} tokens "
        f"({prompt_len} prompt + {new_tokens} response), estimator {ppo.estimator}; tokens per step = rollouts "
        f"({ro.prompts} prompts x {ro.samples_per_prompt}) x width x epochs; rollout, scoring, experience making "
        "and the reference policy are not in this step")
    report.notes.append(
        f"trained: actor {_count(actor_cfg.num_params())} parameters"
        + (f" + critic {_count(critic_cfg.num_params())} (critic.init={config.critic.init})" if critic_cfg
           else " (no critic: algorithm.estimator=group)")
        + f"; their states (parameters and AdamW moments, float32) are {_gib(state_bytes)} per device")
    resident = []
    if config.reference.keep or ppo.needs_reference:
        report.resident_bytes += shard_bytes(actor.params)
        resident.append(f"reference policy {_gib(shard_bytes(actor.params))}")
    reward_path = config.reward.model
    if reward_path and pathlib.Path(reward_path).exists():
        from polar_jax.io import models

        params = abstract_params(models.read_model_config(reward_path, heads=("reward",)), mesh)
        report.resident_bytes += shard_bytes(params)
        resident.append(f"reward model {_gib(shard_bytes(params))}")
    if resident:
        report.notes.append(f"also held on the devices during a run, outside this step (float32 parameters; counted in "
                            f"the total): {', '.join(resident)} per device")
    return lowered, report


def abstract_params(cfg, mesh):
    """The model's parameters as `jax.ShapeDtypeStruct`s sharded by their logical axes on `mesh`."""
    import jax

    from polar_jax import parallel
    from polar_jax.models import transformer as T

    shardings = parallel.logical_to_sharding(T.logical_axes(cfg), mesh)
    shapes = jax.eval_shape(lambda k: T.init_params(cfg, k), jax.random.key(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


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


def _empty_report(**fields) -> Report:
    return Report(config="", stage="", topology="", device_kind="", chips=0, devices=0, mesh={}, hbm_bytes=0,
                  fits=False, **fields)


def _attention_text(impl: str, configured: str) -> str:
    if impl == "pallas":
        return f"pallas (TPU splash kernel; attention_impl={configured})"
    return f"{impl} (attention_impl={configured})"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
