"""Predict measured cases: each row of a measurements CSV (the schema of
reference/h200/calibration.csv) becomes a workload, is simulated the way it was measured, and is
compared with the measured time.

How rows are measured, and so how they are replayed:
- `eager` rows: back-to-back launches from Python; the median per-iteration time is the steady state
  of a loop, so the workload is repeated and the time between the ends of consecutive iterations is
  taken (host dispatch and device time then overlap as they do on the machine);
- `graph` rows: CUDA-graph replays, device time only;
- training steps ran back to back at the power limit: they start with the power controller there.

Collectives over `world` > 1 GPUs, and data-parallel training steps, run on the chip's system
(`system_for`: its node, or its cluster for `*_internode` rows and notes that name several nodes),
through that system's fabric; everything else on the lone chip. Parallel training rows (columns
`tp, pp, dp, micro_batches`, `ep`) simulate one representative GPU per pipeline stage: tensor-parallel
all-reduces, expert-parallel all-to-alls and the stages' send/recv go over the same fabric.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chipsim.atomic import atomic_write
from chipsim.config.loader import brief, read_bounded
from chipsim.cost.base import Network
from chipsim.engine.sim import SimOptions, simulate
from chipsim.errors import InputError
from chipsim.hardware.chip import Chip
from chipsim.hardware.registry import chip_for_device_name, load_chip
from chipsim.network.fabric import Fabric
from chipsim.network.system import system_for
from chipsim.vocab import LAUNCH_MODES
from chipsim.workload.generators import build_workload
from chipsim.workload.graph import Op, Workload, WorkloadBuilder
from chipsim.workload.io import JSONReadError, parse_json_bytes
from chipsim.workload.kinds import COLLECTIVE_KINDS

GEMM_DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "tf32": "tf32", "fp8_e4m3": "fp8",
               "fp8_e4m3fn": "fp8", "fp8_e4m3fnuz": "fp8", "int8": "int8"}  # fnuz: AMD's fp8 encoding, same width
# A maximum-achievable-matmul-FLOPS search (`mamf_best`) reports the fastest of thousands of shapes:
# a shape where the library's kernel runs this much above the efficiency chipsim's GEMM model holds
# for the shapes a workload has. Measured on the H200, whose GEMM efficiency is fitted to our own
# shapes (its fp8 mamf_best row of reference/published/calibration.csv: 86.8 us against 108.7 us
# predicted); the A100 agrees (bf16 best shape 0.876 of peak, fp16 on 61 typical shapes 0.717: 1.22).
# So a chip known only from a best-shape row is not credited with the best shape's efficiency.
BEST_SHAPE_SPEEDUP = 1.25
GEMM_VARIANTS = ("square", "llm", "odd", "mamf_best", "maf")  # shape families: the stated shape, one GEMM
BLOCK_SCALED = ("deepgemm_blockscaled", "deepgemm_grouped_contiguous")  # DeepGEMM: fp8 with block scales
SCALE_BLOCK = 128  # DeepGEMM's scale granularity: 1 x 128 for A (per token), 128 x 128 for B
# attention variant -> the backend whose calibration applies (math_pytorch: unfused ops instead)
# SDPA at DeepSeek-V3's MLA shapes (q/k head dim 192, v head dim 128: different head dims): PyTorch
# 2.11 runs cuDNN's fused kernel on Hopper (profiled on an H200: cudnn_generated_fort_native_sdpa_sm90_
# flash_fprop_wgmma_f16_knob_7_64x128x192; FlashAttention-2 needs equal q/k/v head dims)
MLA_ATTENTION = {"sdpa_mla_shape": "cudnn"}
MLA_V_HEAD_DIM = 128  # DeepSeek-V3's v_head_dim, unless the note says otherwise ("v head dim N")
ATTENTION_BACKENDS = {"flash": "flash", "cudnn": "cudnn", "efficient": "efficient",
                      "cudnn_prefill": "cudnn", "cudnn_decode": "cudnn",  # cuDNN frontend SDPA
                      "paged_decode": "flash", "prefill_chunk": "flash",  # FlashAttention over a paged KV cache
                      "flash_ck": "flash"}  # AMD Composable Kernel FlashAttention: the AMD chip's flash calibration
# BabelStream kernel -> (elementwise op, arrays it moves); `bytes` is one array. copy c=a (1 read, 1 write),
# mul b=s*c (1, 1), add c=a+b (2, 1), triad a=b+s*c (2, 1), dot sum(a*b) (2 reads, nothing written: a
# reduction, modelled as one `read` over both arrays)
BABELSTREAM = {"copy": ("copy", 2), "mul": ("scale", 2), "add": ("add", 3), "triad": ("add", 3), "dot": ("read", 2)}
ELEMENTWISE_VARIANTS = ("add", "gelu", "silu_mul", "mul", "silu")
# collective variant (less `_internode`) -> the op's `attrs.algorithm`
COLLECTIVE_ALGORITHMS = {"nccl": "auto", "rccl": "auto", "nccl_ring": "ring", "rccl_ring": "ring",
                         "nccl_tree": "tree", "nccl_nvls": "in_switch"}
INTERNODE = "_internode"
# train_step dtype -> the training-step generator's precision parameters. `_compiled`: torch.compile
# (Inductor fuses the elementwise chains); `fp8_*_compiled`: torchao float8 training of the block
# linears (dynamic tensorwise or rowwise scales, casts fused by the compiler; LM head bf16)
STEP_PRECISION: dict[str, dict[str, Any]] = {
    "bf16_autocast": {"precision": "bf16"}, "bf16": {"precision": "bf16"}, "fp32": {"precision": "fp32"},
    "fp8_e4m3_linear": {"precision": "fp8"},
    "bf16_autocast_compiled": {"precision": "bf16", "compiled": True},
    "fp8_tensorwise_compiled": {"precision": "fp8", "compiled": True, "fp8_scaling": "tensorwise"},
    "fp8_rowwise_compiled": {"precision": "fp8", "compiled": True, "fp8_scaling": "rowwise"},
}
FAMILIES = {
    "gemm": "gemm", "memory": "memory", "elementwise": "elementwise", "attention": "attention",
    "all_reduce": "collective", "all_gather": "collective", "reduce_scatter": "collective",
    "all_to_all": "collective", "p2p": "collective", "compressed_all_reduce": "collective",
    "dynamic_attention": "layer",
    "train_step": "model_step", "prefill_step": "model_step", "decode_step": "model_step",
    "grouped_gemm": "gemm", "moe_train_step": "model_step",
}
GROUPED_GEMM_VARIANTS = ("grouped_mm", "loop")  # torch._grouped_mm in one launch; one torch.matmul per expert
STEP_OPS = ("train_step", "moe_train_step")  # run back to back at the power limit
REQUIRED_COLUMNS = ("op", "variant", "dtype", "launch", "measured_us")
MAX_CSV_BYTES = 256 * 2**20  # a measurements or baselines CSV
MAX_POWER_BYTES = 16 * 2**20  # a power phases JSON
MAX_DIM = 2**53  # a shape value above this is not an exact integer in float arithmetic


class Unsupported(Exception):
    """A row chipsim cannot simulate; reported and skipped, never silently dropped."""


@dataclass(frozen=True)
class Case:
    workload: Workload
    repeats: int
    sustained: bool = False
    world: int = 1  # GPUs the row ran on: > 1 runs the collectives on the chip's system fabric
    across_nodes: bool = False  # spread over nodes (`*_internode`, or a note naming several nodes)
    per_node: int | None = None  # GPUs of each node the communicator uses (a note's "N node(s) x G")
    best_of_search: bool = False  # the fastest of a shape search (`mamf_best`): see BEST_SHAPE_SPEEDUP


def _number(row: Mapping[str, Any], key: str) -> float:
    """A finite number in column `key` of the row; anything else makes the row unsupported."""
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip()):
        raise Unsupported(f"missing column '{key}'")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise Unsupported(f"column '{key}': expected a number, got {brief(value)}") from None
    if not math.isfinite(number) or abs(number) > MAX_DIM:
        raise Unsupported(f"column '{key}': expected a finite number below 2^53, got {brief(value)}")
    return number


def _int(row: Mapping[str, Any], key: str) -> int:
    number = _number(row, key)
    if number != int(number):
        raise Unsupported(f"column '{key}': expected an integer, got {brief(row.get(key))}")
    return int(number)


def _note_int(row: Mapping[str, Any], key: str) -> int | None:
    match = re.search(rf"{key}=(\d+)", str(row.get("note") or ""))
    return int(match.group(1)) if match else None


def _note_int_phrase(row: Mapping[str, Any], pattern: str) -> int | None:
    match = re.search(pattern, str(row.get("note") or ""), re.IGNORECASE)
    return int(match.group(1)) if match else None


def single_op(kind: str, dtype: str, attrs: Mapping[str, Any] | None = None, **shape: Any) -> Workload:
    b = WorkloadBuilder(f"{kind}")
    b.add(kind, kind, dtype, [], stream="comm" if kind in COLLECTIVE_KINDS else "compute",
          attrs=attrs, **shape)
    return b.build()


def _present(row: Mapping[str, Any], key: str) -> bool:
    value = row.get(key)
    return not (value is None or (isinstance(value, float) and math.isnan(value))
                or (isinstance(value, str) and not value.strip()))


def _gemm(row: Mapping[str, Any]) -> Workload:
    m, n, k = _int(row, "m"), _int(row, "n"), _int(row, "k")
    variant = str(row["variant"])
    if variant in BLOCK_SCALED:
        return _block_scaled_gemm(row, m, n, k)
    if variant not in GEMM_VARIANTS and not (isinstance(row["variant"], float) and math.isnan(row["variant"])):
        raise Unsupported(f"gemm variant {variant!r} (known: {', '.join(GEMM_VARIANTS + BLOCK_SCALED)})")
    shape: dict[str, Any] = {"m": m, "n": n, "k": k}
    if _present(row, "batch") and _int(row, "batch") > 1:
        shape["batch"] = _int(row, "batch")
    if row["dtype"] == "int4_w_bf16_a":
        return single_op("gemm", "bf16", {"weight_dtype": "int4", "group_size": 128}, **shape)
    if row["dtype"] not in GEMM_DTYPES:
        raise Unsupported(f"gemm dtype {row['dtype']!r}")
    return single_op("gemm", GEMM_DTYPES[row["dtype"]], **shape)


def _block_scaled_gemm(row: Mapping[str, Any], m: int, n: int, k: int) -> Workload:
    """DeepGEMM's FP8 GEMM with fine-grained scales: A (m x k) has one fp32 scale per token per 128
    channels (1 x 128), B (k x n) one per 128 x 128 block; the output is bf16.

    Modelled as an fp8 GEMM (the chip's fp8 rate and calibrated efficiency; DeepGEMM's scale
    promotion runs inside the same kernel) plus its scale traffic: the scales are read by the GEMM's
    own kernel, so they are a `read` stream on a second stream, concurrent with the GEMM and sharing
    its HBM bandwidth, launched by no host call of its own (`host_s: 0`): they slow a memory-bound
    GEMM by their bytes and cost a compute-bound one nothing.

    `deepgemm_grouped_contiguous` (MoE experts, `batch` = groups): the groups' tokens are laid out
    one after the other along M, each group (m/groups x k) @ (k x n) with its own weights: a batched
    GEMM of `batch` groups. `m` is all groups' tokens together (as in parallel_calibration.csv's
    grouped GEMMs) unless the note says it is per group."""
    dtype = str(row["dtype"])
    if GEMM_DTYPES.get(dtype) != "fp8":
        raise Unsupported(f"gemm variant {row['variant']!r} needs an fp8 dtype, got {dtype!r}")
    groups = 1
    if row["variant"] == "deepgemm_grouped_contiguous":
        groups = _int(row, "batch") if _present(row, "batch") else 0
        if groups < 1:
            raise Unsupported(f"gemm variant {row['variant']!r} needs 'batch' (the number of groups) >= 1")
        note = str(row.get("note") or "").lower()
        per_group = re.search(r"\bm\b[^;.]*\bper group|\bm_per_group\b|\bm is per group", note) is not None
        if not per_group:
            m = math.ceil(m / groups)
    blocks_k = math.ceil(k / SCALE_BLOCK)
    scales = groups * (m * blocks_k + math.ceil(n / SCALE_BLOCK) * blocks_k)  # fp32 scales of A and B
    b = WorkloadBuilder(str(row["variant"]))
    gemm_shape: dict[str, Any] = {"m": m, "n": n, "k": k}
    if groups > 1:
        gemm_shape["batch"] = groups
    b.add("gemm", "gemm", "fp8", [], **gemm_shape)
    b.add("elementwise", "block_scales", "fp32", [], stream="copy", attrs={"op": "read", "host_s": 0.0},
          numel=scales)
    return b.build()


def _memory(row: Mapping[str, Any]) -> Workload:
    size = _number(row, "bytes")
    variant = str(row["variant"])
    if variant == "copy":
        return single_op("memcpy", "bf16", bytes=size)
    if variant in ("read_sum", "write_fill"):
        return single_op("elementwise", "bf16", {"op": "read" if variant == "read_sum" else "write"}, numel=size / 2)
    if variant.startswith("babelstream_") and variant[len("babelstream_"):] in BABELSTREAM:
        # arrays of any element type (BabelStream's are fp64) as fp32 elements of the same bytes
        op, _ = BABELSTREAM[variant[len("babelstream_"):]]
        if op == "copy":
            return single_op("memcpy", "bf16", bytes=size)
        return single_op("elementwise", "fp32", {"op": op}, numel=(2 if op == "read" else 1) * size / 4)
    raise Unsupported(f"memory variant {variant!r} (known: copy, read_sum, write_fill, "
                      f"{', '.join('babelstream_' + k for k in BABELSTREAM)})")


def _elementwise(row: Mapping[str, Any]) -> Workload:
    m, n, variant = _int(row, "m"), _int(row, "n"), row["variant"]
    dtype = row["dtype"]
    if variant in ("rms_norm", "layer_norm"):
        return single_op("norm", dtype, {"type": variant}, rows=m, cols=n)
    if variant == "softmax":
        return single_op("softmax", dtype, rows=m, cols=n)
    if variant in ELEMENTWISE_VARIANTS:  # silu_mul: input [m, 2n] (gate, up), output [m, n]
        return single_op("elementwise", dtype, {"op": variant}, numel=m * n)
    raise Unsupported(f"elementwise variant {variant!r}")


def _attention(row: Mapping[str, Any]) -> Workload:
    shape: dict[str, Any] = {k: _int(row, k) for k in ("batch", "heads", "kv_heads", "seq_q", "seq_kv", "head_dim")}
    shape["causal"] = bool(_int(row, "causal")) if not pd.isna(row.get("causal")) else False
    variant = str(row["variant"])
    if variant == "math_pytorch":
        return _math_attention(row, shape)
    if variant in MLA_ATTENTION:  # q/k head dim `head_dim`, v head dim from the note
        shape["v_head_dim"] = _note_int_phrase(row, r"v head dim (\d+)") or MLA_V_HEAD_DIM
    elif variant not in ATTENTION_BACKENDS:
        raise Unsupported(f"attention variant {variant!r} (known: "
                          f"{', '.join([*ATTENTION_BACKENDS, *MLA_ATTENTION, 'math_pytorch'])})")
    b = WorkloadBuilder("attention")
    attrs = {"backend": MLA_ATTENTION.get(variant) or ATTENTION_BACKENDS[variant]}
    fwd = b.add("attention", "attention", str(row["dtype"]), [], attrs=attrs, shape=shape)
    if row.get("pass") == "fwd_bwd":
        b.add("attention", "attention_bwd", str(row["dtype"]), [fwd], attrs=attrs, shape={**shape, "pass": "bwd"})
    return b.build()


def _math_attention(row: Mapping[str, Any], s: Mapping[str, Any]) -> Workload:
    """PyTorch's unfused (math) SDPA: S = QK^T as a batched GEMM over batch x heads, the causal mask
    applied to S (one pass over it), P = softmax(S), O = PV as a batched GEMM; the scores make a
    round trip through HBM. fwd_bwd adds dV = P^T dO, dP = dO V^T, the softmax backward
    (reads P and dP, writes dS), dQ = dS K and dK = dS^T Q."""
    dtype = str(row["dtype"])
    bh, sq, skv, d = s["batch"] * s["heads"], s["seq_q"], s["seq_kv"], s["head_dim"]
    b = WorkloadBuilder("attention_math")
    x = b.add("gemm", "qk", dtype, [], m=sq, n=skv, k=d, batch=bh)
    if s["causal"] and sq > 1:
        x = b.add("elementwise", "causal_mask", dtype, [x], numel=bh * sq * skv, attrs={"op": "scale"})
    p = b.add("softmax", "softmax", dtype, [x], rows=bh * sq, cols=skv)
    b.add("gemm", "pv", dtype, [p], m=sq, n=d, k=skv, batch=bh)
    if row.get("pass") == "fwd_bwd":
        dv = b.add("gemm", "dv", dtype, [p], m=skv, n=d, k=sq, batch=bh)
        dp = b.add("gemm", "dp", dtype, [dv], m=sq, n=skv, k=d, batch=bh)
        ds = b.add("elementwise", "softmax_bwd", dtype, [dp], numel=bh * sq * skv, attrs={"op": "mul"})
        b.add("gemm", "dq", dtype, [ds], m=sq, n=d, k=skv, batch=bh)
        b.add("gemm", "dk", dtype, [ds], m=skv, n=d, k=sq, batch=bh)
    return b.build()


def collective_variant(variant: str) -> tuple[str, bool]:
    """(attrs.algorithm, across nodes) of a collective row's variant."""
    base = variant[:-len(INTERNODE)] if variant.endswith(INTERNODE) else variant
    if base not in COLLECTIVE_ALGORITHMS:
        raise Unsupported(f"collective variant {variant!r} (known: {', '.join(COLLECTIVE_ALGORITHMS)}, "
                          f"each also as *{INTERNODE})")
    return COLLECTIVE_ALGORITHMS[base], base != variant


def _collective(row: Mapping[str, Any]) -> Workload:
    algorithm, _ = collective_variant(str(row["variant"]))
    attrs = {"algorithm": algorithm} if algorithm != "auto" else None
    return single_op(str(row["op"]), str(row["dtype"]), attrs, bytes=_number(row, "bytes"), group=_int(row, "world"))


P2P_VARIANTS = {"send_recv_oneway": False, "send_recv_bidir": True}  # variant -> both ways at once


def _p2p(row: Mapping[str, Any]) -> Workload:
    """A point-to-point transfer of `bytes` between the world's first and last GPU: one way, or both
    ways at once (batch_isend_irecv)."""
    variant = str(row["variant"])
    if variant not in P2P_VARIANTS:
        raise Unsupported(f"p2p variant {variant!r} (known: {', '.join(P2P_VARIANTS)})")
    return single_op("send_recv", str(row["dtype"]), {"bidirectional": P2P_VARIANTS[variant]},
                     bytes=_number(row, "bytes"), group=_int(row, "world"))


def _compressed(row: Mapping[str, Any]) -> Workload:
    scheme = "int8_compressed" if "int8" in str(row["variant"]) else "plain"
    return build_workload("all_reduce", {"chips": _int(row, "world"), "size": int(_number(row, "bytes")),
                                         "dtype": str(row["dtype"]), "scheme": scheme})


def _dynamic_attention(row: Mapping[str, Any]) -> Workload:
    return build_workload("dynamic_attention", {
        "batch": _int(row, "batch"), "seq": _int(row, "seq_q"), "d_model": _int(row, "d_model"),
        "heads": _int(row, "heads"), "kv_heads": _int(row, "kv_heads"), "causal": bool(_int(row, "causal")),
        "weight_gen": str(row["variant"]), "passes": str(row["pass"]), "dtype": str(row["dtype"])})


def _model_dims(row: Mapping[str, Any]) -> dict[str, Any]:
    dims = {"model": None, "layers": _int(row, "layers"), "d_model": _int(row, "d_model"),
            "heads": _int(row, "heads"), "kv_heads": _int(row, "kv_heads"), "ffn": _int(row, "ffn")}
    vocab = _int(row, "vocab") if _present(row, "vocab") else _note_int(row, "vocab")
    if vocab:
        dims["vocab"] = vocab
    return dims


def _world(row: Mapping[str, Any]) -> int:
    return _int(row, "world") if _present(row, "world") else 1


def _train_step(row: Mapping[str, Any]) -> Workload:
    precision = STEP_PRECISION.get(str(row["dtype"]))
    if precision is None:
        raise Unsupported(f"train_step dtype {row['dtype']!r}")
    params = {**_model_dims(row), "batch": _int(row, "batch"), "seq": _int(row, "seq_q"), **precision}
    world = _world(row)
    layout = _parallel_layout(row, world)
    if layout:  # tensor / pipeline parallel, gradient accumulation or blocks only
        return build_workload("parallel_train_step", {**params, **layout})
    if world > 1:  # data parallel: each rank's step, gradients all-reduced in buckets over the fabric
        return build_workload("data_parallel_train_step", {**params, "ranks": world})
    return build_workload("transformer_train_step", params)


def _layout_int(row: Mapping[str, Any], key: str) -> int:
    value = _int(row, key) if _present(row, key) else 1
    if value < 1:
        raise Unsupported(f"column '{key}': expected a whole number >= 1, got {brief(row.get(key))}")
    return value


def _parallel_layout(row: Mapping[str, Any], world: int) -> dict[str, Any]:
    """The parallel_train_step parameters of a train_step row with a parallel layout (columns tp, pp,
    dp, micro_batches; a `tp_` variant or a note saying "blocks only" runs no embedding or LM head;
    an `fsdp_` variant over dp > 1 GPUs shards as FSDP2, reducing in bf16 where the note says
    "reduce bf16", else fp32), or {} for a plain (data-parallel) step."""
    tp, pp, dp, micro = (_layout_int(row, k) for k in ("tp", "pp", "dp", "micro_batches"))
    note = str(row.get("note") or "").lower()
    blocks_only = str(row["variant"]).startswith("tp_") or "blocks only" in note
    fsdp = str(row["variant"]).startswith("fsdp") and world > 1
    if tp == pp == micro == 1 and not blocks_only and not fsdp:
        return {}
    if world % (tp * pp):
        raise Unsupported(f"world ({world}) is not a multiple of tp x pp ({tp} x {pp})")
    if _present(row, "dp") and tp * pp * dp != world:
        raise Unsupported(f"tp x pp x dp ({tp} x {pp} x {dp}) is not the world ({world})")
    layout: dict[str, Any] = {"tp": tp, "pp": pp, "dp": world // (tp * pp), "micro_batches": micro,
                              "blocks_only": blocks_only}
    if fsdp:
        bf16 = re.search(r"reduce(_dtype)?[ =:]*(torch\.)?(bf16|bfloat16)", note)
        layout.update(fsdp=True, grad_dtype="bf16" if bf16 else "fp32")
    return layout


def _grouped_gemm(row: Mapping[str, Any]) -> Workload:
    """`experts` GEMMs, each (m/experts x k) @ (k x n): `grouped_mm` as one torch._grouped_mm launch (the
    gemm op's `grouped` kernel), `loop` as one torch.matmul per expert, each launched eagerly."""
    m, n, k, experts = _int(row, "m"), _int(row, "n"), _int(row, "k"), _int(row, "experts")
    variant, dtype = str(row["variant"]), str(row["dtype"])
    if variant not in GROUPED_GEMM_VARIANTS:
        raise Unsupported(f"grouped_gemm variant {variant!r} (known: {', '.join(GROUPED_GEMM_VARIANTS)})")
    if GEMM_DTYPES.get(dtype) != "bf16":
        raise Unsupported(f"grouped_gemm dtype {dtype!r} (known: bf16)")
    if experts < 1 or m % experts:
        raise Unsupported(f"m ({m}) must be a multiple of experts ({experts})")
    b = WorkloadBuilder(f"grouped_gemm_{variant}")
    if variant == "grouped_mm":
        b.add("gemm", "grouped_mm", "bf16", [], m=m // experts, n=n, k=k, batch=experts, attrs={"grouped": True})
    else:
        for e in range(experts):
            b.add("gemm", f"expert{e}", "bf16", [], m=m // experts, n=n, k=k)
    return b.build()


def _moe_train_step(row: Mapping[str, Any]) -> Workload:
    if str(row["dtype"]) not in ("bf16_autocast", "bf16"):
        raise Unsupported(f"moe_train_step dtype {row['dtype']!r} (known: bf16_autocast)")
    ep = _layout_int(row, "ep")
    world = _world(row)
    if world % ep:
        raise Unsupported(f"world ({world}) is not a multiple of ep ({ep})")
    return build_workload("moe_train_step", {
        "layers": _int(row, "layers"), "d_model": _int(row, "d_model"), "experts": _int(row, "experts"),
        "topk": _int(row, "topk"), "expert_ffn": _int(row, "expert_ffn"), "batch": _int(row, "batch"),
        "seq": _int(row, "seq_q"), "ep": ep, "dp": world // ep})


def _inference_step(row: Mapping[str, Any]) -> Workload:
    weights = {"bf16": "bf16", "int4_weight": "int4", "int8_weight": "int8"}.get(str(row["dtype"]))
    if weights is None:
        raise Unsupported(f"{row['op']} dtype {row['dtype']!r}")
    phase = "prefill" if row["op"] == "prefill_step" else "decode"
    return build_workload("quantized_inference", {**_model_dims(row), "phase": phase, "batch": _int(row, "batch"),
                                                  "prompt": _int(row, "seq_kv"), "weights": weights})


BUILDERS: dict[str, Callable[[Mapping[str, Any]], Workload]] = {
    "gemm": _gemm, "memory": _memory, "elementwise": _elementwise, "attention": _attention,
    "all_reduce": _collective, "all_gather": _collective, "reduce_scatter": _collective,
    "all_to_all": _collective, "p2p": _p2p,
    "compressed_all_reduce": _compressed, "dynamic_attention": _dynamic_attention,
    "train_step": _train_step, "prefill_step": _inference_step, "decode_step": _inference_step,
    "grouped_gemm": _grouped_gemm, "moe_train_step": _moe_train_step,
}


# runs long enough to settle at the power limit: a vendor's max-achievable-FLOPS run reports the median
# engine clock it settled at. (The MAMF search flushes a 256 MiB cache between calls: not sustained.)
SUSTAINED_VARIANTS = ("maf",)
NODES_NOTE = re.compile(r"(\d+)\s*node\(?s?\)?\s*x\s*(\d+)", re.IGNORECASE)  # "2 node(s) x 4 GPUs"


def case_for_row(row: Mapping[str, Any]) -> Case:
    builder = BUILDERS.get(str(row["op"]))
    if builder is None:
        raise Unsupported(f"op {row['op']!r}")
    workload = builder(row)
    many = len(workload.ops) > 1
    repeats = 2 if many else 4
    world, across, per_node = 1, False, None
    if any(op.kind in COLLECTIVE_KINDS for op in workload.ops):
        world = _world(row)
        if builder is _collective:  # its variant names the algorithm and whether it crossed nodes
            _, across = collective_variant(str(row["variant"]))
        placed = NODES_NOTE.search(str(row.get("note") or ""))
        if placed and int(placed.group(1)) > 1 and int(placed.group(1)) * int(placed.group(2)) == world:
            across, per_node = True, int(placed.group(2))  # the note says how the ranks were spread
    return Case(workload, repeats, sustained=row["op"] in STEP_OPS or str(row["variant"]) in SUSTAINED_VARIANTS,
                world=world, across_nodes=across, per_node=per_node,
                best_of_search=row["op"] == "gemm" and str(row["variant"]) == "mamf_best")


def repeat(workload: Workload, times: int) -> tuple[Workload, list[int]]:
    """The workload `times` times in a row (stream order serializes iterations, as a Python loop
    does); returns it and the id of each iteration's last op."""
    ops: list[Op] = []
    ends = []
    n = len(workload.ops)
    for i in range(times):
        for op in workload.ops:
            ops.append(replace(op, id=op.id + i * n, deps=tuple(d + i * n for d in op.deps)))
        ends.append((i + 1) * n - 1)
    return Workload(workload.name, ops, workload.generator, workload.params, workload.memory, workload.meta), ends


def network_for(case: Case, chip_name: str) -> tuple[Network | None, Case]:
    """The network the case's collectives run on, and the case with its communicators placed:
    None (the lone chip) for one GPU, else the fabric of the chip's system (`system_for`): its node,
    or for a case spread across nodes its cluster with just enough nodes, the communicator taking
    `per_node` GPUs of each (ranks 0..world-1 when that is every GPU of each node)."""
    if case.world <= 1:
        return None, case
    try:
        system = system_for(chip_name, case.world, case.across_nodes)
        ranks: list[int] | None = None
        if case.across_nodes:
            gpn = system.gpus_per_node
            per_node = case.per_node
            if per_node is None:  # spread evenly over just enough nodes (at least two)
                nodes = max(2, -(-case.world // gpn))
                if case.world % nodes:
                    raise Unsupported(f"{case.world} GPUs do not spread evenly over {nodes} nodes of {system.name}")
                per_node = case.world // nodes
            if per_node > gpn:
                raise Unsupported(f"{per_node} GPUs per node, but a node of {system.name} has {gpn}")
            nodes = case.world // per_node
            if nodes > system.nodes:
                system = system_for(chip_name, nodes * gpn, True)
            if per_node != gpn:
                ranks = [node * gpn + i for node in range(nodes) for i in range(per_node)]
    except InputError as exc:
        raise Unsupported(f"a collective over {case.world} GPUs needs a system of {chip_name} chips: "
                          f"{exc.message}") from None
    if ranks is not None:
        ops = [replace(op, attrs={**op.attrs, "ranks": ranks})
               if op.kind in COLLECTIVE_KINDS and op.shape.get("group") == case.world else op
               for op in case.workload.ops]
        w = case.workload
        case = replace(case, workload=Workload(w.name, ops, w.generator, w.params, w.memory, w.meta))
    return Fabric(system), case


def predict(case: Case, chip: Chip, launch: str, network: Network | None = None) -> tuple[float, float]:
    """Steady-state (seconds, joules per GPU) of one iteration of the case, as the measurement loop saw
    it; collectives on `network` (a system's Fabric), else on the chip's own link."""
    looped, ends = repeat(case.workload, case.repeats)
    result = simulate(looped, chip, SimOptions(launch=launch, sustained=case.sustained), network=network)
    n = len(case.workload.ops)
    end_of = [max(r.end_s for r in result.records[e + 1 - n:e + 1]) for e in ends]
    seconds = (end_of[-1] - end_of[0]) / (len(end_of) - 1)
    last = result.records[ends[-1] + 1 - n:ends[-1] + 1]
    devices = len({r.device for r in last}) or 1  # a pipeline's stages: the energy of one GPU, on average
    joules = sum(r.energy_j for r in last) / devices + chip.power.idle_w * seconds
    if case.best_of_search:  # the same work, done faster
        seconds /= BEST_SHAPE_SPEEDUP
    return seconds, joules


def read_table(path: str | Path, what: str, missing: str) -> pd.DataFrame:
    """A CSV file (at most MAX_CSV_BYTES, a regular file) as a DataFrame. A last row that the file cuts
    short (no final newline, fewer fields than the header) is an InputError, not a row of blanks."""
    path = Path(path)
    raw = read_bounded(path, MAX_CSV_BYTES, what=what, missing=missing)
    try:
        frame = pd.read_csv(BytesIO(raw))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as exc:
        detail = " ".join(str(exc).split())  # pandas messages may span lines
        raise InputError(f"cannot read {what} as CSV ({exc.__class__.__name__}: {detail})", file=str(path)) from None
    if len(frame) and not raw.endswith((b"\n", b"\r")):  # no final newline: the last row may be cut short
        last = raw.rsplit(b"\n", 1)[-1].decode("utf-8", "replace")
        fields = next(csv.reader([last]), [])
        if len(fields) < len(frame.columns) or last.count('"') % 2:
            cut = frame.columns[min(max(len(fields) - 1, 0), len(frame.columns) - 1)]
            raise InputError(f"the file ends in the middle of its last row (row {len(frame) - 1}: {len(fields)} of "
                             f"{len(frame.columns)} fields): truncated?", file=str(path), key=str(cut))
    return frame


def read_measurements(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    frame = read_table(path, "measurements", "measurements file not found")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"missing columns {missing}; expected the schema of reference/h200/calibration.csv",
                         file=str(path), key=missing[0])
    return frame


def _measured_us(row: Mapping[str, Any]) -> float:
    value = row.get("measured_us")
    try:
        measured = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Unsupported(f"measured_us must be > 0, got {brief(value)}") from None
    if not (0 < measured < math.inf):
        raise Unsupported(f"measured_us must be > 0, got {brief(value)}")
    return measured


def _chip_for(row: Mapping[str, Any], chip_override: str | None, cache: dict[str, Chip]) -> Chip:
    name = chip_override
    if name is None:
        device = "" if not _present(row, "device") else str(row["device"])
        name = chip_for_device_name(device)
        if name is None:
            raise Unsupported(f"no built-in chip for device {device!r}")
    if name not in cache:
        try:
            cache[name] = load_chip(name)
        except InputError as exc:
            raise Unsupported(f"no built-in chip for device {row.get('device')!r} ({exc.message})") from None
    return cache[name]


def validate(frame: pd.DataFrame, chip: str | None = None,
             progress: Callable[[int, int], None] | None = None,
             chip_obj: Chip | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (every input row + predicted_us, ape, family, chip, skipped_reason; the skipped rows).
    `chip` (a name) or `chip_obj` (an already built Chip) overrides each row's device column."""
    chips: dict[str, Chip] = {}
    if chip_obj is not None:
        chip = chip_obj.name
        chips[chip] = chip_obj
    predicted, energies, families, chip_names, reasons, measured = [], [], [], [], [], []
    records = frame.to_dict("records")
    for index, row in enumerate(records):
        if progress:
            progress(index, len(records))
        families.append(FAMILIES.get(str(row["op"]), "other"))
        try:
            measured.append(_measured_us(row))
            launch = row.get("launch")
            if launch not in LAUNCH_MODES:
                raise Unsupported(f"launch must be one of {', '.join(LAUNCH_MODES)}, got {brief(launch)}")
            target = _chip_for(row, chip, chips)
            network, case = network_for(case_for_row(row), target.name)
            seconds, joules = predict(case, target, str(launch), network)
            if not (math.isfinite(seconds) and math.isfinite(joules)):
                raise Unsupported(f"the prediction is not finite ({seconds} s, {joules} J)")
            predicted.append(seconds * 1e6)
            energies.append(joules)
            chip_names.append(target.name)
            reasons.append("")
        except (Unsupported, InputError, ArithmeticError) as exc:
            if len(measured) == index:
                measured.append(float("nan"))
            reason = str(exc) if not isinstance(exc, ArithmeticError) else \
                f"cannot simulate the row's shape ({exc.__class__.__name__}: {exc})"
            predicted.append(float("nan"))
            energies.append(float("nan"))
            device = "" if chip or not _present(row, "device") else str(row["device"])
            chip_names.append(chip or chip_for_device_name(device) or "")
            reasons.append(reason)
    out = frame.copy()
    out["predicted_us"] = predicted
    measured_us = pd.Series(measured, index=out.index, dtype=float)
    out["ape"] = (out["predicted_us"] - measured_us).abs() / measured_us
    out["predicted_energy_j"] = energies
    out["predicted_power_w"] = out["predicted_energy_j"] / (out["predicted_us"] * 1e-6)
    out["family"] = families
    out["chip"] = chip_names
    out["skipped_reason"] = reasons
    skipped = out[out["skipped_reason"] != ""]
    return out, skipped


def several_devices(predictions: pd.DataFrame) -> bool:
    """Whether the rows were measured on more than one device (or simulated on more than one chip)."""
    devices = predictions["device"].dropna().astype(str).str.strip() if "device" in predictions else pd.Series([])
    chips = predictions.loc[predictions["skipped_reason"] == "", "chip"] if "chip" in predictions else pd.Series([])
    return devices[devices != ""].nunique() > 1 or chips.nunique() > 1


def family_summary(predictions: pd.DataFrame, by_chip: bool | None = None) -> pd.DataFrame:
    """Error statistics per op family of the simulated rows; per (chip, family) when `by_chip`
    (default: when the file holds more than one device), with a leading `chip` column."""
    if by_chip is None:
        by_chip = several_devices(predictions)
    ok = predictions[predictions["skipped_reason"] == ""]
    keys = ["chip", "family"] if by_chip else ["family"]
    rows: list[dict[str, Any]] = []
    for key, group in ok.groupby(keys, sort=True):
        ape = group["ape"].to_numpy()
        worst = group.loc[group["ape"].idxmax()]
        names = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        rows.append({**names, "rows": len(group), "median_ape": float(np.median(ape)),
                     "p90_ape": float(np.percentile(ape, 90)), "max_ape": float(ape.max()),
                     "worst": describe_row(worst)})
    return pd.DataFrame(rows, columns=[*keys, "rows", "median_ape", "p90_ape", "max_ape", "worst"])


def describe_row(row: Mapping[str, Any]) -> str:
    parts = [str(row["op"]), str(row["variant"]), str(row["dtype"]), str(row["launch"])]
    for key in ("m", "n", "k", "batch", "heads", "seq_q", "seq_kv", "bytes", "world", "layers"):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            try:
                parts.append(f"{key}={int(float(value))}")
            except (TypeError, ValueError, OverflowError):
                parts.append(f"{key}={brief(value)}")
    return " ".join(parts)


# ---------------------------------------------------------------- power phases (reference/h200/power.json)

POWER_PHASES: dict[str, Callable[[], Workload]] = {
    # phase name in power.json -> the op the loop ran
    "gemm_bf16_8192": lambda: single_op("gemm", "bf16", m=8192, n=8192, k=8192),
    "copy_1GiB": lambda: single_op("memcpy", "bf16", bytes=float(1 << 30)),
}


def _phase_number(phase: Mapping[str, Any], key: str, path: Path, index: int, *, positive: bool = False,
                  required: bool = True) -> float | None:
    value = phase.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise InputError(f"expected a finite number {'above zero' if positive else '>= 0'}, got {brief(value)}",
                         file=str(path), key=f"[{index}].{key}")
    return float(value)


def read_power(path: str | Path) -> list[dict[str, Any]]:
    """Power phases (the schema of reference/h200/power.json), every field validate_power uses checked."""
    path = Path(path)
    raw = read_bounded(path, MAX_POWER_BYTES, what="power phases", missing="power file not found")
    try:
        data = parse_json_bytes(raw, gz=False)
    except JSONReadError as exc:
        raise InputError(f"cannot read power phases as JSON ({exc})", file=str(path)) from None
    if not isinstance(data, list) or not all(isinstance(p, dict) and "phase" in p and "avg_power_w" in p
                                              for p in data):
        raise InputError("expected a list of phases with 'phase' and 'avg_power_w'", file=str(path))
    for index, phase in enumerate(data):
        if not isinstance(phase["phase"], str):
            raise InputError(f"expected a phase name, got {brief(phase['phase'])}", file=str(path),
                             key=f"[{index}].phase")
        _phase_number(phase, "avg_power_w", path, index, positive=True)
        if phase["phase"] in POWER_PHASES:  # what the phase's prediction needs
            _phase_number(phase, "calls", path, index)
            _phase_number(phase, "seconds", path, index, positive=True)
            if phase.get("tflops"):
                _phase_number(phase, "tflops", path, index)
                _phase_number(phase, "sm_mhz_median", path, index, required=False)
    return data


@dataclass(frozen=True)
class SustainedLoop:
    """One op run back to back until the power controller has settled (as a vendor's peak-FLOPS loop or
    a measured power phase runs it): the clock it settles at and one call's time and dynamic energy."""

    clock_hz: float
    seconds_per_call: float
    joules_per_call: float


def sustained_loop(workload: Workload, chip: Chip, calls: int = 40, steady: int = 10) -> SustainedLoop:
    """`workload` (one op) looped `calls` times at the power limit; figures of the last `steady` calls."""
    looped, _ = repeat(workload, calls)
    last = simulate(looped, chip, SimOptions(launch="graph", sustained=True)).records[-steady:]
    return SustainedLoop(min(r.clock_scale for r in last) * chip.clock_hz,
                         (last[-1].end_s - last[0].start_s) / len(last), sum(r.energy_j for r in last) / len(last))


def validate_power(phases: list[dict[str, Any]], chip: Chip) -> pd.DataFrame:
    """Each phase's average power: the static power plus the dynamic energy of the work the loop did
    (`calls` ops at the clock the power controller settles at) over the phase's duration; and, for
    the GEMM phase, the sustained clock and throughput the controller settles at."""
    rows = []
    for phase in phases:
        name = str(phase["phase"])
        measured = float(phase["avg_power_w"])
        row: dict[str, Any] = {"phase": name, "measured_w": measured}
        if name == "idle":
            row["predicted_w"] = chip.power.idle_w
        elif name in POWER_PHASES:
            op_workload = POWER_PHASES[name]()
            loop = sustained_loop(op_workload, chip)
            row["predicted_w"] = chip.power.idle_w + loop.joules_per_call * float(phase["calls"]) / float(phase["seconds"])
            if phase.get("tflops"):
                row["predicted_tflops"] = op_workload.ops[0].flops / loop.seconds_per_call / 1e12
                row["measured_tflops"] = float(phase["tflops"])
                row["predicted_clock_mhz"] = loop.clock_hz / 1e6
                row["measured_clock_mhz"] = float(phase.get("sm_mhz_median", float("nan")))
        else:
            row["predicted_w"] = float("nan")
        row["ape"] = abs(row["predicted_w"] - measured) / measured
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- outputs


def write_predictions(predictions: pd.DataFrame, path: str | Path) -> None:
    """Every input column plus predicted_us and ape, staged then moved into place."""
    columns = [c for c in predictions.columns if c not in ("family", "chip", "skipped_reason",
                                                            "predicted_energy_j", "predicted_power_w")]
    atomic_write(path, lambda tmp: predictions[columns].to_csv(tmp, index=False))


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """A matplotlib figure to `path` (format from its suffix, PNG if none), staged then moved into place."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))
