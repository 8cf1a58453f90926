"""Power: dynamic energy per op + static power, and a power-capping clock controller (DVFS).

The controller tracks an exponential running average of board power (time constant
`power.window_s`). While that average is below the limit the chip runs at its boost clock, so
short bursts exceed the limit (as measured: a 12 ms GEMM runs at 1980 MHz). Once it reaches the
limit, the clock drops to the scale s that holds power at the limit, with compute power ~ s**alpha
(f * V^2, V ~ f: alpha = 3). Memory-bound work is not slowed (the HBM clock is not scaled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from chipsim.hardware.chip import PowerModel


@dataclass(frozen=True)
class ClockPlan:
    scale: float  # clock scale after throttling kicks in (1.0: none)
    full_speed_s: float  # compute seconds run at the boost clock before throttling


class PowerController:
    def __init__(self, power: PowerModel, clock_hz: float, sustained: bool) -> None:
        self.p = power
        self.min_scale = min(1.0, power.min_clock_hz / clock_hz)
        self.average_w = power.limit_w if sustained else power.idle_w
        self.dynamic_w = 0.0  # sum over running ops
        self._last = 0.0

    def advance(self, now: float) -> None:
        dt = now - self._last
        if dt > 0:
            power = self.p.idle_w + self.dynamic_w
            self.average_w = power + (self.average_w - power) * math.exp(-dt / self.p.window_s)
            # once the average reaches the limit the controller holds it there
            self.average_w = min(self.average_w, self.p.limit_w)
        self._last = now

    def plan(self, compute_w: float, other_w: float, compute_s: float) -> ClockPlan:
        """Clock for an op drawing `compute_w` (scales with clock) + `other_w` (does not) at boost."""
        total = self.p.idle_w + self.dynamic_w + compute_w + other_w
        if total <= self.p.limit_w or compute_w <= 0:
            return ClockPlan(1.0, compute_s)
        headroom = self.p.limit_w - self.p.idle_w - self.dynamic_w - other_w
        scale = (max(headroom, 0.0) / compute_w) ** (1.0 / self.p.dvfs_exponent) if headroom > 0 else 0.0
        scale = min(1.0, max(self.min_scale, scale))
        if self.average_w >= self.p.limit_w:
            return ClockPlan(scale, 0.0)
        # time until the running average reaches the limit at this power
        t_cross = self.p.window_s * math.log((total - self.average_w) / (total - self.p.limit_w))
        return ClockPlan(scale, min(compute_s, t_cross))

    def add(self, now: float, watts: float) -> None:
        self.advance(now)
        self.dynamic_w += watts

    def remove(self, now: float, watts: float) -> None:
        self.advance(now)
        self.dynamic_w = max(0.0, self.dynamic_w - watts)
