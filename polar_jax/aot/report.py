"""What compiling one step for one topology found (`Report`), and the text helpers of its
human-readable form."""

from __future__ import annotations

import dataclasses

from polar_jax.aot.topology import GIB


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
    model_flops: float | None = None  # the model count (`flops.train_flops_per_token`) for the same step
    model_flops_rule: str = "6 N + 6 L T d per token (N non-embedding parameters, L layers, T context)"
    collectives: dict = dataclasses.field(default_factory=dict)
    attention: str = ""
    pallas_calls: int = 0
    tokens_per_step: int = 0
    num_params: int = 0
    state_bytes: int = 0  # the train state (params, optimiser) or the sampler's params, per device, unpadded
    optimizer_bytes: int = 0  # of which the optimiser state (AdamW moments), per device, unpadded (stage rft)
    compile_seconds: float = 0.0
    error: str = ""  # the compiler's message when it refused the program
    required_bytes: int | None = None  # what the compiler said the refused program needs per device
    resident_bytes: int = 0  # held on the devices beside this step during a run (RFT: reference policy, reward model)
    resident: str = ""  # what `resident_bytes` holds, in words
    notes: list = dataclasses.field(default_factory=list)
    phases: list = dataclasses.field(default_factory=list)  # stage rft: every program of one iteration (`Phase`)
    peak_phase: str = ""  # stage rft: the phase whose per-device need is the largest; it decides `fits`

    @property
    def total_bytes(self) -> int | None:
        """Peak per-device footprint: arguments + outputs - aliased (donated) + temporaries + code,
        plus what a run keeps resident beside the step (`resident_bytes`)."""
        if self.argument_bytes is None:
            return None
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.code_bytes
            + self.resident_bytes
        )

    @property
    def peak_bytes(self) -> int | None:
        """Stage rft: the largest per-device need of the iteration's phases (`Phase.need_bytes`); None without phases."""
        needs = [p.need_bytes for p in self.phases if p.need_bytes is not None]
        return max(needs) if needs else None

    def mesh_text(self) -> str:
        """ "data=1 fsdp=64 tensor=1"."""
        return " ".join(f"{k}={v}" for k, v in self.mesh.items())

    def format(self) -> str:
        """The human-readable report the `compile` command prints."""
        unit = "chip" if self.devices == self.chips else "device (TensorCore)"
        lines = [
            f"{self.config}, stage {self.stage}: topology {self.topology} ({_plural(self.chips, 'chip')}, "
            f"{_plural(self.devices, 'device')}, "
            f"{self.device_kind}), mesh {self.mesh_text()}",
            f"model {count_text(self.num_params)} parameters; {self.tokens_per_step:,} tokens per step; "
            f"attention: {self.attention}",
        ]
        what = f"the update, per {unit}" if self.phases else f"per {unit}"
        if self.total_bytes is not None:
            lines += [
                f"{what}: arguments {gib_text(self.argument_bytes)}, outputs {gib_text(self.output_bytes)} "
                f"(aliased to arguments {gib_text(self.alias_bytes)}), temporaries {gib_text(self.temp_bytes)}, "
                f"code {gib_text(self.code_bytes)}"
                + (f", resident beside the step {gib_text(self.resident_bytes)}" if self.resident_bytes else ""),
                f"{what}: total {gib_text(self.total_bytes)} of {gib_text(self.hbm_bytes)} usable HBM "
                f"({100 * self.total_bytes / self.hbm_bytes:.0f}%)",
            ]
        if self.error:
            lines.append(f"the TPU compiler refused the program: {self.error}")
            lines.append(
                f"per {unit}: the state alone is {gib_text(self.state_bytes)} of {gib_text(self.hbm_bytes)} usable HBM"
            )
        lines += self._flops_lines()
        if self.collectives:
            listed = ", ".join(f"{k} {v}" for k, v in self.collectives.items() if v) or "none"
            lines.append(
                f"collectives in the compiled HLO: {sum(self.collectives.values())} ({listed}); "
                "one inside the layer scan counts once"
            )
        lines += self._phase_lines(unit)
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"compiled in {self.compile_seconds:.1f} s: {'FITS' if self.fits else 'DOES NOT FIT'}")
        return "\n".join(lines)

    def _flops_lines(self) -> list[str]:
        """The FLOPs-per-step lines of `format` (none without a model count)."""
        if not self.model_flops:
            return []
        lines = [f"FLOPs per step: model {self.model_flops:.4g} ({self.model_flops_rule})"]
        if self.traced_flops:
            lines.append(
                f"  traced step {self.traced_flops:.4g} = {self.traced_flops / self.model_flops:.2f} x "
                "model (matmuls of the jitted step, loops expanded: remat recompute and attention as "
                "computed; Pallas kernels excluded)"
            )
        if self.compiled_flops is not None:
            lines.append(
                f"  compiled {self.compiled_flops:.4g} (XLA cost analysis x {self.devices} devices; "
                "XLA counts a loop body once, so the scanned layers count as one)"
            )
        return lines

    def _phase_lines(self, unit: str) -> list[str]:
        """Stage rft's per-phase table and its peak (none without phases)."""
        if not self.phases:
            return []
        lines = [
            f"phases of one RFT iteration, per {unit} (arguments + outputs - aliased + temporaries + code, "
            "plus what stays resident beside the program):"
        ]
        width = max(len(p.name) for p in self.phases)
        for p in self.phases:
            lines.append(f"  {p.name:<{width}}  {p.text()}")
        if self.peak_phase:
            peak = self.peak_bytes
            lines.append(
                f"peak: {self.peak_phase}, {gib_text(peak)} of {gib_text(self.hbm_bytes)} usable HBM "
                f"({100 * peak / self.hbm_bytes:.0f}%): it decides the fit"
            )
        return lines

    def to_dict(self) -> dict:
        """A JSON-ready dict (with total_bytes; stage rft: each phase's total_bytes / need_bytes and peak_bytes)."""
        out = {**dataclasses.asdict(self), "total_bytes": self.total_bytes, "peak_bytes": self.peak_bytes}
        out["phases"] = [p.to_dict() for p in self.phases]
        return out


@dataclasses.dataclass
class Phase:
    """One program of an RFT iteration compiled on its own (stage rft), with what a run holds on
    the devices beside it while it runs. Byte counts are per compile device."""

    name: str  # "rollout prefill", "rollout decode", "scoring", "experience", "update"
    program: str  # the jitted function, e.g. "engine.steps.decode"
    shapes: str  # what it was lowered over, in words
    resident: str = ""  # what stays on the devices beside it, in words
    resident_bytes: int = 0
    input_bytes: int = 0  # its arguments' bytes (unpadded, `shard_bytes`): a floor when the compiler refused it
    argument_bytes: int | None = None
    output_bytes: int | None = None
    alias_bytes: int | None = None
    temp_bytes: int | None = None
    code_bytes: int | None = None
    compile_seconds: float = 0.0
    error: str = ""  # the compiler's message when it refused the program
    required_bytes: int | None = None  # what the compiler said the refused program needs per device

    @property
    def total_bytes(self) -> int | None:
        """Arguments + outputs - aliased + temporaries + code + resident; None when not compiled."""
        if self.argument_bytes is None:
            return None
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.code_bytes
            + self.resident_bytes
        )

    @property
    def need_bytes(self) -> int | None:
        """What the phase needs per device: `total_bytes`, or for a refused program a floor: the
        larger of what the compiler said it needs and its arguments, plus what is resident."""
        if self.total_bytes is not None:
            return self.total_bytes
        floor = max(self.required_bytes or 0, self.input_bytes)
        return floor + self.resident_bytes if floor else None

    def text(self) -> str:
        """One line of the report's phase table."""
        head = f"{self.program} ({self.shapes}): "
        beside = f"{gib_text(self.resident_bytes)} resident ({self.resident or 'nothing'})"
        if self.total_bytes is None:
            need = self.need_bytes
            return (
                head
                + f"refused by the compiler ({self.error or 'not compiled'}); needs at least "
                + (gib_text(need) if need is not None else "?")
                + f" with {beside}"
            )
        return (
            head + f"arguments {gib_text(self.argument_bytes)}, outputs {gib_text(self.output_bytes)} (aliased "
            f"{gib_text(self.alias_bytes)}), temporaries {gib_text(self.temp_bytes)}, + {beside} = "
            f"total {gib_text(self.total_bytes)}"
        )

    def to_dict(self) -> dict:
        """A JSON-ready dict (with total_bytes and need_bytes)."""
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes, "need_bytes": self.need_bytes}


def empty_report(**fields) -> Report:
    """A `Report` with only a stage's own `fields` set; `compile_step` fills in the topology and mesh."""
    return Report(
        config="", stage="", topology="", device_kind="", chips=0, devices=0, mesh={}, hbm_bytes=0, fits=False, **fields
    )


def attention_text(impl: str, configured: str) -> str:
    """The report's attention line: the back-end resolved for the target (`impl`) and the configured one."""
    if impl == "pallas":
        return f"pallas (TPU splash kernel; attention_impl={configured})"
    return f"{impl} (attention_impl={configured})"


def gib_text(n: int) -> str:
    """A byte count as "1.23 GiB" (from a tenth of a GiB up) or "45.6 MiB"."""
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / 2**20:.1f} MiB"


def count_text(n: int) -> str:
    """A parameter count as "6.91B" (from a billion up) or "12.34M"."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
