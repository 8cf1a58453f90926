"""Importing PyTorch profiler (Kineto) and Chakra traces: small hand-made traces with known answers.

The Kineto traces below follow the structure `torch.profiler`'s `export_chrome_trace` writes (see
tests/data/*.json.gz): a `cpu_op` event per ATen op (args `External id`, `Input Dims`, `Input type`,
`Concrete Inputs`), a `cuda_runtime` launch call per GPU activity (args `correlation`, `External id`)
and the activity itself (`kernel` / `gpu_memset`, args `stream`, `correlation`, `External id`).
All times are in microseconds, as in the traces.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import chipsim
from chipsim.cost import cost_of
from chipsim.errors import InputError
from chipsim.workload.graph import Workload, WorkloadBuilder
from chipsim.workload.importers import import_trace
from chipsim.workload.importers.kineto import ImportReport, import_kineto

MAIN = 7  # the default CUDA stream id in the reference traces
SIDE = 20


# ---------------------------------------------------------------- building Kineto traces


@dataclass
class K:
    """One GPU activity: when its launch call ran on the host, when it ran on the device."""

    launch: float
    start: float
    dur: float
    stream: int = MAIN
    cat: str = "kernel"
    name: str = "void at::native::vectorized_elementwise_kernel<4>(int)"
    nbytes: int | None = None


class Trace:
    def __init__(self, device: str | None = "NVIDIA H200") -> None:
        self.events: list[dict[str, Any]] = []
        self.device = device
        self._ext = 100
        self._corr = 5000

    def op(self, name: str, kernels: list[K], dims: list | None = None, types: list | None = None,
           concrete: list | None = None) -> int:
        """An ATen op that launched `kernels`; returns its External id."""
        self._ext += 1
        ext = self._ext
        args: dict[str, Any] = {"External id": ext, "Record function id": 0}
        if dims is not None:
            args["Input Dims"] = dims
        if types is not None:
            args["Input type"] = types
        if concrete is not None:
            args["Concrete Inputs"] = concrete
        first, last = kernels[0].launch, kernels[-1].launch
        self.events.append({"ph": "X", "cat": "cpu_op", "name": name, "pid": 1, "tid": 1, "ts": first - 1.0,
                            "dur": last - first + 6.0, "args": args})
        for k in kernels:
            self._corr += 1
            launch_name = "cudaMemsetAsync" if k.cat == "gpu_memset" else "cudaLaunchKernel"
            self.events.append({"ph": "X", "cat": "cuda_runtime", "name": launch_name, "pid": 1, "tid": 1,
                                "ts": k.launch, "dur": 3.0, "args": {"External id": ext, "correlation": self._corr}})
            kargs: dict[str, Any] = {"External id": ext, "device": 0, "stream": k.stream, "correlation": self._corr}
            if k.nbytes is not None:
                kargs["bytes"] = k.nbytes
            name = "Memset (Device)" if k.cat == "gpu_memset" else k.name
            self.events.append({"ph": "X", "cat": k.cat, "name": name, "pid": 0, "tid": k.stream, "ts": k.start,
                                "dur": k.dur, "args": kargs})
        return ext

    def sync(self, ts: float, dur: float, name: str = "cudaDeviceSynchronize") -> None:
        self.events.append({"ph": "X", "cat": "cuda_runtime", "name": name, "pid": 1, "tid": 1, "ts": ts, "dur": dur,
                            "args": {"cbid": 165}})

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 1, "traceEvents": self.events}
        if self.device:
            out["deviceProperties"] = [{"id": 0, "name": self.device}]
        return out

    def write(self, path: Path) -> Path:
        path.write_bytes(gzip.compress(json.dumps(self.data()).encode()))
        return path

    def load(self, tmp_path: Path, name: str = "trace.json.gz") -> tuple[Workload, ImportReport]:
        return import_kineto(self.write(tmp_path / name))


def one_op(tmp_path: Path, name: str, dims: list | None, types: list | None = None,
           concrete: list | None = None, kernels: list[K] | None = None) -> tuple[Workload, ImportReport]:
    t = Trace()
    t.op(name, kernels or [K(0.0, 5.0, 20.0)], dims, types, concrete)
    return t.load(tmp_path)


BF16 = "c10::BFloat16"


# ---------------------------------------------------------------- 1. kernel -> op mapping


def test_mm_becomes_one_gemm_with_its_shape_and_dtype(tmp_path: Path) -> None:
    wl, report = one_op(tmp_path, "aten::mm", [[4096, 1024], [1024, 2048]], [BF16, BF16], ["", ""])
    assert len(wl.ops) == 1
    op = wl.ops[0]
    assert (op.kind, op.dtype, op.name) == ("gemm", "bf16", "aten::mm")
    assert dict(op.shape) == {"m": 4096, "n": 2048, "k": 1024, "batch": 1}
    assert op.flops == 2 * 4096 * 2048 * 1024
    assert report.mapped_kernels == report.kernels == 1 and report.opaque_ops == 0


def test_bmm_keeps_the_batch(tmp_path: Path) -> None:
    wl, _ = one_op(tmp_path, "aten::bmm", [[32, 128, 64], [32, 64, 256]], [BF16, BF16])
    assert dict(wl.ops[0].shape) == {"m": 128, "n": 256, "k": 64, "batch": 32}


def test_addmm_reads_dims_and_dtype_of_inputs_1_and_2(tmp_path: Path) -> None:
    # input 0 is the bias: its dims and dtype must not be taken for the GEMM's
    wl, _ = one_op(tmp_path, "aten::addmm", [[2048], [512, 768], [768, 2048], [], []],
                   ["float", "c10::Half", "c10::Half", "Scalar", "Scalar"])
    op = wl.ops[0]
    assert op.kind == "gemm" and op.dtype == "fp16"
    assert (op.shape["m"], op.shape["n"], op.shape["k"]) == (512, 2048, 768)


def test_scaled_mm_is_fp8(tmp_path: Path) -> None:
    wl, _ = one_op(tmp_path, "aten::_scaled_mm", [[4096, 1024], [1024, 2048], [], []],
                   ["c10::Float8_e4m3fn", "c10::Float8_e4m3fn", "float", "float"])
    op = wl.ops[0]
    assert (op.kind, op.dtype) == ("gemm", "fp8")
    assert (op.shape["m"], op.shape["n"], op.shape["k"]) == (4096, 2048, 1024)


# concrete inputs as aten::_cudnn_attention_forward records them: (q, k, v, attn_bias, cum_seq_q,
# cum_seq_k, max_q, max_k, compute_log_sumexp, dropout_p, is_causal, return_debug_mask, scale)
CUDNN_DIMS = [[2, 16, 1024, 64], [2, 4, 1024, 64], [2, 4, 1024, 64], [], [], [], [], [], [], [], [], [], []]
CUDNN_TYPES = [BF16, BF16, BF16, "", "", "", "Scalar", "Scalar", "Scalar", "Scalar", "Scalar", "Scalar", ""]


def test_cudnn_attention_forward_is_gqa_causal_attention(tmp_path: Path) -> None:
    concrete = ["", "", "", "", "", "", "1024", "1024", "False", "0.", "True", "False", ""]
    wl, _ = one_op(tmp_path, "aten::_cudnn_attention_forward", CUDNN_DIMS, CUDNN_TYPES, concrete)
    op = wl.ops[0]
    assert (op.kind, op.dtype) == ("attention", "bf16")
    assert dict(op.shape) == {"batch": 2, "heads": 16, "kv_heads": 4, "seq_q": 1024, "seq_kv": 1024,
                              "head_dim": 64, "causal": True, "pass": "fwd", "v_head_dim": 0}
    assert op.attrs["backend"] == "cudnn"


def test_cudnn_attention_without_true_is_not_causal(tmp_path: Path) -> None:
    concrete = ["", "", "", "", "", "", "1024", "1024", "False", "0.", "False", "False", ""]
    wl, _ = one_op(tmp_path, "aten::_cudnn_attention_forward", CUDNN_DIMS, CUDNN_TYPES, concrete)
    assert wl.ops[0].shape["causal"] is False


def test_cudnn_training_forward_non_causal_is_not_causal(tmp_path: Path) -> None:
    concrete = ["", "", "", "", "", "", "1024", "1024", "True", "0.", "False", "False", ""]
    wl, _ = one_op(tmp_path, "aten::_cudnn_attention_forward", CUDNN_DIMS, CUDNN_TYPES, concrete)
    assert wl.ops[0].shape["causal"] is False


def test_fused_rms_norm_backward_is_a_backward_norm(tmp_path: Path) -> None:
    wl, _ = one_op(tmp_path, "aten::_fused_rms_norm_backward",
                   [[8, 2048, 1024], [8, 2048, 1024], [], [8, 2048, 1], [1024], []],
                   [BF16, BF16, "ScalarList", "float", BF16, "ScalarList"])
    op = wl.ops[0]
    assert (op.kind, op.dtype) == ("norm", "bf16")
    assert dict(op.shape) == {"rows": 8 * 2048, "cols": 1024}
    assert (op.attrs["type"], op.attrs["pass"]) == ("rms_norm", "bwd")


def test_copy_between_dtypes_is_a_cast_from_the_source_dtype(tmp_path: Path) -> None:
    # aten::copy_(self: bf16 destination, src: fp32)
    wl, _ = one_op(tmp_path, "aten::copy_", [[4096, 1024], [4096, 1024], []], [BF16, "float", "Scalar"],
                   ["", "", "False"])
    op = wl.ops[0]
    assert (op.kind, op.dtype) == ("elementwise", "fp32")
    assert op.shape["numel"] == 4096 * 1024
    assert (op.attrs["op"], op.attrs["out_dtype"]) == ("cast", "bf16")


def test_copy_within_one_dtype_is_a_copy(tmp_path: Path) -> None:
    wl, _ = one_op(tmp_path, "aten::copy_", [[64, 64], [64, 64], []], [BF16, BF16, "Scalar"])
    assert wl.ops[0].attrs["op"] == "copy" and "out_dtype" not in wl.ops[0].attrs


def test_unknown_op_is_opaque_with_its_measured_duration(tmp_path: Path) -> None:
    wl, report = one_op(tmp_path, "aten::my_custom", [[1024]], [BF16],
                        kernels=[K(0.0, 4.0, 12.5, name="void my_custom_kernel<float>(float*)")])
    op = wl.ops[0]
    assert op.kind == "opaque" and op.name == "aten::my_custom"
    assert op.shape["duration_s"] == pytest.approx(12.5e-6, rel=1e-12)
    assert op.attrs["scale"] == "memory"  # not a tensor-core kernel name
    assert op.attrs["recorded_on"] == "h200_sxm"  # from deviceProperties
    assert report.unmapped == {"aten::my_custom": 1}
    assert (report.opaque_ops, report.mapped_kernels, report.kernels) == (1, 0, 1)
    assert any("aten::my_custom (1)" in line for line in report.lines())


def test_unmapped_tensor_core_kernel_scales_with_compute(tmp_path: Path) -> None:
    wl, _ = one_op(tmp_path, "aten::my_custom", [[1024]], [BF16],
                   kernels=[K(0.0, 4.0, 30.0, name="sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64")])
    assert wl.ops[0].attrs["scale"] == "compute"


def test_unknown_device_leaves_recorded_on_empty(tmp_path: Path) -> None:
    t = Trace(device=None)
    t.op("aten::my_custom", [K(0.0, 4.0, 12.5)], [[1024]], [BF16])
    wl, report = t.load(tmp_path)
    assert wl.ops[0].attrs["recorded_on"] == "" and report.device == ""


def test_mapper_failure_on_bad_dims_falls_back_to_opaque(tmp_path: Path) -> None:
    # no shapes recorded (profiled without record_shapes): nothing is dropped
    wl, report = one_op(tmp_path, "aten::mm", None, None)
    assert wl.ops[0].kind == "opaque"
    assert report.unmapped == {"aten::mm": 1}


def test_memset_launched_by_mm_is_not_a_second_gemm(tmp_path: Path) -> None:
    t = Trace()
    t.op("aten::mm", [K(0.0, 5.0, 1.0, cat="gpu_memset", nbytes=4096),
                      K(10.0, 15.0, 40.0, name="nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT")],
         [[4096, 1024], [1024, 2048]], [BF16, BF16])
    wl, report = t.load(tmp_path)
    kinds = [op.kind for op in wl.ops]
    assert kinds.count("gemm") == 1
    assert kinds == ["elementwise", "gemm"]
    memset = wl.ops[0]
    assert memset.attrs["op"] == "write" and memset.shape["numel"] == 4096
    assert report.kernels == 2 and report.mapped_kernels == 2


# ---------------------------------------------------------------- 2. kernels of one CPU op


def test_kernels_of_one_cpu_op_become_one_op(tmp_path: Path) -> None:
    t = Trace()
    t.op("aten::add", [K(0.0, 10.0, 3.0), K(5.0, 14.0, 4.5), K(9.0, 19.0, 2.25)], [[1024, 1024], [1024, 1024]],
         [BF16, BF16])
    t.op("aten::mul", [K(20.0, 25.0, 1.0)], [[1024, 1024], [1024, 1024]], [BF16, BF16])
    wl, report = t.load(tmp_path)
    assert [op.name for op in wl.ops] == ["aten::add", "aten::mul"]
    first = wl.ops[0]
    assert first.attrs["kernels"] == 3
    assert first.attrs["measured_s"] == pytest.approx((3.0 + 4.5 + 2.25) * 1e-6, rel=1e-12)
    assert wl.ops[1].attrs["kernels"] == 1
    assert report.kernels == 4
    assert report.kernel_time_us == pytest.approx(3.0 + 4.5 + 2.25 + 1.0)


def test_kernels_of_one_opaque_op_sum_their_durations(tmp_path: Path) -> None:
    t = Trace()
    t.op("aten::my_custom", [K(0.0, 10.0, 3.0), K(5.0, 14.0, 7.0)])
    wl, report = t.load(tmp_path)
    assert len(wl.ops) == 1
    assert wl.ops[0].shape["duration_s"] == pytest.approx(10e-6, rel=1e-12)
    assert report.unmapped == {"aten::my_custom": 2}


# ---------------------------------------------------------------- 3. dependencies and order


def two_stream_trace() -> Trace:
    """A (main stream) runs 10..110. B (side stream) was launched at 20 but started at 110, right when A
    ended: it waited for A. C (side stream) was launched at 150 and started at 155: independent.
    D (main) was launched at 30 (before C) but ran at 200."""
    t = Trace()
    t.op("aten::my_a", [K(0.0, 10.0, 100.0, MAIN)])
    t.op("aten::my_b", [K(20.0, 110.0, 5.0, SIDE)])
    t.op("aten::my_d", [K(30.0, 200.0, 50.0, MAIN)])
    t.op("aten::my_c", [K(150.0, 155.0, 5.0, SIDE)])
    # the file lists events in another order than launch order: the importer must sort
    t.events.reverse()
    return t


def test_a_kernel_that_waited_for_another_stream_depends_on_it(tmp_path: Path) -> None:
    wl, _ = two_stream_trace().load(tmp_path)
    by_name = {op.name: op for op in wl.ops}
    assert by_name["aten::my_b"].deps == (by_name["aten::my_a"].id,)
    assert by_name["aten::my_c"].deps == ()
    assert by_name["aten::my_a"].deps == () and by_name["aten::my_d"].deps == ()


def test_ops_are_in_launch_order_and_streams_follow_the_trace(tmp_path: Path) -> None:
    wl, _ = two_stream_trace().load(tmp_path)
    assert [op.name for op in wl.ops] == ["aten::my_a", "aten::my_b", "aten::my_d", "aten::my_c"]
    # the stream with the most kernel time is 'compute', the others 'copy'
    assert [op.stream for op in wl.ops] == ["compute", "copy", "compute", "copy"]


def test_recovered_dependency_holds_in_replay(tmp_path: Path) -> None:
    wl, _ = two_stream_trace().load(tmp_path)
    result = chipsim.simulate(wl, chipsim.load_chip("h200_sxm"))
    a, b = result.records[0], result.records[1]
    assert b.start_s >= a.end_s
    assert a.duration_s == pytest.approx(100e-6, rel=1e-9)


def test_wait_on_a_multi_kernel_op_with_gaps_is_a_dependency(tmp_path: Path) -> None:
    t = Trace()
    # A: two kernels 10..20 and 30..40 (a 10 us gap); B on the side stream starts at 40, when A ends
    t.op("aten::my_a", [K(0.0, 10.0, 10.0, MAIN), K(2.0, 30.0, 10.0, MAIN)])
    t.op("aten::my_b", [K(5.0, 40.0, 1.0, SIDE)])
    wl, _ = t.load(tmp_path)
    assert wl.ops[1].deps == (0,)


# ---------------------------------------------------------------- 4. host time and synchronization


def sync_trace(with_sync: bool = True) -> Trace:
    """op0 (1000 us) and op1 on the main stream; the host synchronizes 40..1020; op2 on a side stream is
    launched at 1030."""
    t = Trace()
    t.op("aten::my_long", [K(0.0, 5.0, 1000.0, MAIN)])
    t.op("aten::my_short", [K(30.0, 1005.0, 10.0, MAIN)])
    if with_sync:
        t.sync(40.0, 980.0)
    t.op("aten::my_after", [K(1030.0, 1035.0, 10.0, SIDE)])
    return t


def test_host_gaps_are_kept_per_op(tmp_path: Path) -> None:
    wl, _ = sync_trace(with_sync=False).load(tmp_path)
    assert [op.attrs["host_s"] for op in wl.ops] == pytest.approx([0.0, 30e-6, 1000e-6], rel=1e-9)
    assert not any(op.attrs.get("host_sync") for op in wl.ops)


def test_device_synchronize_marks_the_next_op_and_leaves_the_host_time(tmp_path: Path) -> None:
    wl, _ = sync_trace().load(tmp_path)
    assert [bool(op.attrs.get("host_sync")) for op in wl.ops] == [False, False, True]
    # 1000 us between the launches, of which 980 us were the synchronization
    assert wl.ops[2].attrs["host_s"] == pytest.approx(20e-6, rel=1e-9)
    assert wl.ops[1].attrs["host_s"] == pytest.approx(30e-6, rel=1e-9)


@pytest.mark.parametrize("call", ["cudaStreamSynchronize", "cudaEventSynchronize"])
def test_other_host_blocking_calls_are_synchronizations(tmp_path: Path, call: str) -> None:
    t = Trace()
    t.op("aten::my_a", [K(0.0, 5.0, 100.0)])
    t.sync(10.0, 95.0, call)
    t.op("aten::my_b", [K(110.0, 112.0, 5.0)])
    wl, _ = t.load(tmp_path)
    assert wl.ops[1].attrs.get("host_sync") is True
    assert wl.ops[1].attrs["host_s"] == pytest.approx(15e-6, rel=1e-9)


def test_sync_before_the_first_launch_is_ignored(tmp_path: Path) -> None:
    t = Trace()
    t.sync(-50.0, 20.0)
    t.op("aten::my_a", [K(0.0, 5.0, 100.0)])
    t.op("aten::my_b", [K(10.0, 105.0, 5.0)])
    wl, _ = t.load(tmp_path)
    assert not any(op.attrs.get("host_sync") for op in wl.ops)


def test_replay_issues_the_op_after_a_sync_once_the_device_is_idle(tmp_path: Path) -> None:
    wl, _ = sync_trace().load(tmp_path)
    result = chipsim.simulate(wl, chipsim.load_chip("h200_sxm"))
    r0, r1, r2 = result.records
    done = max(r0.end_s, r1.end_s)
    assert r0.duration_s == pytest.approx(1000e-6, rel=1e-9)  # opaque on its own chip: as measured
    assert r2.issue_s >= done
    assert r2.start_s >= done
    # then the host's own 20 us before the launch
    assert r2.start_s == pytest.approx(done + 20e-6, rel=1e-9)


def test_without_the_sync_flag_the_side_stream_op_would_start_early(tmp_path: Path) -> None:
    """Contrast for the test above: the same workload with host_sync cleared starts op2 ~50 us in."""
    wl, _ = sync_trace().load(tmp_path)
    b = WorkloadBuilder("nosync")
    for op in wl.ops:
        attrs = {k: v for k, v in op.attrs.items() if k != "host_sync"}
        b.add(op.kind, op.name, op.dtype, op.deps, stream=op.stream, attrs=attrs, shape=dict(op.shape))
    result = chipsim.simulate(b.build(), chipsim.load_chip("h200_sxm"))
    assert result.records[2].start_s == pytest.approx(50e-6, rel=1e-9)


def test_stream_wait_event_is_not_a_host_synchronization(tmp_path: Path) -> None:
    t = Trace()
    t.op("aten::my_a", [K(0.0, 5.0, 100.0)])
    t.sync(10.0, 2.0, "cudaStreamWaitEvent")
    t.op("aten::my_b", [K(20.0, 105.0, 5.0)])
    wl, _ = t.load(tmp_path)
    assert not wl.ops[1].attrs.get("host_sync")


# ---------------------------------------------------------------- 5. the report


def test_report_counts_shares_and_step_time(tmp_path: Path) -> None:
    t = Trace()
    t.op("aten::mm", [K(100.0, 110.0, 40.0)], [[256, 256], [256, 256]], [BF16, BF16])
    t.op("aten::add", [K(120.0, 150.0, 10.0)], [[256, 256], [256, 256]], [BF16, BF16])
    # launched third but on a side stream and long: it ends last
    t.op("aten::my_custom", [K(130.0, 135.0, 400.0, SIDE)])
    t.op("aten::mul", [K(140.0, 160.0, 10.0)], [[256, 256], [256, 256]], [BF16, BF16])
    wl, report = t.load(tmp_path)
    assert report.kernels == 4
    assert report.mapped_kernels == 3
    assert report.opaque_ops == 1
    assert report.device == "NVIDIA H200"
    assert report.kernel_time_us == pytest.approx(460.0)
    assert report.mapped_time_us == pytest.approx(60.0)
    assert report.trace_step_us == pytest.approx(135.0 + 400.0 - 100.0)
    assert wl.meta["trace_step_s"] == pytest.approx(435e-6)
    assert wl.meta["recorded_on"] == "h200_sxm"
    assert wl.meta["mapped_time_share"] == pytest.approx(60.0 / 460.0)
    lines = report.lines()
    mapped = [line for line in lines if line.startswith("mapped")]
    assert mapped == ["mapped: 3 (75.0%); time covered by mapped ops: 13.0%"]
    assert lines[0] == "kernels: 4 (NVIDIA H200)"
    assert any("0.435 ms" in line for line in lines)


def test_import_trace_returns_the_report_lines(tmp_path: Path) -> None:
    t = Trace()
    t.op("aten::mm", [K(0.0, 5.0, 10.0)], [[256, 256], [256, 256]], [BF16, BF16])
    wl, lines = import_trace(t.write(tmp_path / "t.json.gz"))
    assert len(wl.ops) == 1
    assert any(line.startswith("mapped: 1 (100.0%)") for line in lines)


def test_plain_json_trace_is_read_too(tmp_path: Path) -> None:
    t = Trace()
    t.op("aten::mm", [K(0.0, 5.0, 10.0)], [[256, 256], [256, 256]], [BF16, BF16])
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(t.data()))
    wl, report = import_kineto(path)
    assert wl.ops[0].kind == "gemm" and report.kernels == 1
    assert wl.name == "plain"


def steps_trace() -> Trace:
    """Two profiler steps: op a launched in step 0, op b in step 1."""
    t = Trace()
    t.op("aten::my_a", [K(0.0, 5.0, 100.0)])
    t.op("aten::my_b", [K(200.0, 205.0, 10.0)])
    t.events.append({"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#0", "ts": -5.0, "dur": 150.0,
                     "args": {}})
    t.events.append({"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "ts": 150.0, "dur": 100.0,
                     "args": {}})
    return t


def test_steps_keeps_the_first_profiler_steps(tmp_path: Path) -> None:
    wl, report = import_kineto(steps_trace().write(tmp_path / "s.json.gz"), steps=1)
    assert [op.name for op in wl.ops] == ["aten::my_a"]
    assert report.steps_found == 2
    assert report.trace_step_us == pytest.approx(105.0)
    wl, report = import_kineto(tmp_path / "s.json.gz")
    assert len(wl.ops) == 2 and report.trace_step_us == pytest.approx(215.0)


def test_steps_without_gpu_activity_says_so(tmp_path: Path) -> None:
    t = Trace()
    t.op("aten::my_a", [K(0.0, 5.0, 100.0)])
    t.events.append({"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#0", "ts": 500.0, "dur": 150.0,
                     "args": {}})
    with pytest.raises(InputError, match="no GPU activity"):
        import_kineto(t.write(tmp_path / "s.json.gz"), steps=1)


# ---------------------------------------------------------------- 6. errors


def _valid_trace_bytes() -> bytes:
    t = Trace()
    t.op("aten::mm", [K(0.0, 5.0, 10.0)], [[256, 256], [256, 256]], [BF16, BF16])
    return json.dumps(t.data()).encode()


def _no_gpu_activity() -> bytes:
    return json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 5.0,
                                        "args": {"External id": 1}}]}).encode()


def _malformed_kernel() -> bytes:
    data = json.loads(_valid_trace_bytes())
    for e in data["traceEvents"]:
        if e.get("cat") == "kernel":
            del e["ts"]
    return json.dumps(data).encode()


BAD_TRACES: dict[str, tuple[str, bytes | None, str]] = {
    # name: (file name, content (None: no file), fragment of the message)
    "truncated_gzip": ("t.json.gz", gzip.compress(_valid_trace_bytes())[:-12], "cannot decompress"),
    "invalid_json": ("t.json", b'{"traceEvents": [{"ph": "X", ', "invalid JSON"),
    "invalid_json_in_gzip": ("t.json.gz", gzip.compress(b'{"traceEvents": [1, 2'), "invalid JSON"),
    "json_list": ("t.json", b"[1, 2, 3]", "not a trace chipsim reads"),
    "object_without_events": ("t.json", b'{"schemaVersion": 1, "foo": []}', "not a trace chipsim reads"),
    "empty_chakra_nodes": ("t.json", b'{"nodes": []}', "not a trace chipsim reads"),
    "events_not_a_list": ("t.json", b'{"traceEvents": {"a": 1}}', "no 'traceEvents' list"),
    "no_gpu_activity": ("t.json", _no_gpu_activity(), "no GPU activity"),
    "malformed_kernel_event": ("t.json", _malformed_kernel(), "malformed trace event"),
    "not_utf8": ("t.json", b"\xff\xfe\x00garbage", "cannot decompress or decode"),
    "missing_file": ("missing.json.gz", None, "not found"),
}


def _bad(tmp_path: Path, case: str) -> tuple[Path, str]:
    name, content, fragment = BAD_TRACES[case]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    return path, fragment


@pytest.mark.parametrize("case", sorted(BAD_TRACES))
def test_bad_trace_is_an_input_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path, fragment = _bad(tmp_path, case)
    with pytest.raises(InputError) as info:
        import_trace(path)
    assert info.value.file == str(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize("case", sorted(BAD_TRACES))
def test_bad_trace_through_the_cli_exits_2_and_writes_nothing(tmp_path: Path, cli, case: str) -> None:
    path, fragment = _bad(tmp_path, case)
    out = tmp_path / "out" / "workload.json"
    rc, stdout, stderr = cli(["trace", "import", path, "-o", out])
    assert rc == 2
    assert stdout == ""
    assert stderr.startswith("chipsim: error: ") and stderr.count("\n") == 1
    assert str(path) in stderr and fragment in stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not out.parent.exists()


def test_cli_rejects_a_non_positive_steps(tmp_path: Path, cli) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(_valid_trace_bytes())
    out = tmp_path / "o.json"
    rc, _, stderr = cli(["trace", "import", path, "-o", out, "--steps", "0"])
    assert rc == 2 and "--steps" in stderr and not out.exists()


def test_cli_import_writes_a_loadable_workload(tmp_path: Path, cli) -> None:
    path = tmp_path / "t.json.gz"
    path.write_bytes(gzip.compress(_valid_trace_bytes()))
    out = tmp_path / "w.json"
    rc, stdout, _ = cli(["trace", "import", path, "-o", out])
    assert rc == 0
    assert "wrote 1 ops to" in stdout and "mapped: 1 (100.0%)" in stdout
    assert chipsim.load_workload(out).ops[0].kind == "gemm"


# ---------------------------------------------------------------- 7. Chakra JSON


def _attr(name: str, value: str) -> dict[str, str]:
    return {"name": name, "int64Val": value}


def chakra_nodes() -> list[dict[str, Any]]:
    """Dependency order 30 -> 20 (metadata) -> 10 -> 5, ids deliberately descending, listed out of order,
    keys in both camelCase and snake_case, ids and int64s as strings as json_format writes them."""
    return [
        {"id": "5", "name": "tail_kernel", "type": 4, "durationMicros": "250",
         "dataDeps": ["10"], "ctrlDeps": ["30"]},
        {"id": 20, "name": "marker", "type": "METADATA_NODE", "ctrl_deps": [30]},
        {"id": 30, "name": "gemm0", "type": "COMP_NODE", "duration_micros": 99,
         "attr": [_attr("num_ops", "2000000000"), _attr("tensor_size", "4000000")]},
        {"id": "10", "name": "allreduce0", "type": 7, "data_deps": ["20"],
         "attr": [_attr("comm_type", "0"), _attr("comm_size", "1048576"), {"name": "comm_group_size", "int32Val": 4}]},
    ]


def write_chakra(tmp_path: Path, nodes: Any, name: str = "et.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(nodes))
    return path


def test_chakra_nodes_import_in_dependency_order(tmp_path: Path) -> None:
    wl, lines = import_trace(write_chakra(tmp_path, {"schema": "1.0.2-chakra.0.0.4", "nodes": chakra_nodes()}))
    assert [(op.name, op.kind) for op in wl.ops] == [("gemm0", "roofline"), ("allreduce0", "all_reduce"),
                                                     ("tail_kernel", "opaque")]
    gemm, ar, tail = wl.ops
    assert dict(gemm.shape) == {"flops": 2e9, "bytes": 4e6}
    assert gemm.flops == 2e9 and gemm.bytes == 4e6
    assert ar.stream == "comm" and dict(ar.shape) == {"bytes": 1048576.0, "group": 4}
    assert tail.shape["duration_s"] == pytest.approx(250e-6, rel=1e-12) and tail.attrs["scale"] == "none"
    # the metadata node is skipped; its dependency on gemm0 passes through to allreduce0
    assert ar.deps == (0,)
    assert tail.deps == (0, 1)
    assert wl.meta["source"] == "chakra" and wl.meta["nodes"] == 4 and wl.meta["opaque"] == 1
    assert lines[0] == "chakra nodes: 4 -> 3 ops (1 opaque)"
    assert "  COMM_COLL_NODE ALL_REDUCE: 1 -> all_reduce" in lines  # every node kind is named


def test_chakra_collective_without_group_size_needs_a_world(tmp_path: Path) -> None:
    """Regression: a collective with no group size silently became a group of 8."""
    nodes = [{"id": 1, "name": "ar", "type": "COMM_COLL_NODE", "attr": [_attr("comm_type", "ALL_GATHER"),
                                                                         _attr("comm_size", "4096")]}]
    with pytest.raises(InputError, match="--world"):
        import_trace(write_chakra(tmp_path, {"nodes": nodes}))
    wl, _ = import_trace(write_chakra(tmp_path, {"nodes": nodes}), world=16)
    assert wl.ops[0].kind == "all_gather" and wl.ops[0].shape["group"] == 16


def test_chakra_roofline_op_costs_its_flops_at_peak_times_efficiency(tmp_path: Path) -> None:
    wl, _ = import_trace(write_chakra(tmp_path, {"nodes": chakra_nodes()}))
    chip = chipsim.load_chip("h200_sxm")
    cost = cost_of(wl.ops[0], chip)
    eff = chip.calibration.gemm_efficiency.get("bf16", 1.0)
    assert cost.compute_s == pytest.approx(2e9 / (chip.peak("bf16") * eff), rel=1e-12)
    assert cost.mem_bytes == pytest.approx(4e6)


def test_chakra_replay_keeps_dependencies_and_measured_duration(tmp_path: Path) -> None:
    wl, _ = import_trace(write_chakra(tmp_path, {"nodes": chakra_nodes()}))
    result = chipsim.simulate(wl, chipsim.load_chip("mi300x"))
    gemm, ar, tail = result.records
    assert ar.start_s >= gemm.end_s
    assert tail.start_s >= max(gemm.end_s, ar.end_s)
    assert tail.duration_s == pytest.approx(250e-6, rel=1e-9)  # scale 'none': as measured on any chip


def test_chakra_bare_list_of_nodes_imports(tmp_path: Path) -> None:
    wl, _ = import_trace(write_chakra(tmp_path, chakra_nodes()))
    assert len(wl.ops) == 3


def test_chakra_dependency_cycle_is_an_input_error(tmp_path: Path) -> None:
    nodes = [{"id": 1, "name": "a", "type": 4, "durationMicros": 1, "dataDeps": [2]},
             {"id": 2, "name": "b", "type": 4, "durationMicros": 1, "ctrl_deps": [1]}]
    path = write_chakra(tmp_path, {"nodes": nodes})
    with pytest.raises(InputError, match="cycle") as info:
        import_trace(path)
    assert info.value.file == str(path)


def test_chakra_dependency_on_an_unknown_node_is_an_input_error(tmp_path: Path) -> None:
    nodes = [{"id": 1, "name": "a", "type": 4, "durationMicros": 1, "dataDeps": [42]}]
    path = write_chakra(tmp_path, {"nodes": nodes})
    with pytest.raises(InputError, match="node 1 depends on unknown node 42") as info:
        import_trace(path)
    assert info.value.file == str(path) and str(path) in str(info.value)


def test_chakra_trace_of_only_metadata_is_an_input_error(tmp_path: Path) -> None:
    path = write_chakra(tmp_path, {"nodes": [{"id": 1, "name": "m", "type": 1}]})
    with pytest.raises(InputError, match="no compute, communication or memory node"):
        import_trace(path)


def test_chakra_errors_through_the_cli(tmp_path: Path, cli) -> None:
    nodes = [{"id": 1, "name": "a", "type": 4, "durationMicros": 1, "dataDeps": [2]},
             {"id": 2, "name": "b", "type": 4, "durationMicros": 1, "dataDeps": [1]}]
    path = write_chakra(tmp_path, {"nodes": nodes})
    out = tmp_path / "w.json"
    rc, stdout, stderr = cli(["trace", "import", path, "-o", out])
    assert rc == 2 and stdout == "" and str(path) in stderr and "cycle" in stderr and not out.exists()


# ---------------------------------------------------------------- 8. opaque re-targeting


def opaque_workload(scale: str, recorded_on: str = "h200_sxm", duration: float = 1e-3) -> Workload:
    b = WorkloadBuilder("opaque")
    b.add("opaque", "k", "bf16", shape={"duration_s": duration},
          attrs={"scale": scale, "recorded_on": recorded_on, "host_s": 0.0})
    return b.build()


def replayed(scale: str, chip: str, recorded_on: str = "h200_sxm", **options: Any) -> float:
    result = chipsim.simulate(opaque_workload(scale, recorded_on), chipsim.load_chip(chip),
                              chipsim.SimOptions(**options))
    return result.records[0].duration_s


@pytest.mark.parametrize(("scale", "chip", "ratio"), [
    ("memory", "h100_sxm", 4.8 / 3.35),  # HBM bandwidth, recorded over target
    ("memory", "mi300x", 4.8 / 5.3),
    ("compute", "mi300x", 989.4 / 1307.4),  # bf16 dense peak, recorded over target
    ("compute", "h100_sxm", 1.0),  # same bf16 peak as the H200
    ("none", "h100_sxm", 1.0),
    ("none", "mi300x", 1.0),
    ("memory", "h200_sxm", 1.0),  # the recording chip: as measured
    ("compute", "h200_sxm", 1.0),
])
def test_opaque_op_is_retargeted_by_its_rule(scale: str, chip: str, ratio: float) -> None:
    assert replayed(scale, chip) == pytest.approx(1e-3 * ratio, rel=1e-9)


def test_opaque_op_without_recording_chip_is_as_measured() -> None:
    assert replayed("memory", "h100_sxm", recorded_on="") == pytest.approx(1e-3, rel=1e-9)


def test_opaque_cost_mode_states_the_ratio() -> None:
    op = opaque_workload("memory").ops[0]
    assert cost_of(op, chipsim.load_chip("h100_sxm")).mode == "opaque: measured duration x 1.43 (memory ratio)"
    assert cost_of(op, chipsim.load_chip("h200_sxm")).mode == "opaque: measured duration"


def test_opaque_op_is_as_measured_under_sustained_power() -> None:
    assert replayed("none", "h200_sxm", sustained=True) == pytest.approx(1e-3, rel=1e-9)
