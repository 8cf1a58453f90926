"""Training steps under torch.compile (chipsim.workload.generators.inductor): the eager graph with its
elementwise chains fused, torchao's float8 casts (tensorwise and rowwise), rowwise-scaled GEMMs, and
the rows of reference/h200/fp8_fused_calibration.csv that measure them."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import chipsim
from chipsim.cost import cost_of
from chipsim.errors import InputError
from chipsim.study.validate import case_for_row, predict, read_measurements, validate
from chipsim.workload.generators import build_workload
from chipsim.workload.graph import Workload, make_op

FUSED_CSV = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "h200" / "fp8_fused_calibration.csv"
SMALL = {"layers": 2, "batch": 2, "seq": 512}
MEMORY_KINDS = ("elementwise", "norm", "softmax", "quantize")
# the 7B-shaped model of the reference rows: two Llama-2-7B blocks
SEVEN_B = {"layers": 2, "d_model": 4096, "heads": 32, "kv_heads": 32, "ffn": 11008, "vocab": 32000, "batch": 2,
           "seq": 4096}


def step(**params: Any) -> Workload:
    return build_workload("transformer_train_step", {**SMALL, **params})


def memory_ops(wl: Workload) -> list[Any]:
    return [op for op in wl.ops if op.kind in MEMORY_KINDS]


def step_seconds(params: dict[str, Any], chip: chipsim.Chip) -> float:
    """One training step as validate replays it: back to back, at the power limit."""
    dims = {k: params[k] for k in ("layers", "d_model", "heads", "kv_heads", "ffn", "batch")}
    dtype = {(False, "bf16", "tensorwise"): "bf16_autocast", (True, "bf16", "tensorwise"): "bf16_autocast_compiled",
             (True, "fp8", "tensorwise"): "fp8_tensorwise_compiled",
             (True, "fp8", "rowwise"): "fp8_rowwise_compiled"}[
        (params.get("compiled", False), params.get("precision", "bf16"), params.get("fp8_scaling", "tensorwise"))]
    row = {"op": "train_step", "variant": "custom", "dtype": dtype, "launch": "eager", "seq_q": params["seq"],
           "note": f"vocab={params['vocab']}", "measured_us": 1.0, "device": "H200", **dims}
    seconds, _ = predict(case_for_row(row), chip, "eager")
    return seconds


@pytest.fixture(scope="module")
def h200() -> chipsim.Chip:
    return chipsim.load_chip("h200_sxm")


def test_compiled_step_fuses_the_elementwise_chains_and_keeps_the_library_kernels() -> None:
    eager, compiled = step(), step(compiled=True)
    # the same GEMMs and SDPA calls, FLOP for FLOP
    for kind in ("gemm", "attention"):
        assert sorted(op.flops for op in eager.ops if op.kind == kind) == \
            sorted(op.flops for op in compiled.ops if op.kind == kind)
    # far fewer memory-bound kernels, and less traffic through them
    assert len(memory_ops(compiled)) < 0.7 * len(memory_ops(eager))
    assert sum(op.bytes for op in memory_ops(compiled)) < 0.7 * sum(op.bytes for op in memory_ops(eager))
    # no cat, no separate SiLU / mul, no autocast cast of the norm output: fused kernels instead
    names = {op.name.split(".")[-1] for op in compiled.ops}
    assert {"swiglu", "swiglu_bwd", "qkv_cat"} <= names
    assert not {"silu", "mul", "gate_up_cat", "cast_x", "cast_dy", "residual1", "residual2"} & names
    assert all(op.attrs.get("op") == "fused" for op in compiled.ops if op.name.endswith(("swiglu", "attn_norm")))
    # the eager step is untouched by the new parameters' defaults
    assert not any(op.attrs.get("op") in ("fused", "cast_transpose") for op in eager.ops)


def test_a_fused_kernel_reads_its_inputs_once_and_writes_its_outputs_once() -> None:
    wl = step(compiled=True)
    t, d, ffn = 2 * 512, 1024, 2816
    ops = {op.name: op for op in wl.ops}
    # residual add + RMSNorm + cast: read the fp32 residual and the bf16 linear output, write the new
    # residual (fp32) and the normed input of the next linear (bf16): 12 bytes per element
    assert ops["layer1.attn_norm"].bytes == t * d * (4 + 2 + 4 + 2)
    assert ops["layer1.mlp_norm"].bytes == t * d * 12
    # SiLU(gate) * up: read gate and up, write the product (bf16)
    assert ops["layer1.swiglu"].bytes == t * ffn * 3 * 2
    # eager: silu, then mul, each a round trip through HBM
    eager = {op.name: op for op in step().ops}
    assert eager["layer1.silu"].bytes + eager["layer1.mul"].bytes > ops["layer1.swiglu"].bytes


def test_compiled_bf16_step_is_faster_than_eager(h200: chipsim.Chip) -> None:
    params = {**SEVEN_B, "layers": 1, "batch": 1, "seq": 2048, "d_model": 1024, "heads": 16, "kv_heads": 16,
              "ffn": 2816}
    assert step_seconds({**params, "compiled": True}, h200) < 0.95 * step_seconds(params, h200)


def test_fp8_compiled_runs_the_block_linears_in_fp8_with_torchao_casts() -> None:
    for scaling in ("tensorwise", "rowwise"):
        wl = step(precision="fp8", compiled=True, fp8_scaling=scaling)
        gemms = Counter(op.dtype for op in wl.ops if op.kind == "gemm")
        assert gemms["fp8"] == SMALL["layers"] * 4 * 3  # 4 linears, fwd + dgrad + wgrad
        assert gemms["bf16"] == 3  # the LM head stays bf16
        assert all(op.attrs.get("scaling", "tensorwise") == scaling for op in wl.ops if op.dtype == "fp8")
        # no unfused abs / clamp / quantize chain of the eager fp8 path
        assert not any(op.kind == "quantize" or op.attrs.get("op") in ("abs", "clamp") for op in wl.ops)
        assert any(op.attrs.get("op") == "cast_transpose" for op in wl.ops)


def test_tensorwise_casts_follow_torchaos_roofline() -> None:
    """An activation from a fused kernel: its amax is fused there; one kernel reads it (bf16) and writes
    FP8 twice (row- and column-major); the fp32 weight: amax, scale, cast, and its transpose in backward."""
    wl = step(precision="fp8", compiled=True)
    ops = {op.name: op for op in wl.ops}
    t, d = 2 * 512, 1024
    assert ops["layer0.qkv.x.to_fp8"].bytes == t * d * (2 + 1 + 1)
    assert ops["layer0.qkv.x.to_fp8"].attrs["op"] == "cast_transpose"
    assert "layer0.qkv.x.amax" not in ops  # fused into the norm
    assert "layer0.out.x.amax" in ops  # SDPA's output has no fused producer
    assert ops["layer0.qkv.w.to_fp8"].bytes == d * 3 * d * (4 + 1)
    assert ops["layer0.qkv.w_t.to_fp8_t"].bytes == d * 3 * d * (4 + 1)


def test_rowwise_casts_each_tensor_along_both_axes() -> None:
    tw = step(precision="fp8", compiled=True)
    rw = step(precision="fp8", compiled=True, fp8_scaling="rowwise")
    ops = {op.name: op for op in rw.ops}
    assert "layer0.qkv.x.colwise_cast" in ops and "layer0.qkv.dy.colwise_cast" in ops
    assert "layer0.qkv.w_t.transpose" in ops
    casts = lambda wl: sum(op.bytes for op in wl.ops if ".x." in op.name or ".dy." in op.name)  # noqa: E731
    assert casts(rw) > 1.3 * casts(tw)


def test_rowwise_gemm_is_slower_than_tensorwise_and_more_so_for_short_k(h200: chipsim.Chip) -> None:
    def ratio(k: int) -> float:
        tw = make_op(0, "g", "gemm", "fp8", {"m": 16384, "n": 4096, "k": k})
        rw = make_op(0, "g", "gemm", "fp8", {"m": 16384, "n": 4096, "k": k}, attrs={"scaling": "rowwise"})
        return cost_of(rw, h200).seconds / cost_of(tw, h200).seconds

    assert ratio(8192) > 1.0
    assert ratio(1024) > ratio(8192) + 0.1
    # a chip that calibrates no rowwise kernel prices it as tensorwise
    plain = replace(h200, calibration=replace(h200.calibration, gemm_rowwise_menu=None, gemm_rowwise_setup_k=0.0,
                                              gemm_rowwise_efficiency=1.0))
    op = make_op(0, "g", "gemm", "fp8", {"m": 4096, "n": 4096, "k": 4096})
    assert cost_of(replace(op, attrs={"scaling": "rowwise"}), plain).seconds == cost_of(op, plain).seconds


def test_fp8_compiled_beats_bf16_compiled_on_7b_blocks_and_rowwise_trails_tensorwise(h200: chipsim.Chip) -> None:
    bf16 = step_seconds({**SEVEN_B, "compiled": True}, h200)
    tensorwise = step_seconds({**SEVEN_B, "compiled": True, "precision": "fp8"}, h200)
    rowwise = step_seconds({**SEVEN_B, "compiled": True, "precision": "fp8", "fp8_scaling": "rowwise"}, h200)
    assert tensorwise < 0.9 * bf16
    assert tensorwise < rowwise < bf16


def test_rowwise_scaling_needs_compiled_fp8() -> None:
    with pytest.raises(InputError, match="rowwise"):
        step(precision="fp8", fp8_scaling="rowwise")
    with pytest.raises(InputError, match="rowwise"):
        step(precision="bf16", compiled=True, fp8_scaling="rowwise")


@pytest.mark.skipif(not FUSED_CSV.is_file(), reason="reference/h200/fp8_fused_calibration.csv is not here")
def test_every_row_of_the_fp8_fused_file_is_predicted_in_the_measured_order() -> None:
    pred, skipped = validate(read_measurements(FUSED_CSV))
    assert skipped.empty, skipped["skipped_reason"].tolist()
    assert np.median(pred["ape"]) <= 0.08
    assert pred["ape"].max() <= 0.15
    for _, rows in pred.groupby("variant"):
        assert list(rows.sort_values("measured_us")["dtype"]) == list(rows.sort_values("predicted_us")["dtype"])
