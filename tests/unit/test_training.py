"""A training step under a parallel layout (chipsim.training): pieces, the pipeline schedule, and
`chipsim validate` on the training schema."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from chipsim.errors import InputError
from chipsim.models import custom_model, load_model, resolve_layout
from chipsim.network.system import load_system, system_for
from chipsim.training import simulate_training
from chipsim.training.step import _schedule_order

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "published"
SMALL = {"layers": 8, "d_model": 1024, "heads": 8, "kv_heads": 8, "ffn": 4096, "vocab": 32000}


def small(**extra: int):  # type: ignore[no-untyped-def]
    return custom_model(**{**SMALL, **extra})


def step(model, gpus: int, precision: str = "bf16", system=None, **sizes):  # type: ignore[no-untyped-def]
    layout = resolve_layout(model, gpus, zero=1, seq=2048, **sizes)
    return simulate_training(model, layout, system or system_for("h100_sxm", gpus), precision)


def test_a_data_parallel_step_is_its_micro_batches_plus_the_optimizer() -> None:
    r = step(small(), 8, micro_batch=1, global_batch=32)
    pieces = {p.name: p for p in r.pieces}
    micro = 32 // 8
    one = (8 * (pieces["dense_layer_fwd"].seconds + pieces["dense_layer_bwd"].seconds)
           + sum(pieces[f"{n}_{d}"].seconds for n in ("embedding", "head") for d in ("fwd", "bwd")))
    assert r.breakdown["compute"] == pytest.approx(micro * one, rel=1e-9)
    # the step: the compute, the exposed gradient sync and the optimizer, and the parameter all-gather's wait
    assert r.step_s == pytest.approx(sum(r.breakdown.values()), rel=0.02)
    assert r.tokens_per_s_per_gpu * r.step_s * 8 == pytest.approx(32 * 2048, rel=1e-9)
    assert 0.05 < r.mfu < 0.8


def test_the_pipeline_bubble_comes_out_of_the_schedule() -> None:
    """Stages of equal work under 1F1B idle (pp - 1) forward+backward times; more micro-batches amortize
    it, interleaving (vp) shrinks it by vp."""
    model = small(layers=16)
    r4 = step(model, 4, pp=4, micro_batch=1, global_batch=8)
    pieces = {p.name: p for p in r4.pieces}
    chunk = 4 * (pieces["dense_layer_fwd"].seconds + pieces["dense_layer_bwd"].seconds)
    bubble = r4.step_s - r4.breakdown["compute"] - r4.breakdown["optimizer"]
    assert bubble == pytest.approx(3 * chunk, rel=0.25)  # plus the head, embedding and sends
    r16 = step(model, 4, pp=4, micro_batch=1, global_batch=32)
    assert r16.breakdown["compute"] / r16.step_s > r4.breakdown["compute"] / r4.step_s
    interleaved = step(model, 4, pp=4, vp=2, micro_batch=1, global_batch=8)
    assert interleaved.breakdown["pp_bubble"] < 0.7 * r4.breakdown["pp_bubble"]


def test_megatrons_interleaved_order_runs_every_chunk_and_micro_batch_once() -> None:
    order = _schedule_order(pp=4, vp=2, microbatches=8, stage=1)
    assert sorted(o for o in order if o[0] == "F") == [("F", c, m) for c in range(2) for m in range(8)]
    assert sorted(o for o in order if o[0] == "B") == [("B", c, m) for c in range(2) for m in range(8)]
    warmup = (4 - 1 - 1) * 2 + (2 - 1) * 4
    assert [o[0] for o in order[:warmup + 2]] == ["F"] * (warmup + 1) + ["B"]
    assert _schedule_order(pp=4, vp=1, microbatches=4, stage=0)[:4] == [("F", 0, 0), ("F", 0, 1), ("F", 0, 2),
                                                                          ("F", 0, 3)]


def test_tensor_parallelism_runs_its_collectives_on_nvlink() -> None:
    model = small(d_model=8192, heads=64, kv_heads=8, ffn=28672)  # a 70B-class layer: GEMMs outweigh latencies
    one = step(model, 1, micro_batch=1, global_batch=1, system=load_system("hgx_h200"))
    two = step(model, 2, tp=2, micro_batch=1, global_batch=1, system=load_system("hgx_h200"))
    layer = {p.name: p for p in two.pieces}["dense_layer_fwd"]
    assert layer.comm_s > 0  # the sequence-parallel all-gathers and reduce-scatters
    f1 = {p.name: p for p in one.pieces}["dense_layer_fwd"].seconds
    assert 0.4 * f1 < layer.seconds < 0.75 * f1  # half the GEMMs, their collectives beside them


def test_a_moe_layer_dispatches_over_its_expert_group() -> None:
    moe = small(experts=16, topk=2, expert_ffn=1024)
    r = step(moe, 8, ep=8, micro_batch=1, global_batch=8)
    layer = {p.name: p for p in r.pieces}["moe_layer_fwd"]
    assert layer.comm_s > 0 and layer.ops > 10
    # balanced routing gives every GPU the same token copies whatever ep is; a wider expert group sends
    # more of them to other GPUs: (ep - 1) / ep
    narrow = {p.name: p for p in step(moe, 8, ep=2, micro_batch=1, global_batch=8).pieces}["moe_layer_fwd"]
    assert narrow.comm_s < layer.comm_s


def test_fp8_is_faster_than_bf16_and_same_inputs_give_the_same_numbers() -> None:
    model = small(d_model=4096, heads=32, kv_heads=8, ffn=14336)
    bf16 = step(model, 8, micro_batch=1, global_batch=16)
    fp8 = step(model, 8, "fp8", micro_batch=1, global_batch=16)
    assert fp8.step_s < 0.9 * bf16.step_s
    assert step(model, 8, micro_batch=1, global_batch=16).step_s == bf16.step_s


def test_bad_inputs_are_refused_with_their_key() -> None:
    model = small(layers=16)
    layout = resolve_layout(model, 4, pp=4, vp=2, micro_batch=1, global_batch=6, seq=2048)
    with pytest.raises(InputError) as info:
        simulate_training(model, layout, system_for("h100_sxm", 4))
    assert info.value.key == "vp"
    with pytest.raises(InputError) as info:
        simulate_training(model, resolve_layout(model, 4, micro_batch=1, global_batch=4, seq=2048),
                          system_for("h100_sxm", 4), "fp16")
    assert info.value.key == "precision"
    with pytest.raises(InputError) as info:
        simulate_training(model, resolve_layout(model, 16, micro_batch=1, global_batch=16, seq=2048),
                          load_system("hgx_h200"))
    assert info.value.key == "gpus"


def test_a_405b_step_on_16k_gpus_folds_onto_its_pipeline_stages() -> None:
    model = load_model("llama3.1-405b")
    layout = resolve_layout(model, 16384, tp=8, pp=16, zero=1, first_stage_layers=7, last_stage_layers=7,
                            micro_batch=1, global_batch=2048, seq=8192)
    r = simulate_training(model, layout, load_system("cluster_2048x_dgx_h100_ndr"))
    assert "16,384 GPUs folded onto 16 pipeline stage(s)" in r.folded
    assert r.schedule_ops < 2000 and 0.1 < r.mfu < 0.6


@pytest.mark.skipif(not (REFERENCE / "training_calibration.csv").is_file(), reason="reference data not present")
def test_validate_predicts_published_training_rows(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    frame = pd.read_csv(REFERENCE / "training_calibration.csv")
    rows = frame[(frame["model_id"] == "llama3-8b") & (frame["gpus"] == 8) & (frame["dp"] == 4)]
    bad = rows.iloc[:1].assign(model_id="llama9-1t")
    csv = tmp_path / "rows.csv"
    pd.concat([rows, bad]).to_csv(csv, index=False)
    out = tmp_path / "pred.csv"
    code, stdout, _ = cli(["validate", str(csv), "--out", str(out)])
    assert code == 0
    assert f"{len(rows)} of {len(rows) + 1} training rows simulated" in stdout
    assert "not in the model zoo" in stdout
    pred = pd.read_csv(out)
    assert pred["ape"].iloc[:len(rows)].max() < 0.15
    assert pred["predicted_value"].iloc[:len(rows)].between(5, 20).all()  # step_time_s of 9-13 s



@pytest.mark.skipif(not (REFERENCE / "training_calibration.csv").is_file(), reason="reference data not present")
def test_validate_plans_the_layout_a_row_leaves_open() -> None:
    from chipsim.study.training_validate import validate_training

    frame = pd.read_csv(REFERENCE / "training_calibration.csv")
    row = frame[(frame["model_id"] == "llama3-8b") & (frame["gpus"] == 8)].iloc[:1]
    open_row = row.assign(tp=float("nan"), pp=float("nan"))
    out, skipped = validate_training(pd.concat([open_row, open_row.assign(cp=3)]))
    assert out["assumed"].iloc[0].endswith("picked by chipsim plan (best of 27 fitting layouts)")
    assert "cp" not in out["assumed"].iloc[0].split(" picked")[0]  # the stated cp is kept, not picked
    assert out["ape"].iloc[0] < 0.15
    assert "no layout with cp=3" in skipped["skipped_reason"].iloc[0]

def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text("name: t\nsystems: [{system: cluster_256x_dgx_h100_ndr, name: c, set: {nodes: 2}}]\n" + body)
    return path


LAYOUT = ("parallelism: {model: {layers: 8, d_model: 1024, heads: 8, kv_heads: 8, ffn: 4096, vocab: 32000}, "
          "gpus: 16, tp: 2, pp: 2, global_batch: 32, seq: 2048")


def test_a_run_config_with_parallelism_reports_the_step_and_writes_a_timeline(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    out = tmp_path / "out"
    code, stdout, _ = cli(["run", str(_config(tmp_path, LAYOUT + "}\n")), "--out", str(out)])
    assert code == 0
    assert "tokens_per_s_per_gpu" in stdout and "16 GPUs folded onto 2 pipeline stage(s)" in stdout
    summary = pd.read_csv(out / "summary.csv")
    assert summary["tp"].iloc[0] == 2 and summary["step_s"].iloc[0] > 0
    threads = {e["args"]["name"] for e in json.loads((out / "timeline.json").read_text())["traceEvents"]
               if e.get("name") == "thread_name"}
    assert {"dev0 compute", "dev1 compute"} <= threads  # one track per simulated rank (pipeline stage)


@pytest.mark.parametrize("body, key, text", [
    (LAYOUT.replace("tp: 2", "tp: 3") + "}\n", "parallelism.dp", "multiple of tp*pp*cp"),
    (LAYOUT.replace("heads: 8, kv", "heads: 6, kv") + "}\n", "parallelism.model", "heads"),
    (LAYOUT.replace("gpus: 16", "gpus: 64") + "}\n", "parallelism.gpus", "do not fit"),
    (LAYOUT + ", precision: fp16}\n", "parallelism.precision", "bf16"),
    ("parallelism: {model: llama9-1t, global_batch: 8, seq: 2048}\n", "parallelism.model", "unknown"),
    ("parallelism: {model: llama3-70b, gpus: 8, global_batch: 8, seq: 8192}\n", "parallelism", "GB"),
    (LAYOUT + "}\nworkload: {generator: all_reduce}\n", "workload", "either"),
])
def test_a_bad_training_config_names_its_key(cli, tmp_path: Path, body: str, key: str, text: str) -> None:  # type: ignore[no-untyped-def]
    code, _, stderr = cli(["run", str(_config(tmp_path, body)), "--no-files"])
    assert code == 2
    assert key in stderr and text in stderr and "train.yaml" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_every_training_gpu_has_a_cluster_that_grows_to_the_run() -> None:
    """Published runs on A100 reach 3,072 GPUs: past what a two-tier tree of HDR switches holds, the
    cluster is rebuilt with three tiers rather than refused; H200 and B200 rows find their clusters."""
    a100 = system_for("a100_sxm", 3072)
    assert a100.world >= 3072 and a100.scale_out is not None and a100.scale_out.tiers == 3
    assert system_for("h200_sxm", 64).name == "cluster_256x_hgx_h200_ndr"
    model = small(d_model=2048, heads=16, kv_heads=16, ffn=8192)
    fp4 = step(model, 8, "fp4", system=system_for("b200", 8), micro_batch=1, global_batch=8)
    fp8 = step(model, 8, "fp8", system=system_for("b200", 8), micro_batch=1, global_batch=8)
    assert fp4.step_s < fp8.step_s  # NVFP4 GEMMs at twice the fp8 rate


@pytest.mark.skipif(not (REFERENCE / "training_calibration.csv").is_file(), reason="reference data not present")
def test_validate_refuses_a_plot_of_training_rows_before_any_work(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, stderr = cli(["validate", str(REFERENCE / "training_calibration.csv"), "--plot", str(tmp_path / "p.png")])
    assert code == 2 and "--plot" in stderr and not (tmp_path / "p.png").exists()


def _moe_piece(model_id: str, ep: int, chip: str, gpus: int, precision: str = "bf16", micro_batch: int = 1):
    from chipsim.engine.sim import SimOptions, simulate
    from chipsim.network.fabric import Fabric
    from chipsim.training.step import _PieceBuilder

    model = load_model(model_id)
    layout = resolve_layout(model, gpus, ep=ep, micro_batch=micro_batch, global_batch=gpus * micro_batch, seq=4096)
    system = system_for(chip, gpus)
    builder = _PieceBuilder(model, layout, precision, "moe", True, system.gpus_per_node)
    builder.layer(True, False)
    workload = builder.b.build()
    return workload, simulate(workload, system.chip, SimOptions(launch="eager", sustained=True), network=Fabric(system))


def test_expert_parallelism_across_nodes_crosses_the_network_once_per_node() -> None:
    workload, _ = _moe_piece("deepseek-v3", 64, "h800", 64, "fp8_block")
    by_name = {op.name: op for op in workload.ops}
    rdma, nvlink = by_name["moe.dispatch.rdma"], by_name["moe.dispatch.nvlink"]
    assert rdma.attrs["stride"] == 8 and rdma.shape["group"] == 8 and nvlink.shape["group"] == 8
    tokens = 4096
    # node-limited routing (4 of 8 nodes): 4 * (1 - (3/4)^8) = 3.6 nodes per token, fp8 with 1x128 scales
    assert rdma.shape["bytes"] == pytest.approx(tokens * 4 * (1 - 0.75 ** 8) * 7168 * (1 + 4 / 128))
    assert nvlink.shape["bytes"] == pytest.approx(tokens * 8 * 7168 * (1 + 4 / 128))
    assert by_name["moe.combine.rdma"].shape["bytes"] == pytest.approx(tokens * 4 * (1 - 0.75 ** 8) * 7168 * 2)
    inside, _ = _moe_piece("qwen3-30b-a3b", 8, "h100_sxm", 8)
    assert "moe.dispatch" in {op.name for op in inside.ops}  # one NVLink all-to-all inside a node


def test_a_small_moe_layer_is_held_by_the_host_not_the_gpu() -> None:
    # Megatron's MoE layer at micro-batch 1: its framework calls, not the GPU, set the pace, so a
    # B200 is barely faster than an H100 on it (NeMo: ~9,000 tokens/s/GPU on both)
    _, h100 = _moe_piece("qwen3-30b-a3b", 8, "h100_sxm", 8, "fp8")
    _, b200 = _moe_piece("qwen3-30b-a3b", 8, "b200", 8, "fp8")
    assert 0.8 < b200.latency_s / h100.latency_s < 1.0
    gpu_busy = sum(r.duration_s for r in b200.records if r.stream == "compute")
    assert gpu_busy < 0.7 * b200.latency_s


def test_routing_imbalance_slows_the_moe_layer_by_its_busiest_rank() -> None:
    model = load_model("mixtral-8x7b")
    system = system_for("h100_sxm", 16)
    steps = [simulate_training(model, resolve_layout(model, 16, tp=2, ep=8, global_batch=64, seq=4096, zero=1,
                                                     moe_imbalance=f), system, "bf16").step_s for f in (1.0, 1.3)]
    assert 1.05 < steps[1] / steps[0] < 1.3  # the expert GEMMs and the all-to-alls grow, attention does not
    with pytest.raises(InputError) as exc:
        resolve_layout(model, 16, ep=8, moe_imbalance=0.5)
    assert exc.value.key == "moe_imbalance"


def test_deepseek_v3s_last_stage_carries_its_multi_token_prediction() -> None:
    model = load_model("deepseek-v3")
    layout = resolve_layout(model, 256, pp=16, ep=8, global_batch=256, seq=4096, zero=1)
    r = simulate_training(model, layout, system_for("h800", 256), "fp8_block")
    names = {p.name for p in r.pieces}
    assert {"mtp_fwd", "mtp_bwd"} <= names
    mtp = next(p for p in r.pieces if p.name == "mtp_fwd")
    moe = next(p for p in r.pieces if p.name == "moe_layer_fwd")
    head = next(p for p in r.pieces if p.name == "head_fwd")
    assert mtp.seconds > moe.seconds + 0.9 * head.seconds  # a layer and the LM head again
    # MLA: the value head dim reaches the attention kernels
    from chipsim.training.step import _PieceBuilder
    builder = _PieceBuilder(model, layout, "bf16", "x")
    builder.layer(False, False)
    attention = next(op for op in builder.b.build().ops if op.kind == "attention")
    assert attention.shape["head_dim"] == 192 and attention.shape["v_head_dim"] == 128
    assert any(op.name == "mla.kv_up.fwd" for op in builder.b.build().ops)
