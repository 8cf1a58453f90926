"""Running a resolved `serving:` section (`chipsim.serving.config.ServingSetup`): the engine simulation,
the summary (`metrics.summarize` plus the run's inputs and per-GPU figures) and the per-request table."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from chipsim.serving.config import ServingSetup
from chipsim.serving.disagg import simulate_disaggregated, simulate_dp_ranks
from chipsim.serving.engine import IterationLog, ServingTrace, simulate_serving
from chipsim.serving.metrics import request_frame, summarize


@dataclass
class ServingRun:
    setup: ServingSetup
    trace: ServingTrace
    summary: dict[str, Any]  # SI units: seconds, tokens/s, requests/s, watts, joules

    def requests_frame(self) -> pd.DataFrame:
        return request_frame(self.trace)

    def iteration_log(self) -> IterationLog:
        """Every iteration of the run (timeline.json's engine track): the trace's log, or, for a run
        simulated without one, the same simulation run again with it (the engine is deterministic:
        the same requests give the same iterations, number for number)."""
        if self.trace.steps is None:
            self.trace.steps = simulate(self.setup, log=True).steps
        assert self.trace.steps is not None
        return self.trace.steps


def run_serving(setup: ServingSetup, progress: Callable[[int, int], None] | None = None, *,
                log: bool = False) -> ServingRun:
    """Simulate `setup`; `log`: keep every iteration (`ServingTrace.steps`), for a timeline."""
    trace = simulate(setup, progress, log=log)
    return ServingRun(setup, trace, summary_of(setup, trace))


def simulate(setup: ServingSetup, progress: Callable[[int, int], None] | None = None,
             log: bool = False) -> ServingTrace:
    """The engine's trace of `setup`: one instance, or disaggregated prefill and decode instances."""
    if setup.disagg is not None:
        return simulate_disaggregated(setup.disagg, setup.arrivals(), progress, log=log)
    if setup.dp_attention:
        return simulate_dp_ranks(setup.iteration, setup.arrivals(), progress, log=log)
    return simulate_serving(setup.iteration, setup.arrivals(), progress, log=log)


def summary_of(setup: ServingSetup, trace: ServingTrace) -> dict[str, Any]:
    """The run's inputs, then `metrics.summarize`'s figures (plain floats), plus the total throughput
    per GPU and the energy of the whole run on all its GPUs."""
    figures = summarize(trace, setup.gpus)
    out: dict[str, Any] = setup.describe()
    for key, value in figures.items():
        out[key] = float(value) if isinstance(value, float) else value  # numpy scalars made plain
    span = trace.makespan_s
    out["total_tokens_per_s_per_gpu"] = out["total_tokens_per_s"] / setup.gpus if span else math.nan
    out["energy_j"] = trace.energy_j * setup.gpus
    return out
