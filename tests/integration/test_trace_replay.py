"""Importing and replaying the reference PyTorch profiler traces (tests/data, recorded on an H200):
a 350M Llama training step and bf16 / int4-weight 1.3B decode steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT

import chipsim
from chipsim.config.runconfig import WorkloadSpec
from chipsim.workload.graph import Workload
from chipsim.workload.importers import import_trace
from chipsim.workload.importers.kineto import ImportReport, import_kineto

DATA = REPO_ROOT / "tests" / "data"
TRAIN = DATA / "trace_train_llama-350m_b8_s2048.json.gz"
DECODE_BF16 = DATA / "trace_decode_llama-1.3b_bf16_b16_s2048.json.gz"
DECODE_INT4 = DATA / "trace_decode_llama-1.3b_int4_weight_b16_s2048.json.gz"
TRACES = {"train": (TRAIN, True), "decode_bf16": (DECODE_BF16, False), "decode_int4": (DECODE_INT4, False)}


@pytest.fixture(scope="module")
def imported() -> dict[str, tuple[Workload, ImportReport]]:
    return {name: import_kineto(path) for name, (path, _) in TRACES.items()}


# ---------------------------------------------------------------- 9. chipsim trace import


def test_cli_imports_the_training_trace(tmp_path: Path, cli) -> None:
    out = tmp_path / "OUT.json"
    rc, stdout, stderr = cli(["trace", "import", TRAIN, "-o", out])
    assert rc == 0, stderr
    lines = stdout.splitlines()
    kernels = next(line for line in lines if line.startswith("kernels: "))
    assert kernels == "kernels: 1468 (NVIDIA H200)"  # 1215 kernels + 253 memsets in the trace
    mapped = next(line for line in lines if line.startswith("mapped: "))
    assert int(mapped.split()[1]) / 1468 >= 0.95
    assert lines[-1].startswith("wrote ") and lines[-1].endswith(f" ops to {out}")
    workload = chipsim.load_workload(out)
    assert workload.meta["recorded_on"] == "h200_sxm"
    assert workload.meta["mapped_kernels"] / workload.meta["kernels"] >= 0.95
    assert len(workload.ops) == int(lines[-1].split()[1])
    kinds = {op.kind for op in workload.ops}
    assert {"gemm", "attention", "norm", "elementwise"} <= kinds


def test_training_trace_content(imported) -> None:
    workload, report = imported["train"]
    assert report.device == "NVIDIA H200"
    assert report.mapped_kernels / report.kernels >= 0.95
    assert report.mapped_time_us / report.kernel_time_us >= 0.95
    attention = [op for op in workload.ops if op.kind == "attention"]
    assert {op.shape["pass"] for op in attention} == {"fwd", "bwd"}
    assert all(op.attrs["backend"] == "cudnn" and op.shape["causal"] for op in attention)
    # a 350M Llama: hidden 1024, 16 heads of 64, batch 8 x 2048 tokens
    assert {(op.shape["batch"], op.shape["heads"], op.shape["seq_q"], op.shape["head_dim"]) for op in attention} \
        == {(8, 16, 2048, 64)}
    assert report.opaque_ops == sum(op.kind == "opaque" for op in workload.ops)
    assert sum(report.unmapped.values()) == report.kernels - report.mapped_kernels


def test_decode_traces_map_every_kernel(imported) -> None:
    for name in ("decode_bf16", "decode_int4"):
        _, report = imported[name]
        assert report.mapped_kernels == report.kernels > 0
        assert report.opaque_ops == 0
    int4, _ = imported["decode_int4"]
    assert any(op.attrs.get("weight_dtype") == "int4" for op in int4.ops if op.kind == "gemm")


# ---------------------------------------------------------------- 10. replay on the recording chip


@pytest.mark.parametrize("name", sorted(TRACES))
def test_replay_on_the_recording_chip_reproduces_the_step_time(imported, name: str) -> None:
    workload, report = imported[name]
    sustained = TRACES[name][1]
    chip = chipsim.load_chip(workload.meta["recorded_on"])
    result = chipsim.simulate(workload, chip, chipsim.SimOptions(sustained=sustained))
    measured = report.trace_step_us * 1e-6
    assert measured > 0
    assert result.latency_s == pytest.approx(measured, rel=0.10)


# ---------------------------------------------------------------- 11. replay on other chips


def test_training_trace_is_faster_on_mi300x_than_on_h100(imported) -> None:
    workload, _ = imported["train"]
    options = chipsim.SimOptions(sustained=True)
    h100 = chipsim.simulate(workload, chipsim.load_chip("h100_sxm"), options)
    mi300x = chipsim.simulate(workload, chipsim.load_chip("mi300x"), options)
    assert mi300x.latency_s < h100.latency_s


def test_cli_replays_a_trace_on_two_chips(cli) -> None:
    rc, stdout, stderr = cli(["run", "--workload", TRAIN, "--chip", "h200_sxm", "--chip", "mi300x", "--json",
                              "--no-files"])
    assert rc == 0, stderr
    runs = json.loads(stdout)["runs"]
    assert [r["chip"] for r in runs] == ["h200_sxm", "mi300x"]
    for run in runs:
        assert any(note.startswith("opaque ops: ") for note in run["notes"])
        assert run["latency_s"] > 0
    assert runs[1]["latency_s"] < runs[0]["latency_s"]


def test_workload_spec_imports_a_trace_on_the_fly(imported) -> None:
    workload = chipsim.workload_from_spec(WorkloadSpec(trace=DECODE_BF16))
    assert workload.to_dict() == imported["decode_bf16"][0].to_dict()


def test_workload_spec_reads_an_imported_workload(tmp_path: Path, imported) -> None:
    out = tmp_path / "w.json"
    chipsim.save_workload(imported["decode_int4"][0], out)
    workload = chipsim.workload_from_spec(WorkloadSpec(trace=out))
    assert workload.to_dict() == imported["decode_int4"][0].to_dict()


# ---------------------------------------------------------------- 12. determinism


def test_importing_twice_gives_the_same_workload(imported) -> None:
    again, report = import_trace(TRAIN)
    assert again.to_dict() == imported["train"][0].to_dict()
    assert report == imported["train"][1].lines()
