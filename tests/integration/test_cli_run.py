"""CLI happy paths: `chipsim run` (JSON and files), `chipsim chips`, `chipsim workloads`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import BUILTIN_CHIPS, RUN_CONFIGS

import chipsim

RUN_KEYS = {"chip", "workload", "latency_s", "energy_j", "avg_power_w", "peak_power_w", "achieved_flops_per_s",
            "achieved_bandwidth_bytes_per_s", "ops"}
QUICKSTART_CHIPS = ["h200_sxm", "h100_sxm", "gh200", "mi300x"]


def _strict_json(text: str) -> dict:
    def reject(constant: str) -> None:
        raise ValueError(f"not valid JSON: {constant}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def quickstart_files(tmp_path_factory) -> tuple[Path, str, str]:
    """One `chipsim run quickstart.yaml --out DIR` (table mode), shared by the file checks."""
    import contextlib
    import io

    from chipsim.cli import main

    out_dir = tmp_path_factory.mktemp("quickstart") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["run", str(RUN_CONFIGS / "quickstart.yaml"), "--out", str(out_dir)])
    assert rc == 0, stderr.getvalue()
    return out_dir, stdout.getvalue(), stderr.getvalue()


def test_run_json_prints_exactly_one_json_object(cli: Callable, tmp_path: Path) -> None:
    rc, out, err = cli(["run", RUN_CONFIGS / "quickstart.yaml", "--out", tmp_path / "out", "--json"])
    assert rc == 0
    assert err == ""  # no progress chatter in JSON mode
    data = _strict_json(out)  # the whole of stdout is one JSON document
    assert list(data) == ["runs"]
    runs = data["runs"]
    assert [r["chip"] for r in runs] == QUICKSTART_CHIPS
    for r in runs:
        assert set(r) >= RUN_KEYS
        assert r["workload"] == runs[0]["workload"]
        assert r["latency_s"] > 0
        assert r["energy_j"] > 0
        assert r["avg_power_w"] * r["latency_s"] == pytest.approx(r["energy_j"], rel=1e-9)
        assert r["avg_power_w"] <= r["peak_power_w"]
        chip = chipsim.load_chip(r["chip"])
        assert chip.power.idle_w < r["avg_power_w"]
        assert 0 < r["achieved_flops_per_s"] <= chip.peak("bf16")
        assert r["achieved_bandwidth_bytes_per_s"] > 0
        assert isinstance(r["ops"], list) and len(r["ops"]) == r["op_count"] > 0
        assert {"name", "kind", "start_s", "duration_s", "bound"} <= set(r["ops"][0])
        assert r["fits_in_memory"] is True


def test_run_json_with_no_files_writes_nothing(cli: Callable, write, tmp_path: Path, monkeypatch) -> None:
    config = write("cfg/run.yaml", "chips: [h200_sxm, gh200]\nworkload: {generator: all_reduce}\n")
    monkeypatch.chdir(tmp_path)
    rc, out, _ = cli(["run", config, "--json", "--no-files"])
    assert rc == 0
    assert [r["chip"] for r in _strict_json(out)["runs"]] == ["h200_sxm", "gh200"]
    assert [p.name for p in tmp_path.iterdir()] == ["cfg"]  # no results/ folder


def test_run_writes_csv_trace_and_plots(quickstart_files) -> None:
    out_dir, stdout, stderr = quickstart_files
    names = {p.name for p in out_dir.iterdir()}
    assert {"summary.csv", "ops.csv", "timeline.json", "breakdown.png", "power.png"} <= names
    assert {f"roofline_{c}.png" for c in QUICKSTART_CHIPS} <= names
    assert not [n for n in names if n.startswith(".")]
    for png in (n for n in names if n.endswith(".png")):
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table went to stdout, progress and the file count to stderr
    assert "latency" in stdout and all(c in stdout for c in QUICKSTART_CHIPS)
    assert f"wrote {len(names)} files" in stderr


def test_summary_and_ops_csv(quickstart_files) -> None:
    out_dir, _, _ = quickstart_files
    summary = pd.read_csv(out_dir / "summary.csv")
    assert list(summary["chip"]) == QUICKSTART_CHIPS
    assert (summary["latency_s"] > 0).all()
    assert (summary["avg_power_w"] * summary["latency_s"]).to_numpy() == pytest.approx(summary["energy_j"].to_numpy())
    ops = pd.read_csv(out_dir / "ops.csv")
    assert set(ops["chip"]) == set(QUICKSTART_CHIPS)
    per_chip = summary.set_index("chip")
    assert ops.groupby("chip").size().to_dict() == per_chip["op_count"].to_dict()
    assert (ops["end_s"] >= ops["start_s"]).all()
    # the last op of each chip ends at that chip's latency
    last_end = ops.groupby("chip")["end_s"].max().to_dict()
    assert last_end == pytest.approx(per_chip["latency_s"].to_dict(), rel=1e-12)


def test_timeline_is_a_chrome_trace(quickstart_files) -> None:
    out_dir, _, _ = quickstart_files
    trace = _strict_json((out_dir / "timeline.json").read_text())
    events = trace["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert complete
    for e in complete:
        assert {"name", "ts", "dur", "pid", "tid"} <= set(e)
        assert e["dur"] >= 0 and e["ts"] >= 0
    processes = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert processes == set(QUICKSTART_CHIPS)
    assert any(e["ph"] == "C" for e in events)  # the power counter track
    ops = pd.read_csv(out_dir / "ops.csv")
    assert len(complete) == len(ops)


def test_report_list_limits_the_files(cli: Callable, write, tmp_path: Path) -> None:
    config = write("run.yaml", """
        name: small
        chips: [h200_sxm]
        workload: {generator: all_reduce, params: {size: 64 MiB}}
        report: [table, csv]
        """)
    rc, _, _ = cli(["run", config, "--out", tmp_path / "out"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ops.csv", "summary.csv"]


def test_chip_and_launch_overrides(cli: Callable, write, tmp_path: Path) -> None:
    config = write("run.yaml", """
        chips: [h200_sxm]
        workload:
          generator: transformer_train_step
          params: {layers: 1, batch: 1, seq: 256}
        """)
    rc, out, _ = cli(["run", config, "--chip", "mi300x", "--chip", "h100_sxm", "--json", "--no-files"])
    assert rc == 0
    runs = _strict_json(out)["runs"]
    assert [r["chip"] for r in runs] == ["mi300x", "h100_sxm"]
    assert {r["launch"] for r in runs} == {"eager"}
    rc, out, _ = cli(["run", config, "--launch", "graph", "--json", "--no-files"])
    graph = _strict_json(out)["runs"][0]
    assert graph["launch"] == "graph"
    rc, out, _ = cli(["run", config, "--json", "--no-files"])
    eager = _strict_json(out)["runs"][0]
    assert graph["latency_s"] < eager["latency_s"]  # no host dispatch under graph replay


def test_replaying_a_saved_workload(cli: Callable, tmp_path: Path) -> None:
    wl = chipsim.build_workload("dynamic_attention", {"batch": 1, "seq": 512})
    path = tmp_path / "attn.json"
    chipsim.save_workload(wl, path)
    rc, out, _ = cli(["run", "--workload", path, "--chip", "h100_dwb", "--json", "--no-files"])
    assert rc == 0
    run = _strict_json(out)["runs"][0]
    direct = chipsim.simulate(wl, chipsim.load_chip("h100_dwb"))
    assert run["latency_s"] == direct.latency_s
    assert run["op_count"] == len(wl.ops)


def test_chips_lists_all_six(cli: Callable) -> None:
    rc, out, err = cli(["chips"])
    assert rc == 0 and err == ""
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == sorted(BUILTIN_CHIPS)
    h200 = next(line for line in lines if line.startswith("h200_sxm"))
    assert "4.8 TB/s" in h200 and "700 W" in h200
    assert cli(["chips", "list"])[1] == out


def test_chips_show_prints_the_resolved_chip_as_json(cli: Callable) -> None:
    rc, out, _ = cli(["chips", "show", "h200_sxm"])
    assert rc == 0
    data = _strict_json(out)
    assert data["name"] == "h200_sxm"
    assert data["hbm"]["bandwidth_bytes_per_s"] == 4.8e12
    assert data["hbm"]["capacity_bytes"] == 150109880320
    assert data["peak_flops_per_s"]["bf16"] == pytest.approx(989.4e12)
    assert data["power"]["limit_w"] == 700.0


def test_chips_show_a_chip_yaml_path(cli: Callable, write) -> None:
    path = write("mine.yaml", "extends: h200_sxm\nname: mine\nmemory:\n  hbm:\n    bandwidth: 9.6 TB/s\n")
    rc, out, _ = cli(["chips", "show", path])
    assert rc == 0
    assert _strict_json(out)["hbm"]["bandwidth_bytes_per_s"] == pytest.approx(9.6e12)


def test_workloads_lists_every_generator_and_param(cli: Callable) -> None:
    rc, out, _ = cli(["workloads"])
    assert rc == 0
    for name, info in chipsim.workload.generators.describe_generators().items():
        assert f"{name}: " in out
        for pname in info["params"]:
            assert f"    {pname} = " in out
