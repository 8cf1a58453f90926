"""The cost of one op on one chip, alone (no contention, boost clock).

time = fixed + max(compute, memory, link), where
- compute = FLOPs at the dtype's peak x a calibrated efficiency, with tile and wave quantization;
- memory  = bytes at the memory level's bandwidth x calibrated streaming/kernel efficiencies;
- fixed   = per-kernel device latency + the memory level's access latency (+ collective latency).
The engine turns these parts into events: it shares memory and link bandwidth between concurrent ops
and stretches compute when the power controller lowers the clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from chipsim.errors import InputError
from chipsim.hardware.chip import Chip
from chipsim.network.collectives import collective
from chipsim.network.system import System
from chipsim.workload.graph import Op
from chipsim.workload.kinds import COLLECTIVE_KINDS, DTYPE_BYTES, attention_flops


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
    mode: str = ""  # e.g. 'int4 weight-only (dequantize + bf16 MMA)' or 'int4 native'

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


CostFn = Callable[[Op, Chip], OpCost]
COST_MODELS: dict[str, CostFn] = {}


def register_cost(*kinds: str) -> Callable[[CostFn], CostFn]:
    def wrap(fn: CostFn) -> CostFn:
        for kind in kinds:
            COST_MODELS[kind] = fn
        return fn

    return wrap


def cost_of(op: Op, chip: Chip, system: System | None = None) -> OpCost:
    """The op's cost on `chip`; collectives on a `system` are costed over its network instead of
    the chip's own link."""
    fn = COST_MODELS.get(op.kind)
    if fn is None:
        raise InputError(f"no cost model for op kind '{op.kind}'", key=f"ops[{op.id}].kind")
    try:
        if system is not None and op.kind in COLLECTIVE_KINDS:
            return system_collective_cost(op, chip, system)
        return fn(op, chip)
    except InputError as exc:
        raise InputError(f"op '{op.name}': {exc.message}", key=f"ops[{op.id}].{exc.key or 'dtype'}") from None


# ---------------------------------------------------------------- shared pieces


def _memory_part(op: Op, chip: Chip, nbytes: float, kernel_class: str) -> tuple[float, float, float, str, float]:
    """Split `nbytes` between the weight buffer (eligible bytes that fit) and HBM.

    Returns (hbm_bytes, seconds, energy, level, latency)."""
    cal = chip.calibration
    eff = cal.memory_efficiency * cal.kernel_bw_efficiency.get(kernel_class, 1.0)
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
        return hbm_bytes, seconds, energy, "weight_buffer", latency
    seconds = nbytes / (chip.hbm.bandwidth_bytes_per_s * eff)
    return nbytes, seconds, nbytes * chip.hbm.energy_j_per_byte, "hbm", chip.hbm.latency_s


def _fixed(chip: Chip, kernels: int, mem_latency: float) -> float:
    return kernels * (chip.calibration.kernel_latency_s + mem_latency)


def _compute_energy(chip: Chip, flops: float, dtype: str) -> float:
    return flops * chip.power.energy_j_per_flop.get(dtype, chip.power.energy_j_per_flop["bf16"])


def _streaming(op: Op, chip: Chip, kernel_class: str, kernels: int = 1) -> OpCost:
    hbm_bytes, mem_s, mem_e, level, lat = _memory_part(op, chip, op.bytes, kernel_class)
    # vector math runs on the non-tensor pipes: fp32 rate (bounded below by 1/16 of bf16 peak)
    vector_rate = chip.peak_flops_per_s.get("fp32") or chip.peak("bf16") / 16
    compute_s = op.flops / vector_rate
    return OpCost(_fixed(chip, kernels, lat), compute_s, hbm_bytes, mem_s,
                  compute_energy_j=op.flops * chip.power.energy_j_per_flop.get("fp32", 0.0) / 4,
                  memory_energy_j=mem_e, kernels=kernels, level=level)


# ---------------------------------------------------------------- GEMM


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
            if split > 1 and k / split < 128:
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
    weight_dtype = op.attrs.get("weight_dtype", dtype)
    mode = ""
    if weight_dtype == "int4" or dtype == "int4":
        if chip.int4_mode == "native":
            rate, eff, e_dtype, mode = chip.peak("int4"), cal.gemm_efficiency.get("int4", 0.7), "int4", "int4 native MAC (assumes int4 activations too)"
        else:
            rate, eff, e_dtype = chip.peak("bf16"), cal.int4_weight_only_efficiency, "bf16"
            mode = "int4 weight-only (dequantize + bf16 MMA)"
    else:
        rate = chip.peak(dtype)
        if dtype not in cal.gemm_efficiency:
            raise InputError(f"chip '{chip.name}' has no calibrated GEMM efficiency for {dtype}", key="dtype")
        eff, e_dtype = cal.gemm_efficiency[dtype], dtype
    kernel_class = "gemm"
    if mode.startswith("int4 weight-only"):
        # dequantize-in-the-GEMM kernels run at their own (low) MMA throughput; at GEMV sizes a
        # dedicated kernel streams the packed weights at its own achieved bandwidth
        compute_s = op.flops / (rate * eff)
        if min(s["m"], s["n"]) <= GEMV_MAX:
            compute_s, kernel_class = 0.0, "int4_gemv"
    else:
        if not gemm_aligned(s["n"], s["k"], dtype):
            eff *= cal.gemm_unaligned_efficiency
            mode = "unaligned leading dimension: no TMA / wgmma fast path"
        compute_s = gemm_compute_seconds(s["m"], s["n"], s["k"], s["batch"], chip, dtype, rate, eff)
    hbm_bytes, mem_s, mem_e, level, lat = _memory_part(op, chip, op.bytes, kernel_class)
    return OpCost(_fixed(chip, 1, lat), compute_s, hbm_bytes, mem_s,
                  compute_energy_j=_compute_energy(chip, op.flops, e_dtype), memory_energy_j=mem_e,
                  level=level, mode=mode)


# ---------------------------------------------------------------- attention

GEMV_MAX = 8  # rows (or columns) below which libraries switch to matrix-vector kernels
Q_TILE = 128  # query rows per CTA in flash-style kernels
KV_BLOCK = 128  # keys per step of a decode kernel's loop over the KV cache


@register_cost("attention")
def attention_cost(op: Op, chip: Chip) -> OpCost:
    s = op.shape
    cal = chip.calibration
    backend = op.attrs.get("backend", "flash")
    if backend not in cal.attention_fwd_efficiency:
        raise InputError(f"unknown attention backend '{backend}'; expected one of "
                         f"{', '.join(cal.attention_fwd_efficiency)}", key="attrs.backend")
    rate = chip.peak(op.dtype)
    table = cal.attention_fwd_efficiency if s["pass"] == "fwd" else cal.attention_bwd_efficiency
    efficiency = cal.attention_fp32_efficiency if op.dtype == "fp32" else table[backend]
    # wave quantization over query tiles (batch x heads x ceil(seq_q / 128) CTAs)
    ctas = s["batch"] * s["heads"] * math.ceil(s["seq_q"] / Q_TILE)
    wave_eff = ctas / (math.ceil(ctas / chip.compute_units) * chip.compute_units)
    # each CTA pays a fixed prologue/epilogue (load Q, write O, or in backward the dQ/dK/dV
    # accumulators) worth `setup_keys` keys of its loop over the KV sequence
    setup = cal.attention_setup_keys.get(s["pass"], 0.0)
    keys_per_cta = s["seq_kv"] * attention_flops(s) / attention_flops({**s, "causal": False})
    compute_s = op.flops / (rate * efficiency * wave_eff) * (1.0 + setup / keys_per_cta)
    hbm_bytes, mem_s, mem_e, level, lat = _memory_part(op, chip, op.bytes, "attention")
    if s["seq_q"] <= 16 and s["pass"] == "fwd":
        mem_s = max(mem_s * cal.memory_efficiency / cal.attention_decode_efficiency[backend],
                    decode_loop_seconds(op, chip, backend))
    return OpCost(_fixed(chip, 1, lat), compute_s, hbm_bytes, mem_s,
                  compute_energy_j=_compute_energy(chip, op.flops, op.dtype), memory_energy_j=mem_e, level=level)


def decode_loop_seconds(op: Op, chip: Chip, backend: str) -> float:
    """Decode (few query rows): each CTA walks its share of the KV cache block by block, so time is
    waves x blocks per CTA x the kernel's per-block time. Kernels that split the KV sequence
    (flash-decoding) create enough CTAs to fill the chip; the others get batch x heads CTAs."""
    s = op.shape
    cal = chip.calibration
    pairs = s["batch"] * s["kv_heads"]  # a GQA group's query heads share one pass over its KV
    splits = max(1, chip.compute_units // pairs) if cal.attention_split_kv.get(backend, False) else 1
    ctas = pairs * splits
    blocks = math.ceil(s["seq_kv"] / splits / KV_BLOCK)
    block_s = cal.attention_decode_block_s[backend] * s["head_dim"] / 128
    return math.ceil(ctas / chip.compute_units) * blocks * block_s


# ---------------------------------------------------------------- memory-bound kernels


@register_cost("elementwise")
def elementwise_cost(op: Op, chip: Chip) -> OpCost:
    return _streaming(op, chip, str(op.attrs.get("op", "add")))


@register_cost("norm")
def norm_cost(op: Op, chip: Chip) -> OpCost:
    kind = str(op.attrs.get("type", "rms_norm"))
    backward = f"{kind}_bwd"
    use = backward if op.attrs.get("pass") == "bwd" and backward in chip.calibration.kernel_bw_efficiency else kind
    return _streaming(op, chip, use)


@register_cost("softmax")
def softmax_cost(op: Op, chip: Chip) -> OpCost:
    return _streaming(op, chip, "softmax")


@register_cost("quantize", "dequantize")
def quantize_cost(op: Op, chip: Chip) -> OpCost:
    return _streaming(op, chip, op.kind)


@register_cost("optimizer")
def optimizer_cost(op: Op, chip: Chip) -> OpCost:
    return _streaming(op, chip, "optimizer", kernels=int(op.attrs.get("kernels", 1)))


@register_cost("memcpy")
def memcpy_cost(op: Op, chip: Chip) -> OpCost:
    levels = {level.name: level for level in chip.memory_levels()}
    src, dst = op.attrs.get("src", "hbm"), op.attrs.get("dst", "hbm")
    for end, name in (("src", src), ("dst", dst)):
        if name not in levels:
            raise InputError(f"chip '{chip.name}' has no memory level '{name}'; it has {', '.join(levels)}",
                             key=f"attrs.{end}")
    if src == "hbm" and dst == "hbm":
        return _streaming(op, chip, "copy")
    # a transfer between levels: limited by the slower side; HBM carries one side of it
    slow = min(levels[src].bandwidth_bytes_per_s, levels[dst].bandwidth_bytes_per_s)
    size = op.shape["bytes"]
    seconds = size / (slow * chip.calibration.memory_efficiency)
    energy = size * (levels[src].energy_j_per_byte + levels[dst].energy_j_per_byte)
    lat = max(levels[src].latency_s, levels[dst].latency_s)
    return OpCost(_fixed(chip, 1, lat), 0.0, size, seconds, memory_energy_j=energy,
                  level=src if src != "hbm" else dst)


@register_cost("roofline")
def roofline_cost(op: Op, chip: Chip) -> OpCost:
    """Only FLOPs and bytes are known: the dtype's peak at the calibrated GEMM efficiency, and the
    streaming memory efficiency."""
    cal = chip.calibration
    compute_s = op.flops / (chip.peak(op.dtype) * cal.gemm_efficiency.get(op.dtype, 1.0)) if op.flops else 0.0
    hbm_bytes, mem_s, mem_e, level, lat = _memory_part(op, chip, op.bytes, "roofline")
    return OpCost(_fixed(chip, 1, lat), compute_s, hbm_bytes, mem_s,
                  compute_energy_j=_compute_energy(chip, op.flops, op.dtype), memory_energy_j=mem_e, level=level)


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
    # energy: assume the kernel kept half of its roof busy (a trace has no counters to tell)
    memory_j = seconds * chip.hbm.bandwidth_bytes_per_s * 0.5 * chip.hbm.energy_j_per_byte if rule == "memory" else 0.0
    compute_j = 0.0 if rule == "memory" else seconds * chip.peak("bf16") * 0.5 * chip.power.energy_j_per_flop["bf16"]
    label = "opaque: measured duration" + (f" x {ratio:.3g} ({rule} ratio)" if ratio != 1.0 else "")
    if rule == "compute":  # a compute kernel slows with the clock
        return OpCost(0.0, seconds, 0.0, 0.0, compute_energy_j=compute_j, mode=label)
    return OpCost(0.0, 0.0, 0.0, seconds, compute_energy_j=compute_j, memory_energy_j=memory_j, mode=label)


# ---------------------------------------------------------------- collectives over the chip's own link

# per-rank bytes each rank sends over the ring, as a multiple of the per-rank input
RING_TRAFFIC: dict[str, Callable[[int], float]] = {
    "all_reduce": lambda n: 2.0 * (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_gather": lambda n: float(n - 1),
}
RING_STEPS: dict[str, Callable[[int], int]] = {
    "all_reduce": lambda n: 2 * (n - 1),
    "reduce_scatter": lambda n: n - 1,
    "all_gather": lambda n: n - 1,
}


@register_cost("all_reduce", "all_gather", "reduce_scatter")
def collective_cost(op: Op, chip: Chip) -> OpCost:
    """Ring algorithm over `group` chips joined by the chip's own link (one representative rank)."""
    n = int(op.shape["group"])
    size = float(op.shape["bytes"])
    if n <= 1 or size == 0:
        return OpCost(chip.calibration.kernel_latency_s, 0.0, 0.0, 0.0, kernels=1)
    cal = chip.calibration
    sent = RING_TRAFFIC[op.kind](n) * size
    link_s = sent / (chip.link.bandwidth_bytes_per_s * cal.collective_efficiency.get(op.kind, 1.0))
    fixed = cal.collective_latency_s + RING_STEPS[op.kind](n) * chip.link.latency_s
    # the reduction reads local + received data and writes the result through HBM
    hbm_bytes = sent * (1.5 if op.kind != "all_gather" else 1.0)
    mem_s = hbm_bytes / (chip.hbm.bandwidth_bytes_per_s * cal.memory_efficiency)
    reduce_flops = sent / DTYPE_BYTES.get(op.dtype, 2) if op.kind != "all_gather" else 0.0
    return OpCost(fixed, 0.0, hbm_bytes, mem_s, link_bytes=sent, link_s=link_s,
                  compute_energy_j=reduce_flops * chip.power.energy_j_per_flop.get("fp32", 0.0) / 4,
                  memory_energy_j=hbm_bytes * chip.hbm.energy_j_per_byte + sent * chip.link.energy_j_per_byte)


def system_collective_cost(op: Op, chip: Chip, system: System) -> OpCost:
    """A collective over the system's topology (flow-level, see chipsim.network): the achieved
    fraction of link bandwidth calibrated for NCCL on the chip applies to the transfer time."""
    cal = chip.calibration
    report = collective(system, op.kind, float(op.shape["bytes"]), int(op.shape["group"]),
                        str(op.attrs.get("algorithm", "auto")))
    if report.seconds == 0:
        return OpCost(cal.kernel_latency_s, 0.0, 0.0, 0.0, kernels=1, mode="no transfer")
    efficiency = cal.collective_efficiency.get(op.kind, max(cal.collective_efficiency.values(), default=1.0))
    per_rank = report.bytes_sent / report.ranks
    # NCCL's achieved efficiency stretches the transfers, not the path latencies
    link_s = report.latency_s + (report.seconds - report.latency_s) / efficiency
    reduce_flops = per_rank / DTYPE_BYTES.get(op.dtype, 2) if op.kind in ("all_reduce", "reduce_scatter") else 0.0
    return OpCost(cal.collective_latency_s, 0.0, 0.0, 0.0, link_bytes=per_rank, link_s=link_s,
                  compute_energy_j=reduce_flops * chip.power.energy_j_per_flop.get("fp32", 0.0) / 4,
                  memory_energy_j=per_rank * (chip.link.energy_j_per_byte + 1.5 * chip.hbm.energy_j_per_byte),
                  mode=f"{op.kind} {report.algorithm} over {report.ranks} GPUs of {system.name}: {report.method}")
