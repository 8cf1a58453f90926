"""The discrete-event replay of an op graph on a chip (simpy)."""

from chipsim.engine.sim import SimOptions, simulate

__all__ = ["SimOptions", "simulate"]
