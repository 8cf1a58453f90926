"""Import MLCommons Chakra execution traces (the et_def.proto schema) into chipsim's op graph.

JSON form: the protobuf `Node` messages as JSON (what `chakra_jsonizer` / `json_format` write:
camelCase or snake_case keys, int64 values as strings), as {"nodes": [...]} or a bare list.
Protobuf form (`.et`): read with the `chakra` package when it is installed.

Mapping: COMP_NODE with `num_ops` / `tensor_size` becomes a `roofline` op (costed from its FLOPs and
bytes on the target chip); one with only `duration_micros` becomes `opaque` (measured duration);
COMM_COLL_NODE becomes all_reduce / all_gather / reduce_scatter / broadcast (`comm_size` bytes);
COMM_SEND/RECV a send_recv; MEM_LOAD/STORE a memcpy; METADATA nodes are skipped with their
dependencies passed through. Data and control dependencies both become deps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chipsim.errors import InputError
from chipsim.workload.graph import Workload, WorkloadBuilder

NODE_TYPES = {0: "INVALID_NODE", 1: "METADATA_NODE", 2: "MEM_LOAD_NODE", 3: "MEM_STORE_NODE", 4: "COMP_NODE",
              5: "COMM_SEND_NODE", 6: "COMM_RECV_NODE", 7: "COMM_COLL_NODE"}
COMM_TYPES = {0: "all_reduce", 2: "all_gather", 5: "broadcast", 7: "reduce_scatter", 8: "reduce_scatter"}
COMM_NAMES = {"ALL_REDUCE": 0, "REDUCE": 1, "ALL_GATHER": 2, "GATHER": 3, "SCATTER": 4, "BROADCAST": 5,
              "ALL_TO_ALL": 6, "REDUCE_SCATTER": 7, "REDUCE_SCATTER_BLOCK": 8, "BARRIER": 9}
GROUP_KEYS = ("comm_group_size", "pg_size", "group_size", "comm_size_ranks")


def is_chakra(data: Any) -> bool:
    nodes = data.get("nodes") if isinstance(data, dict) else data
    return isinstance(nodes, list) and bool(nodes) and all(isinstance(n, dict) and "id" in n and "type" in n
                                                           for n in nodes)


def _get(node: dict[str, Any], snake: str, default: Any = None) -> Any:
    camel = snake.split("_")[0] + "".join(w.title() for w in snake.split("_")[1:])
    return node.get(snake, node.get(camel, default))


def _attrs(node: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for attr in node.get("attr", []) or []:
        values = [v for k, v in attr.items() if k not in ("name", "doc_string", "docString")]
        if values:
            value = values[0]
            if isinstance(value, dict):  # list values: {"values": [...]}
                value = value.get("values", value)
            out[str(attr.get("name"))] = value
    return out


def _node_type(node: dict[str, Any]) -> str:
    raw = node.get("type")
    if isinstance(raw, (int, float)) or str(raw).isdigit():
        return NODE_TYPES.get(int(str(raw)), "INVALID_NODE")
    return str(raw)


def _from_protobuf(path: Path) -> list[dict[str, Any]]:
    try:
        from chakra.schema.protobuf.et_def_pb2 import GlobalMetadata, Node  # type: ignore[import-not-found]
        from chakra.src.third_party.utils.protolib import decodeMessage, openFileRd  # type: ignore[import-not-found]
        from google.protobuf.json_format import MessageToDict  # type: ignore[import-not-found]
    except ImportError:
        raise InputError("a protobuf Chakra trace needs the `chakra` package (pip install from MLCommons "
                         "Chakra); or convert it to JSON with chakra_jsonizer", file=str(path)) from None
    nodes = []
    handle = openFileRd(str(path))
    decodeMessage(handle, GlobalMetadata())
    node = Node()
    while decodeMessage(handle, node):
        nodes.append(MessageToDict(node, preserving_proto_field_name=True))
        node = Node()
    handle.close()
    return nodes


def import_chakra(path: Path, data: Any = None) -> Workload:
    nodes = _from_protobuf(path) if data is None else (data.get("nodes") if isinstance(data, dict) else data)
    if not isinstance(nodes, list) or not nodes:
        raise InputError("expected a list of Chakra nodes", file=str(path), key="nodes")
    try:
        return _build(path, nodes)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed Chakra node ({exc.__class__.__name__}: {exc})", file=str(path),
                         key="nodes") from None


def _build(path: Path, nodes: list[dict[str, Any]]) -> Workload:
    by_id = {int(_get(n, "id")): n for n in nodes}
    deps_of = {i: [int(d) for d in (_get(n, "data_deps", []) or []) + (_get(n, "ctrl_deps", []) or [])]
               for i, n in by_id.items()}
    for i, deps in deps_of.items():
        missing = [d for d in deps if d not in by_id]
        if missing:
            raise InputError(f"node {i} depends on unknown node {missing[0]}", file=str(path), key=f"nodes[id={i}]")
    # topological order (Kahn), ties by id: deterministic
    indegree = {i: len(set(d)) for i, d in deps_of.items()}
    users: dict[int, list[int]] = {i: [] for i in by_id}
    for i, deps in deps_of.items():
        for d in set(deps):
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

    b = WorkloadBuilder(path.name.split(".json")[0].removesuffix(".et"), "chakra", {"trace": path.name})
    op_of: dict[int, list[int]] = {}  # chakra id -> chipsim ops it stands for (skipped nodes pass deps through)
    opaque = 0
    for i in order:
        node = by_id[i]
        kind = _node_type(node)
        attrs = _attrs(node)
        deps = sorted({o for d in deps_of[i] for o in op_of[d]})
        name = str(node.get("name", f"node{i}"))
        duration = float(_get(node, "duration_micros", 0) or 0) * 1e-6
        nbytes = float(attrs.get("comm_size", attrs.get("tensor_size", 0)) or 0)
        group = next((int(attrs[k]) for k in GROUP_KEYS if k in attrs), 8)
        if kind == "COMP_NODE":
            flops = float(attrs.get("num_ops", 0) or 0)
            if flops or nbytes:
                op = b.add("roofline", name, "bf16", deps, shape={"flops": flops, "bytes": nbytes})
            else:
                opaque += 1
                op = b.add("opaque", name, "bf16", deps, shape={"duration_s": duration}, attrs={"scale": "none"})
        elif kind == "COMM_COLL_NODE":
            raw = attrs.get("comm_type", 0)
            code = COMM_NAMES.get(str(raw)) if not str(raw).lstrip("-").isdigit() else int(raw)
            coll = COMM_TYPES.get(code if code is not None else -1)
            if coll is None:
                opaque += 1
                op = b.add("opaque", name, "bf16", deps, stream="comm", shape={"duration_s": duration},
                           attrs={"scale": "none"})
            else:
                op = b.add(coll, name, "bf16", deps, stream="comm", shape={"bytes": nbytes, "group": group})
        elif kind in ("COMM_SEND_NODE", "COMM_RECV_NODE"):
            op = b.add("send_recv", name, "bf16", deps, stream="comm", shape={"bytes": nbytes, "group": 2})
        elif kind in ("MEM_LOAD_NODE", "MEM_STORE_NODE"):
            op = b.add("memcpy", name, "bf16", deps, stream="copy", shape={"bytes": nbytes})
        else:  # metadata / invalid: not work, but keep the ordering it implies
            op_of[i] = deps
            continue
        op_of[i] = [op]
    if not b.ops:
        raise InputError("the Chakra trace has no compute, communication or memory node", file=str(path))
    b.meta.update(source="chakra", nodes=len(nodes), opaque=opaque)
    return b.build()
