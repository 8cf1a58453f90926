"""Attention: the backend's efficiency, wave quantization over query tiles and a per-CTA setup cost;
decode walks the KV cache block by block (kernels that split the KV sequence fill the chip)."""

from __future__ import annotations

import heapq
import math
from functools import lru_cache

from chipsim.cost.base import OpCost, compute_energy, fixed_seconds, memory_part, register_cost
from chipsim.hardware.chip import Chip
from chipsim.workload.graph import Op
from chipsim.workload.kinds import DTYPE_BYTES, attention_flops, v_head_dim

Q_TILE = 128  # query rows per CTA in flash-style kernels
KV_BLOCK = 128  # keys per step of a decode kernel's loop over the KV cache
DECODE_MAX_Q = 16  # a forward with at most this many query rows runs a decode kernel
REFERENCE_HEAD_DIM = 128  # `decode_block` times are calibrated at this head dim
REFERENCE_BYTES = 2  # ... and on 16-bit KV caches
MAX_SCHEDULED_CTAS = 1 << 15  # beyond this many CTAs the tail of the CTA schedule is < 1%: whole waves


@register_cost("attention")
def attention_cost(op: Op, chip: Chip) -> OpCost:
    s = op.shape
    cal = chip.calibration
    backend = op.attrs.get("backend", "flash")
    rate = chip.peak(op.dtype)
    table = cal.attention_fwd_efficiency if s["pass"] == "fwd" else cal.attention_bwd_efficiency
    efficiency = cal.attention_fp32_efficiency if op.dtype == "fp32" else table[backend]
    # each CTA pays a fixed prologue/epilogue (load Q, write O, or in backward the dQ/dK/dV
    # accumulators) worth `setup_keys` keys of its loop over the KV sequence
    setup = cal.attention_setup_keys.get(s["pass"], 0.0)
    keys_per_cta = s["seq_kv"] * attention_flops(s) / attention_flops({**s, "causal": False})
    use = cta_utilization(s["batch"] * s["heads"], s["seq_q"], s["seq_kv"], bool(s["causal"]), s["pass"] == "bwd",
                          round(setup), chip.compute_units)
    compute_s = op.flops / (rate * efficiency * use) * (1.0 + setup / keys_per_cta)
    mem = memory_part(op, chip, op.bytes, "attention")
    mem_s = mem.seconds
    fixed = fixed_seconds(chip, 1, mem.latency_s)
    if s["seq_q"] <= DECODE_MAX_Q and s["pass"] == "fwd":
        mem_s = max(mem_s * cal.memory_efficiency / cal.attention_decode_efficiency[backend],
                    decode_loop_seconds(op, chip, backend))
        fixed += cal.attention_decode_fixed_s.get(backend, 0.0)
    return OpCost(fixed, compute_s, mem.hbm_bytes, mem_s,
                  compute_energy_j=compute_energy(chip, op.flops, op.dtype), memory_energy_j=mem.energy_j,
                  level=mem.level)


@lru_cache(maxsize=4096)
def cta_utilization(pairs: int, seq_q: int, seq_kv: int, causal: bool, backward: bool, setup: int,
                    units: int) -> float:
    """Busy fraction of the SMs over a flash-style kernel: its CTAs (forward: one per 128 query rows;
    backward: one per 128 keys) are dealt to the SMs in grid order, each (batch, head)'s tiles in turn,
    each as soon as an SM frees up (list scheduling). Uniform CTAs (no mask) give whole waves:
    ctas / (ceil(ctas / units) * units). Under a causal mask CTA i of a forward sees ~(i + 1) * 128
    keys (a backward's key tile j is seen by the queries after it), so the last CTAs dealt are the
    longest of the forward and the chip idles behind them: with few (batch x heads) the tail is a large
    share of the kernel. Matches measured cuDNN SDPA on an H200 (causal, head dim 128, seq 4096: 8, 16,
    32 and 128 heads run at 0.58, 0.76, 0.87 and 1.0 of the 128-head throughput; this model: 0.63,
    0.79, 0.90 and 1.0), which whole waves alone miss (every one of them ~0.97)."""
    rows, cols = (seq_kv, seq_q) if backward else (seq_q, seq_kv)  # the tiled side, the looped side
    tiles = math.ceil(rows / Q_TILE)
    ctas = pairs * tiles
    if not causal or ctas > MAX_SCHEDULED_CTAS:
        return ctas / (math.ceil(ctas / units) * units)
    # keys (queries) each tile's CTA loops over: rows aligned to the end of the KV sequence
    offset = seq_kv - seq_q
    if backward:
        loops = [max(1, min(cols, seq_q - max(0, i * Q_TILE - offset))) for i in range(tiles)]
    else:
        loops = [max(1, min(cols, offset + min(rows, (i + 1) * Q_TILE))) for i in range(tiles)]
    free = [0.0] * min(units, ctas)
    for _ in range(pairs):
        for keys in loops:
            heapq.heapreplace(free, free[0] + setup + keys)
    work = pairs * sum(setup + keys for keys in loops)
    return work / (units * max(free))


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
    # a block's time is its bytes' (calibrated on 16-bit keys and values of head dim 128): an FP8 cache
    # halves it, MLA's shared latent is read once
    dims = s["head_dim"] if op.attrs.get("shared_kv") else s["head_dim"] + v_head_dim(s)
    block_s = (cal.attention_decode_block_s[backend] * dims / (2 * REFERENCE_HEAD_DIM)
               * DTYPE_BYTES.get(op.dtype, 2) / REFERENCE_BYTES)
    return math.ceil(ctas / chip.compute_units) * blocks * block_s
