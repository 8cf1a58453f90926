"""`chipsim sweep`: design points, executors (local pool and Dask, bit for bit), failures, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from chipsim.errors import InputError
from chipsim.study.sweep import design_points, load_sweep, pareto_front, point_id, run_sweep

BASE = """
name: tiny
chips: [h100_sxm, h200_sxm]
workload:
  generator: dynamic_attention
  params: {batch: 2, seq: 512, d_model: 1024, heads: 8, weight_gen: per_sequence}
"""


def write_sweep(tmp_path: Path, parameters: str, extra: str = "") -> Path:
    (tmp_path / "base.yaml").write_text(BASE)
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: s\nbase: base.yaml\nparameters:\n{parameters}\n{extra}")
    return path


GRID = """  chips.*.memory.hbm.bandwidth: [2.0e+12, 4.0e+12]
  workload.params.batch: [1, 2, 4]
"""


def test_grid_points_and_table(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, GRID))
    points = design_points(sweep)
    assert len(points) == 6
    table = run_sweep(sweep, tmp_path / "out", workers=1)
    assert len(table) == 6 * 2  # two chips
    assert set(table.columns) >= {"point", "chips.*.memory.hbm.bandwidth", "workload.params.batch", "target",
                                  "latency_s", "energy_j", "status"}
    assert (table["status"] == "ok").all()
    # more bandwidth is never slower, for every batch and chip
    for _, group in table.groupby(["workload.params.batch", "target"]):
        by_bw = group.sort_values("chips.*.memory.hbm.bandwidth")["latency_s"].to_numpy()
        assert by_bw[1] <= by_bw[0]
    assert (tmp_path / "out" / "results.parquet").is_file()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / "results.parquet"), table, check_dtype=False)


def test_local_pool_and_dask_give_identical_tables(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    sweep = load_sweep(write_sweep(tmp_path, GRID))
    local = run_sweep(sweep, tmp_path / "local", executor="local", workers=2)
    dask = run_sweep(sweep, tmp_path / "dask", executor="dask", workers=2)
    pd.testing.assert_frame_equal(local, dask)
    assert (tmp_path / "local" / "results.csv").read_bytes() == (tmp_path / "dask" / "results.csv").read_bytes()


def test_failed_point_is_recorded_not_fatal(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, "  workload.params.heads: [8, 7]\n"))
    table = run_sweep(sweep, tmp_path / "out", workers=1)
    bad = table[table["workload.params.heads"] == 7]
    assert len(bad) == 1 and bad["status"].iloc[0].startswith("error:") and "multiple of heads" in bad["status"].iloc[0]
    assert (table[table["workload.params.heads"] == 8]["status"] == "ok").all()


def test_interrupted_sweep_resumes_without_recomputing(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, GRID))
    out = tmp_path / "out"
    full = run_sweep(sweep, out, workers=1)
    kept = full[full["point"] != full["point"].iloc[0]]  # as if the first point had not finished
    kept.to_csv(out / "results.csv", index=False)
    calls: list[tuple[int, int]] = []
    resumed = run_sweep(sweep, out, workers=1, progress=lambda done, todo: calls.append((done, todo)))
    assert calls[0] == (0, 1) and calls[-1] == (1, 1)  # one point recomputed
    pd.testing.assert_frame_equal(resumed, full)


def test_lhs_is_seeded_and_stratified(tmp_path: Path) -> None:
    params = "  chips.*.memory.hbm.bandwidth: {low: 1.0e+12, high: 5.0e+12}\n  workload.params.batch: {low: 1, high: 16, integer: true}\n"
    path = write_sweep(tmp_path, params, "sampling: lhs\nsamples: 8\nseed: 3\n")
    first, second = design_points(load_sweep(path)), design_points(load_sweep(path))
    assert first == second and len(first) == 8
    bands = sorted(int((p["chips.*.memory.hbm.bandwidth"] - 1e12) / 0.5e12) for p in first)
    assert bands == list(range(8))  # one sample in each eighth of the range
    assert all(isinstance(p["workload.params.batch"], int) and 1 <= p["workload.params.batch"] <= 16 for p in first)
    assert len({point_id(p) for p in first}) == 8


@pytest.mark.parametrize("parameters,extra,message", [
    ("  chips.tpu9.memory.hbm.bandwidth: [1.0e+12]\n", "", "no chip named 'tpu9'"),
    ("  compute.units: [1]\n", "", "expected a path starting with"),
    ("  workload.params.batch: {low: 1, high: 4}\n", "", "a grid needs a list"),
    ("  workload.params.nope: [1]\n", "", "unknown parameter"),
])
def test_bad_sweeps_fail_before_any_work(tmp_path: Path, parameters: str, extra: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_sweep(write_sweep(tmp_path, parameters, extra))


def test_sweep_cli_json_and_plots(cli, tmp_path: Path) -> None:
    path = write_sweep(tmp_path, GRID)
    rc, out, err = cli(["sweep", path, "--out", tmp_path / "o", "--workers", "1", "--json"])
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["points"] == 6 and summary["rows"] == 12 and summary["failed"] == 0
    assert summary["pareto"] and {"latency_s", "energy_j"} <= set(summary["pareto"][0])
    assert (tmp_path / "o" / "metrics.png").stat().st_size > 5000
    assert (tmp_path / "o" / "pareto.png").stat().st_size > 5000


def test_sweep_cli_bad_input_exits_2(cli, tmp_path: Path) -> None:
    rc, out, err = cli(["sweep", tmp_path / "missing.yaml"])
    assert rc == 2 and out == "" and "file not found" in err


def test_pareto_front() -> None:
    frame = pd.DataFrame({"latency_s": [1, 2, 3, 1.5, 2.5], "energy_j": [5, 3, 1, 6, 4]})
    front = pareto_front(frame)
    assert front["latency_s"].tolist() == [1, 2, 3]
