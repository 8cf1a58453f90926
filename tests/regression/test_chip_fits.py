"""The fitted chips reproduce what the published vendor runs saw: AMD's sustained max-achievable-FLOPS
runs state the engine clock they settled at under the power limit, and chipsim's power controller,
given each chip's limit and fitted energy per FLOP, must settle there too (MI325X: with the MI300X's
coefficients, never fitted to its own clocks)."""

from __future__ import annotations

import pytest

from chipsim.hardware.registry import load_chip
from chipsim.study.validate import single_op, sustained_loop


def sustained(chip_name: str, dtype: str, m: int, n: int, k: int) -> tuple[float, float]:
    """(settled clock MHz, TFLOP/s) of a back-to-back loop of one GEMM."""
    workload = single_op("gemm", dtype, m=m, n=n, k=k)
    loop = sustained_loop(workload, load_chip(chip_name))
    return loop.clock_hz / 1e6, workload.ops[0].flops / loop.seconds_per_call / 1e12


@pytest.mark.parametrize(("chip", "dtype", "n", "clock_mhz", "tflops"), [
    ("mi300x", "bf16", 4864, 1207, 708),   # AMD MAF table 1: 708 TFLOP/s at 1207 MHz
    ("mi300x", "fp16", 4864, 1115, 654),
    ("mi300x", "fp8", 3648, 1230, 1273),
    ("mi325x", "bf16", 4864, 1447, 843),   # 1000 W: a higher clock on the same silicon
    ("mi325x", "fp8", 3648, 1464, 1519),
])
def test_sustained_clock_and_rate_match_the_vendor_runs(chip: str, dtype: str, n: int, clock_mhz: float,
                                                        tflops: float) -> None:
    clock, rate = sustained(chip, dtype, 4096, n, 32896)
    assert clock == pytest.approx(clock_mhz, rel=0.10)
    assert rate == pytest.approx(tflops, rel=0.10)


def test_the_h200_still_settles_at_its_measured_clock() -> None:
    clock, _ = sustained("h200_sxm", "bf16", 8192, 8192, 8192)
    assert clock == pytest.approx(1695, rel=0.01)  # reference/h200/power.json
