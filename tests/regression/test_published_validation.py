"""`chipsim validate` on the published microbenchmarks (../shared/reference/published/calibration.csv):
every documented device, variant and launch is predicted, or skipped by name with its reason; the
BabelStream, unfused-attention and block-scaled GEMM rows build the ops their kernels run; collectives
over several GPUs run on the chip's system fabric with the algorithm the variant names."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from chipsim.engine.sim import SimOptions, prepare
from chipsim.hardware.registry import load_chip
from chipsim.study.validate import (
    Case,
    case_for_row,
    family_summary,
    network_for,
    read_measurements,
    validate,
)
from chipsim.workload.kinds import COLLECTIVE_KINDS

REPO = Path(__file__).resolve().parent.parent.parent
PUBLISHED = next((p for p in (REPO / "shared" / "reference" / "published" / "calibration.csv",
                              REPO.parent / "shared" / "reference" / "published" / "calibration.csv") if p.is_file()),
                 None)
COLUMNS = ("op,variant,dtype,launch,m,n,k,batch,heads,kv_heads,seq_q,seq_kv,head_dim,causal,pass,bytes,world,"
           "measured_us,device,note")


def published() -> pd.DataFrame:
    if PUBLISHED is None:
        pytest.skip("../shared/reference/published/calibration.csv is not here")
    return read_measurements(PUBLISHED)


def rows(*lines: str) -> list[dict[str, Any]]:
    """Rows of a small inline CSV (the published schema), as validate reads them."""
    return pd.read_csv(io.StringIO("\n".join([COLUMNS, *lines]) + "\n")).to_dict("records")


def collective_modes(case: Case, chip_name: str) -> tuple[Any, list[str], list[Any]]:
    """(network, the collectives' cost modes, the collective ops) of a case placed on its chip's system."""
    network, placed = network_for(case, chip_name)
    prepared = prepare(placed.workload, load_chip(chip_name), SimOptions(launch="graph"), network)
    ops = [op for op in placed.workload.ops if op.kind in COLLECTIVE_KINDS]
    modes = [cost.mode for op, cost in zip(placed.workload.ops, prepared.costs, strict=True)
             if op.kind in COLLECTIVE_KINDS]
    return network, modes, ops


@pytest.fixture(scope="module")
def published_predictions() -> tuple[pd.DataFrame, pd.DataFrame]:
    return validate(published())


def test_every_published_row_builds_a_workload() -> None:
    """No documented device/variant/launch is refused by the row builders themselves: a published row
    is only ever skipped for want of a chip or a system, never for its variant."""
    for index, row in enumerate(published().to_dict("records")):
        case = case_for_row(row)
        assert case.workload.ops, (index, row["variant"])
        assert row["launch"] in ("eager", "graph")


def test_every_published_variant_is_simulated_or_skipped_by_name(published_predictions) -> None:
    predictions, skipped = published_predictions
    assert len(predictions) == len(published())
    for _, row in predictions.iterrows():
        if row["skipped_reason"]:
            reason = row["skipped_reason"]
            # the reason names what is missing: the row's device (no chip) or its chip's system
            assert str(row["device"]) in reason or (row["chip"] and row["chip"] in reason), (row["variant"], reason)
        else:
            assert math.isfinite(row["predicted_us"]) and row["predicted_us"] > 0, row["variant"]
    for variant, group in predictions.groupby("variant"):
        simulated = group[group["skipped_reason"] == ""]
        assert len(simulated) + len(group[group["skipped_reason"] != ""]) == len(group), variant
    assert len(skipped) == int((predictions["skipped_reason"] != "").sum())


DOCUMENTED = [  # every variant the README documents, one row each (not all are in the calibration half)
    "gemm,llm,fp16,graph,16,8192,8192,,,,,,,,,,,40,H100_SXM,",
    "gemm,square,fp8_e4m3,graph,2048,2048,2048,,,,,,,,,,,17,H200,",
    "gemm,odd,bf16,eager,4095,4097,1023,,,,,,,,,,,60,H100_SXM,",
    "gemm,mamf_best,bf16,graph,1024,10240,5120,,,,,,,,,,,400,H100_SXM,",
    "gemm,maf,fp8_e4m3fnuz,graph,4096,3648,32896,,,,,,,,,,,772,MI300X,",
    "gemm,deepgemm_blockscaled,fp8_e4m3,graph,4096,7168,2112,,,,,,,,,,,90,H100_SXM,",
    "gemm,deepgemm_grouped_contiguous,fp8_e4m3,graph,32768,4096,7168,4,,,,,,,,,,800,H100_SXM,",
    "attention,cudnn_prefill,bf16,eager,,,,1,64,8,2048,2048,128,1,fwd,,,75,H100_SXM,",
    "attention,cudnn_decode,bf16,eager,,,,128,64,8,1,2048,128,1,fwd,,,170,H100_SXM,",
    "attention,paged_decode,fp16,graph,,,,16,32,4,1,2048,128,1,fwd,,,72,H100_SXM,",
    "attention,prefill_chunk,fp16,graph,,,,1,32,4,512,4096,128,1,fwd,,,80,H100_SXM,",
    "attention,flash,bf16,graph,,,,1,32,8,4096,4096,128,1,fwd_bwd,,,900,H100_SXM,",
    "attention,flash_ck,bf16,graph,,,,1,32,8,4096,4096,128,1,fwd,,,400,MI300X,",
    "attention,math_pytorch,bf16,eager,,,,2,16,16,1024,1024,64,1,fwd,,,300,H100_SXM,",
    "memory,babelstream_copy,fp64,graph,,,,,,,,,,,,1073741824,,800,H100_SXM,",
    "memory,babelstream_mul,fp64,graph,,,,,,,,,,,,1073741824,,800,H100_SXM,",
    "memory,babelstream_add,fp64,graph,,,,,,,,,,,,1073741824,,1100,H100_SXM,",
    "memory,babelstream_triad,fp64,graph,,,,,,,,,,,,1073741824,,1100,H100_SXM,",
    "memory,babelstream_dot,fp64,graph,,,,,,,,,,,,1073741824,,700,H100_SXM,",
    *(f"elementwise,{v},fp16,graph,128,4096,,,,,,,,,,,,5,H100_SXM," for v in
      ("rms_norm", "layer_norm", "silu_mul", "add", "gelu", "softmax")),
    *(f"all_reduce,{v},fp32,graph,,,,,,,,,,,,4194304,8,60,H100_SXM," for v in
      ("nccl", "nccl_ring", "nccl_nvls")),
    *(f"all_reduce,{v},fp32,graph,,,,,,,,,,,,4194304,8,90,MI300X," for v in ("rccl", "rccl_ring")),
    "all_reduce,nccl_internode,fp32,eager,,,,,,,,,,,,1048576,16,380,H100_SXM,2 node(s) x 8 H100",
    "all_reduce,nccl_ring_internode,fp32,eager,,,,,,,,,,,,1048576,16,380,H100_SXM,",
]


def test_every_documented_variant_is_simulated() -> None:
    frame = pd.DataFrame(rows(*DOCUMENTED))
    predictions, skipped = validate(frame)
    assert skipped.empty, skipped[["variant", "skipped_reason"]].to_string()
    assert (predictions["predicted_us"] > 0).all()


def test_unknown_variants_and_devices_are_skipped_by_name() -> None:
    frame = pd.DataFrame(rows(
        "gemm,tall_skinny,bf16,graph,64,64,64,,,,,,,,,,,10,H100_SXM,",
        "attention,xformers_v9,bf16,graph,,,,1,8,8,128,128,64,0,fwd,,,10,H100_SXM,",
        "memory,babelstream_nstream,fp64,graph,,,,,,,,,,,,1048576,,10,H100_SXM,",
        "all_reduce,gloo,fp32,graph,,,,,,,,,,,,1048576,8,10,H100_SXM,",
        "gemm,llm,fp16,graph,16,8192,8192,,,,,,,,,,,40,TPUv9,",
        "gemm,llm,fp16,graph,16,8192,8192,,,,,,,,,,,40,H100_SXM,",
    ))
    predictions, skipped = validate(frame)
    assert list(skipped.index) == [0, 1, 2, 3, 4]
    for index, name in enumerate(("tall_skinny", "xformers_v9", "babelstream_nstream", "gloo")):
        assert name in skipped.loc[index, "skipped_reason"]
    assert skipped.loc[4, "skipped_reason"].startswith("no built-in chip for device 'TPUv9'")


@pytest.mark.parametrize("kernel,arrays", [("copy", 2), ("mul", 2), ("add", 3), ("triad", 3), ("dot", 2)])
def test_babelstream_moves_the_arrays_its_kernel_touches(kernel: str, arrays: int) -> None:
    size = 10468982784
    (row,) = rows(f"memory,babelstream_{kernel},fp64,graph,,,,,,,,,,,,{size},,7000,H100_SXM,")
    workload = case_for_row(row).workload
    assert sum(op.bytes for op in workload.ops) == pytest.approx(arrays * size)


def test_published_babelstream_triad_predicts_three_arrays(published_predictions) -> None:
    predictions, _ = published_predictions
    triad = predictions[(predictions["variant"] == "babelstream_triad") & (predictions["skipped_reason"] == "")]
    assert len(triad)
    for _, row in triad.iterrows():
        workload = case_for_row(row.to_dict()).workload
        assert sum(op.bytes for op in workload.ops) == pytest.approx(3 * row["bytes"])
        # the measured time is 3 arrays over the reported bandwidth: the prediction is near it
        assert row["ape"] < 0.5


def test_math_pytorch_attention_is_gemm_softmax_gemm() -> None:
    (row,) = rows("attention,math_pytorch,bf16,eager,,,,2,16,16,1024,768,64,0,fwd,,,300,H100_SXM,")
    ops = case_for_row(row).workload.ops
    assert [op.kind for op in ops] == ["gemm", "softmax", "gemm"]
    qk, softmax, pv = ops
    assert dict(qk.shape) == {"m": 1024, "n": 768, "k": 64, "batch": 32}
    assert (softmax.shape["rows"], softmax.shape["cols"]) == (32 * 1024, 768)
    assert dict(pv.shape) == {"m": 1024, "n": 64, "k": 768, "batch": 32}
    assert pv.deps == (softmax.id,) and softmax.deps == (qk.id,)
    (causal,) = rows("attention,math_pytorch,bf16,eager,,,,2,16,16,1024,1024,64,1,fwd_bwd,,,900,H100_SXM,")
    kinds = [op.kind for op in case_for_row(causal).workload.ops]
    assert kinds[:4] == ["gemm", "elementwise", "softmax", "gemm"] and kinds.count("gemm") == 6


def test_attention_variants_pick_their_backend() -> None:
    expected = {"cudnn_prefill": "cudnn", "cudnn_decode": "cudnn", "paged_decode": "flash",
                "prefill_chunk": "flash", "flash_ck": "flash", "flash": "flash"}
    for variant, backend in expected.items():
        (row,) = rows(f"attention,{variant},bf16,graph,,,,1,32,8,1,4096,128,1,fwd,,,10,H100_SXM,")
        (op,) = case_for_row(row).workload.ops
        assert op.attrs["backend"] == backend, variant


def test_block_scaled_gemm_is_fp8_plus_its_scale_traffic() -> None:
    (row,) = rows("gemm,deepgemm_blockscaled,fp8_e4m3,graph,4096,7168,2048,,,,,,,,,,,90,H100_SXM,")
    gemm, scales = case_for_row(row).workload.ops
    assert gemm.kind == "gemm" and gemm.dtype == "fp8" and dict(gemm.shape)["m"] == 4096
    assert scales.stream != gemm.stream  # read by the GEMM's kernel, concurrently
    assert scales.bytes == pytest.approx(4 * (4096 * 16 + 56 * 16))  # fp32: A 1x128, B 128x128
    (grouped,) = rows("gemm,deepgemm_grouped_contiguous,fp8_e4m3,graph,32768,4096,7168,4,,,,,,,,,,800,H100_SXM,")
    gemm = case_for_row(grouped).workload.ops[0]
    assert (gemm.shape["batch"], gemm.shape["m"], gemm.shape["n"], gemm.shape["k"]) == (4, 8192, 4096, 7168)


@pytest.mark.parametrize("variant,algorithm", [("nccl_nvls", "in_switch"), ("nccl_ring", "ring")])
def test_eight_gpu_all_reduce_runs_the_variants_algorithm_on_the_fabric(variant: str, algorithm: str) -> None:
    (row,) = rows(f"all_reduce,{variant},bf16,graph,,,,,,,,,,,,1073741824,8,5000,H100_SXM,")
    case = case_for_row(row)
    network, modes, ops = collective_modes(case, "h100_sxm")
    assert network is not None and network.system.fabric.kind == "nvswitch"
    assert ops[0].attrs["algorithm"] == algorithm
    assert modes[0].startswith(f"all_reduce {algorithm} over 8 ranks of {network.system.name}")


def test_internode_row_runs_across_nodes() -> None:
    (row,) = rows("all_reduce,nccl_internode,fp32,eager,,,,,,,,,,,,16777216,16,500,H100_SXM,")
    network, modes, ops = collective_modes(case_for_row(row), "h100_sxm")
    system = network.system
    assert system.nodes >= 2 and system.scale_out is not None
    ranks = ops[0].attrs.get("ranks", list(range(ops[0].shape["group"])))
    assert len({rank // system.gpus_per_node for rank in ranks}) >= 2
    assert "over 16 ranks" in modes[0]


def test_a_note_naming_several_nodes_places_the_communicator_on_them() -> None:
    (row,) = rows("all_reduce,nccl,fp16,graph,,,,,,,,,,,,4194304,8,560,H100_SXM,DGX node; 2 node(s) x 4 GPUs")
    network, _, ops = collective_modes(case_for_row(row), "h100_sxm")
    gpn = network.system.gpus_per_node
    ranks = ops[0].attrs["ranks"]
    assert len(ranks) == 8 and sorted({r // gpn for r in ranks}) == [0, 1]
    assert [sum(1 for r in ranks if r // gpn == node) for node in (0, 1)] == [4, 4]


def test_published_internode_rows_run_across_nodes(published_predictions) -> None:
    predictions, _ = published_predictions
    internode = predictions[predictions["variant"].str.endswith("_internode")]
    assert len(internode)
    for _, row in internode[internode["skipped_reason"] == ""].iterrows():
        network, _, ops = collective_modes(case_for_row(row.to_dict()), row["chip"])
        assert network.system.nodes >= 2 and network.system.world >= row["world"]


def test_a_chip_without_a_system_skips_its_collectives_with_the_reason() -> None:
    frame = pd.DataFrame(rows("all_reduce,nccl,fp32,graph,,,,,,,,,,,,4194304,8,60,H100_SXM,"))
    _, skipped = validate(frame, chip="dojo_int4")
    assert len(skipped) == 1 and "system" in skipped.iloc[0]["skipped_reason"]


def test_data_parallel_train_step_runs_over_the_fabric() -> None:
    line = "train_step,llama,bf16_autocast,eager,,,,2,8,8,256,256,,,,,{world},100000,H100_SXM,vocab=32000"
    columns = COLUMNS + ",layers,d_model,ffn"
    frame = pd.read_csv(io.StringIO("\n".join([columns, *(line.format(world=w) + ",2,512,2048" for w in (1, 8))])))
    one, eight = (case_for_row(r) for r in frame.to_dict("records"))
    assert one.workload.generator == "transformer_train_step" and one.world == 1
    assert eight.workload.generator == "data_parallel_train_step" and eight.world == 8
    network, modes, ops = collective_modes(eight, "h100_sxm")
    assert network is not None and ops and all(op.shape["group"] == 8 for op in ops)
    predictions, skipped = validate(frame)
    assert skipped.empty and predictions.loc[1, "predicted_us"] > predictions.loc[0, "predicted_us"]


def test_per_chip_breakdown_only_for_several_devices(published_predictions) -> None:
    predictions, _ = published_predictions
    summary = family_summary(predictions)
    assert list(summary.columns[:2]) == ["chip", "family"]
    assert summary["chip"].nunique() >= 2
    assert int(summary["rows"].sum()) == int((predictions["skipped_reason"] == "").sum())
    one = predictions[predictions["device"] == "H100_SXM"]
    assert "chip" not in family_summary(one).columns


def test_published_summary_counts_add_up(cli) -> None:
    if PUBLISHED is None:
        pytest.skip("../shared/reference/published/calibration.csv is not here")
    total = len(pd.read_csv(PUBLISHED))
    rc, out, err = cli(["validate", PUBLISHED, "--json"])
    assert rc == 0, err
    report = json.loads(out)
    assert report["rows"] == total == 263
    assert report["simulated"] + report["skipped_rows"] == total == report["simulated"] + len(report["skipped"])
    assert sum(f["rows"] for f in report["families"]) == report["simulated"]
    assert report["by_chip"] and all(f["chip"] for f in report["families"])
    assert all(s["reason"] and s["variant"] for s in report["skipped"])
    rc, out, _ = cli(["validate", PUBLISHED])
    assert rc == 0
    assert f"{report['simulated']} of {total} rows simulated" in out
    assert out.count("skipped row") == report["skipped_rows"]
    if report["skipped_rows"]:
        assert f"{report['skipped_rows']} skipped" in out.splitlines()[0]
    assert out.splitlines()[1].split()[:2] == ["chip", "family"]
