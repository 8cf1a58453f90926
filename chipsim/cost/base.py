"""What every cost function shares: `OpCost`, the registry, the network interface the cost layer
talks to for collectives, and the memory / fixed-latency / energy pieces.

time = fixed + max(compute, memory, link), where
- compute = FLOPs at the dtype's peak x a calibrated efficiency, with tile and wave quantization;
- memory  = bytes at the memory level's bandwidth x calibrated streaming/kernel efficiencies;
- fixed   = per-kernel device latency + the memory level's access latency (+ collective latency).
The engine turns these parts into events: it shares memory and link bandwidth between concurrent ops
and stretches compute when the power controller lowers the clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from chipsim.errors import InputError
from chipsim.hardware.chip import Chip
from chipsim.workload.graph import Op
from chipsim.workload.kinds import KINDS


@dataclass(frozen=True)
class OpCost:
    fixed_s: float
    compute_s: float
    mem_bytes: float  # bytes through HBM (the shared level)
    mem_s: float  # time of those bytes alone
    link_bytes: float = 0.0
    link_s: float = 0.0
    compute_energy_j: float = 0.0  # at the boost clock; scales with clock**(dvfs_exponent - 1)
    memory_energy_j: float = 0.0
    kernels: int = 1
    level: str = "hbm"  # the memory level the op's data came from
    mode: str = ""  # how it ran, e.g. 'int4 weight-only (dequantize + bf16 MMA)'

    @property
    def seconds(self) -> float:
        return self.fixed_s + max(self.compute_s, self.mem_s, self.link_s)

    @property
    def bound(self) -> str:
        body = max(self.compute_s, self.mem_s, self.link_s)
        if self.fixed_s >= body:
            return "latency"
        if body == self.link_s:
            return "link"
        return "compute" if self.compute_s >= self.mem_s else "memory"


class Network(Protocol):
    """What a collective runs on, as the cost layer and the engine see it (ASTRA-sim's network API,
    in Python): `cost.collective.ChipLink` (a lone chip's own link, where the ring formulas live) and
    `network.fabric.Fabric` (a system's topology, flow-level)."""

    @property
    def name(self) -> str: ...  # the system's name, or '' for a lone chip

    @property
    def link_capacity_bytes_per_s(self) -> float: ...  # what concurrent collectives of one rank share

    def collective_cost(self, op: Op, chip: Chip) -> OpCost: ...


CostFn = Callable[[Op, Chip], OpCost]
COST_MODELS: dict[str, CostFn] = {}


def register_cost(*kinds: str) -> Callable[[CostFn], CostFn]:
    def wrap(fn: CostFn) -> CostFn:
        for kind in kinds:
            if KINDS[kind].collective:
                raise ValueError(f"{kind} is a collective: the network costs it")
            COST_MODELS[kind] = fn
        return fn

    return wrap


def cost_of(op: Op, chip: Chip, network: Network | None = None) -> OpCost:
    """The op's cost on `chip`, alone; collectives are costed by `network` (default: the chip's own
    link, `ChipLink`)."""
    try:
        if KINDS[op.kind].collective:
            if network is None:
                from chipsim.cost.collective import ChipLink

                network = ChipLink(chip)
            return network.collective_cost(op, chip)
        return COST_MODELS[op.kind](op, chip)
    except InputError as exc:
        raise InputError(f"op '{op.name}': {exc.message}", key=f"ops[{op.id}].{exc.key or 'dtype'}") from None


# ---------------------------------------------------------------- shared pieces


@dataclass(frozen=True)
class MemoryPart:
    hbm_bytes: float
    seconds: float
    energy_j: float
    level: str
    latency_s: float


def memory_part(op: Op, chip: Chip, nbytes: float, kernel_class: str, efficiency: float = 1.0) -> MemoryPart:
    """Split `nbytes` between the weight buffer (eligible bytes that fit) and HBM; `efficiency`: the
    kernel's own share of its class's HBM bandwidth (a GEMM library's skinny kernel)."""
    cal = chip.calibration
    eff = cal.memory_efficiency * cal.kernel_bw_efficiency.get(kernel_class, 1.0) * efficiency
    wb = chip.weight_buffer
    eligible = float(op.attrs.get("buffer_bytes", 0.0))
    if wb is not None and eligible > 0:
        # what fits is served by the buffer, the rest by HBM; the access latency is the buffer's
        # only when all of the op's eligible data fits
        buffered = min(eligible, wb.capacity_bytes, nbytes)
        hbm_bytes = nbytes - buffered
        seconds = hbm_bytes / (chip.hbm.bandwidth_bytes_per_s * eff) + buffered / (
            wb.bandwidth_bytes_per_s * cal.memory_efficiency)
        energy = hbm_bytes * chip.hbm.energy_j_per_byte + buffered * wb.energy_j_per_byte
        latency = wb.latency_s if eligible <= wb.capacity_bytes else chip.hbm.latency_s
        return MemoryPart(hbm_bytes, seconds, energy, "weight_buffer", latency)
    seconds = nbytes / (chip.hbm.bandwidth_bytes_per_s * eff)
    return MemoryPart(nbytes, seconds, nbytes * chip.hbm.energy_j_per_byte, "hbm", chip.hbm.latency_s)


def fixed_seconds(chip: Chip, kernels: int, mem_latency: float) -> float:
    return kernels * (chip.calibration.kernel_latency_s + mem_latency)


def compute_energy(chip: Chip, flops: float, dtype: str) -> float:
    return flops * chip.power.energy_j_per_flop.get(dtype, chip.power.energy_j_per_flop["bf16"])


# Vector (non-tensor-core) FLOPs of elementwise kernels and collective reductions cost a quarter of
# the chip's `fp32` energy per FLOP. An assumption carried over from the first cost model, not a fit:
# memory-bound kernels' energy is dominated by their bytes, so it barely moves any result.
VECTOR_ENERGY_SHARE = 0.25


def vector_energy(chip: Chip, flops: float) -> float:
    return flops * chip.power.energy_j_per_flop.get("fp32", 0.0) * VECTOR_ENERGY_SHARE


def vector_rate(chip: Chip) -> float:
    """Vector math runs on the non-tensor pipes: the fp32 rate (at least 1/16 of the bf16 peak)."""
    return chip.peak_flops_per_s.get("fp32") or chip.peak("bf16") / 16


def streaming(op: Op, chip: Chip, kernel_class: str, kernels: int = 1) -> OpCost:
    """A memory-bound kernel: its bytes at the kernel class's achieved bandwidth, its FLOPs on the
    vector pipes."""
    mem = memory_part(op, chip, op.bytes, kernel_class)
    return OpCost(fixed_seconds(chip, kernels, mem.latency_s), op.flops / vector_rate(chip), mem.hbm_bytes,
                  mem.seconds, compute_energy_j=vector_energy(chip, op.flops), memory_energy_j=mem.energy_j,
                  kernels=kernels, level=mem.level)
