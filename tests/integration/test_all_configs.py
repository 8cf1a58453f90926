"""Every run config shipped under configs/runs/ runs through the CLI (new configs are picked up)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import RUN_CONFIGS

from chipsim.config.runconfig import load_run_config

CONFIGS = sorted(RUN_CONFIGS.glob("*.yaml"))


def test_there_are_configs() -> None:
    assert RUN_CONFIGS / "quickstart.yaml" in CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_runs(config: Path, cli: Callable, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    rc, out, err = cli(["run", config, "--out", out_dir, "--json"])
    assert rc == 0, err
    expected = load_run_config(config)
    if expected.serving is not None:  # a serving run: one summary, the files its report asks for
        summary = json.loads(out)["serving"]
        assert summary["requests"] > 0 and summary["output_tokens_per_s"] > 0 and summary["e2e_mean_s"] > 0
        assert out_dir.exists() == bool([r for r in expected.report if r != "table"])
        return
    if expected.parallelism is not None:  # a training step on each system
        steps = json.loads(out)["training"]
        assert len(steps) == len(expected.systems)
        assert all(s["step_s"] > 0 and s["tokens_per_s_per_gpu"] > 0 for s in steps)
        assert out_dir.exists()
        return
    runs = json.loads(out)["runs"]
    assert len(runs) == (len(expected.chips) + len(expected.systems)) * len(expected.workloads)
    for run in runs:
        assert run["latency_s"] > 0, run["chip"]
        assert run["energy_j"] > 0, run["chip"]
        assert run["op_count"] > 0
    # files only where the config asks for them, all inside --out
    wanted = [r for r in expected.report if r != "table"]
    assert out_dir.exists() == bool(wanted)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if wanted else [])
