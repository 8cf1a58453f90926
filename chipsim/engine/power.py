"""Power: dynamic energy per op plus static power, and a power-capping clock controller (DVFS).

The clock is one slow state of the chip, not a per-kernel choice. The controller keeps an
exponential running average of board power (time constant `power.window_s`). While that average is
below the limit the clock returns to boost, so short bursts run above the limit (as measured: a
12 ms GEMM runs at 1980 MHz). While the average is above the limit, the clock scale s falls, in
proportion to the excess and the time elapsed: d(log s)/dt = log(limit / average) / (alpha * window).
Compute power goes as s**alpha (f * V^2 with V ~ f: alpha = 3), so compute time stretches by 1/s
and compute energy per operation by s**(alpha - 1); memory traffic is not slowed (the HBM clock is
not scaled). A sustained single kernel settles where its power meets the limit (the H200's bf16
GEMM at ~1690 MHz); a mix of kernels settles where their *average* power meets it, so GEMMs in a
training step slow far less than in a pure GEMM loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from chipsim.hardware.chip import PowerModel

MAX_LOG_STEP = 50.0  # exp(50) lifts any scale above min_clock / clock back to 1


class PowerController:
    def __init__(self, power: PowerModel, clock_hz: float, initial_scale: float = 1.0,
                 sustained: bool = False) -> None:
        self.p = power
        self.min_scale = min(1.0, power.min_clock_hz / clock_hz)
        self.scale = max(self.min_scale, min(1.0, initial_scale))
        self.average_w = power.limit_w if sustained else power.idle_w
        self.dynamic_w = 0.0  # sum over running ops
        self._last = 0.0

    def advance(self, now: float) -> None:
        dt = now - self._last
        if dt <= 0:
            return
        power = self.p.idle_w + self.dynamic_w
        decay = math.exp(-dt / self.p.window_s)
        self.average_w = power + (self.average_w - power) * decay
        if self.average_w > self.p.limit_w or self.scale < 1.0:
            step = math.log(self.p.limit_w / self.average_w) * dt / (self.p.dvfs_exponent * self.p.window_s)
            # the scale is clamped to [min, 1] anyway; bounding the exponent keeps a very long op
            # (hours of simulated time) from overflowing
            self.scale = max(self.min_scale, min(1.0, self.scale * math.exp(min(step, MAX_LOG_STEP))))
        self._last = now

    def add(self, now: float, watts: float) -> None:
        self.advance(now)
        self.dynamic_w += watts

    def remove(self, now: float, watts: float) -> None:
        self.advance(now)
        self.dynamic_w = max(0.0, self.dynamic_w - watts)


def sustained_scale(power: PowerModel, min_scale: float,
                    parts: Sequence[tuple[float, float, float, float]]) -> float:
    """The clock scale a loop of these ops settles at when run back to back: the largest s whose
    average power, idle + E(s) / T(s), is within the limit. Each part is one op as (seconds the clock
    does not stretch, compute seconds at boost, compute joules at boost, memory joules)."""
    alpha = power.dvfs_exponent
    table = np.asarray(parts, dtype=float).reshape(-1, 4)
    other, compute = table[:, 0], table[:, 1]
    compute_j, memory_j = float(table[:, 2].sum()), float(table[:, 3].sum())

    def average(s: float) -> float:
        seconds = float(np.maximum(other, compute / s).sum())
        joules = compute_j * s ** (alpha - 1) + memory_j
        return power.idle_w + joules / seconds if seconds > 0 else power.idle_w

    if average(1.0) <= power.limit_w:
        return 1.0
    lo, hi = min_scale, 1.0
    if average(lo) > power.limit_w:
        return lo
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if average(mid) <= power.limit_w else (lo, mid)
    return lo
