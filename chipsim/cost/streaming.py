"""Memory-bound kernels: elementwise ops, norms, softmax, casts, the optimizer and copies between
memory levels."""

from __future__ import annotations

from chipsim.cost.base import OpCost, fixed_seconds, register_cost, streaming
from chipsim.errors import InputError
from chipsim.hardware.chip import Chip
from chipsim.workload.graph import Op


@register_cost("elementwise")
def elementwise_cost(op: Op, chip: Chip) -> OpCost:
    return streaming(op, chip, str(op.attrs.get("op", "add")))


@register_cost("norm")
def norm_cost(op: Op, chip: Chip) -> OpCost:
    kind = str(op.attrs.get("type", "rms_norm"))
    backward = f"{kind}_bwd"
    use = backward if op.attrs.get("pass") == "bwd" and backward in chip.calibration.kernel_bw_efficiency else kind
    return streaming(op, chip, use)


@register_cost("softmax")
def softmax_cost(op: Op, chip: Chip) -> OpCost:
    return streaming(op, chip, "softmax")


@register_cost("quantize", "dequantize")
def quantize_cost(op: Op, chip: Chip) -> OpCost:
    return streaming(op, chip, op.kind)


@register_cost("optimizer")
def optimizer_cost(op: Op, chip: Chip) -> OpCost:
    return streaming(op, chip, "optimizer", kernels=int(op.attrs.get("kernels", 1)))


@register_cost("memcpy")
def memcpy_cost(op: Op, chip: Chip) -> OpCost:
    levels = {level.name: level for level in chip.memory_levels()}
    src, dst = op.attrs.get("src", "hbm"), op.attrs.get("dst", "hbm")
    for end, name in (("src", src), ("dst", dst)):
        if name not in levels:
            raise InputError(f"chip '{chip.name}' has no memory level '{name}'; it has {', '.join(levels)}",
                             key=f"attrs.{end}")
    if src == "hbm" and dst == "hbm":
        return streaming(op, chip, "copy")
    # a transfer between levels: limited by the slower side; HBM carries one side of it
    slow = min(levels[src].bandwidth_bytes_per_s, levels[dst].bandwidth_bytes_per_s)
    size = op.shape["bytes"]
    seconds = size / (slow * chip.calibration.memory_efficiency)
    energy = size * (levels[src].energy_j_per_byte + levels[dst].energy_j_per_byte)
    lat = max(levels[src].latency_s, levels[dst].latency_s)
    return OpCost(fixed_seconds(chip, 1, lat), 0.0, size, seconds, memory_energy_j=energy,
                  level=src if src != "hbm" else dst)
