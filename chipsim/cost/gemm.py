"""GEMM: CTA tiles from the library's tile menu, split-k and whole waves over the SMs; GEMV-sized
products on a matrix-vector path; int4 weight-only (dequantize in the kernel) or native INT4 MACs."""

from __future__ import annotations

import math

from chipsim.cost.base import OpCost, compute_energy, fixed_seconds, memory_part, register_cost
from chipsim.errors import InputError
from chipsim.hardware.chip import GEMV_MAX, Chip, GemmMenu
from chipsim.workload.graph import Op
from chipsim.workload.kinds import DTYPE_BYTES

SPLIT_K_MIN = 128  # libraries do not split k below 128 per split
NATIVE_INT4_EFFICIENCY = 0.7  # default when a native-INT4 chip calibrates none (an assumption)
INT4_NATIVE = "int4 native MAC (assumes int4 activations too)"
INT4_WEIGHT_ONLY = "int4 weight-only (dequantize + bf16 MMA)"
MARLIN = "weight-only (Marlin: dequantize in registers, bf16 MMA at full rate)"
UNALIGNED = "unaligned leading dimension: no TMA / wgmma fast path"
ROWWISE = "fp8 with rowwise scales (calibration.gemm.rowwise)"
GROUPED = "grouped GEMM (torch._grouped_mm: one CUTLASS kernel over every group's tiles)"
# Compute and memory of a GEMM overlap imperfectly near the ridge point (the main loop stalls on the
# loads it waits for): time = (compute^p + memory^p)^(1/p), a smooth roofline knee (p -> infinity is
# max()). p = 3 fitted to the m=128 bf16 GEMMs of reference/h200/calibration.csv (128 x 4096..28672 x
# 4096..28672, near the ridge), where max() was 5-43% low; compute-bound and GEMV shapes move < 1%.
KNEE_EXPONENT = 3.0
# torch._grouped_mm's CTA tile on Hopper (PyTorch 2.11 aten/src/ATen/native/cuda/GroupMM.cu,
# dispatch_bf16_grouped_kernel_on_tile_size): 64 x 128 (ping-pong) when a group's M or N is <= 128,
# else 128 x 256 (cooperative); no split-k; a persistent scheduler deals all groups' tiles to the SMs
GROUPED_SMALL_TILE, GROUPED_TILE, GROUPED_SMALL_MAX = (64, 128), (128, 256), 128
# The cooperative kernel writes each 128 x 256 tile's output before its next tile's main loop starts
# (the ping-pong one overlaps a warp group's epilogue with the other's main loop): a per-tile cost
# worth 128 k steps, fitted to the grouped_mm rows of reference/h200/parallel_calibration.csv
# (k = 1408..14336; grouped_mm at k = 1408 and 2048 ran 11% and 8% above the main loop alone, as our
# own H200 profile of the same kernel shows too)
GROUPED_SETUP_K = 128.0


def gemm_compute_seconds(m: float, n: float, k: float, batch: float, chip: Chip, dtype: str, rate: float,
                         eff: float, menu: GemmMenu | None = None, setup_k: float = 0.0) -> float:
    """Best time over the library's CTA tile shapes and split-k factors (`menu`, default the dtype's),
    with wave quantization; each tile also pays a fixed prologue/epilogue worth `setup_k` steps of
    its k loop (a kernel that does not overlap them with the next tile's main loop). A
    matrix-vector product (m or n <= the menu's `gemv_max`) runs a skinny kernel: no tile padding."""
    if menu is None:
        menu = gemm_menu(chip, dtype)
    if min(m, n) <= menu.gemv_max:
        return 2.0 * batch * m * n * k / (rate * eff)
    per_unit = rate * eff / chip.compute_units
    best = math.inf
    for tm, tn in menu.tiles:
        tiles = math.ceil(m / tm) * math.ceil(n / tn) * batch
        split = 1
        while split <= menu.max_split_k:
            if split > 1 and k / split < SPLIT_K_MIN:
                break
            waves = math.ceil(tiles * split / chip.compute_units)
            seconds = waves * 2.0 * tm * tn * (math.ceil(k / split) + setup_k) / per_unit
            best = min(best, seconds)
            split *= 2
    return best


def gemm_menu(chip: Chip, dtype: str) -> GemmMenu:
    """The kernel library's menu for `dtype` (its default where it has none of its own)."""
    return chip.calibration.gemm_menus.get(dtype, chip.calibration.gemm_menus["default"])


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
    menu: GemmMenu | None = None
    setup_k, stream = 0.0, 1.0
    if (int4 or op.attrs.get("weight_dtype") in ("int8", "fp8", "fp4")) and op.attrs.get("kernel") == "marlin":
        # Marlin-class kernels (Frantar et al. 2024, arXiv:2408.11743; vLLM's int4/int8/FP8/MXFP4 weight-only
        # GEMMs): the weights are dequantized in registers and the bf16 MMAs run at the GEMM's own
        # rate, so the kernel reads the narrow weights and computes like a bf16 GEMM
        rate, eff, e_dtype, mode = chip.peak("bf16"), cal.gemm_efficiency["bf16"], "bf16", MARLIN
        menu = gemm_menu(chip, "bf16")
        # the integer and FP8 kernels stream their weights at the chip's own `marlin` share of the copy's
        # bandwidth (Marlin is built for Ampere's memory pipeline); MXFP4 weights run other kernels
        # (OpenAI's Triton MoE kernels in vLLM and SGLang), costed at the plain GEMM's share
        kernel_class = "gemm" if op.attrs.get("weight_dtype") == "fp4" else "marlin"
        compute_s = gemm_compute_seconds(s["m"], s["n"], s["k"], s["batch"], chip, "bf16", rate, eff, menu)
        skinny = menu.gemv_max
    elif int4 and chip.int4_mode == "weight_only":
        # dequantize-in-the-GEMM kernels run at their own (low) MMA throughput; at GEMV sizes a
        # dedicated kernel streams the packed weights at its own achieved bandwidth
        rate, e_dtype, mode = chip.peak("bf16"), "bf16", INT4_WEIGHT_ONLY
        compute_s = op.flops / (rate * cal.int4_weight_only_efficiency)
        skinny = GEMV_MAX  # tinygemm's own matrix-vector kernel
        if min(s["m"], s["n"]) <= skinny:
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
        if op.attrs.get("scaling") == "rowwise":  # fp32 scales per row of A / column of B: its own kernel
            eff *= cal.gemm_rowwise_efficiency
            menu, setup_k, mode = cal.gemm_rowwise_menu, cal.gemm_rowwise_setup_k, ROWWISE
        if not gemm_aligned(s["n"], s["k"], dtype):
            eff *= cal.gemm_unaligned_efficiency
            mode = UNALIGNED
        if op.attrs.get("grouped") and s["batch"] > 1:
            small = min(s["m"], s["n"]) <= GROUPED_SMALL_MAX
            menu, mode = GemmMenu((GROUPED_SMALL_TILE if small else GROUPED_TILE,), 1), GROUPED
            setup_k = 0.0 if small else GROUPED_SETUP_K
        menu = menu or gemm_menu(chip, dtype)
        compute_s = gemm_compute_seconds(s["m"], s["n"], s["k"], s["batch"], chip, dtype, rate, eff, menu, setup_k)
        skinny = menu.gemv_max
        if min(s["m"], s["n"]) <= skinny:  # its matrix-vector kernel streams at its own share of the copy's rate
            stream = menu.stream_efficiency
    mem = memory_part(op, chip, op.bytes, kernel_class, stream)
    if compute_s > 0 and min(s["m"], s["n"]) > skinny:  # the knee between compute and memory
        top = max(compute_s, mem.seconds)
        compute_s = top * ((compute_s / top) ** KNEE_EXPONENT + (mem.seconds / top) ** KNEE_EXPONENT) ** (
            1.0 / KNEE_EXPONENT)
    return OpCost(fixed_seconds(chip, 1, mem.latency_s), compute_s, mem.hbm_bytes, mem.seconds,
                  compute_energy_j=compute_energy(chip, op.flops, e_dtype), memory_energy_j=mem.energy_j,
                  level=mem.level, mode=mode)
