"""GEMM: CTA tiles from the library's tile menu, split-k and whole waves over the SMs; GEMV-sized
products on a matrix-vector path; int4 weight-only (dequantize in the kernel) or native INT4 MACs."""

from __future__ import annotations

import math

from chipsim.cost.base import OpCost, compute_energy, fixed_seconds, memory_part, register_cost
from chipsim.errors import InputError
from chipsim.hardware.chip import Chip
from chipsim.workload.graph import Op
from chipsim.workload.kinds import DTYPE_BYTES

GEMV_MAX = 8  # rows (or columns) below which libraries switch to matrix-vector kernels
SPLIT_K_MIN = 128  # libraries do not split k below 128 per split
NATIVE_INT4_EFFICIENCY = 0.7  # default when a native-INT4 chip calibrates none (an assumption)
INT4_NATIVE = "int4 native MAC (assumes int4 activations too)"
INT4_WEIGHT_ONLY = "int4 weight-only (dequantize + bf16 MMA)"
UNALIGNED = "unaligned leading dimension: no TMA / wgmma fast path"


def gemm_compute_seconds(m: float, n: float, k: float, batch: float, chip: Chip, dtype: str, rate: float,
                         eff: float) -> float:
    """Best time over the library's CTA tile shapes and split-k factors, with wave quantization.
    A matrix-vector product (m or n <= GEMV_MAX) runs a GEMV kernel: no tile padding."""
    if min(m, n) <= GEMV_MAX:
        return 2.0 * batch * m * n * k / (rate * eff)
    menu = chip.calibration.gemm_menus.get(dtype, chip.calibration.gemm_menus["default"])
    per_unit = rate * eff / chip.compute_units
    best = math.inf
    for tm, tn in menu.tiles:
        tiles = math.ceil(m / tm) * math.ceil(n / tn) * batch
        split = 1
        while split <= menu.max_split_k:
            if split > 1 and k / split < SPLIT_K_MIN:
                break
            waves = math.ceil(tiles * split / chip.compute_units)
            seconds = waves * 2.0 * tm * tn * math.ceil(k / split) / per_unit
            best = min(best, seconds)
            split *= 2
    return best


def gemm_aligned(n: float, k: float, dtype: str) -> bool:
    """Row-major A[m x k], B[k x n], C[m x n]: the fast paths need 16-byte aligned leading dimensions."""
    size = DTYPE_BYTES[dtype]
    return (n * size) % 16 == 0 and (k * size) % 16 == 0


@register_cost("gemm")
def gemm_cost(op: Op, chip: Chip) -> OpCost:
    s = op.shape
    cal = chip.calibration
    dtype = op.dtype
    int4 = op.attrs.get("weight_dtype", dtype) == "int4" or dtype == "int4"
    kernel_class = "gemm"
    if int4 and chip.int4_mode == "weight_only":
        # dequantize-in-the-GEMM kernels run at their own (low) MMA throughput; at GEMV sizes a
        # dedicated kernel streams the packed weights at its own achieved bandwidth
        rate, e_dtype, mode = chip.peak("bf16"), "bf16", INT4_WEIGHT_ONLY
        compute_s = op.flops / (rate * cal.int4_weight_only_efficiency)
        if min(s["m"], s["n"]) <= GEMV_MAX:
            compute_s, kernel_class = 0.0, "int4_gemv"
    else:
        if int4:
            rate, eff, e_dtype, mode = (chip.peak("int4"), cal.gemm_efficiency.get("int4", NATIVE_INT4_EFFICIENCY),
                                        "int4", INT4_NATIVE)
        else:
            rate, e_dtype, mode = chip.peak(dtype), dtype, ""
            if dtype not in cal.gemm_efficiency:
                raise InputError(f"chip '{chip.name}' has no calibrated GEMM efficiency for {dtype}", key="dtype")
            eff = cal.gemm_efficiency[dtype]
        if not gemm_aligned(s["n"], s["k"], dtype):
            eff *= cal.gemm_unaligned_efficiency
            mode = UNALIGNED
        compute_s = gemm_compute_seconds(s["m"], s["n"], s["k"], s["batch"], chip, dtype, rate, eff)
    mem = memory_part(op, chip, op.bytes, kernel_class)
    return OpCost(fixed_seconds(chip, 1, mem.latency_s), compute_s, mem.hbm_bytes, mem.seconds,
                  compute_energy_j=compute_energy(chip, op.flops, e_dtype), memory_energy_j=mem.energy_j,
                  level=mem.level, mode=mode)
