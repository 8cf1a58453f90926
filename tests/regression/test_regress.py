"""`chipsim regress`: the committed baselines hold, and a 2% change in any case fails."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from chipsim.hardware import builtin_chip_names
from chipsim.study.regress import compare, read_baselines, simulate_examples

REPO = Path(__file__).resolve().parent.parent.parent
CONFIG = """
name: tiny
chips: [h200_sxm]
workload:
  generator: all_reduce
  params: {chips: 4, size: 64 MiB}
"""


def test_committed_baselines_cover_every_config_on_every_chip() -> None:
    """Chip examples on every built-in chip; system examples on their systems; one case per workload."""
    from chipsim.config.runconfig import load_run_config

    baselines = read_baselines(REPO / "baselines" / "latencies.csv")
    expected = 0
    for path in (REPO / "configs" / "runs").glob("*.yaml"):
        config = load_run_config(path)
        if config.serving is not None:  # one case, on its own chip
            expected += 1
        else:
            targets = len(config.systems) if config.systems else len(builtin_chip_names())
            expected += targets * (1 if config.parallelism is not None else len(config.workloads))
        assert baselines["case"].str.startswith(path.stem).any(), path.stem
    assert len(baselines) == expected


def test_compare_catches_a_two_percent_change() -> None:
    baseline = read_baselines(REPO / "baselines" / "latencies.csv")
    now = baseline.copy()
    now.loc[5, "latency_s"] *= 1.02
    now.loc[7, "energy_j"] *= 0.995  # inside tolerance
    diffs = compare(baseline, now, tolerance=0.01)
    assert len(diffs) == 1
    row = diffs.iloc[0]
    assert (row["case"], row["chip"], row["metric"]) == (baseline.loc[5, "case"], baseline.loc[5, "chip"], "latency_s")
    assert row["change"] == __import__("pytest").approx(0.02)


def test_regress_cli_fails_on_drift_and_passes_after_update(cli, tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "tiny.yaml").write_text(CONFIG)
    baselines = tmp_path / "baselines.csv"
    rc, stdout, _ = cli(["regress", "--configs", configs, "--baselines", baselines, "--update"])
    assert rc == 0 and f"wrote {len(builtin_chip_names())} baselines" in stdout
    rc, stdout, _ = cli(["regress", "--configs", configs, "--baselines", baselines])
    assert rc == 0
    frame = pd.read_csv(baselines)
    frame.loc[frame["chip"] == "mi300x", "latency_s"] *= 1.02
    frame.to_csv(baselines, index=False)
    rc, stdout, _ = cli(["regress", "--configs", configs, "--baselines", baselines])
    assert rc == 1
    assert "tiny" in stdout and "mi300x" in stdout and "latency_s" in stdout and "-1.96%" in stdout


def test_regress_reports_new_and_missing_cases() -> None:
    baseline = pd.DataFrame([{"case": "a", "chip": "x", "latency_s": 1.0, "energy_j": 1.0, "status": "ok"}])
    now = pd.DataFrame([{"case": "b", "chip": "x", "latency_s": 1.0, "energy_j": 1.0, "status": "ok"}])
    metrics = set(compare(baseline, now, 0.01)["metric"])
    assert metrics == {"new case (not in baselines)", "case no longer simulated"}


def test_simulated_examples_are_deterministic(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "tiny.yaml").write_text(CONFIG)
    first, second = simulate_examples(configs), simulate_examples(configs)
    pd.testing.assert_frame_equal(first, second)
