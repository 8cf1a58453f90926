"""Ops known only by their work or their measured time: `roofline` (FLOPs and bytes) and `opaque`
(a measured duration, re-targeted to another chip by a stated rule)."""

from __future__ import annotations

from chipsim.cost.base import OpCost, compute_energy, fixed_seconds, memory_part, register_cost
from chipsim.hardware.chip import Chip
from chipsim.workload.graph import Op

# a trace has no counters: assume an opaque kernel kept half of its roof busy, for its energy
OPAQUE_ROOF_OCCUPANCY = 0.5


@register_cost("roofline")
def roofline_cost(op: Op, chip: Chip) -> OpCost:
    """Only FLOPs and bytes are known: the dtype's peak at the calibrated GEMM efficiency, and the
    streaming memory efficiency."""
    cal = chip.calibration
    compute_s = op.flops / (chip.peak(op.dtype) * cal.gemm_efficiency.get(op.dtype, 1.0)) if op.flops else 0.0
    mem = memory_part(op, chip, op.bytes, "roofline")
    return OpCost(fixed_seconds(chip, 1, mem.latency_s), compute_s, mem.hbm_bytes, mem.seconds,
                  compute_energy_j=compute_energy(chip, op.flops, op.dtype), memory_energy_j=mem.energy_j,
                  level=mem.level)


@register_cost("opaque")
def opaque_cost(op: Op, chip: Chip) -> OpCost:
    """A kernel chipsim cannot model: its measured duration, re-targeted by a stated rule:
    `scale: memory` by the ratio of HBM bandwidths, `compute` by the ratio of bf16 peaks (recorded
    chip over target chip), `none` as measured."""
    duration = float(op.shape["duration_s"])
    rule = str(op.attrs.get("scale", "none"))
    recorded = str(op.attrs.get("recorded_on", ""))
    ratio = 1.0
    if recorded and recorded != chip.name and rule in ("memory", "compute"):
        from chipsim.hardware.registry import load_chip

        ref = load_chip(recorded)
        ratio = (ref.hbm.bandwidth_bytes_per_s / chip.hbm.bandwidth_bytes_per_s if rule == "memory"
                 else ref.peak("bf16") / chip.peak("bf16"))
    seconds = duration * ratio
    hbm = chip.hbm
    memory_j = seconds * hbm.bandwidth_bytes_per_s * OPAQUE_ROOF_OCCUPANCY * hbm.energy_j_per_byte if rule == "memory" else 0.0
    compute_j = 0.0 if rule == "memory" else (
        seconds * chip.peak("bf16") * OPAQUE_ROOF_OCCUPANCY * chip.power.energy_j_per_flop["bf16"])
    label = "opaque: measured duration" + (f" x {ratio:.3g} ({rule} ratio)" if ratio != 1.0 else "")
    if rule == "compute":  # a compute kernel slows with the clock
        return OpCost(0.0, seconds, 0.0, 0.0, compute_energy_j=compute_j, mode=label)
    return OpCost(0.0, 0.0, 0.0, seconds, compute_energy_j=compute_j, memory_energy_j=memory_j, mode=label)
