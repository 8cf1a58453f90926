"""The op-graph JSON format: round trips, gzip, and located errors for bad files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import chipsim
from chipsim.errors import InputError
from chipsim.workload.graph import Workload, make_op
from chipsim.workload.io import load_workload, save_workload, workload_from_dict


@pytest.fixture(scope="module")
def workloads() -> list[Workload]:
    return [
        chipsim.build_workload("transformer_train_step", {"layers": 2, "batch": 1, "seq": 256, "precision": "fp8"}),
        chipsim.build_workload("dynamic_attention", {"batch": 1, "seq": 512, "passes": "fwd_bwd"}),
        chipsim.build_workload("quantized_inference", {"layers": 2, "weights": "int4"}),
        chipsim.build_workload("all_reduce", {"scheme": "int8_compressed", "size": "16 MiB"}),
    ]


def _same(a: Workload, b: Workload) -> None:
    assert [op.to_dict() for op in a.ops] == [op.to_dict() for op in b.ops]
    assert [(op.flops, op.bytes) for op in a.ops] == [(op.flops, op.bytes) for op in b.ops]
    assert a.to_dict() == b.to_dict()


def test_save_then_load_gives_identical_ops(tmp_path: Path, workloads) -> None:
    for index, wl in enumerate(workloads):
        path = tmp_path / f"w{index}.json"
        save_workload(wl, path)
        back = load_workload(path)
        _same(wl, back)
        assert back.name == wl.name
        assert back.memory == wl.memory
        assert back.footprint_bytes == wl.footprint_bytes
    # atomic write: no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"w{i}.json" for i in range(len(workloads))]


def test_json_gz_loads(tmp_path: Path, workloads) -> None:
    wl = workloads[0]
    plain = tmp_path / "w.json"
    save_workload(wl, plain)
    packed = tmp_path / "w.json.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    _same(wl, load_workload(packed))


def test_round_trip_simulates_identically(tmp_path: Path, workloads) -> None:
    chip = chipsim.load_chip("h100_sxm")
    wl = workloads[1]
    save_workload(wl, tmp_path / "w.json")
    a, b = chipsim.simulate(wl, chip), chipsim.simulate(load_workload(tmp_path / "w.json"), chip)
    assert a.latency_s == b.latency_s
    assert a.energy_j == b.energy_j


def test_save_creates_parent_folders_and_overwrites(tmp_path: Path, workloads) -> None:
    path = tmp_path / "deep" / "er" / "w.json"
    save_workload(workloads[3], path)
    save_workload(workloads[2], path)
    _same(workloads[2], load_workload(path))


def _valid_dict() -> dict:
    return {"format": "chipsim.workload", "version": 1, "name": "two",
            "ops": [{"id": 0, "name": "g0", "kind": "gemm", "dtype": "bf16", "shape": {"m": 64, "n": 64, "k": 64}},
                    {"id": 1, "name": "g1", "kind": "gemm", "dtype": "bf16", "shape": {"m": 64, "n": 64, "k": 64},
                     "deps": [0]}]}


def test_minimal_dict_fills_defaults() -> None:
    wl = workload_from_dict(_valid_dict())
    assert [op.stream for op in wl.ops] == ["compute", "compute"]
    assert wl.ops[0].shape["batch"] == 1
    assert wl.ops[1].deps == (0,)
    assert wl.ops[0].flops == 2 * 64**3


def _mutate(path: str, value):
    def apply(d: dict) -> dict:
        target = d
        parts = path.split(".")
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        last = parts[-1]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
        return d
    return apply


@pytest.mark.parametrize(("change", "key", "fragment"), [
    (_mutate("ops.0.deps", [1]), "ops[0].deps", "earlier op"),
    (_mutate("ops.1.deps", [1]), "ops[1].deps", "earlier op"),
    (_mutate("ops.1.deps", [-1]), "ops[1].deps", "earlier op"),
    (_mutate("ops.1.deps", "0"), "ops[1].deps", "list of op ids"),
    (_mutate("ops.1.dtype", "bf17"), "ops[1].dtype", "unknown dtype"),
    (_mutate("ops.1.dtype", ["bf16"]), "ops[1].dtype", "unknown dtype"),
    (_mutate("ops.1.kind", "conv"), "ops[1].kind", "unknown op kind"),
    (_mutate("ops.1.kind", ["gemm"]), "ops[1].kind", "unknown op kind"),
    (_mutate("ops.1.stream", "side"), "ops[1].stream", "unknown stream"),
    (_mutate("ops.1.device", "x"), "ops[1].device", "integer"),
    (_mutate("ops.1.attrs", [1, 2]), "ops[1].attrs", "mapping"),
    (_mutate("ops.1.attrs", {"weight_dtype": "int3"}), "ops[1].attrs.weight_dtype", "unknown dtype"),
    (_mutate("ops.1.attrs", {"buffer_bytes": "lots"}), "ops[1].attrs.buffer_bytes", "non-negative"),
    (_mutate("ops.1.shape", {"m": 64, "n": 64}), "ops[1].shape.k", "needs shape key"),
    (_mutate("ops.1.shape", {"m": 64, "n": 64, "k": 64, "q": 1}), "ops[1].shape.q", "unknown shape key"),
    (_mutate("ops.1.shape", {"m": "64", "n": 64, "k": 64}), "ops[1].shape.m", "non-negative"),
    (_mutate("ops.1.shape", {"m": 1e400, "n": 64, "k": 64}), "ops[1].shape.m", "non-negative"),
    (_mutate("ops.1.shape", {"m": 0, "n": 64, "k": 64}), "ops[1].shape.m", ">= 1"),
    (_mutate("ops.1.id", 5), "ops[1].id", "0..N-1"),
    (_mutate("ops.1.bogus", 1), "ops[1].bogus", "unknown key"),
    (_mutate("ops", []), "ops", "non-empty"),
    (_mutate("version", 2), "version", "unsupported version"),
    (_mutate("format", "onnx"), "format", "not a chipsim workload"),
    (_mutate("params", "abc"), "params", "object"),
    (_mutate("memory", [1]), "memory", "object"),
    (_mutate("memory", {"weights": "1 GB"}), "memory.weights", "bytes"),
])
def test_bad_workload_files_are_located_input_errors(write_json, change, key: str, fragment: str) -> None:
    path = write_json("bad.json", change(_valid_dict()))
    with pytest.raises(InputError) as info:
        load_workload(path)
    err = info.value
    assert err.file == str(path)
    assert err.key == key
    assert fragment in err.message


def test_elementwise_op_must_be_known() -> None:
    with pytest.raises(InputError, match="unknown elementwise op") as info:
        make_op(3, "e", "elementwise", "bf16", {"numel": 10}, attrs={"op": "frobnicate"})
    assert info.value.key == "ops[3].attrs.op"


def test_attention_heads_must_be_a_multiple_of_kv_heads() -> None:
    with pytest.raises(InputError, match="multiple") as info:
        make_op(0, "a", "attention", "bf16", {"batch": 1, "heads": 6, "kv_heads": 4, "seq_q": 1, "seq_kv": 8,
                                              "head_dim": 64})
    assert info.value.key == "ops[0].shape.kv_heads"


@pytest.mark.parametrize(("content", "fragment"), [
    (b"", "invalid JSON"),
    (b"hello world", "invalid JSON at line 1"),
    (b"[1, 2, 3]", "JSON object"),
    (b"\xff\xfe\x00", "cannot read workload"),
])
def test_unreadable_workload_files(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "w.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=fragment) as info:
        load_workload(path)
    assert info.value.file == str(path)


def test_truncated_json_and_gzip(tmp_path: Path, workloads) -> None:
    good = tmp_path / "good.json"
    save_workload(workloads[3], good)
    text = good.read_bytes()
    (tmp_path / "cut.json").write_bytes(text[: len(text) // 2])
    with pytest.raises(InputError, match="invalid JSON"):
        load_workload(tmp_path / "cut.json")
    (tmp_path / "cut.json.gz").write_bytes(gzip.compress(text)[:40])
    with pytest.raises(InputError, match="cannot read workload"):
        load_workload(tmp_path / "cut.json.gz")
    (tmp_path / "plain.json.gz").write_bytes(text)  # not actually gzipped
    with pytest.raises(InputError, match="cannot read workload"):
        load_workload(tmp_path / "plain.json.gz")
    with pytest.raises(InputError, match="not found"):
        load_workload(tmp_path / "missing.json")


def test_saved_file_is_plain_json_with_format_header(tmp_path: Path, workloads) -> None:
    save_workload(workloads[3], tmp_path / "w.json")
    data = json.loads((tmp_path / "w.json").read_text())
    assert data["format"] == "chipsim.workload"
    assert data["version"] == 1
    assert [op["id"] for op in data["ops"]] == list(range(len(data["ops"])))
