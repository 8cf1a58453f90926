"""Import PyTorch profiler traces (Kineto / Chrome trace event JSON, as `torch.profiler`'s
`export_chrome_trace` writes them, with or without `record_shapes`) into chipsim's op graph.

- Each GPU activity (kernel, memcpy, memset) is linked to the CPU op that launched it through its
  `External id` (the innermost ATen op active at launch; the runtime call carries the same
  correlation id). Consecutive activities of one CPU op become one chipsim op.
- A mapper per ATen op family recovers kind, shapes and dtype from `Input Dims` / `Input type` /
  `Concrete Inputs`: GEMMs, SDPA (flash / cuDNN / mem-efficient, forward and backward), norms,
  softmax, elementwise and copies, NCCL collectives, memcpy. Anything else becomes an `opaque` op
  with its measured duration and a stated re-targeting rule; nothing is dropped.
- Program order is the order of the launch calls; stream order is kept by the engine; a kernel that
  waited for another stream (it started later than its launch, right when another stream's kernel
  ended) depends on that kernel. The host time between launches is kept per op (`host_s`), and a
  host synchronization (cudaDeviceSynchronize, cudaStreamSynchronize, ...) makes the next launch wait
  for the device, so host-bound traces replay host-bound.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipsim.config.loader import brief, read_bounded
from chipsim.errors import InputError
from chipsim.hardware.registry import chip_for_device_name
from chipsim.workload.graph import Workload, WorkloadBuilder
from chipsim.workload.io import MAX_JSON_BYTES, JSONReadError, parse_json_bytes
from chipsim.workload.kinds import DTYPE_BYTES

TYPE_MAP = {"c10::BFloat16": "bf16", "c10::Half": "fp16", "float": "fp32", "double": "fp32",
            "c10::Float8_e4m3fn": "fp8", "c10::Float8_e5m2": "fp8", "c10::Float8_e4m3fnuz": "fp8",
            "signed char": "int8", "unsigned char": "int8", "int": "int32", "long int": "int32", "bool": "int8"}
SYNC_CALLS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy")
GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
MAX_DURATION_US = 86400e6  # one day: a longer GPU activity is a broken trace, not a measurement
COMPUTE_KERNEL = re.compile(r"gemm|nvjet|cutlass|xmma|wgmma|sm\d+_.*mma|flash|fmha|sdpa|attention", re.I)


@dataclass
class Activity:
    """One GPU activity with what the trace says about it."""

    name: str
    category: str
    start_us: float
    dur_us: float
    stream: int
    external_id: int | None
    launch_us: float  # host time of the runtime call that launched it
    nbytes: float = 0.0


@dataclass
class ImportReport:
    kernels: int = 0
    mapped_kernels: int = 0
    kernel_time_us: float = 0.0
    mapped_time_us: float = 0.0
    opaque_ops: int = 0
    steps_found: int = 0
    trace_step_us: float = 0.0  # first launch to last GPU activity end (per step kept)
    device: str = ""
    unmapped: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        share = self.mapped_kernels / self.kernels if self.kernels else 0.0
        covered = self.mapped_time_us / self.kernel_time_us if self.kernel_time_us else 0.0
        out = [f"kernels: {self.kernels} ({self.device or 'unknown device'})",
               f"mapped: {self.mapped_kernels} ({share:.1%}); time covered by mapped ops: {covered:.1%}",
               f"opaque ops (replayed with their measured duration): {self.opaque_ops}",
               f"step boundaries (ProfilerStep annotations) found: {self.steps_found}",
               f"trace step time: {self.trace_step_us / 1e3:.3f} ms"]
        if self.unmapped:
            top = sorted(self.unmapped.items(), key=lambda kv: -kv[1])[:5]
            out.append("most common unmapped: " + ", ".join(f"{name} ({n})" for name, n in top))
        return out


# ---------------------------------------------------------------- reading


def read_trace_json(path: Path) -> Any:
    """The trace's JSON (gzip-compressed or not), read within the limits of chipsim.workload.io."""
    raw = read_bounded(path, MAX_JSON_BYTES, what="trace", missing="trace file not found")
    try:
        data = parse_json_bytes(raw, gz=raw[:2] == b"\x1f\x8b")
    except JSONReadError as exc:
        message = (f"{exc} (truncated?)" if str(exc).startswith("invalid JSON at") else str(exc)) if exc.decode \
            else f"cannot decompress or decode the trace ({exc})"
        raise InputError(message, file=str(path)) from None
    if not isinstance(data, (dict, list)):
        raise InputError("expected a JSON object (a PyTorch profiler trace) or a list of Chakra nodes", file=str(path))
    return data


def _dims(op: Mapping[str, Any] | None) -> list[Any]:
    return list((op or {}).get("args", {}).get("Input Dims", []) or [])


def _types(op: Mapping[str, Any] | None) -> list[str]:
    return list((op or {}).get("args", {}).get("Input type", []) or [])


def _concrete(op: Mapping[str, Any] | None) -> list[str]:
    return [str(x) for x in ((op or {}).get("args", {}).get("Concrete Inputs", []) or [])]


def _numel(shape: Any) -> int:
    if not isinstance(shape, list) or not shape:
        return 0
    if all(isinstance(x, list) for x in shape):  # a tensor list
        return sum(_numel(x) for x in shape)
    return int(math.prod(int(x) for x in shape))


def _dtype(op: Mapping[str, Any] | None, index: int = 0, default: str = "bf16") -> str:
    types = _types(op)
    return TYPE_MAP.get(types[index], default) if index < len(types) else default


# ---------------------------------------------------------------- mappers: ATen op -> chipsim op

Mapped = tuple[str, str, dict[str, Any], dict[str, Any]]  # kind, dtype, shape, attrs
Mapper = Callable[[Mapping[str, Any], list[Activity]], Mapped | None]
MAPPERS: dict[str, Mapper] = {}


def mapper(*names: str) -> Callable[[Mapper], Mapper]:
    def wrap(fn: Mapper) -> Mapper:
        for name in names:
            MAPPERS[name] = fn
        return fn

    return wrap


@mapper("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_mm", "aten::_int_mm", "aten::matmul")
def _gemm(op: Mapping[str, Any], acts: list[Activity]) -> Mapped | None:
    dims = _dims(op)
    name = op["name"]
    a, b = (dims[1], dims[2]) if name == "aten::addmm" and len(dims) > 2 else (dims[0], dims[1]) if len(dims) > 1 else ([], [])
    if len(a) < 2 or len(b) < 2:
        return None
    batch = int(math.prod(a[:-2])) if len(a) > 2 else 1
    m, k, n = int(a[-2]), int(a[-1]), int(b[-1])
    dtype = {"aten::_scaled_mm": "fp8", "aten::_int_mm": "int8"}.get(name, _dtype(op, 1 if name == "aten::addmm" else 0))
    return "gemm", dtype, {"m": m, "n": n, "k": k, "batch": batch}, {}


@mapper("aten::_weight_int4pack_mm")
def _int4_gemm(op: Mapping[str, Any], acts: list[Activity]) -> Mapped | None:
    dims, concrete = _dims(op), _concrete(op)
    if len(dims) < 4 or len(dims[0]) < 2 or len(dims[3]) < 2:
        return None
    group = int(concrete[2]) if len(concrete) > 2 and concrete[2].isdigit() else 128
    return ("gemm", "bf16", {"m": int(math.prod(dims[0][:-1])), "k": int(dims[0][-1]), "n": int(dims[3][1])},
            {"weight_dtype": "int4", "group_size": group})


# Where q, k and the causal flag sit in each SDPA kernel op's inputs (PyTorch 2.x signatures): the
# backward ops take grad_out first; mem-efficient attention encodes causality as custom_mask_type (an
# int, 0 = none) and lays q/k out as (batch, seq, heads, head_dim).
ATTENTION_INPUTS = {  # (backend, pass) -> (q index, k index, causal-flag index)
    ("cudnn", "fwd"): (0, 1, 10), ("cudnn", "bwd"): (1, 2, 14),
    ("flash", "fwd"): (0, 1, 8), ("flash", "bwd"): (1, 2, 11),
    ("efficient", "fwd"): (0, 1, 9), ("efficient", "bwd"): (1, 2, 14),
}


def _attention(backend: str, pass_: str) -> Mapper:
    qi, ki, ci = ATTENTION_INPUTS[(backend, pass_)]

    def fn(op: Mapping[str, Any], acts: list[Activity]) -> Mapped | None:
        dims = _dims(op)
        if len(dims) <= ki or len(dims[qi]) != 4 or len(dims[ki]) != 4:
            return None
        q, k = dims[qi], dims[ki]
        b, h, sq, d = (q[0], q[2], q[1], q[3]) if backend == "efficient" else q
        hkv, skv = (k[2], k[1]) if backend == "efficient" else (k[1], k[2])
        concrete = _concrete(op)
        flag = concrete[ci] if ci < len(concrete) else ""
        causal = (flag not in ("", "0") if backend == "efficient" else flag == "True") and int(sq) > 1
        shape = {"batch": int(b), "heads": int(h), "kv_heads": int(hkv), "seq_q": int(sq), "seq_kv": int(skv),
                 "head_dim": int(d), "causal": causal, "pass": pass_}
        return "attention", _dtype(op, qi), shape, {"backend": backend}
    return fn


for _backend, _names in {"cudnn": ("aten::_cudnn_attention_forward", "aten::_cudnn_attention_backward"),
                         "flash": ("aten::_flash_attention_forward", "aten::_flash_attention_backward"),
                         "efficient": ("aten::_efficient_attention_forward", "aten::_efficient_attention_backward")}.items():
    MAPPERS[_names[0]] = _attention(_backend, "fwd")
    MAPPERS[_names[1]] = _attention(_backend, "bwd")


def _norm(kind: str, pass_: str) -> Mapper:
    def fn(op: Mapping[str, Any], acts: list[Activity]) -> Mapped | None:
        dims = _dims(op)
        if not dims or not dims[0]:
            return None
        x = dims[0]
        return "norm", _dtype(op), {"rows": int(math.prod(x[:-1])), "cols": int(x[-1])}, {"type": kind, "pass": pass_}
    return fn


MAPPERS.update({
    "aten::_fused_rms_norm": _norm("rms_norm", "fwd"), "aten::_fused_rms_norm_backward": _norm("rms_norm", "bwd"),
    "aten::native_layer_norm": _norm("layer_norm", "fwd"),
    "aten::native_layer_norm_backward": _norm("layer_norm", "bwd"),
})


@mapper("aten::_softmax", "aten::_log_softmax", "aten::_softmax_backward_data", "aten::_log_softmax_backward_data")
def _softmax(op: Mapping[str, Any], acts: list[Activity]) -> Mapped | None:
    dims = _dims(op)
    if not dims or not dims[0]:
        return None
    x = dims[0]
    return "softmax", _dtype(op), {"rows": int(math.prod(x[:-1])), "cols": int(x[-1])}, {}


ELEMENTWISE_NAMES = {
    "aten::add": "add", "aten::add_": "add", "aten::sub": "add", "aten::mul": "mul", "aten::mul_": "mul",
    "aten::div": "mul", "aten::div_": "mul", "aten::silu": "silu", "aten::silu_backward": "silu_bwd",
    "aten::gelu": "gelu", "aten::gelu_backward": "gelu_bwd", "aten::neg": "scale", "aten::abs": "abs",
    "aten::clamp": "clamp", "aten::round": "round", "aten::where": "add", "aten::fill_": "write",
    "aten::zero_": "write", "aten::cat": "copy", "aten::clone": "copy", "aten::contiguous": "copy",
    "aten::embedding_dense_backward": "embedding", "aten::gather": "embedding", "aten::index_select": "embedding",
}


@mapper(*ELEMENTWISE_NAMES)
def _elementwise(op: Mapping[str, Any], acts: list[Activity]) -> Mapped | None:
    dims = _dims(op)
    name = op["name"]
    kind = ELEMENTWISE_NAMES[name]
    shape = dims[2] if name == "aten::gather" and len(dims) > 2 else dims[0] if dims else []
    numel = _numel(shape)
    if numel <= 0:
        return None
    return "elementwise", _dtype(op), {"numel": numel}, {"op": kind}


@mapper("aten::copy_", "aten::_to_copy")
def _copy(op: Mapping[str, Any], acts: list[Activity]) -> Mapped | None:
    dims = _dims(op)
    numel = _numel(dims[0]) if dims else 0
    if numel <= 0:
        return None
    dst = _dtype(op, 0)
    src = _dtype(op, 1, dst) if op["name"] == "aten::copy_" else dst
    if src == dst:
        return "elementwise", src, {"numel": numel}, {"op": "copy"}
    return "elementwise", src, {"numel": numel}, {"op": "cast", "out_dtype": dst}


NCCL_KINDS = {"allreduce": "all_reduce", "allgather": "all_gather", "reducescatter": "reduce_scatter",
              "broadcast": "broadcast", "sendrecv": "send_recv"}


def _nccl(op: Mapping[str, Any] | None, acts: list[Activity]) -> Mapped | None:
    name = acts[0].name.lower().replace("_", "")
    kind = next((v for k, v in NCCL_KINDS.items() if k in name), None)
    args = (op or {}).get("args", {})
    nelems, group = args.get("In msg nelems"), args.get("Group size")
    if kind is None or nelems is None or group is None:
        return None
    dtype = TYPE_MAP.get(str(args.get("dtype", "")), "bf16") if args.get("dtype") else "bf16"
    return kind, dtype, {"bytes": float(nelems) * DTYPE_BYTES.get(dtype, 2), "group": int(group)}, {}


# ---------------------------------------------------------------- the import


def _time_us(e: Mapping[str, Any], index: int, key: str, path: Path) -> float:
    """An event's `ts` or `dur` in microseconds: finite, and for a duration in [0, one day]."""
    value = float(e[key]) if key == "ts" else float(e.get(key, 0.0))
    if not math.isfinite(value) or (key == "dur" and not 0 <= value <= MAX_DURATION_US):
        what = "a finite time in us" if key == "ts" else "a duration in us between 0 and one day"
        raise InputError(f"{str(e.get('name', ''))[:80]!r}: expected {what}, got {brief(e.get(key))}",
                         file=str(path), key=f"traceEvents[{index}].{key}")
    return value


def _check_events(events: list[Any], path: Path) -> None:
    """Every event is an object, and its `args` (if any) an object too."""
    for index, e in enumerate(events):
        if not isinstance(e, dict):
            raise InputError(f"expected a trace event (a JSON object), got {brief(e)}", file=str(path),
                             key=f"traceEvents[{index}]")
        if not isinstance(e.get("args", {}), dict):
            raise InputError(f"expected an object of event arguments, got {brief(e['args'])}", file=str(path),
                             key=f"traceEvents[{index}].args")


def _activities(events: list[dict[str, Any]], path: Path) -> list[Activity]:
    launches: dict[int, float] = {}
    for index, e in enumerate(events):
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {}):
            launches[int(e["args"]["correlation"])] = _time_us(e, index, "ts", path)
    acts = []
    for index, e in enumerate(events):
        if e.get("cat") not in GPU_CATEGORIES or e.get("ph") != "X":
            continue
        args = e.get("args", {})
        ext = args.get("External id")
        corr = args.get("correlation")
        start = _time_us(e, index, "ts", path)
        acts.append(Activity(str(e.get("name", "")), str(e["cat"]), start, _time_us(e, index, "dur", path),
                             int(args.get("stream", 0)), int(ext) if ext is not None else None,
                             launches.get(int(corr), start) if corr is not None else start,
                             float(args.get("bytes", 0.0) or 0.0)))
    acts.sort(key=lambda a: (a.launch_us, a.start_us))
    return acts


def _groups(acts: list[Activity]) -> list[list[Activity]]:
    """Consecutive activities (in launch order) launched by the same CPU op."""
    groups: list[list[Activity]] = []
    for act in acts:
        if groups and act.external_id is not None and groups[-1][0].external_id == act.external_id \
                and groups[-1][0].stream == act.stream and act.category == "kernel" == groups[-1][0].category:
            groups[-1].append(act)
        else:
            groups.append([act])
    return groups


def _steps(events: list[dict[str, Any]], max_steps: int | None) -> tuple[int, tuple[float, float] | None]:
    steps = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
                   for e in events if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith("ProfilerStep#"))
    if not steps or max_steps is None:
        return len(steps), None
    kept = steps[:max_steps]
    return len(steps), (kept[0][0], kept[-1][1])


def import_kineto(path: str | Path, steps: int | None = None) -> tuple[Workload, ImportReport]:
    path = Path(path)
    data = read_trace_json(path)
    events = data.get("traceEvents") if isinstance(data, dict) else None
    if not isinstance(events, list):
        raise InputError("not a PyTorch profiler trace: no 'traceEvents' list", file=str(path), key="traceEvents")
    _check_events(events, path)
    try:
        return _build(path, data, events, steps)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"malformed trace event ({exc.__class__.__name__}: {exc})", file=str(path),
                         key="traceEvents") from None


def _build(path: Path, data: dict[str, Any], events: list[dict[str, Any]],
           steps: int | None) -> tuple[Workload, ImportReport]:
    cpu_ops: dict[int, dict[str, Any]] = {}
    cpu_op_index: dict[int, int] = {}  # External id -> index of the cpu_op event in traceEvents
    for index, e in enumerate(events):
        if e.get("cat") == "cpu_op" and "External id" in e.get("args", {}):
            cpu_ops[int(e["args"]["External id"])] = e
            cpu_op_index[int(e["args"]["External id"])] = index
    syncs = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))) for e in events
                   if e.get("cat") == "cuda_runtime" and str(e.get("name")) in SYNC_CALLS)
    acts = _activities(events, path)
    if not acts:
        raise InputError("the trace has no GPU activity (kernels, memcpy, memset): profile with "
                         "ProfilerActivity.CUDA", file=str(path), key="traceEvents")
    report = ImportReport()
    found, window = _steps(events, steps)
    report.steps_found = found
    if steps is not None and not found:
        raise InputError("the trace has no step boundaries (ProfilerStep# annotations): drop --steps to import "
                         "the whole trace, or profile with torch.profiler.profile(...).step()", file=str(path),
                         key="--steps")
    if window is not None:
        acts = [a for a in acts if window[0] <= a.launch_us <= window[1]]
        if not acts:
            raise InputError(f"the first {steps} profiler step(s) have no GPU activity", file=str(path), key="--steps")
    devices = data.get("deviceProperties") or []
    report.device = str(devices[0].get("name", "")) if devices and isinstance(devices[0], dict) else ""
    recorded_on = chip_for_device_name(report.device)
    main_stream = max({a.stream for a in acts}, key=lambda s: sum(a.dur_us for a in acts if a.stream == s))

    b = WorkloadBuilder(path.name.split(".json")[0], "kineto", {"trace": path.name})
    last_launch = acts[0].launch_us
    last_end: dict[int, tuple[float, int]] = {}  # stream -> (end time, op id) of its latest activity
    sync_i = 0
    for group in _groups(acts):
        first = group[0]
        op = cpu_ops.get(first.external_id) if first.external_id is not None else None
        dur = sum(a.dur_us for a in group)
        report.kernels += len(group)
        report.kernel_time_us += dur
        mapped: Mapped | None = None
        if "nccl" in first.name.lower():
            mapped = _nccl(op, group)
        elif first.category == "gpu_memset":  # e.g. a library zeroing its workspace: a plain write
            mapped = ("elementwise", "int8", {"numel": first.nbytes}, {"op": "write"}) if first.nbytes else None
        elif first.category == "gpu_memcpy":
            direction = first.name.lower()
            src = "host" if "htod" in direction else "hbm"
            dst = "host" if "dtoh" in direction else "hbm"
            mapped = ("memcpy", "bf16", {"bytes": first.nbytes or 0.0}, {"src": src, "dst": dst}) if first.nbytes else None
        elif op is not None and op.get("name") in MAPPERS:
            try:
                mapped = MAPPERS[op["name"]](op, group)
            except (IndexError, ValueError, TypeError):
                mapped = None
        attrs: dict[str, Any] = {"host_s": max(0.0, first.launch_us - last_launch) * 1e-6,
                                 "measured_s": dur * 1e-6, "kernels": len(group)}
        # a host synchronization between the previous launch and this one: the host waited for the device
        while sync_i < len(syncs) and syncs[sync_i][1] <= first.launch_us:
            if syncs[sync_i][0] >= last_launch:
                attrs["host_sync"] = True
                attrs["host_s"] = max(0.0, attrs["host_s"] - (syncs[sync_i][1] - syncs[sync_i][0]) * 1e-6)
            sync_i += 1
        last_launch = first.launch_us
        stream = "comm" if "nccl" in first.name.lower() else "compute" if first.stream == main_stream else "copy"
        deps = []
        if first.start_us - first.launch_us > 2.0:  # it waited: for its own stream, or for another one
            for other, (end, op_id) in last_end.items():
                if other != first.stream and abs(first.start_us - end) < 2.0:
                    deps.append(op_id)
        name = f"{(op or {}).get('name', first.name)}"
        if mapped is not None:
            kind, dtype, shape, extra = mapped
            report.mapped_kernels += len(group)
            report.mapped_time_us += dur
            try:
                op_id = b.add(kind, name, dtype, deps, stream=stream, attrs={**attrs, **extra}, shape=shape)
            except InputError as exc:  # a shape from the trace that no op can have: name the trace's event
                source = cpu_op_index.get(first.external_id) if first.external_id is not None else None
                part = (exc.key or "").split(".", 1)[-1]
                raise InputError(f"{name} maps to a {kind} op with {part}: {exc.message}", file=str(path),
                                 key=f"traceEvents[{source}].args" if source is not None else "traceEvents") from None
        else:
            report.opaque_ops += 1
            label = (op or {}).get("name") or re.sub(r"[<(].*", "", first.name)[:60]
            report.unmapped[label] = report.unmapped.get(label, 0) + len(group)
            scale = "compute" if COMPUTE_KERNEL.search(first.name) else "memory"
            op_id = b.add("opaque", name, "bf16", deps, stream=stream,
                          attrs={**attrs, "scale": scale, "recorded_on": recorded_on or "", "kernel": first.name[:200]},
                          shape={"duration_s": dur * 1e-6})
        last_end[first.stream] = (max(a.start_us + a.dur_us for a in group), op_id)
    report.trace_step_us = max(a.start_us + a.dur_us for a in acts) - acts[0].launch_us
    b.meta.update(source="pytorch-profiler", trace=path.name, device=report.device, recorded_on=recorded_on,
                  trace_step_s=report.trace_step_us * 1e-6, kernels=report.kernels,
                  mapped_kernels=report.mapped_kernels, mapped_time_share=(
                      report.mapped_time_us / report.kernel_time_us if report.kernel_time_us else 0.0),
                  steps_found=report.steps_found)
    return b.build(), report
