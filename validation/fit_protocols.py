"""Fit NCCL/RCCL's two protocol parameters, shared by every chip (they are the library's, not a chip's):

  low_latency_bandwidth  the fraction of the bulk protocol's bandwidth the low-latency protocol
                         (LL128) reaches
  step_latency           the bulk protocol's (Simple's) synchronization cost per sequential step

on every collective row of ../shared/reference/published/calibration.csv (A100, H100, H200, B200,
MI300X; 8 GPUs in a node and 32 across four) and the 2-GPU rows of ../shared/reference/h200/
calibration.csv, by a grid search minimizing the mean over chips of each chip's median APE (each
chip counts once, however many rows it has). Prints the grid's best points and the per-chip medians.
The optimum is flat (0.058-0.060 over the best points); of those, (0.6, 2.5 us) is chosen because it
keeps the H200 reference set's collective figures (median 8.3%, p90 20.0%), which a longer step
latency degrades at 2 GPUs. The chosen values are the defaults in chipsim/hardware/chip.py.

    python3 validation/fit_protocols.py
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pandas as pd

from chipsim.hardware.registry import chip_for_device_name, load_chip
from chipsim.network import collectives
from chipsim.study.validate import read_measurements, validate

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"
FILES = (REFERENCE / "published" / "calibration.csv", REFERENCE / "h200" / "calibration.csv")
KINDS = ("all_reduce", "all_gather", "reduce_scatter")
LOW_LATENCY_BANDWIDTH = (0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9)
STEP_LATENCY_US = (0.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0)


def rows() -> pd.DataFrame:
    frames = [read_measurements(path) for path in FILES]
    frame = pd.concat([f[f["op"].isin(KINDS) & ~f["variant"].astype(str).str.contains("compressed")]
                       for f in frames], ignore_index=True)
    frame["chip_name"] = [chip_for_device_name(str(d)) for d in frame["device"]]
    return frame


def score(frame: pd.DataFrame, bandwidth: float, step_us: float) -> pd.Series:
    collectives.collective.cache_clear()
    medians = {}
    for name, part in frame.groupby("chip_name"):
        chip = load_chip(str(name))
        cal = dataclasses.replace(chip.calibration, collective_low_latency_bandwidth=bandwidth,
                                  collective_step_latency_s=step_us * 1e-6)
        predictions, _ = validate(part, chip_obj=dataclasses.replace(chip, calibration=cal))
        medians[name] = float(predictions["ape"].median())
    return pd.Series(medians)


def main() -> None:
    frame = rows()
    print(f"{len(frame)} collective rows on {frame['chip_name'].nunique()} chips")
    results = []
    for bandwidth, step_us in itertools.product(LOW_LATENCY_BANDWIDTH, STEP_LATENCY_US):
        per_chip = score(frame, bandwidth, step_us)
        results.append({"low_latency_bandwidth": bandwidth, "step_latency_us": step_us,
                        "mean_of_chip_medians": per_chip.mean(), **per_chip.round(3).to_dict()})
    table = pd.DataFrame(results).sort_values("mean_of_chip_medians")
    print(table.head(8).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    none = table[table.step_latency_us == 0.0].head(1)
    print("\nwithout the protocol split (Simple only):")
    print(none.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
