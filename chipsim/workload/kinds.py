"""Op kinds: each kind's whole contract in one `OpKind` entry.

An entry declares the kind's shape keys (with defaults and types), the attributes it accepts, the
checks its values must pass, the work (FLOPs, bytes) they imply, its host dispatch class, whether it
is a collective (costed by the network, not by a per-kind cost function) and its documentation row.
`make_op` (graph.py) is generic: it applies the entry. A new op kind is one entry here plus, unless
it is a collective, one cost function registered in `chipsim.cost`; `tests/unit/test_registries.py`
fails when either the cost function or the doc row is missing. This module knows nothing of chips.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chipsim.errors import InputError
from chipsim.vocab import ALGORITHMS, ATTENTION_BACKENDS, NORM_TYPES
from chipsim.vocab import COLLECTIVE_KINDS as COLLECTIVE_KINDS  # re-exported: the kinds the network costs
from chipsim.workload.comm import MAX_GROUP, communicator

# fp8 with block scales (DeepSeek-V3's recipe, DeepEP's fp8 dispatch): one fp32 scale per 128 values
BLOCK_SCALE_VALUES = 128
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5, "int32": 4,
    "fp6": 0.75, "fp4": 0.5,
}
ELEMENTWISE_OPS = {
    # name: (input tensors read, output tensors written, flops per element)
    "copy": (1, 1, 0), "read": (1, 0, 1), "write": (0, 1, 0), "add": (2, 1, 1), "mul": (2, 1, 1),
    "cast": (1, 1, 1), "gelu": (1, 1, 8), "silu": (1, 1, 4), "silu_mul": (2, 1, 5), "rope": (1, 1, 6),
    "reduce": (1, 0, 1), "embedding": (1, 1, 0), "dropout": (1, 1, 2), "scale": (1, 1, 1),
    "transpose": (1, 1, 0), "abs": (1, 1, 1), "clamp": (1, 1, 2), "round": (1, 1, 1),
    "silu_mul_bwd": (3, 2, 10), "gelu_bwd": (2, 1, 10), "silu_bwd": (2, 1, 6), "mul_bwd": (3, 2, 2),
    # a compiler-generated kernel (torch.compile / Inductor) fusing a chain of pointwise and reduction
    # ops: its traffic is `attrs.bytes` (each unique input read once, each output written once)
    "fused": (1, 1, 4),
    # a generated cast kernel that also writes a transposed (column-major) copy (FP8 GEMM operands)
    "cast_transpose": (1, 2, 2),
}
REDUCTION_OPS = ("reduce", "read")  # elementwise ops the framework dispatches as reductions
OPAQUE_SCALES = ("none", "memory", "compute")
MAX_SHAPE_VALUE = 2.0**53  # beyond this a float no longer holds every integer: surely a typo

Shape = Mapping[str, Any]
Attrs = Mapping[str, Any]


# ---------------------------------------------------------------- attribute checks


@dataclass(frozen=True)
class Attr:
    """One attribute a kind accepts: how it is checked and what it means (the doc row)."""

    check: Callable[[Any], str | None]  # returns what is wrong with the value, or None if it is fine
    doc: str


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _number(value: Any) -> str | None:
    return None if _is_number(value) and value >= 0 else f"expected a non-negative number, got {value!r}"


def _positive_int(value: Any) -> str | None:
    ok = _is_number(value) and value >= 1 and int(value) == value
    return None if ok else f"expected a whole number >= 1, got {value!r}"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {value!r}"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else f"expected a string, got {value!r}"


def _dtype(value: Any) -> str | None:
    if isinstance(value, str) and value in DTYPE_BYTES:
        return None
    return f"unknown dtype {value!r}; expected one of {', '.join(DTYPE_BYTES)}"


def _one_of(what: str, *choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if isinstance(value, str) and value in choices else (
            f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    return check


def _anything(value: Any) -> str | None:  # checked by the kind's own check (the communicator)
    return None


# attributes any op may carry: how the host issued it (from traces and generators)
COMMON_ATTRS: dict[str, Attr] = {
    "host_s": Attr(_number, "host time before this launch, as measured in a trace (replaces the dispatch cost)"),
    "host_calls": Attr(_number, "framework calls that launch no kernel, each costing `calibration.host.dispatch.call`"),
    "host_sync": Attr(_boolean, "the host waited for the device before issuing this op"),
    "kernels": Attr(_positive_int, "kernel launches the op stands for; each pays the fixed per-kernel cost"),
    "measured_s": Attr(_number, "the op's duration in the trace it came from (informational)"),
    "buffer_bytes": Attr(_number, "bytes of the op's traffic eligible for the chip's `memory.weight_buffer`: "
                                  "what fits is served by the buffer, the rest by HBM"),
}
_COLLECTIVE_ATTRS: dict[str, Attr] = {
    "algorithm": Attr(_one_of("algorithm", *ALGORITHMS), f"one of {', '.join(ALGORITHMS)} (default auto: the network "
                                            "chooses); a lone chip's link runs a ring"),
    "ranks": Attr(_anything, "the communicator as an explicit list of `group` ranks"),
    "stride": Attr(_positive_int, "the communicator's rank stride (default 1): ranks first, first+stride, ..."),
    "first": Attr(_anything, "the communicator's first rank (default 0)"),
}


# ---------------------------------------------------------------- work (FLOPs, bytes) per kind


def _nbytes(dtype: str) -> float:
    return DTYPE_BYTES[dtype]


def _gemm_work(s: Shape, dtype: str, attrs: Attrs) -> tuple[float, float]:
    b, m, n, k = s["batch"], s["m"], s["n"], s["k"]
    act = _nbytes("bf16" if dtype == "int4" else dtype)
    wdt = attrs.get("weight_dtype", dtype)
    w = _nbytes(wdt)
    out = 4 if dtype in ("fp32", "tf32", "int8") else 2
    weight_bytes = k * n * w
    if wdt in ("int4", "int8") and attrs.get("group_size"):
        weight_bytes += (k / attrs["group_size"]) * n * 4  # bf16 scale + zero per group
    return 2.0 * b * m * n * k, b * (m * k * act + weight_bytes + m * n * out)


def attention_flops(s: Shape) -> float:
    """Forward FLOPs of QK^T and PV; causal masks skip the upper triangle (diagonal kept)."""
    sq, skv = s["seq_q"], s["seq_kv"]
    full = 2.0 * s["batch"] * s["heads"] * sq * skv * (s["head_dim"] + v_head_dim(s))
    if s["causal"] and sq > 1:
        # rows i (aligned to the end of the KV) see skv - sq + i + 1 keys
        visible = sq * (skv - sq) + sq * (sq + 1) / 2
        return full * visible / (sq * skv)
    return full


def v_head_dim(s: Shape) -> float:
    """The value (and output) head dim: `v_head_dim`, or `head_dim` when it is 0 (the usual case; MLA
    after its up-projection has q/k head dim 192 and v head dim 128)."""
    return s.get("v_head_dim") or s["head_dim"]


def _attention_work(s: Shape, dtype: str, attrs: Attrs) -> tuple[float, float]:
    e = _nbytes(dtype)
    rows_q, rows_kv = s["batch"] * s["heads"] * s["seq_q"] * e, s["batch"] * s["kv_heads"] * s["seq_kv"] * e
    q, o = rows_q * s["head_dim"], rows_q * v_head_dim(s)
    # MLA's absorbed decode attends to its cached latent as keys and (its first dims) as values: read once
    kv = rows_kv * (s["head_dim"] if attrs.get("shared_kv") else s["head_dim"] + v_head_dim(s))
    fwd = attention_flops(s)
    if s["pass"] == "fwd":
        return fwd, q + kv + o  # read q, k, v; write o
    # backward: recompute QK^T, then dV, dP, dQ, dK: 2.5x the forward FLOPs;
    # read q, k, v, o, do (+ logsumexp), write dq, dk, dv
    return 2.5 * fwd, 1.5 * (q + o) + 3 * kv


def _elementwise_work(s: Shape, dtype: str, attrs: Attrs) -> tuple[float, float]:
    reads, writes, fpe = ELEMENTWISE_OPS[attrs.get("op", "add")]
    numel = s["numel"]
    if "bytes" in attrs:  # a fused kernel states its own traffic
        return numel * fpe, float(attrs["bytes"])
    out_dtype = attrs.get("out_dtype", dtype)
    return numel * fpe, numel * (reads * _nbytes(dtype) + writes * _nbytes(out_dtype))


def _norm_work(s: Shape, dtype: str, attrs: Attrs) -> tuple[float, float]:
    numel = s["rows"] * s["cols"]
    e = _nbytes(dtype)
    if attrs.get("pass", "fwd") == "fwd":
        return numel * 4, 2 * numel * e
    return numel * 8, 3 * numel * e  # read x, dy; write dx (weight grads reduced on chip)


def _softmax_work(s: Shape, dtype: str, attrs: Attrs) -> tuple[float, float]:
    numel = s["rows"] * s["cols"]
    return numel * 5, 2 * numel * _nbytes(dtype)


def _memcpy_work(s: Shape, dtype: str, attrs: Attrs) -> tuple[float, float]:
    return 0.0, 2.0 * s["bytes"]


def _quantize_work(s: Shape, dtype: str, attrs: Attrs) -> tuple[float, float]:
    # dtype is the wide side; attrs['narrow_dtype'] the narrow one
    narrow = attrs.get("narrow_dtype", "int8")
    numel = s["numel"]
    return numel * 3, numel * (_nbytes(dtype) + _nbytes(narrow))


def _optimizer_work(s: Shape, dtype: str, attrs: Attrs) -> tuple[float, float]:
    # fused AdamW: read param, grad, m, v (+ fp32 master); write param, m, v (+ master)
    p = s["params"]
    pw = _nbytes(dtype)
    state = 4.0
    master = 4.0 if attrs.get("master_weights", dtype != "fp32") else 0.0
    read = p * (pw + pw + 2 * state + master)
    write = p * (pw + 2 * state + master)
    return p * 12, read + write


def _reduction_work(s: Shape, dtype: str, attrs: Attrs) -> tuple[float, float]:
    return s["bytes"] / _nbytes(dtype), s["bytes"]  # one add per element of the buffer


def _transfer_work(s: Shape, dtype: str, attrs: Attrs) -> tuple[float, float]:
    return 0.0, s["bytes"]


def _opaque_work(s: Shape, dtype: str, attrs: Attrs) -> tuple[float, float]:
    return float(s["flops"]), float(s["bytes"])


# ---------------------------------------------------------------- checks per kind


def _at_least_one(*keys: str) -> Callable[[Shape, Attrs], None]:
    def check(s: Shape, attrs: Attrs) -> None:
        for key in keys:
            if s[key] < 1:
                raise InputError(f"{', '.join(keys)} must all be >= 1; {key} is {s[key]!r}", key=f"shape.{key}")
    return check


def _attention_check(s: Shape, attrs: Attrs) -> None:
    _at_least_one("batch", "heads", "kv_heads", "seq_q", "seq_kv", "head_dim")(s, attrs)
    if s["heads"] % s["kv_heads"]:
        raise InputError(f"heads ({s['heads']}) must be a multiple of kv_heads ({s['kv_heads']})",
                         key="shape.kv_heads")


def _collective_check(s: Shape, attrs: Attrs) -> None:
    comm = communicator(s, attrs)
    if comm.highest >= MAX_GROUP:
        raise InputError(f"rank {comm.highest} is beyond the largest system chipsim models ({MAX_GROUP} GPUs)",
                         key="attrs")


def _send_recv_check(s: Shape, attrs: Attrs) -> None:
    _collective_check(s, attrs)
    if s["group"] < 2:
        raise InputError("a point-to-point transfer needs a group of 2 (sender first, receiver last)",
                         key="shape.group")


def _no_check(s: Shape, attrs: Attrs) -> None:
    return None


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class OpKind:
    name: str
    shape_keys: Mapping[str, Any]  # key -> default (None: required)
    host_class: str  # which host dispatch cost applies: gemm, elementwise, reduction, attention, collective, other
    work: Callable[[Shape, str, Attrs], tuple[float, float]]
    description: str
    work_doc: tuple[str, str]  # (FLOPs, bytes) as documented
    attrs: Mapping[str, Attr] = field(default_factory=dict)  # besides COMMON_ATTRS
    check: Callable[[Shape, Attrs], None] = _no_check
    integer_keys: tuple[str, ...] = ()  # shape keys that count things (whole numbers)
    collective: bool = False  # costed by the network (a lone chip's link or a system's fabric)

    def accepted_attrs(self) -> dict[str, Attr]:
        return {**COMMON_ATTRS, **self.attrs}


KINDS: dict[str, OpKind] = {}


def register(kind: OpKind) -> OpKind:
    KINDS[kind.name] = kind
    return kind


def host_class(kind: str, attrs: Attrs) -> str:
    """Which host dispatch cost an op pays when launched eagerly."""
    if kind == "elementwise" and attrs.get("op") in REDUCTION_OPS:
        return "reduction"
    return KINDS[kind].host_class


_COLLECTIVE_SHAPE = {"bytes": None, "group": None}


register(OpKind(
    "gemm", {"m": None, "n": None, "k": None, "batch": 1}, "gemm", _gemm_work,
    "C[m x n] = A[m x k] B[k x n], `batch` times; all dims >= 1",
    ("2 · batch · m · n · k", "batch · (m·k·e(act) + weight bytes + m·n·e(out)); act is bf16 when `dtype` is int4; "
     "weight bytes = k·n·e(`weight_dtype`) plus k/`group_size`·n·4 bytes of scales for int4/int8 weights; "
     "out is 4 bytes for fp32/tf32/int8, else 2"),
    attrs={"weight_dtype": Attr(_dtype, "format of the B (weight) operand when it differs from `dtype` (int4/int8/fp8/fp4: "
                                        "weight-only quantization; int4 on `int4: native` chips uses the INT4 MACs)"),
           "group_size": Attr(_positive_int, "quantization group size along k for int4/int8 weights"),
           "scaling": Attr(_one_of("fp8 scaling", "tensorwise", "rowwise"),
                           "fp8 operand scales of `torch._scaled_mm`: tensorwise (default; cuBLAS) or rowwise "
                           "(fp32 per row of A and per column of B: `calibration.gemm.rowwise`)"),
           "grouped": Attr(_boolean, "the `batch` groups run as one grouped-GEMM kernel (torch._grouped_mm: "
                                     "its own tile choice, no split-k) rather than a batched cuBLAS GEMM"),
           "kernel": Attr(_one_of("weight-only kernel", "tinygemm", "marlin"),
                          "int4/int8 weight-only kernel class: tinygemm (default; torchao's, measured on H200) or "
                          "marlin (dequantizes in registers, bf16 MMA at the GEMM's full rate, its narrow weights "
                          "streamed at the chip's `memory.kernels.marlin` share of bandwidth; vLLM/SGLang/TRT-LLM)")},
    check=_at_least_one("m", "n", "k", "batch"), integer_keys=("m", "n", "k", "batch")))
register(OpKind(
    "attention", {"batch": None, "heads": None, "kv_heads": None, "seq_q": None, "seq_kv": None, "head_dim": None,
                  "causal": False, "pass": "fwd", "v_head_dim": 0}, "attention", _attention_work,
    "scaled dot-product attention; `pass` is `fwd` or `bwd`; GQA when `kv_heads < heads`; decode when seq_q <= 16; "
    "`v_head_dim` (0: = head_dim) is the value/output head dim when it differs (MLA)",
    ("fwd 2 · batch · heads · seq_q · seq_kv · (head_dim + v_head_dim) (visible keys only when causal); bwd 2.5x",
     "fwd q+k+v+o; bwd 1.5·(q+o) + 3·(k+v)"),
    attrs={"backend": Attr(_one_of("attention backend", *ATTENTION_BACKENDS), f"{', '.join(ATTENTION_BACKENDS)} (default flash): which "
                                                         "`calibration.attention` efficiencies apply"),
           "shared_kv": Attr(_boolean, "keys and values are one cached tensor, read once (MLA's latent in absorbed "
                                       "decode: head_dim = kv_lora_rank + rope dims, v_head_dim = kv_lora_rank)")},
    check=_attention_check, integer_keys=("batch", "heads", "kv_heads", "seq_q", "seq_kv", "head_dim", "v_head_dim")))
register(OpKind(
    "elementwise", {"numel": None}, "elementwise", _elementwise_work,
    "a pointwise op over `numel` elements; which one is `attrs.op`",
    ("numel · (FLOPs per element of `op`)", "numel · (reads · e(dtype) + writes · e(`out_dtype`)), or `attrs.bytes`"),
    attrs={"op": Attr(_one_of("elementwise op", *ELEMENTWISE_OPS), "which pointwise op (default add); also the kernel class of "
                                                 "`calibration.memory.kernels`"),
           "out_dtype": Attr(_dtype, "the output format when it differs from `dtype` (a cast)"),
           "bytes": Attr(_number, "the kernel's HBM traffic, replacing the per-element count (a `fused` kernel: "
                                  "its unique inputs read once and outputs written once)")},
    integer_keys=("numel",)))
register(OpKind(
    "norm", {"rows": None, "cols": None}, "elementwise", _norm_work,
    "RMSNorm / LayerNorm over rows x cols", ("fwd 4 · rows · cols, bwd 8 · rows · cols",
                                             "fwd 2, bwd 3 tensors of rows · cols · e(dtype)"),
    attrs={"type": Attr(_one_of("norm type", *NORM_TYPES), "rms_norm (default) or layer_norm: the kernel class"),
           "pass": Attr(_one_of("pass", "fwd", "bwd"), "fwd (default) or bwd")},
    integer_keys=("rows", "cols")))
register(OpKind("softmax", {"rows": None, "cols": None}, "reduction", _softmax_work, "row softmax over rows x cols",
                ("5 · rows · cols", "2 · rows · cols · e(dtype)"), integer_keys=("rows", "cols")))
register(OpKind(
    "memcpy", {"bytes": None}, "other", _memcpy_work,
    "copy `bytes` from memory level `attrs.src` to `attrs.dst`", ("0", "2 · bytes"),
    attrs={"src": Attr(_text, "source memory level: hbm (default), an onchip level, weight_buffer or host"),
           "dst": Attr(_text, "destination memory level (as src)")}))
_NARROW = {"narrow_dtype": Attr(_dtype, "the narrow format (default int8), e.g. fp8 or int4")}
register(OpKind("quantize", {"numel": None}, "elementwise", _quantize_work,
                "cast `dtype` (the wide side) to `attrs.narrow_dtype`, with scaling",
                ("3 · numel", "numel · (e(dtype) + e(narrow_dtype))"), attrs=_NARROW, integer_keys=("numel",)))
register(OpKind("dequantize", {"numel": None}, "elementwise", _quantize_work,
                "cast `attrs.narrow_dtype` back to `dtype`, with scaling",
                ("3 · numel", "numel · (e(dtype) + e(narrow_dtype))"), attrs=_NARROW, integer_keys=("numel",)))
register(OpKind(
    "optimizer", {"params": None}, "other", _optimizer_work, "fused AdamW step over `params` parameters (fp32 state)",
    ("12 · params", "params · (2·e(dtype) + 8 + master) read + params · (e(dtype) + 8 + master) written"),
    attrs={"algorithm": Attr(_one_of("optimizer", "adamw"), "adamw (the only one)"),
           "master_weights": Attr(_boolean, "fp32 master weights read and written too (default: dtype is not fp32)")},
    integer_keys=("params",)))
_COLLECTIVES = {
    "all_reduce": "all-reduce of `bytes` per rank over the `group` ranks of its communicator",
    "all_gather": "all-gather: each of the `group` ranks contributes `bytes`",
    "reduce_scatter": "reduce-scatter of `bytes` per rank (each keeps bytes/group)",
    "broadcast": "broadcast of `bytes` from the communicator's first rank to the others",
    "all_to_all": "all-to-all: each rank sends bytes/group to every rank of the group (MoE dispatch and combine)",
    "send_recv": "point-to-point transfer of `bytes` from the communicator's first rank to its last "
                 "(`bidirectional`: both ways at once)",
}
for _name, _doc in _COLLECTIVES.items():
    _attrs = dict(_COLLECTIVE_ATTRS)
    if _name == "send_recv":
        _attrs["bidirectional"] = Attr(_boolean, "send_recv: both ranks send `bytes` at once (default false)")
    _reduces = _name in ("all_reduce", "reduce_scatter")
    register(OpKind(_name, _COLLECTIVE_SHAPE, "collective", _reduction_work if _reduces else _transfer_work, _doc,
                    ("bytes / e(dtype) (the reduction)" if _reduces else "0", "`bytes`"), attrs=_attrs,
                    check=_send_recv_check if _name == "send_recv" else _collective_check,
                    integer_keys=("group",), collective=True))
register(OpKind("roofline", {"flops": None, "bytes": None}, "other", _opaque_work,
                "work known only by its FLOPs and bytes (e.g. a Chakra COMP node): costed by the roofline",
                ("`flops`", "`bytes`")))
register(OpKind(
    "opaque", {"flops": 0, "bytes": 0, "duration_s": None}, "other", _opaque_work,
    "a measured kernel chipsim cannot model: replayed with its measured `duration_s` (seconds)",
    ("`flops` (reports only)", "`bytes` (reports only)"),
    attrs={"scale": Attr(_one_of("scale rule", *OPAQUE_SCALES), "how the duration is re-targeted to another chip: none (default), "
                                                  "memory (HBM bandwidth ratio) or compute (bf16 peak ratio)"),
           "recorded_on": Attr(_text, "the built-in chip the duration was measured on"),
           "kernel": Attr(_text, "the kernel's name in the trace (informational)")}))



def check_shape(kind: OpKind, shape: Mapping[str, Any]) -> dict[str, Any]:
    """The kind's full shape: defaults filled in, unknown keys refused, values typed."""
    full: dict[str, Any] = {}
    for key, default in kind.shape_keys.items():
        value = shape.get(key, default)
        if value is None:
            raise InputError(f"{kind.name} needs shape key '{key}' (shape keys: {', '.join(kind.shape_keys)})",
                             key=f"shape.{key}")
        full[key] = value
    unknown = [k for k in shape if k not in kind.shape_keys]
    if unknown:
        raise InputError(f"unknown shape key for {kind.name}; expected: {', '.join(kind.shape_keys)}",
                         key=f"shape.{unknown[0]}")
    for key, value in full.items():
        if key == "causal":
            if not isinstance(value, bool):
                raise InputError(f"expected true or false, got {value!r}", key=f"shape.{key}")
        elif key == "pass":
            if value not in ("fwd", "bwd"):
                raise InputError(f"expected 'fwd' or 'bwd', got {value!r}", key=f"shape.{key}")
        elif not _is_number(value) or not 0 <= value <= MAX_SHAPE_VALUE:
            raise InputError(f"expected a non-negative number below 2^53, got {value!r}", key=f"shape.{key}")
        elif key in kind.integer_keys and int(value) != value:
            raise InputError(f"expected a whole number, got {value!r}", key=f"shape.{key}")
    return full


def check_attrs(kind: OpKind, attrs: Mapping[str, Any]) -> dict[str, Any]:
    accepted = kind.accepted_attrs()
    out = dict(attrs)
    for key, value in out.items():
        spec = accepted.get(key)
        if spec is None:
            raise InputError(f"unknown attribute for {kind.name}; expected one of: {', '.join(sorted(accepted))}",
                             key=f"attrs.{key}")
        problem = spec.check(value)
        if problem is not None:
            raise InputError(problem, key=f"attrs.{key}")
    return out


def kinds_markdown() -> str:
    """The op-kind and attribute tables of docs/workload_format.md, generated from the registry."""
    lines = ["| kind | shape keys | host class | what it is | FLOPs | bytes |", "|---|---|---|---|---|---|"]
    for name, kind in KINDS.items():
        keys = ", ".join(f"`{k}`" if d is None else f"`{k} = {str(d).lower() if isinstance(d, bool) else d}`"
                         for k, d in kind.shape_keys.items())
        host = "collective (network)" if kind.collective else kind.host_class
        lines.append(f"| `{name}` | {keys} | {host} | {kind.description} | {kind.work_doc[0]} | {kind.work_doc[1]} |")
    lines += ["", "| attribute | kinds | meaning |", "|---|---|---|"]
    rows: dict[tuple[str, str], list[str]] = {}
    for name, kind in KINDS.items():
        for attr, spec in kind.attrs.items():
            rows.setdefault((attr, spec.doc), []).append(f"`{name}`")
    for attr, spec in COMMON_ATTRS.items():
        lines.append(f"| `{attr}` | any | {spec.doc} |")
    for (attr, doc), kinds in rows.items():
        lines.append(f"| `{attr}` | {', '.join(kinds)} | {doc} |")
    return "\n".join(lines)


if __name__ == "__main__":  # regenerate the tables of docs/workload_format.md
    print(kinds_markdown())
