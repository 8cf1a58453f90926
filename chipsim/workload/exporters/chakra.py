"""Export a chipsim op graph as MLCommons Chakra execution traces, one per rank, for ASTRA-sim.

Files: `OUTDIR/<name>.<rank>.et` for rank 0..N-1 (ASTRA-sim's `--workload-configuration=OUTDIR/<name>`),
each a `GlobalMetadata` message then `Node` messages, length-delimited as Chakra's `encodeMessage`
writes them (the message classes are built from et_def.proto's field numbers at run time, see
`chipsim.workload.importers.chakra.et_messages`). When a collective spans fewer ranks than all of
them, `OUTDIR/<name>.comm_groups.json` lists each communicator (`{"1": [0, 1, 2, 3], ...}`), for
ASTRA-sim's `--comm-group-configuration`; nodes name theirs in `pg_name` (ASTRA-sim reads it as an
integer; none means all ranks).

Ranks. A chipsim workload describes one representative rank, so every rank gets the same graph, and
each collective runs on that rank's copy of its communicator: a communicator of `group` ranks with
`stride` s (attrs) tiles the N ranks in blocks of group·s, rank r's copy holding the ranks of r's
block that share r's offset modulo s (`first` shifts the tiling). An explicit `ranks` list is taken
as it is: ranks outside it skip the op. When ops carry a `device`, rank = device: rank r gets the ops
of device r, and communicators are taken as written. An op a rank does not run passes its
dependencies through, so the order it implies is kept.

Nodes (attribute types as ASTRA-sim's feeder reads them):
- compute ops: COMP_NODE with `num_ops` (int64, the op's FLOPs), `tensor_size` (uint64, its bytes),
  `is_cpu_op: false`, and `duration_micros` when a time is known (a simulation result, or an opaque
  op's measured duration; whole microseconds, the field's unit);
- all_reduce, all_gather, broadcast, all_to_all, reduce_scatter: COMM_COLL_NODE with `comm_type`
  (int64: 0, 2, 5, 6, 7), `comm_size` (int64 bytes: the op's `shape.bytes`), `comm_group_size`, and
  `comm_group` ("g{size}s{stride}f{first}", or "g{size}r{r0}_{r1}_..." for a list): chipsim's own
  names, which ASTRA-sim ignores and chipsim's importer reads back;
- send_recv: COMM_SEND_NODE on the communicator's first rank and COMM_RECV_NODE on its last (both ways
  when `bidirectional`), with `comm_src`, `comm_dst`, `comm_tag` (int32: the op id) and `comm_size`;
- memcpy: MEM_LOAD_NODE with `tensor_size` (the bytes copied).
Every node also carries `dtype` (the op's, a string): ASTRA-sim ignores it, chipsim's importer reads it.
Data dependencies come from `op.deps`. Node ids count from 0 in program order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chipsim.errors import InputError
from chipsim.workload.graph import Op, Workload
from chipsim.workload.importers.chakra import ET_VERSION, encode_delimited, et_messages
from chipsim.workload.kinds import COLLECTIVE_KINDS

COMM_TYPE_CODES = {"all_reduce": 0, "all_gather": 2, "broadcast": 5, "all_to_all": 6, "reduce_scatter": 7}
NODE_TYPE_CODES = {"MEM_LOAD_NODE": 2, "COMP_NODE": 4, "COMM_SEND_NODE": 5, "COMM_RECV_NODE": 6,
                   "COMM_COLL_NODE": 7}
MAX_RANKS = 1 << 16  # files written by one export


def _int_attr(op: Op, key: str, default: int) -> int:
    value = op.attrs.get(key, default)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else default


def _ranks_of(op: Op) -> tuple[int, ...]:
    """The communicator as written: its ranks in communicator order."""
    size = int(op.shape["group"])
    if "ranks" in op.attrs:
        return tuple(int(r) for r in op.attrs["ranks"])
    stride, first = _int_attr(op, "stride", 1), _int_attr(op, "first", 0)
    return tuple(first + i * stride for i in range(size))


def _members(op: Op, rank: int, world: int, tiled: bool) -> tuple[int, ...]:
    """The ranks of the copy of `op`'s communicator that `rank` runs (see the module doc)."""
    if not tiled or "ranks" in op.attrs:
        return _ranks_of(op)
    size = int(op.shape["group"])
    stride, first = _int_attr(op, "stride", 1), _int_attr(op, "first", 0)
    span = size * stride
    if world % span:
        raise InputError(f"op {op.id} ({op.name}): its communicator spans {span} ranks ({size} ranks by "
                         f"stride {stride}), and {world} ranks are not a whole number of such blocks",
                         key="--ranks")
    pos = (rank - first) % world
    base, offset = pos - pos % span, pos % stride
    return tuple((first + base + offset + i * stride) % world for i in range(size))


def _describe(members: tuple[int, ...]) -> str:
    size = len(members)
    stride = members[1] - members[0] if size > 1 else 1
    if stride > 0 and members == tuple(members[0] + i * stride for i in range(size)):
        return f"g{size}s{stride}f{members[0]}"
    return f"g{size}r" + "_".join(map(str, members))


def default_ranks(workload: Workload) -> int:
    """Ranks to write when none are given: one per device when ops carry devices, else the widest
    communicator's span."""
    if any(op.device for op in workload.ops):
        return max(op.device for op in workload.ops) + 1
    spans = [max(_ranks_of(op)) + 1 for op in workload.ops if op.kind in COLLECTIVE_KINDS]
    return max(spans, default=1)


class _Rank:
    """The nodes of one rank's trace."""

    def __init__(self, messages: Mapping[str, Any]) -> None:
        self.messages = messages
        self.nodes: list[Any] = []

    def node(self, op: Op, node_type: str, deps: list[int], attrs: list[tuple[str, str, Any]],
             duration_s: float | None = None) -> int:
        name, dtype = op.name, op.dtype
        msg = self.messages["Node"](id=len(self.nodes), name=name, type=NODE_TYPE_CODES[node_type])
        msg.data_deps.extend(deps)
        if duration_s is not None:
            msg.duration_micros = max(0, round(duration_s * 1e6))
        for attr_name, field, value in [("is_cpu_op", "bool_val", False), *attrs, ("dtype", "string_val", dtype)]:
            attr = msg.attr.add(name=attr_name)
            setattr(attr, field, value)
        self.nodes.append(msg)
        return msg.id  # type: ignore[no-any-return]


def chakra_traces(workload: Workload, ranks: int | None = None,
                  durations_s: Mapping[int, float] | None = None) -> tuple[list[bytes], dict[str, list[int]]]:
    """Each rank's trace as bytes, and the communicators that span fewer than all ranks ({pg id: ranks})."""
    if not workload.ops:
        raise InputError("the workload has no ops to export")
    devices = any(op.device for op in workload.ops)
    world = default_ranks(workload) if ranks is None else ranks
    if isinstance(world, bool) or not isinstance(world, int) or not 1 <= world <= MAX_RANKS:
        raise InputError(f"expected 1..{MAX_RANKS} ranks, got {world!r}", key="--ranks")
    highest_device = max(op.device for op in workload.ops)
    if devices and world <= highest_device:
        raise InputError(f"ops run on devices up to {highest_device}: give at least {highest_device + 1} ranks",
                         key="--ranks")
    messages = et_messages()
    durations = dict(durations_s or {})
    for op in workload.ops:
        if op.id not in durations and op.kind == "opaque":
            durations[op.id] = float(op.shape["duration_s"])
    groups: dict[tuple[int, ...], int] = {}
    everyone = set(range(world))
    out: list[bytes] = []
    for rank in range(world):
        trace = _Rank(messages)
        nodes_of: dict[int, list[int]] = {}
        for op in workload.ops:
            deps = sorted({n for d in op.deps for n in nodes_of[d]})
            nodes_of[op.id] = deps  # an op this rank does not run passes its dependencies through
            if devices and op.device != rank:
                continue
            duration = durations.get(op.id)
            if op.kind not in COLLECTIVE_KINDS:
                if op.kind == "memcpy":
                    ids = [trace.node(op, "MEM_LOAD_NODE", deps, [("tensor_size", "uint64_val",
                                                                        round(op.shape["bytes"]))], duration)]
                else:
                    ids = [trace.node(op, "COMP_NODE", deps, [
                        ("num_ops", "int64_val", round(op.flops)), ("tensor_size", "uint64_val", round(op.bytes)),
                        ("chipsim_kind", "string_val", op.kind)], duration)]
                nodes_of[op.id] = ids
                continue
            members = _members(op, rank, world, tiled=not devices)
            if max(members) >= world:
                raise InputError(f"op {op.id} ({op.name}): its communicator names rank {max(members)}, beyond "
                                 f"the {world} ranks exported", key="--ranks")
            if rank not in members:
                if devices:
                    raise InputError(f"op {op.id} ({op.name}) runs on device {rank}, which its communicator "
                                     f"({_describe(members)}) does not include", key=f"ops[{op.id}].attrs")
                continue
            size = round(op.shape["bytes"])
            if op.kind == "send_recv":
                src, dst = members[0], members[-1]
                pairs = [(src, dst), (dst, src)] if op.attrs.get("bidirectional") else [(src, dst)]
                ids = []
                for a, b in pairs:
                    for node_type, mine in (("COMM_SEND_NODE", a), ("COMM_RECV_NODE", b)):
                        if mine == rank:
                            ids.append(trace.node(op, node_type, deps, [
                                ("comm_src", "int32_val", a), ("comm_dst", "int32_val", b),
                                ("comm_tag", "int32_val", op.id % (1 << 31)), ("comm_size", "int64_val", size)],
                                duration))
                nodes_of[op.id] = ids or deps
                continue
            if op.kind not in COMM_TYPE_CODES:
                raise InputError(f"op {op.id} ({op.name}): the collective kind {op.kind!r} has no Chakra "
                                 "CollectiveCommType", key=f"ops[{op.id}].kind")
            attrs: list[tuple[str, str, Any]] = [
                ("comm_type", "int64_val", COMM_TYPE_CODES[op.kind]), ("comm_size", "int64_val", size),
                ("comm_group_size", "int64_val", len(members)), ("comm_group", "string_val", _describe(members))]
            if set(members) != everyone:
                pg = groups.setdefault(members, len(groups) + 1)
                attrs.append(("pg_name", "string_val", str(pg)))
            nodes_of[op.id] = [trace.node(op, "COMM_COLL_NODE", deps, attrs, duration)]
        meta = messages["GlobalMetadata"](version=ET_VERSION)
        out.append(encode_delimited(meta) + b"".join(encode_delimited(n) for n in trace.nodes))
    return out, {str(pg): list(members) for members, pg in groups.items()}


def export_chakra(workload: Workload, out_dir: Path, ranks: int | None = None,
                  durations_s: Mapping[int, float] | None = None) -> list[Path]:
    """Write the per-rank traces (and the communicator file, when needed) into `out_dir`, all or none.
    `durations_s`: op id -> seconds, e.g. from a simulation, written as `duration_micros`."""
    traces, groups = chakra_traces(workload, ranks, durations_s)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", workload.name).strip(".") or "workload"
    files = {f"{stem}.{rank}.et": data for rank, data in enumerate(traces)}
    if groups:
        files[f"{stem}.comm_groups.json"] = (json.dumps(groups, indent=1) + "\n").encode()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=out_dir))
    except OSError as exc:
        raise InputError(f"cannot write into this folder ({exc.strerror or exc})", file=str(out_dir)) from None
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        written = []
        for name in files:
            os.replace(staging / name, out_dir / name)
            written.append(out_dir / name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
