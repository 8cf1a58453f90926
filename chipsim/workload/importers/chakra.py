"""Import MLCommons Chakra execution traces (the et_def.proto schema) into chipsim's op graph.

Two forms are read:
- JSON: the protobuf `Node` messages as JSON (what `chakra_jsonizer` / `json_format` write: camelCase
  or snake_case keys, int64 values as strings, fields at their default value left out, so a node
  without `id` is node 0), as {"nodes": [...]} or a bare list;
- protobuf (`.et`, optionally gzipped): a `GlobalMetadata` message, then `Node` messages, each
  preceded by its length as a varint (Chakra's `encodeMessage`). The message classes are built at
  run time from the schema below (`et_messages`), so only the `protobuf` package is needed
  (`pip install chipsim[chakra]`), not Chakra itself; the exporter writes with the same classes.

Mapping (every node kind is counted by name in the import summary, `chakra_summary`):
- COMP_NODE with `num_ops` / `tensor_size`: a `roofline` op (costed from its FLOPs and bytes on the
  target chip); with neither: `opaque`, replaying `duration_micros` as measured;
- COMM_COLL_NODE: ALL_REDUCE, ALL_GATHER, BROADCAST, ALL_TO_ALL and REDUCE_SCATTER(_BLOCK) become the
  chipsim collective of that name (`comm_size` bytes); BARRIER an all-reduce of 4 bytes (NCCL has no
  barrier: `torch.distributed.barrier` all-reduces one fp32 element); REDUCE a broadcast (NCCL's
  reduce pipelines the buffer through a chain once, as a broadcast does, in reverse); GATHER and
  SCATTER an all-gather (the root's link carries (g-1)/g of the bytes, as every link of a ring
  all-gather does);
- COMM_SEND_NODE / COMM_RECV_NODE: `send_recv` (from `comm_src` to `comm_dst` where both are given);
- MEM_LOAD_NODE / MEM_STORE_NODE: `memcpy` of `tensor_size` bytes;
- METADATA, INVALID, STORAGE, BATCH and CHECKPOINT nodes carry no device work: they are skipped and
  their dependencies pass through to the nodes that depend on them.
Data and control dependencies both become deps. A collective's group size comes from the node's
`comm_group_size` (or `pg_size`, `group_size`) attribute, else from the `world` the caller gives
(`chipsim trace import --world N`); with neither the import stops: no group is guessed.
"""

from __future__ import annotations

import gzip
import math
import re
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from chipsim.errors import InputError
from chipsim.workload.graph import Workload, WorkloadBuilder
from chipsim.workload.kinds import DTYPE_BYTES

NODE_TYPES = {0: "INVALID_NODE", 1: "METADATA_NODE", 2: "MEM_LOAD_NODE", 3: "MEM_STORE_NODE", 4: "COMP_NODE",
              5: "COMM_SEND_NODE", 6: "COMM_RECV_NODE", 7: "COMM_COLL_NODE", 8: "STORAGE_NODE", 9: "BATCH_NODE",
              10: "CHECKPOINT_NODE"}
COMM_NAMES = {"ALL_REDUCE": 0, "REDUCE": 1, "ALL_GATHER": 2, "GATHER": 3, "SCATTER": 4, "BROADCAST": 5,
              "ALL_TO_ALL": 6, "REDUCE_SCATTER": 7, "REDUCE_SCATTER_BLOCK": 8, "BARRIER": 9}
COMM_CODES = {code: name for name, code in COMM_NAMES.items()}
# Chakra collective -> (chipsim kind, the rule, shown in the summary when it is not the same operation)
COLLECTIVE_MAP: dict[str, tuple[str, str]] = {
    "ALL_REDUCE": ("all_reduce", ""),
    "ALL_GATHER": ("all_gather", ""),
    "BROADCAST": ("broadcast", ""),
    "ALL_TO_ALL": ("all_to_all", ""),
    "REDUCE_SCATTER": ("reduce_scatter", ""),
    "REDUCE_SCATTER_BLOCK": ("reduce_scatter", ""),
    "BARRIER": ("all_reduce", "of 4 bytes (NCCL runs a barrier as a one-element fp32 all-reduce)"),
    "REDUCE": ("broadcast", "of the same bytes (a chain reduce moves what a broadcast moves, reversed)"),
    "GATHER": ("all_gather", "of the same bytes (the root's link carries (g-1)/g of them, as in a ring)"),
    "SCATTER": ("all_gather", "of the same bytes (the root's link carries (g-1)/g of them, as in a ring)"),
}
BARRIER_BYTES = 4.0
GROUP_KEYS = ("comm_group_size", "pg_size", "group_size", "comm_size_ranks")
PASS_THROUGH = ("METADATA_NODE", "INVALID_NODE", "STORAGE_NODE", "BATCH_NODE", "CHECKPOINT_NODE")
ET_VERSION = "0.0.4"

# ---------------------------------------------------------------- the et_def.proto schema, at run time

# AttributeProto's oneof `value`: (scalar, list) fields 3, 4, 5, 6, ... in this order (et_def.proto)
_SCALARS = ("double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64",
            "sfixed32", "sfixed64", "bool", "string", "bytes")


def _protobuf() -> Any:
    try:
        from google.protobuf import descriptor_pb2  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    return descriptor_pb2


@cache
def et_messages() -> dict[str, Any]:
    """The Chakra message classes (GlobalMetadata, Node, AttributeProto, the *List messages, IOInfo),
    built from a FileDescriptorProto that mirrors et_def.proto's field numbers, in a private pool."""
    descriptor_pb2 = _protobuf()
    if descriptor_pb2 is None:
        raise InputError("reading or writing a protobuf Chakra trace (.et) needs the `protobuf` package: "
                         "pip install 'chipsim[chakra]'")
    from google.protobuf import descriptor_pool, message_factory  # type: ignore[import-untyped,unused-ignore]

    F = descriptor_pb2.FieldDescriptorProto
    kinds = {"double": F.TYPE_DOUBLE, "float": F.TYPE_FLOAT, "int32": F.TYPE_INT32, "int64": F.TYPE_INT64,
             "uint32": F.TYPE_UINT32, "uint64": F.TYPE_UINT64, "sint32": F.TYPE_SINT32, "sint64": F.TYPE_SINT64,
             "fixed32": F.TYPE_FIXED32, "fixed64": F.TYPE_FIXED64, "sfixed32": F.TYPE_SFIXED32,
             "sfixed64": F.TYPE_SFIXED64, "bool": F.TYPE_BOOL, "string": F.TYPE_STRING, "bytes": F.TYPE_BYTES}
    file = descriptor_pb2.FileDescriptorProto(name="chipsim/chakra/et_def.proto", package="ChakraProtoMsg",
                                              syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, str, bool]], oneof: str | None = None) -> None:
        """fields: (name, number, scalar type or .Message / enum: name, repeated)."""
        msg = file.message_type.add(name=name)
        if oneof:
            msg.oneof_decl.add(name=oneof)
        for fname, number, ftype, repeated in fields:
            field = msg.field.add(name=fname, number=number,
                                  label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if ftype in kinds:
                field.type = kinds[ftype]
            elif ftype.startswith("enum:"):
                field.type = F.TYPE_ENUM
                field.type_name = f".ChakraProtoMsg.{ftype[5:]}"
            else:
                field.type = F.TYPE_MESSAGE
                field.type_name = f".ChakraProtoMsg.{ftype}"
            if oneof and 3 <= number <= 32:
                field.oneof_index = 0

    attr_fields: list[tuple[str, int, str, bool]] = [("name", 1, "string", False), ("doc_string", 2, "string", False)]
    for i, scalar in enumerate(_SCALARS):
        attr_fields.append((f"{scalar}_val", 3 + 2 * i, scalar, False))
        attr_fields.append((f"{scalar}_list", 4 + 2 * i, _LIST_NAMES[scalar], False))
    message("AttributeProto", attr_fields, oneof="value")
    for scalar in _SCALARS:
        message(_LIST_NAMES[scalar], [("values", 1, scalar, True)])
    message("GlobalMetadata", [("version", 1, "string", False), ("attr", 2, "AttributeProto", True)])
    for enum_name, values in (("NodeType", NODE_TYPES), ("CollectiveCommType", COMM_CODES)):
        enum = file.enum_type.add(name=enum_name)
        for number, value_name in sorted(values.items()):
            enum.value.add(name=value_name, number=number)
    message("Node", [("id", 1, "uint64", False), ("name", 2, "string", False), ("type", 3, "enum:NodeType", False),
                     ("ctrl_deps", 4, "uint64", True), ("data_deps", 5, "uint64", True),
                     ("start_time_micros", 6, "uint64", False), ("duration_micros", 7, "uint64", False),
                     ("inputs", 8, "IOInfo", False), ("outputs", 9, "IOInfo", False),
                     ("attr", 10, "AttributeProto", True)])
    message("IOInfo", [("values", 1, "string", False), ("shapes", 2, "string", False), ("types", 3, "string", False)])
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(file.SerializeToString())
    names = ["GlobalMetadata", "Node", "AttributeProto", "IOInfo", *_LIST_NAMES.values()]
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"ChakraProtoMsg.{n}")) for n in names}


# et_def.proto's list message names (Int32List, Uint64List, Sfixed32List, BoolList, ...)
_LIST_NAMES = {s: s[0].upper() + s[1:] + "List" for s in _SCALARS}


def encode_delimited(message: Any) -> bytes:
    """One message as Chakra's `encodeMessage` writes it: its length as a varint, then its bytes."""
    body = message.SerializeToString()
    size, head = len(body), bytearray()
    while True:
        bits, size = size & 0x7F, size >> 7
        head.append(bits | (0x80 if size else 0))
        if not size:
            return bytes(head) + body


def _delimited(raw: bytes, path: Path) -> Iterator[bytes]:
    pos = 0
    while pos < len(raw):
        size, shift = 0, 0
        while True:
            if pos >= len(raw) or shift > 63:
                raise InputError(f"truncated Chakra trace (a message length breaks off at byte {pos})",
                                 file=str(path))
            byte = raw[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if pos + size > len(raw):
            raise InputError(f"truncated Chakra trace (a {size}-byte message at byte {pos} runs past the end of "
                             f"the {len(raw)}-byte file)", file=str(path))
        yield raw[pos:pos + size]
        pos += size


def _attr_value(attr: Any) -> Any:
    which = attr.WhichOneof("value")
    if which is None:
        return None
    value = getattr(attr, which)
    return list(value.values) if which.endswith("_list") else value


def _node_dict(node: Any) -> dict[str, Any]:
    """A decoded Node as the JSON form's dict (every field read directly: none lost at its default)."""
    return {"id": int(node.id), "name": node.name, "type": int(node.type), "ctrl_deps": list(node.ctrl_deps),
            "data_deps": list(node.data_deps), "duration_micros": int(node.duration_micros),
            "attr": [{"name": a.name, "value": _attr_value(a)} for a in node.attr]}


def read_et(path: Path) -> list[dict[str, Any]]:
    """The nodes of a protobuf Chakra trace (optionally gzipped)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError("trace file not found", file=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read trace ({exc})", file=str(path)) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise InputError(f"cannot decompress the trace ({exc})", file=str(path)) from None
    messages = et_messages()
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped,unused-ignore]

    nodes = []
    for index, body in enumerate(_delimited(raw, path)):
        try:
            if index == 0:
                messages["GlobalMetadata"].FromString(body)
                continue
            nodes.append(_node_dict(messages["Node"].FromString(body)))
        except DecodeError as exc:
            what = "the GlobalMetadata message" if index == 0 else f"message {index} (a Node)"
            raise InputError(f"not a Chakra execution trace: {what} does not decode ({exc})",
                             file=str(path)) from None
    return nodes


# ---------------------------------------------------------------- reading nodes


def is_chakra(data: Any) -> bool:
    nodes = data.get("nodes") if isinstance(data, dict) else data
    return isinstance(nodes, list) and bool(nodes) and all(isinstance(n, dict) for n in nodes) and \
        any("type" in n or "id" in n for n in nodes)


def _get(node: dict[str, Any], snake: str, default: Any = None) -> Any:
    camel = snake.split("_")[0] + "".join(w.title() for w in snake.split("_")[1:])
    return node.get(snake, node.get(camel, default))


class _Node:
    """One node's fields, checked, with errors that name the trace file and the node id."""

    def __init__(self, path: Path, index: int, raw: Any) -> None:
        self.path = path
        if not isinstance(raw, dict):
            raise InputError(f"expected a Chakra node (an object), got {type(raw).__name__}", file=str(path),
                             key=f"nodes[{index}]")
        self.raw = raw
        self.index = index
        self.id = 0  # proto3 leaves a zero id out of JSON
        self.id = self.integer(_get(raw, "id", 0), "id")
        self.name = str(raw.get("name", f"node{self.id}"))
        self.type = self._type()
        self.deps = [self.integer(d, "data_deps") for d in self.ids("data_deps")] + \
            [self.integer(d, "ctrl_deps") for d in self.ids("ctrl_deps")]
        self.duration_s = self.number(_get(raw, "duration_micros", 0), "duration_micros") * 1e-6
        self.attrs = self._attrs()
        # chipsim's exporter names the op's dtype; anything else is taken as bf16
        dtype = self.attrs.get("dtype")
        self.dtype = dtype if isinstance(dtype, str) and dtype in DTYPE_BYTES else "bf16"

    def error(self, message: str) -> InputError:
        return InputError(message, file=str(self.path), key=f"nodes[id={self.id}]")

    def integer(self, value: Any, what: str) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise self.error(f"{what}: expected a non-negative integer, got {value!r}")

    def number(self, value: Any, what: str) -> float:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < 0:
            raise self.error(f"{what}: expected a finite number >= 0, got {value!r}")
        return number

    def ids(self, key: str) -> list[Any]:
        value = _get(self.raw, key, []) or []
        if not isinstance(value, list):
            raise self.error(f"{key}: expected a list of node ids, got {value!r}")
        return value

    def _type(self) -> str:
        raw = self.raw.get("type", 0)
        if isinstance(raw, int) and not isinstance(raw, bool) or isinstance(raw, str) and raw.isdigit():
            code = int(raw)
            if code not in NODE_TYPES:
                raise self.error(f"unknown node type {code} (et_def.proto NodeType has 0..{max(NODE_TYPES)})")
            return NODE_TYPES[code]
        if raw not in NODE_TYPES.values():
            raise self.error(f"unknown node type {raw!r}: expected one of {', '.join(NODE_TYPES.values())}")
        return str(raw)

    def _attrs(self) -> dict[str, Any]:
        raw = self.raw.get("attr", []) or []
        if not isinstance(raw, list):
            raise self.error(f"attr: expected a list of attributes, got {raw!r}")
        out: dict[str, Any] = {}
        for attr in raw:
            if not isinstance(attr, dict) or "name" not in attr:
                raise self.error(f"attr: expected attributes as objects with a name and a value, got {attr!r}")
            values = [v for k, v in attr.items() if k not in ("name", "doc_string", "docString")]
            value = values[0] if values else None
            if isinstance(value, dict):  # list values: {"values": [...]}
                value = value.get("values", value)
            out[str(attr["name"])] = value
        return out

    def attr_number(self, name: str) -> float:
        return self.number(self.attrs.get(name, 0) or 0, f"attr {name}")


def _comm_type(node: _Node) -> str:
    raw = node.attrs.get("comm_type", 0)
    if isinstance(raw, str) and not raw.isdigit():
        if raw not in COMM_NAMES:
            raise node.error(f"unknown comm_type {raw!r}: expected one of {', '.join(COMM_NAMES)}")
        return raw
    code = node.integer(raw, "attr comm_type")
    if code not in COMM_CODES:
        raise node.error(f"unknown comm_type {code} (et_def.proto CollectiveCommType has 0..{max(COMM_CODES)})")
    return COMM_CODES[code]


_PG_DESC = re.compile(r"^g(\d+)s(\d+)f(\d+)$|^g(\d+)r(\d+(?:_\d+)*)$")


def _communicator(node: _Node, world: int | None) -> tuple[int, dict[str, Any], bool]:
    """(group size, chipsim comm attrs, whether the size came from `world`)."""
    attrs: dict[str, Any] = {}
    desc = _PG_DESC.match(str(node.attrs.get("comm_group", "")))
    if desc and desc.group(1):
        stride, first = int(desc.group(2)), int(desc.group(3))
        attrs = {k: v for k, v in (("stride", stride), ("first", first)) if v != (1 if k == "stride" else 0)}
    elif desc:
        ranks = [int(r) for r in desc.group(5).split("_")]
        if ranks != list(range(len(ranks))):
            attrs = {"ranks": ranks}
    for key in GROUP_KEYS:
        if key in node.attrs:
            return node.integer(node.attrs[key], f"attr {key}"), attrs, False
    if world is None:
        raise node.error("the collective names no group size (attr comm_group_size, pg_size or group_size): "
                         "give the number of ranks with --world N")
    return world, attrs, True


def import_chakra(path: Path, data: Any = None, world: int | None = None) -> Workload:
    """The op graph of a Chakra trace: `data` is its parsed JSON, else `path` is read as protobuf.
    `world`: the group size of collectives that name none. The import summary is in
    `workload.meta["chakra_mapping"]` (see `chakra_summary`)."""
    nodes = read_et(path) if data is None else (data.get("nodes") if isinstance(data, dict) else data)
    if not isinstance(nodes, list) or not nodes:
        raise InputError("expected a list of Chakra nodes", file=str(path), key="nodes")
    if world is not None and (isinstance(world, bool) or not isinstance(world, int) or world < 1):
        raise InputError(f"expected a positive number of ranks, got {world!r}", key="--world")
    return _build(path, [_Node(path, i, n) for i, n in enumerate(nodes)], world)


def _order(path: Path, nodes: list[_Node]) -> tuple[dict[int, _Node], list[int]]:
    by_id: dict[int, _Node] = {}
    for node in nodes:
        if node.id in by_id:
            first = by_id[node.id]
            raise InputError(f"node id {node.id} is given twice: {first.name!r} (nodes[{first.index}]) and "
                             f"{node.name!r} (nodes[{node.index}])", file=str(path), key=f"nodes[id={node.id}]")
        by_id[node.id] = node
    for node in nodes:
        missing = [d for d in node.deps if d not in by_id]
        if missing:
            raise InputError(f"node {node.id} depends on unknown node {missing[0]}", file=str(path),
                             key=f"nodes[id={node.id}]")
    # topological order (Kahn), ties by id: deterministic
    indegree = {i: len(set(n.deps)) for i, n in by_id.items()}
    users: dict[int, list[int]] = {i: [] for i in by_id}
    for i, n in by_id.items():
        for d in set(n.deps):
            users[d].append(i)
    ready = sorted(i for i, k in indegree.items() if k == 0)
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for u in sorted(users[i]):
            indegree[u] -= 1
            if indegree[u] == 0:
                ready.append(u)
        ready.sort()
    if len(order) != len(by_id):
        raise InputError("the dependencies form a cycle", file=str(path), key="nodes")
    return by_id, order


def _build(path: Path, nodes: list[_Node], world: int | None) -> Workload:
    by_id, order = _order(path, nodes)
    stem = path.name.split(".json")[0].removesuffix(".gz").removesuffix(".et")
    b = WorkloadBuilder(stem, "chakra", {"trace": path.name})
    op_of: dict[int, list[int]] = {}  # chakra id -> chipsim ops it stands for (skipped nodes pass deps through)
    mapping: Counter[str] = Counter()
    opaque = 0

    def add(node: _Node, kind: str, deps: list[int], **kw: Any) -> int:
        try:
            return b.add(kind, node.name, node.dtype, deps, **kw)
        except InputError as exc:
            where = f" (the {kind} op's {exc.key})" if exc.key else ""
            raise node.error(f"{exc.message}{where}") from None

    for i in order:
        node = by_id[i]
        deps = sorted({o for d in node.deps for o in op_of[d]})
        kind = node.type
        if kind == "COMP_NODE":
            flops, nbytes = node.attr_number("num_ops"), node.attr_number("tensor_size")
            if flops or nbytes:
                mapping["COMP_NODE -> roofline (num_ops, tensor_size)"] += 1
                op = add(node, "roofline", deps, shape={"flops": flops, "bytes": nbytes})
            else:
                opaque += 1
                label = "measured duration" if node.duration_s > 0 else "0 s: no num_ops, tensor_size or duration"
                mapping[f"COMP_NODE without num_ops/tensor_size -> opaque ({label})"] += 1
                op = add(node, "opaque", deps, shape={"duration_s": node.duration_s}, attrs={"scale": "none"})
        elif kind == "COMM_COLL_NODE":
            comm = _comm_type(node)
            coll, rule = COLLECTIVE_MAP[comm]
            nbytes = BARRIER_BYTES if comm == "BARRIER" else node.attr_number("comm_size")
            group, comm_attrs, from_world = _communicator(node, world)
            mapping[f"COMM_COLL_NODE {comm} -> {coll}" + (f" {rule}" if rule else "")] += 1
            if from_world:
                mapping[f"collectives with no group size -> group {group} (--world)"] += 1
            op = add(node, coll, deps, stream="comm", shape={"bytes": nbytes, "group": group},
                     attrs=comm_attrs or None)
        elif kind in ("COMM_SEND_NODE", "COMM_RECV_NODE"):
            nbytes = node.attr_number("comm_size") or node.attr_number("tensor_size")
            attrs: dict[str, Any] = {}
            if "comm_src" in node.attrs and "comm_dst" in node.attrs:
                ends = [node.integer(node.attrs["comm_src"], "attr comm_src"),
                        node.integer(node.attrs["comm_dst"], "attr comm_dst")]
                if ends[0] != ends[1] and ends != [0, 1]:
                    attrs["ranks"] = ends
            mapping[f"{kind} -> send_recv"] += 1
            op = add(node, "send_recv", deps, stream="comm", shape={"bytes": nbytes, "group": 2},
                     attrs=attrs or None)
        elif kind in ("MEM_LOAD_NODE", "MEM_STORE_NODE"):
            mapping[f"{kind} -> memcpy (tensor_size bytes)"] += 1
            op = add(node, "memcpy", deps, stream="copy", shape={"bytes": node.attr_number("tensor_size")})
        else:  # metadata / invalid / storage / batch / checkpoint: no device work; keep the ordering it implies
            assert kind in PASS_THROUGH
            mapping[f"{kind} -> skipped (dependencies pass through)"] += 1
            op_of[i] = deps
            continue
        op_of[i] = [op]
    if not b.ops:
        raise InputError("the Chakra trace has no compute, communication or memory node", file=str(path))
    b.meta.update(source="chakra", nodes=len(nodes), opaque=opaque, chakra_mapping=dict(sorted(mapping.items())))
    return b.build()


def chakra_summary(workload: Workload) -> list[str]:
    """The import summary: the op count, then one line per node kind and how it was mapped."""
    mapping: dict[str, int] = workload.meta.get("chakra_mapping", {})
    lines = [f"chakra nodes: {workload.meta.get('nodes', len(workload.ops))} -> {len(workload.ops)} ops "
             f"({workload.meta.get('opaque', 0)} opaque)"]
    for label, count in mapping.items():
        what, _, how = label.partition(" -> ")
        lines.append(f"  {what}: {count} -> {how}")
    return lines
