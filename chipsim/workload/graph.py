"""The op graph: `Op` (one kernel or collective), `Workload` (a DAG of ops plus metadata)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chipsim.errors import InputError
from chipsim.workload.kinds import DTYPE_BYTES, KINDS, check_attrs, check_shape

STREAMS = ("compute", "copy", "comm", "p2p")  # p2p: pipeline-parallel sends, on their own stream (Megatron)
MAX_OPS = 2_000_000  # ops in one workload: about 3 GB of memory and minutes of simulation
FORMAT = "chipsim.workload"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Op:
    id: int
    name: str
    kind: str
    dtype: str
    shape: Mapping[str, Any]
    deps: tuple[int, ...] = ()
    stream: str = "compute"
    device: int = 0
    attrs: Mapping[str, Any] = field(default_factory=dict)
    flops: float = 0.0
    bytes: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "kind": self.kind, "dtype": self.dtype,
                               "shape": dict(self.shape), "deps": list(self.deps), "stream": self.stream}
        if self.device:
            out["device"] = self.device
        if self.attrs:
            out["attrs"] = dict(self.attrs)
        return out


def make_op(op_id: int, name: str, kind: str, dtype: str, shape: Mapping[str, Any], *,
            deps: Iterable[int] = (), stream: str = "compute", device: int = 0,
            attrs: Mapping[str, Any] | None = None, where: str = "") -> Op:
    """Validate one op against its kind's contract (kinds.py) and compute its work. `where`
    locates errors (e.g. 'ops[12]')."""
    where = where or f"ops[{op_id}]"
    spec = KINDS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise InputError(f"unknown op kind {kind!r}; expected one of {', '.join(sorted(KINDS))}", key=f"{where}.kind")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise InputError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_BYTES)}", key=f"{where}.dtype")
    if not isinstance(stream, str) or stream not in STREAMS:
        raise InputError(f"unknown stream {stream!r}; expected one of {', '.join(STREAMS)}", key=f"{where}.stream")
    if isinstance(device, bool) or not isinstance(device, int) or device < 0:
        raise InputError(f"expected a non-negative integer, got {device!r}", key=f"{where}.device")
    if not isinstance(shape, Mapping):
        raise InputError("expected a mapping of shape keys", key=f"{where}.shape")
    if attrs is not None and not isinstance(attrs, Mapping):
        raise InputError("expected a mapping of attributes", key=f"{where}.attrs")
    try:
        full = check_shape(spec, shape)
        checked = check_attrs(spec, attrs or {})
        spec.check(full, checked)
        flops, nbytes = spec.work(full, dtype, checked)
    except InputError as exc:
        raise exc.within(key_prefix=where) from None
    if not (math.isfinite(flops) and math.isfinite(nbytes)):
        raise InputError("the op's work overflows (FLOPs or bytes beyond a float's range)", key=f"{where}.shape")
    return Op(op_id, name, kind, dtype, full, tuple(int(d) for d in deps), stream, int(device), checked,
              float(flops), float(nbytes))


@dataclass
class Workload:
    """A DAG of ops in program (issue) order, plus metadata such as the memory footprint."""

    name: str
    ops: list[Op]
    generator: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)  # footprint by category, bytes
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for index, op in enumerate(self.ops):
            if op.id != index:
                raise InputError(f"op ids must be 0..N-1 in order; found id {op.id} at position {index}",
                                 key=f"ops[{index}].id")
            for dep in op.deps:
                if not 0 <= dep < index:
                    earlier = f"0..{index - 1}" if index else "op 0 can have none"
                    raise InputError(f"dependency {dep} must name an earlier op ({earlier})",
                                     key=f"ops[{index}].deps")

    @property
    def total_flops(self) -> float:
        return sum(op.flops for op in self.ops)

    @property
    def total_bytes(self) -> float:
        return sum(op.bytes for op in self.ops)

    @property
    def footprint_bytes(self) -> float:
        return float(sum(self.memory.values()))

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "name": self.name, "generator": self.generator,
                "params": self.params, "memory": self.memory, "meta": self.meta,
                "ops": [op.to_dict() for op in self.ops]}


class WorkloadBuilder:
    """Appends ops in program order; each `add` returns the new op's id for use in `deps`."""

    def __init__(self, name: str, generator: str = "", params: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.generator = generator
        self.params = dict(params or {})
        self.ops: list[Op] = []
        self.memory: dict[str, float] = {}
        self.meta: dict[str, Any] = {}

    def add(self, kind: str, name: str, dtype: str, deps: Iterable[int | None] = (), *,
            stream: str = "compute", device: int = 0, attrs: Mapping[str, Any] | None = None,
            shape: Mapping[str, Any] | None = None, **dims: Any) -> int:
        """Shape keys come as keyword arguments (`m=..., n=...`) and/or as `shape` (for keys such as
        'pass' that are Python keywords)."""
        op_id = len(self.ops)
        if op_id >= MAX_OPS:
            raise InputError(f"the workload grows beyond {MAX_OPS:,} ops; make it smaller (fewer layers, steps or "
                             "tokens)")
        clean = tuple(sorted({d for d in deps if d is not None}))
        self.ops.append(make_op(op_id, name, kind, dtype, {**(shape or {}), **dims}, deps=clean, stream=stream,
                                device=device, attrs=attrs))
        return op_id

    @property
    def last(self) -> int | None:
        return len(self.ops) - 1 if self.ops else None

    def build(self) -> Workload:
        return Workload(self.name, self.ops, self.generator, self.params, self.memory, self.meta)
