"""Chakra in and out: the `.et` / JSON reader (every node kind mapped or named, no silent defaults,
errors that name the trace file and node id) and the per-rank exporter for ASTRA-sim."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import chipsim
from chipsim.errors import InputError
from chipsim.workload.exporters import chakra_traces, export_chakra
from chipsim.workload.graph import Workload
from chipsim.workload.importers import import_trace
from chipsim.workload.importers.chakra import _delimited, et_messages
from tests.conftest import build


def _attr(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "int64Val": str(value)}


def _write(tmp_path: Path, nodes: Any, name: str = "t.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"nodes": nodes}))
    return path


def _coll(node_id: int, comm_type: str, size: int = 4096, group: int | None = 4, **extra: Any) -> dict[str, Any]:
    attrs = [_attr("comm_type", comm_type), _attr("comm_size", size)]
    if group is not None:
        attrs.append({"name": "comm_group_size", "int32Val": group})
    return {"id": node_id, "name": f"c{node_id}", "type": "COMM_COLL_NODE", "attr": attrs, **extra}


def _decode(path: Path) -> list[Any]:
    """A trace file's Node messages (after the GlobalMetadata)."""
    messages = et_messages()
    bodies = list(_delimited(path.read_bytes(), path))
    assert messages["GlobalMetadata"].FromString(bodies[0]).version
    return [messages["Node"].FromString(b) for b in bodies[1:]]


def _attrs(node: Any) -> dict[str, Any]:
    return {a.name: getattr(a, a.WhichOneof("value")) for a in node.attr}


# ---------------------------------------------------------------- the reader


def test_a_node_with_id_0_imports(tmp_path: Path) -> None:
    # json_format leaves a zero id out: the first node has no "id" at all
    nodes = [{"name": "first", "type": "COMP_NODE", "durationMicros": "5"},
             {"id": "1", "name": "second", "type": "COMP_NODE", "dataDeps": ["0"],
              "attr": [_attr("num_ops", 1e9), _attr("tensor_size", 1e6)]}]
    wl, _ = import_trace(_write(tmp_path, nodes))
    assert [(op.name, op.kind) for op in wl.ops] == [("first", "opaque"), ("second", "roofline")]
    assert wl.ops[1].deps == (0,)


def test_all_to_all_and_barrier_are_mapped_and_named(tmp_path: Path) -> None:
    nodes = [_coll(0, "ALL_TO_ALL", 1 << 20), _coll(1, "ALL_TO_ALL", 1 << 20, data_deps=[0]),
             _coll(2, "BARRIER", 0, data_deps=[1]), _coll(3, "6", 512, data_deps=[2])]
    wl, lines = import_trace(_write(tmp_path, nodes))
    assert [op.kind for op in wl.ops] == ["all_to_all", "all_to_all", "all_reduce", "all_to_all"]
    barrier = wl.ops[2]
    assert dict(barrier.shape) == {"bytes": 4.0, "group": 4} and barrier.stream == "comm"
    assert "  COMM_COLL_NODE ALL_TO_ALL: 3 -> all_to_all" in lines
    assert any(line.startswith("  COMM_COLL_NODE BARRIER: 1 -> all_reduce of 4 bytes") for line in lines)
    result = chipsim.simulate(wl, chipsim.load_chip("h200_sxm"))
    assert all(r.duration_s > 0 for r in result.records)  # no silent 0 s ops


def test_reduce_gather_scatter_map_to_stated_kinds(tmp_path: Path) -> None:
    nodes = [_coll(0, "REDUCE"), _coll(1, "GATHER"), _coll(2, "SCATTER"), _coll(3, "REDUCE_SCATTER_BLOCK")]
    wl, lines = import_trace(_write(tmp_path, nodes))
    assert [op.kind for op in wl.ops] == ["broadcast", "all_gather", "all_gather", "reduce_scatter"]
    assert any(line.startswith("  COMM_COLL_NODE REDUCE: 1 -> broadcast of the same bytes") for line in lines)
    assert any(line.startswith("  COMM_COLL_NODE GATHER: 1 -> all_gather") for line in lines)


def test_every_node_kind_is_counted_in_the_summary(tmp_path: Path) -> None:
    nodes = [{"id": 1, "name": "meta", "type": "METADATA_NODE"},
             {"id": 2, "name": "ckpt", "type": 10, "ctrl_deps": [1]},
             {"id": 3, "name": "load", "type": "MEM_LOAD_NODE", "data_deps": [2], "attr": [_attr("tensor_size", 64)]},
             {"id": 4, "name": "send", "type": "COMM_SEND_NODE", "data_deps": [3],
              "attr": [_attr("comm_size", 128), {"name": "comm_src", "int32Val": 0},
                       {"name": "comm_dst", "int32Val": 3}]},
             {"id": 5, "name": "k", "type": "COMP_NODE", "data_deps": [4]}]
    wl, lines = import_trace(_write(tmp_path, nodes))
    assert [op.kind for op in wl.ops] == ["memcpy", "send_recv", "opaque"]
    assert wl.ops[1].attrs["ranks"] == [0, 3] and wl.ops[0].deps == ()
    assert lines[0] == "chakra nodes: 5 -> 3 ops (1 opaque)"
    assert "  METADATA_NODE: 1 -> skipped (dependencies pass through)" in lines
    assert "  CHECKPOINT_NODE: 1 -> skipped (dependencies pass through)" in lines
    assert "  COMM_SEND_NODE: 1 -> send_recv" in lines
    assert any("0 s: no num_ops, tensor_size or duration" in line for line in lines)


def test_missing_group_needs_world(tmp_path: Path, cli) -> None:
    path = _write(tmp_path, [_coll(7, "ALL_GATHER", group=None)])
    out = tmp_path / "w.json"
    rc, stdout, stderr = cli(["trace", "import", path, "-o", out])
    assert rc == 2 and stdout == "" and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert str(path) in stderr and "nodes[id=7]" in stderr and "--world" in stderr and not out.exists()
    rc, stdout, _ = cli(["trace", "import", path, "-o", out, "--world", "16"])
    assert rc == 0 and "collectives with no group size: 1 -> group 16 (--world)" in stdout
    assert chipsim.load_workload(out).ops[0].shape["group"] == 16


@pytest.mark.parametrize(("nodes", "fragments"), [
    # RELIABILITY T26: a duplicate id names both nodes
    ([{"id": 0, "name": "a", "type": "COMP_NODE", "duration_micros": 1000},
      {"id": 0, "name": "b", "type": "COMP_NODE", "duration_micros": 1000},
      {"id": 1, "name": "c", "type": "COMP_NODE", "data_deps": [0], "duration_micros": 1}],
     ["node id 0 is given twice", "'a'", "'b'", "nodes[id=0]"]),
    # T27: a negative duration names the node, not an output-graph key
    ([{"id": 3, "name": "a", "type": "COMP_NODE", "duration_micros": -1000}], ["nodes[id=3]", "duration_micros"]),
    # T28: attr entries that are not objects
    ([{"id": 4, "name": "a", "type": "COMP_NODE", "attr": ["x"]}], ["nodes[id=4]", "attr"]),
    ([{"id": 5, "name": "a", "type": "COMM_COLL_NODE", "attr": [_attr("comm_type", "FANCY")]}],
     ["nodes[id=5]", "comm_type"]),
    ([{"id": 6, "name": "a", "type": 42}], ["nodes[id=6]", "node type"]),
])
def test_bad_nodes_are_one_line_errors(tmp_path: Path, cli, nodes: list[Any], fragments: list[str]) -> None:
    path = _write(tmp_path, nodes)
    out = tmp_path / "w.json"
    rc, stdout, stderr = cli(["trace", "import", path, "-o", out])
    assert rc == 2 and stdout == "" and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stderr.startswith("chipsim: error: ") and str(path) in stderr
    for fragment in fragments:
        assert fragment in stderr
    assert "ops[" not in stderr and not out.exists()


def test_a_truncated_et_file_is_an_input_error(tmp_path: Path) -> None:
    wl = build("w", ("gemm", "g", "bf16", [], {"m": 64, "n": 64, "k": 64}))
    path = export_chakra(wl, tmp_path)[0]
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(InputError, match="truncated") as info:
        import_trace(path)
    assert info.value.file == str(path)


# ---------------------------------------------------------------- the exporter, and the round trip


def _collectives_workload() -> Workload:
    gemm = {"m": 256, "n": 256, "k": 256}
    return build(
        "colls",
        ("gemm", "g0", "bf16", [], gemm),
        ("all_reduce", "ar", "bf16", [0], {"bytes": 1 << 20, "group": 8, "stream": "comm"}),
        ("all_gather", "ag", "bf16", [0], {"bytes": 1 << 16, "group": 4, "stream": "comm", "attrs": {"stride": 2}}),
        ("send_recv", "p2p", "bf16", [1], {"bytes": 4096, "group": 2, "stream": "comm"}),
        ("memcpy", "h2d", "bf16", [], {"bytes": 1 << 12, "stream": "copy"}),
        ("gemm", "g1", "bf16", [2, 3, 4], gemm),
    )


def _structure(wl: Workload) -> list[tuple[str, float, int | None, tuple[int, ...]]]:
    return [(op.kind, op.bytes, op.shape.get("group"), op.deps) for op in wl.ops]


def test_data_parallel_step_round_trips(tmp_path: Path) -> None:
    wl = chipsim.build_workload("data_parallel_train_step", {"layers": 2, "ranks": 8})
    written = export_chakra(wl, tmp_path)
    assert [p.name for p in written] == [f"{wl.name}.{r}.et" for r in range(8)]  # the world: no groups file
    for path in (written[0], written[5]):
        back, lines = import_trace(path)
        assert [op.kind if op.kind in chipsim.workload.kinds.COLLECTIVE_KINDS else "compute" for op in wl.ops] == \
            [op.kind if op.kind in chipsim.workload.kinds.COLLECTIVE_KINDS else "compute" for op in back.ops]
        assert [op.deps for op in back.ops] == [op.deps for op in wl.ops]
        for a, b in zip(wl.ops, back.ops, strict=True):
            assert b.flops == pytest.approx(a.flops, abs=0.5) and b.bytes == pytest.approx(a.bytes, abs=0.5)
            if a.kind == "all_reduce":
                assert dict(b.shape) == {"bytes": a.shape["bytes"], "group": 8}


def test_collectives_round_trip_on_every_rank(tmp_path: Path) -> None:
    wl = _collectives_workload()
    written = export_chakra(wl, tmp_path)
    assert len([p for p in written if p.suffix == ".et"]) == 8
    groups = json.loads((tmp_path / "colls.comm_groups.json").read_text())
    # the stride-2 all-gather tiles 8 ranks as {0,2,4,6}, {1,3,5,7}; the all-reduce spans all: no group
    assert sorted(groups.values()) == [[0, 2, 4, 6], [1, 3, 5, 7]]  # send/recv name ranks, not groups
    back, _ = import_trace(tmp_path / "colls.0.et")
    assert _structure(back) == [("roofline", wl.ops[0].bytes, None, ()),
                                ("all_reduce", float(1 << 20), 8, (0,)),
                                ("all_gather", float(1 << 16), 4, (0,)),
                                ("send_recv", 4096.0, 2, (1,)),
                                ("memcpy", wl.ops[4].bytes, None, ()),
                                ("roofline", wl.ops[5].bytes, None, (2, 3, 4))]
    assert dict(back.ops[2].attrs) == {"stride": 2}
    # rank 1 receives the transfer from rank 0, and runs the all-gather of the odd ranks
    nodes = _decode(tmp_path / "colls.1.et")
    recv = next(n for n in nodes if n.name == "p2p")
    assert recv.type == 6 and _attrs(recv)["comm_src"] == 0 and _attrs(recv)["comm_dst"] == 1
    gather = _attrs(next(n for n in nodes if n.name == "ag"))
    assert gather["comm_type"] == 2 and gather["comm_group"] == "g4s2f1"
    assert groups[gather["pg_name"]] == [1, 3, 5, 7]
    back1, _ = import_trace(tmp_path / "colls.1.et")
    assert dict(back1.ops[2].attrs) == {"stride": 2, "first": 1}
    assert dict(back1.ops[3].attrs) == {}  # send_recv from 0 to 1: the default communicator


def test_export_writes_astra_sim_node_fields(tmp_path: Path) -> None:
    wl = _collectives_workload()
    chip = chipsim.load_chip("h200_sxm")
    result = chipsim.simulate(wl, chip)
    export_chakra(wl, tmp_path, durations_s={r.id: r.duration_s for r in result.records})
    nodes = _decode(tmp_path / "colls.0.et")
    assert [n.id for n in nodes] == list(range(len(nodes)))
    comp = nodes[0]
    assert comp.type == 4 and comp.duration_micros == round(result.records[0].duration_s * 1e6)
    attrs = _attrs(comp)
    assert attrs["is_cpu_op"] is False and attrs["num_ops"] == round(wl.ops[0].flops)
    assert attrs["tensor_size"] == round(wl.ops[0].bytes)
    ar = _attrs(nodes[1])
    assert nodes[1].type == 7 and ar["comm_type"] == 0 and ar["comm_size"] == 1 << 20 and "pg_name" not in ar
    assert nodes[3].type == 5 and _attrs(nodes[3])["comm_dst"] == 1  # rank 0 sends
    assert nodes[4].type == 2 and _attrs(nodes[4])["tensor_size"] == 1 << 12
    assert list(nodes[5].data_deps) == [2, 3, 4]


def test_devices_become_ranks(tmp_path: Path) -> None:
    gemm = {"m": 64, "n": 64, "k": 64}
    wl = build("two", ("gemm", "a", "bf16", [], gemm),
               ("gemm", "b", "bf16", [0], {**gemm, "device": 1}),
               ("all_reduce", "ar", "bf16", [1], {"bytes": 1024, "group": 2, "stream": "comm", "device": 1}))
    traces, groups = chakra_traces(wl)
    assert len(traces) == 2 and groups == {}
    (tmp_path / "x.1.et").write_bytes(traces[1])
    back, _ = import_trace(tmp_path / "x.1.et")
    assert [op.name for op in back.ops] == ["b", "ar"] and back.ops[1].deps == (0,)


def test_export_through_the_cli(tmp_path: Path, cli) -> None:
    wl_path = tmp_path / "w.json"
    chipsim.save_workload(_collectives_workload(), wl_path)
    rc, stdout, _ = cli(["trace", "export", wl_path, "-o", tmp_path / "et", "--chip", "h200_sxm"])
    assert rc == 0 and "wrote 8 Chakra traces" in stdout and "comm-group-configuration" in stdout
    assert _decode(tmp_path / "et" / "colls.3.et")[0].duration_micros > 0
    rc, _, stderr = cli(["trace", "export", wl_path, "-o", tmp_path / "et2", "--ranks", "6"])
    assert rc == 2 and "--ranks" in stderr and stderr.count("\n") == 1
    rc, _, stderr = cli(["trace", "export", tmp_path / "missing.json", "-o", tmp_path / "et3"])
    assert rc == 2 and "missing.json" in stderr


def test_export_is_deterministic() -> None:
    wl = _collectives_workload()
    assert chakra_traces(wl) == chakra_traces(wl)
