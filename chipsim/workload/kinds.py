"""Op kinds: the shape keys each kind takes and the work (FLOPs, bytes) it implies.

A new op kind is one `OpKind` entry: its shape keys (with defaults), its host dispatch class and a
`work` function. Costs on a chip live in `chipsim.cost`; this module knows nothing of chips.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DTYPE_BYTES: dict[str, float] = {
    "fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5, "int32": 4,
}
ELEMENTWISE_OPS = {
    # name: (input tensors read, output tensors written, flops per element)
    "copy": (1, 1, 0), "read": (1, 0, 1), "write": (0, 1, 0), "add": (2, 1, 1), "mul": (2, 1, 1),
    "cast": (1, 1, 1), "gelu": (1, 1, 8), "silu": (1, 1, 4), "silu_mul": (2, 1, 5), "rope": (1, 1, 6),
    "reduce": (1, 0, 1), "embedding": (1, 1, 0), "dropout": (1, 1, 2), "scale": (1, 1, 1),
    "transpose": (1, 1, 0), "abs": (1, 1, 1), "clamp": (1, 1, 2), "round": (1, 1, 1),
    "silu_mul_bwd": (3, 2, 10), "gelu_bwd": (2, 1, 10), "silu_bwd": (2, 1, 6), "mul_bwd": (3, 2, 2),
}
REDUCTION_OPS = ("reduce", "read")  # elementwise ops the framework dispatches as reductions


@dataclass(frozen=True)
class OpKind:
    name: str
    shape_keys: Mapping[str, Any]  # key -> default (None: required)
    host_class: str  # which host dispatch cost applies: gemm, elementwise, reduction, attention, collective, other
    work: Callable[[Mapping[str, Any], str, Mapping[str, Any]], tuple[float, float]]
    kernels: Callable[[Mapping[str, Any]], int] = lambda attrs: 1
    description: str = ""


def _nbytes(dtype: str) -> float:
    return DTYPE_BYTES[dtype]


def _gemm_work(s: Mapping[str, Any], dtype: str, attrs: Mapping[str, Any]) -> tuple[float, float]:
    b, m, n, k = s["batch"], s["m"], s["n"], s["k"]
    act = _nbytes("bf16" if dtype == "int4" else dtype)
    wdt = attrs.get("weight_dtype", dtype)
    w = _nbytes(wdt)
    out = 4 if dtype in ("fp32", "tf32", "int8") else 2
    weight_bytes = k * n * w
    if wdt in ("int4", "int8") and attrs.get("group_size"):
        weight_bytes += (k / attrs["group_size"]) * n * 4  # bf16 scale + zero per group
    return 2.0 * b * m * n * k, b * (m * k * act + weight_bytes + m * n * out)


def attention_flops(s: Mapping[str, Any]) -> float:
    """Forward FLOPs of QK^T and PV; causal masks skip the upper triangle (diagonal kept)."""
    sq, skv = s["seq_q"], s["seq_kv"]
    full = 4.0 * s["batch"] * s["heads"] * sq * skv * s["head_dim"]
    if s["causal"] and sq > 1:
        # rows i (aligned to the end of the KV) see skv - sq + i + 1 keys
        visible = sq * (skv - sq) + sq * (sq + 1) / 2
        return full * visible / (sq * skv)
    return full


def _attention_work(s: Mapping[str, Any], dtype: str, attrs: Mapping[str, Any]) -> tuple[float, float]:
    e = _nbytes(dtype)
    q = s["batch"] * s["heads"] * s["seq_q"] * s["head_dim"] * e
    kv = 2 * s["batch"] * s["kv_heads"] * s["seq_kv"] * s["head_dim"] * e
    fwd = attention_flops(s)
    if s["pass"] == "fwd":
        return fwd, q + kv + q  # read q, k, v; write o
    # backward: recompute QK^T, then dV, dP, dQ, dK: 2.5x the forward FLOPs;
    # read q, k, v, o, do (+ logsumexp), write dq, dk, dv
    return 2.5 * fwd, 3 * q + 2 * kv + kv


def _elementwise_work(s: Mapping[str, Any], dtype: str, attrs: Mapping[str, Any]) -> tuple[float, float]:
    reads, writes, fpe = ELEMENTWISE_OPS[attrs.get("op", "add")]
    numel = s["numel"]
    out_dtype = attrs.get("out_dtype", dtype)
    return numel * fpe, numel * (reads * _nbytes(dtype) + writes * _nbytes(out_dtype))


def _norm_work(s: Mapping[str, Any], dtype: str, attrs: Mapping[str, Any]) -> tuple[float, float]:
    numel = s["rows"] * s["cols"]
    e = _nbytes(dtype)
    if attrs.get("pass", "fwd") == "fwd":
        return numel * 4, 2 * numel * e
    return numel * 8, 3 * numel * e  # read x, dy; write dx (weight grads reduced on chip)


def _softmax_work(s: Mapping[str, Any], dtype: str, attrs: Mapping[str, Any]) -> tuple[float, float]:
    numel = s["rows"] * s["cols"]
    return numel * 5, 2 * numel * _nbytes(dtype)


def _memcpy_work(s: Mapping[str, Any], dtype: str, attrs: Mapping[str, Any]) -> tuple[float, float]:
    return 0.0, 2.0 * s["bytes"]


def _quantize_work(s: Mapping[str, Any], dtype: str, attrs: Mapping[str, Any]) -> tuple[float, float]:
    # dtype is the wide side; attrs['to'] / attrs['from'] the narrow one
    narrow = attrs.get("narrow_dtype", "int8")
    numel = s["numel"]
    return numel * 3, numel * (_nbytes(dtype) + _nbytes(narrow))


def _optimizer_work(s: Mapping[str, Any], dtype: str, attrs: Mapping[str, Any]) -> tuple[float, float]:
    # fused AdamW: read param, grad, m, v (+ fp32 master); write param, m, v (+ master)
    p = s["params"]
    pw = _nbytes(dtype)
    state = 4.0
    master = 4.0 if attrs.get("master_weights", dtype != "fp32") else 0.0
    read = p * (pw + pw + 2 * state + master)
    write = p * (pw + 2 * state + master)
    return p * 12, read + write


def _collective_work(s: Mapping[str, Any], dtype: str, attrs: Mapping[str, Any]) -> tuple[float, float]:
    return (s["bytes"] / _nbytes(dtype) if dtype in DTYPE_BYTES else 0.0), s["bytes"]


def _opaque_work(s: Mapping[str, Any], dtype: str, attrs: Mapping[str, Any]) -> tuple[float, float]:
    return float(s["flops"]), float(s["bytes"])


def host_class(kind: str, attrs: Mapping[str, Any]) -> str:
    """Which host dispatch cost an op pays when launched eagerly."""
    if kind == "elementwise" and attrs.get("op") in REDUCTION_OPS:
        return "reduction"
    return KINDS[kind].host_class


_COLLECTIVE_SHAPE = {"bytes": None, "group": None}
COLLECTIVE_KINDS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "send_recv")

KINDS: dict[str, OpKind] = {}


def register(kind: OpKind) -> OpKind:
    KINDS[kind.name] = kind
    return kind


register(OpKind("gemm", {"m": None, "n": None, "k": None, "batch": 1}, "gemm", _gemm_work,
                description="C[m x n] = A[m x k] B[k x n], `batch` times; attrs: weight_dtype, group_size"))
register(OpKind("attention", {"batch": None, "heads": None, "kv_heads": None, "seq_q": None, "seq_kv": None,
                              "head_dim": None, "causal": False, "pass": "fwd"}, "attention", _attention_work,
                description="scaled dot-product attention (fwd or bwd; GQA when kv_heads < heads; decode when seq_q == 1)"))
register(OpKind("elementwise", {"numel": None}, "elementwise", _elementwise_work,
                description=f"pointwise op over numel elements; attrs.op in {sorted(ELEMENTWISE_OPS)}"))
register(OpKind("norm", {"rows": None, "cols": None}, "elementwise", _norm_work,
                description="RMSNorm / LayerNorm over rows x cols; attrs.type, attrs.pass"))
register(OpKind("softmax", {"rows": None, "cols": None}, "reduction", _softmax_work,
                description="row softmax over rows x cols"))
register(OpKind("memcpy", {"bytes": None}, "other", _memcpy_work,
                description="copy `bytes` from attrs.src to attrs.dst memory level (default hbm -> hbm)"))
register(OpKind("quantize", {"numel": None}, "elementwise", _quantize_work,
                description="cast dtype -> attrs.narrow_dtype with scaling"))
register(OpKind("dequantize", {"numel": None}, "elementwise", _quantize_work,
                description="cast attrs.narrow_dtype -> dtype with scaling"))
register(OpKind("optimizer", {"params": None}, "other", _optimizer_work,
                kernels=lambda attrs: int(attrs.get("kernels", 1)),
                description="fused AdamW step over `params` parameters (fp32 state)"))
register(OpKind("all_reduce", _COLLECTIVE_SHAPE, "collective", _collective_work,
                description="ring all-reduce of `bytes` per rank over `group` chips"))
register(OpKind("all_gather", _COLLECTIVE_SHAPE, "collective", _collective_work,
                description="ring all-gather: each of `group` ranks contributes `bytes`"))
register(OpKind("reduce_scatter", _COLLECTIVE_SHAPE, "collective", _collective_work,
                description="ring reduce-scatter of `bytes` per rank over `group` chips"))
register(OpKind("broadcast", _COLLECTIVE_SHAPE, "collective", _collective_work,
                description="broadcast of `bytes` from rank 0 to `group` ranks (systems only)"))
register(OpKind("send_recv", _COLLECTIVE_SHAPE, "collective", _collective_work,
                description="point-to-point transfer of `bytes` from rank 0 to rank group-1 (systems only)"))
register(OpKind("roofline", {"flops": None, "bytes": None}, "other", _opaque_work,
                description="work known only by its FLOPs and bytes (e.g. a Chakra COMP node): costed by the roofline"))
register(OpKind("opaque", {"flops": 0, "bytes": 0, "duration_s": None}, "other", _opaque_work,
                description="a measured kernel chipsim cannot model: replayed with its measured duration"))
