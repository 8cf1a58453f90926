"""`chipsim plan`: enumerating Megatron-Core layouts, sizing them in memory, ranking the simulated ones."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from chipsim.errors import InputError
from chipsim.models import custom_model, load_model, memory_per_gpu, resolve_layout
from chipsim.network.system import load_system
from chipsim.training import simulate_training
from chipsim.training.plan import COLUMNS, candidate_layouts, plan_layouts

SMALL = {"layers": 8, "d_model": 1024, "heads": 8, "kv_heads": 8, "ffn": 4096, "vocab": 32000}
CLUSTER = "cluster_256x_dgx_h100_ndr"


@pytest.fixture(scope="module")
def small_plan() -> tuple[pd.DataFrame, object, object]:
    model, system = custom_model(**SMALL), load_system(CLUSTER)
    return plan_layouts(model, system, 16, 32, 2048, workers=1), model, system


def test_candidates_are_valid_megatron_layouts_of_all_the_gpus() -> None:
    model = custom_model(**SMALL)
    found = candidate_layouts(model, 16, 32, 2048, 8)
    assert found.layouts and found.total == len(found.layouts) + sum(found.rejected.values())
    seen = set()
    for layout in found.layouts:
        assert layout.tp * layout.pp * layout.cp * layout.dp == 16
        assert layout.tp <= 8 and model.layers % (layout.pp * layout.vp) == 0 and layout.cp == 1  # seq < 8192
        assert layout.ep == 1 and layout.zero == 1 and layout.micro_batch in (1, 2, 4)
        assert layout.vp == 1 or layout.num_microbatches % layout.pp == 0
        key = (layout.tp, layout.pp, layout.vp, layout.dp, layout.micro_batch)
        assert key not in seen
        seen.add(key)
        # resolve_layout accepts it as it stands
        assert resolve_layout(model, 16, tp=layout.tp, pp=layout.pp, vp=layout.vp, dp=layout.dp,
                              micro_batch=layout.micro_batch, global_batch=32, seq=2048, zero=1) == layout
    # 32 sequences do not split into micro-batches of 4 over 16 data-parallel ranks: counted, not kept
    assert found.rejected["global_batch"] > 0
    assert (1, 1, 1, 16, 4) not in seen
    # long sequences try context parallelism
    assert {lay.cp for lay in candidate_layouts(model, 16, 32, 8192, 8).layouts} == {1, 2, 4}


def test_moe_candidates_split_experts_over_the_attention_ranks() -> None:
    model = custom_model(**SMALL, experts=8, topk=2, expert_ffn=1024)
    found = candidate_layouts(model, 16, 64, 2048, 8)
    eps = {lay.ep for lay in found.layouts}
    assert eps == {1, 2, 4, 8}
    assert all((lay.tp * lay.cp * lay.dp) % lay.ep == 0 for lay in found.layouts)


def test_the_plan_ranks_feasible_layouts_by_simulated_throughput(small_plan) -> None:  # type: ignore[no-untyped-def]
    table, model, system = small_plan
    assert list(table.columns) == COLUMNS
    feasible = table[table["fits"]]
    assert len(feasible) == len(table) > 10  # a 0.1B model fits everywhere
    assert feasible["tokens_per_s_per_gpu"].is_monotonic_decreasing
    assert (feasible["recompute"] == "none").all() and (feasible["overflow"] == "").all()
    assert table.attrs["candidates"] == len(table) + sum(table.attrs["rejected"].values())
    best = table.iloc[0]
    layout = resolve_layout(model, 16, tp=int(best["tp"]), pp=int(best["pp"]), vp=int(best["vp"]),
                            cp=int(best["cp"]), dp=int(best["dp"]), micro_batch=int(best["micro_batch"]),
                            global_batch=32, seq=2048, zero=1, recompute=best["recompute"])
    r = simulate_training(model, layout, system, "bf16")
    assert best["tokens_per_s_per_gpu"] == pytest.approx(r.tokens_per_s_per_gpu, rel=1e-12)
    assert best["step_s"] == pytest.approx(r.step_s, rel=1e-12)
    assert best["pp_bubble_s"] == pytest.approx(r.breakdown["pp_bubble"], rel=1e-12)
    assert best["memory_gb"] == pytest.approx(memory_per_gpu(model, layout, flash_attention=True).total / 1e9)


def test_a_model_too_big_for_the_gpus_is_infeasible_and_not_simulated() -> None:
    model, system = load_model("llama3-70b"), load_system("dgx_h100")
    calls: list[tuple[int, int]] = []
    table = plan_layouts(model, system, 8, 16, 4096, workers=1, progress=lambda d, t: calls.append((d, t)))
    assert len(table) > 0 and not table["fits"].any()
    assert table["step_s"].isna().all() and table["tokens_per_s_per_gpu"].isna().all()
    assert (table["recompute"] == "full").all()  # every recomputation was tried
    assert (table["memory_gb"] > 85.5).all()
    assert table["overflow"].str.contains("GB over the chip's 85.5 GB").all()
    assert table["memory_gb"].is_monotonic_increasing  # the closest first
    assert calls == [(0, 0)]


def test_the_system_must_hold_the_gpus() -> None:
    with pytest.raises(InputError) as err:
        plan_layouts(custom_model(**SMALL), load_system("dgx_h100"), 16, 32, 2048)
    assert err.value.key == "gpus"


def test_cli_plan_prints_the_best_layout(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "plan.csv"
    code, stdout, stderr = cli(["plan", "llama3-8b", "--system", CLUSTER, "--gpus", 16, "--global-batch", 64,
                                "--seq", 4096, "--top", 3, "--out", out])
    assert code == 0, stderr
    assert "candidate layouts" in stdout and "best: tp" in stdout
    assert "simulated" in stderr
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == COLUMNS and len(table) > 3
    best = stdout.split("best: ")[1]
    first = table.iloc[0]
    assert best.startswith(f"tp{first['tp']} pp{first['pp']} vp{first['vp']} ")
    assert f"{float(first['tokens_per_s_per_gpu']):,.0f} tokens/s/GPU" in best


def test_cli_plan_json_and_no_fit(cli) -> None:  # type: ignore[no-untyped-def]
    code, stdout, stderr = cli(["plan", "gpt-custom", "--system", "dgx_h100", "--gpus", 8, "--global-batch", 8,
                                "--seq", 2048, "--json"])
    assert code == 2 and "MODEL" in stderr  # gpt-custom takes dimensions: not from the command line
    code, stdout, stderr = cli(["plan", "llama3-70b", "--system", "dgx_h100", "--gpus", 8, "--global-batch", 16,
                                "--seq", 4096, "--json", "--workers", 1])
    assert code == 1 and stderr == ""
    data = json.loads(stdout)
    assert data["best"] is None and data["feasible"] == 0 and data["infeasible"] == data["valid"] > 0


@pytest.mark.parametrize("argv, key", [
    (["nope-7b", "--system", CLUSTER, "--gpus", 16, "--global-batch", 64, "--seq", 4096], "MODEL"),
    (["llama3-8b", "--system", "nope", "--gpus", 16, "--global-batch", 64, "--seq", 4096], "--system"),
    (["llama3-8b", "--system", CLUSTER, "--gpus", 12, "--global-batch", 64, "--seq", 4096], "--gpus"),
    (["llama3-8b", "--system", "dgx_h100", "--gpus", 16, "--global-batch", 64, "--seq", 4096], "--gpus"),
    (["llama3-8b", "--system", CLUSTER, "--gpus", 0, "--global-batch", 64, "--seq", 4096], "--gpus"),
    # at 1,024 GPUs every layout has dp >= 4: two sequences do not split over them
    (["llama3-8b", "--system", CLUSTER, "--gpus", 1024, "--global-batch", 2, "--seq", 4096], "--global-batch"),
    (["llama3-8b", "--system", CLUSTER, "--gpus", 16, "--global-batch", 64, "--seq", 0], "--seq"),
    (["llama3-8b", "--system", CLUSTER, "--gpus", 8192, "--global-batch", 8192, "--seq", 4096], "--gpus"),
    (["llama3-8b", "--system", CLUSTER, "--gpus", 16, "--global-batch", 64, "--seq", 4096, "--top", 0], "--top"),
])
def test_cli_plan_bad_input_exits_2_with_its_key(cli, argv: list[object], key: str) -> None:  # type: ignore[no-untyped-def]
    code, stdout, stderr = cli(["plan", *argv])
    assert code == 2 and stdout == ""
    assert f"key '{key}'" in stderr and len(stderr.strip().splitlines()) == 1


def test_cli_plan_grows_a_cluster_to_the_gpus(cli) -> None:  # type: ignore[no-untyped-def]
    code, stdout, stderr = cli(["plan", "llama2-7b", "--system", "cluster_64x_hgx_b200_ndr", "--gpus", 1024,
                                "--global-batch", 8, "--seq", 4096, "--top", 1, "--workers", 1, "--json"])
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["gpus"] == 1024 and data["system"] == "cluster_64x_hgx_b200_ndr"
    assert data["best"]["tp"] * data["best"]["pp"] * data["best"]["dp"] == 1024 and data["best"]["dp"] <= 8


def test_cli_plan_dask_without_distributed_says_what_to_install(cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "distributed" else real(name, *a))
    code, stdout, stderr = cli(["plan", "llama3-8b", "--system", CLUSTER, "--gpus", 16, "--global-batch", 64,
                                "--seq", 4096, "--executor", "dask"])
    assert code == 2 and "pip install dask[distributed]" in stderr and "key '--executor'" in stderr


def test_the_screen_list_schedules_what_the_engine_simulates() -> None:
    """The plan ranks by the list-scheduled pipeline; it must agree with the event engine where nothing
    contends, and the best layouts are simulated again by the engine."""
    model, system = load_model("llama3-70b"), load_system(CLUSTER, overrides={"nodes": 16})
    cache: dict = {}
    for sizes in ({"tp": 4, "pp": 4, "vp": 2}, {"tp": 8, "pp": 8}, {"tp": 2, "pp": 16, "vp": 5}):
        layout = resolve_layout(model, 128, **sizes, micro_batch=1, global_batch=64, seq=4096, zero=1)
        full = simulate_training(model, layout, system)
        screen = simulate_training(model, layout, system, screen=True, piece_cache=cache)
        assert screen.schedule is None and full.schedule is not None
        assert screen.step_s == pytest.approx(full.step_s, rel=1e-3)
        assert screen.schedule_ops == full.schedule_ops
        assert screen.breakdown == pytest.approx(full.breakdown, rel=1e-3, abs=1e-3)
    assert len(cache) >= 6  # pieces kept for the next layouts: layers fwd/bwd, embedding, head, optimizers


def test_the_best_layouts_are_simulated_by_the_engine(small_plan) -> None:  # type: ignore[no-untyped-def]
    from chipsim.training.plan import ENGINE_TOP

    table = small_plan[0]
    fits = table[table["fits"]]
    engine = fits["schedule"] == "engine"
    assert engine.sum() == min(ENGINE_TOP, len(fits)) and set(fits["schedule"]) <= {"engine", "screen"}
    assert (table.loc[~table["fits"], "schedule"] == "").all()
