"""The calibrated model against measurements: the issue's accuracy targets on the reference set,
our own held-out H200 measurements, the power phases, and `chipsim validate` itself."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from chipsim import examples
from chipsim.hardware.registry import load_chip
from chipsim.study.validate import family_summary, read_measurements, read_power, validate, validate_power

REPO = Path(__file__).resolve().parent.parent.parent
CALIBRATION = examples.path("measurements", "h200", "calibration.csv")  # copy of reference/h200/calibration.csv
HOLDOUT = REPO / "validation" / "h200_holdout.csv"  # measured by validation/measure_h200.py

TARGETS = {"gemm": 0.08, "memory": 0.08, "elementwise": 0.08, "attention": 0.12, "collective": 0.12,
           "model_step": 0.12, "layer": 0.12}


@pytest.fixture(scope="module")
def reference_predictions() -> pd.DataFrame:
    predictions, skipped = validate(read_measurements(CALIBRATION), "h200_sxm")
    assert skipped.empty
    return predictions


@pytest.mark.parametrize("family,target", sorted(TARGETS.items()))
def test_reference_median_ape_within_target(reference_predictions: pd.DataFrame, family: str, target: float) -> None:
    summary = family_summary(reference_predictions).set_index("family")
    assert summary.loc[family, "median_ape"] <= target


def test_heldout_measurements_generalize() -> None:
    """Shapes and models the fit never saw (bar the one unaligned GEMM family it fitted)."""
    predictions, _ = validate(read_measurements(HOLDOUT), "h200_sxm")
    summary = family_summary(predictions).set_index("family")
    assert summary.loc["gemm", "median_ape"] <= 0.10
    assert summary.loc["attention", "median_ape"] <= 0.15
    train = predictions[predictions["op"] == "train_step"]
    assert len(train) >= 2 and (train["ape"] <= 0.10).all()


def test_power_phases_within_ten_percent_and_clock_settles_where_measured() -> None:
    power = validate_power(read_power(examples.path("measurements", "h200", "power.json")), load_chip("h200_sxm"))
    assert (power["ape"] <= 0.10).all()
    gemm = power.set_index("phase").loc["gemm_bf16_8192"]
    assert gemm["predicted_clock_mhz"] == pytest.approx(gemm["measured_clock_mhz"], rel=0.03)
    assert gemm["predicted_tflops"] == pytest.approx(gemm["measured_tflops"], rel=0.10)


def test_training_step_energy_within_ten_percent(reference_predictions: pd.DataFrame) -> None:
    row = reference_predictions[(reference_predictions["op"] == "train_step")
                                & (reference_predictions["dtype"] == "bf16_autocast")].iloc[0]
    assert row["predicted_energy_j"] == pytest.approx(row["energy_j_per_step"], rel=0.10)


def test_chip_yaml_holds_the_fitted_values() -> None:
    """h200_sxm.yaml's calibration block is what validation/fit_h200.py last fitted (to rounding)."""
    import sys

    sys.path.insert(0, str(REPO / "validation"))
    from fit_h200 import get

    fitted = json.loads((REPO / "validation" / "fit_h200_result.json").read_text())["fitted"]
    chip = load_chip("h200_sxm")
    for path, value in fitted.items():
        assert get(chip, path) == pytest.approx(value, rel=5e-3, abs=1e-9), path


def test_validate_cli_writes_predictions_in_input_order(cli, tmp_path: Path) -> None:
    out, plot = tmp_path / "pred.csv", tmp_path / "val.png"
    rc, stdout, _ = cli(["validate", CALIBRATION, "--chip", "h200_sxm", "--out", out, "--plot", plot])
    assert rc == 0
    assert "median APE" in stdout and "gemm" in stdout and "power phases" in stdout
    written = pd.read_csv(out)
    original = pd.read_csv(CALIBRATION)
    assert list(written.columns) == [*original.columns, "predicted_us", "ape"]
    assert written["measured_us"].tolist() == original["measured_us"].tolist()
    assert (written["predicted_us"] > 0).all()
    assert plot.stat().st_size > 10_000


def test_validate_reports_and_skips_rows_it_cannot_simulate(cli, tmp_path: Path) -> None:
    rows = pd.read_csv(CALIBRATION).head(3)
    rows.loc[1, "op"] = "conv2d"
    rows.loc[2, "device"] = "TPUv5"
    path = tmp_path / "m.csv"
    rows.to_csv(path, index=False)
    rc, stdout, _ = cli(["validate", path, "--json"])
    assert rc == 0
    report = json.loads(stdout)
    assert report["rows"] == 3 and report["simulated"] == 1
    reasons = {s["row"]: s["reason"] for s in report["skipped"]}
    assert "conv2d" in reasons[1] and "TPUv5" in reasons[2]


@pytest.mark.parametrize("content,expected", [
    ("op,variant\ngemm,square\n", "missing columns"),
    ("", "cannot read measurements"),
])
def test_validate_bad_csv_exits_2(cli, tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    rc, stdout, stderr = cli(["validate", path])
    assert rc == 2 and stdout == ""
    assert expected in stderr and str(path) in stderr and "Traceback" not in stderr


def test_validate_unknown_chip_exits_2(cli) -> None:
    rc, _, stderr = cli(["validate", CALIBRATION, "--chip", "tpu_v9"])
    assert rc == 2 and "unknown chip 'tpu_v9'" in stderr
