"""Attention: the backend's efficiency, wave quantization over query tiles and a per-CTA setup cost;
decode walks the KV cache block by block (kernels that split the KV sequence fill the chip)."""

from __future__ import annotations

import math

from chipsim.cost.base import OpCost, compute_energy, fixed_seconds, memory_part, register_cost
from chipsim.hardware.chip import Chip
from chipsim.workload.graph import Op
from chipsim.workload.kinds import attention_flops

Q_TILE = 128  # query rows per CTA in flash-style kernels
KV_BLOCK = 128  # keys per step of a decode kernel's loop over the KV cache
DECODE_MAX_Q = 16  # a forward with at most this many query rows runs a decode kernel
REFERENCE_HEAD_DIM = 128  # `decode_block` times are calibrated at this head dim


@register_cost("attention")
def attention_cost(op: Op, chip: Chip) -> OpCost:
    s = op.shape
    cal = chip.calibration
    backend = op.attrs.get("backend", "flash")
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
    block_s = cal.attention_decode_block_s[backend] * s["head_dim"] / REFERENCE_HEAD_DIM
    return math.ceil(ctas / chip.compute_units) * blocks * block_s
