"""Fluid (max-min fair) sharing of one bandwidth among concurrent flows, as simpy events."""

from __future__ import annotations

from dataclasses import dataclass

import simpy

_EPS = 1e-12


@dataclass(eq=False)
class _Flow:
    remaining: float
    cap: float
    event: simpy.Event
    rate: float = 0.0


class FluidShare:
    """A link or memory port of `capacity` bytes/s; each flow is capped at its own max rate.

    Rates are recomputed (water-filling) whenever a flow starts or ends, so contention and overlap
    come out of the simulation. Deterministic: flows are served in arrival order on ties.
    """

    def __init__(self, env: simpy.Environment, capacity: float, name: str = "") -> None:
        self.env = env
        self.capacity = capacity
        self.name = name
        self._flows: list[_Flow] = []
        self._last = 0.0
        self._generation = 0

    def transfer(self, amount: float, cap: float) -> simpy.Event:
        event = self.env.event()
        if amount <= 0:
            event.succeed()
            return event
        self._advance()
        self._flows.append(_Flow(amount, max(cap, _EPS), event))
        self._reschedule()
        return event

    def _advance(self) -> None:
        dt = self.env.now - self._last
        if dt > 0:
            for flow in self._flows:
                flow.remaining -= flow.rate * dt
        self._last = self.env.now

    def _set_rates(self) -> None:
        left = self.capacity
        pending = sorted(self._flows, key=lambda f: f.cap)
        for index, flow in enumerate(pending):
            share = left / (len(pending) - index)
            flow.rate = min(flow.cap, share)
            left -= flow.rate

    def _reschedule(self) -> None:
        self._set_rates()
        self._generation += 1
        if not self._flows:
            return
        wait = min(max(f.remaining, 0.0) / f.rate for f in self._flows)
        generation = self._generation
        timer = self.env.timeout(wait)
        timer.callbacks.append(lambda _event: self._on_timer(generation))

    def _on_timer(self, generation: int) -> None:
        if generation != self._generation:
            return  # superseded by a later start or finish
        self._advance()
        finished = [f for f in self._flows if f.remaining <= max(_EPS, 1e-9 * f.cap)]
        if not finished:  # numerical slack: finish the closest one
            finished = [min(self._flows, key=lambda f: f.remaining / f.rate)]
        self._flows = [f for f in self._flows if f not in finished]
        for flow in finished:
            flow.event.succeed()
        self._reschedule()
