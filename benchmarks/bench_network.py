#!/usr/bin/env python3
"""How fast is chipsim's network model? Time flow-level collectives and data-parallel steps on clusters.

    python3 benchmarks/bench_network.py [--repeat 3]

Cases (built-in clusters; the largest is cluster_2048x_dgx_h100_ndr with `nodes: 16384` and radix-128
switches, since a three-tier tree of radix-64 switches holds 65,536 NICs):
  all-reduce       a 1 GiB all-reduce over every GPU of a 2,048-GPU two-tier cluster, a 16,384-GPU
                   three-tier cluster and a 131,072-GPU three-tier cluster, algorithm auto
                   (hierarchical): idle with ECMP routing, then with background_load 0.3 under ECMP
                   and under adaptive routing (the contended cases are the expensive ones)
  dp step          one data-parallel Llama-2-7B training step (batch 1, seq 4096) on 2,048 and 16,384
                   GPUs, its gradient buckets all-reduced over the cluster
  gradient sync    configs/runs/gradient_sync_256_nodes.yaml through chipsim.api.run, if that file exists

Every repetition gets a freshly loaded System, so chipsim's caches (keyed on the System object) never
carry a collective or a topology over from one repetition to the next. For each case: GPUs, the
all-reduce algorithm chosen, flows the flow-level simulator ran and the collective steps they stand
for, ops and all-reduces (training step and run config), simulated time and exposed communication,
wall time (best and median of N, time.perf_counter) and, for the 16,384-GPU all-reduces, peak Python
memory (tracemalloc) in a separate untimed pass. It then fits the growth exponent of wall time
against GPUs (least squares on log-log) for the idle and the adaptive-under-load series. Targets:
the 16,384-GPU adaptive all-reduce under load under 10 s, the idle 131,072-GPU one under 30 s, growth
no faster than N log N (an exponent below 1.2 over this range), the 256-node gradient-sync run under
30 s (PASS/MISS on the last lines). Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import chipsim
from chipsim import api
from chipsim.config.runconfig import load_run_config
from chipsim.network import collective, load_system
from chipsim.network import collectives as net_collectives
from chipsim.network.fabric import Fabric
from chipsim.network.system import System

ROOT = Path(__file__).resolve().parents[1]
GRADIENT_SYNC = ROOT / "configs" / "runs" / "gradient_sync_256_nodes.yaml"
ALL_REDUCE_BYTES = float(2**30)  # 1 GiB per rank
CLUSTERS: dict[int, tuple[str, dict[str, Any]]] = {  # GPUs -> built-in system, overrides
    2048: ("cluster_256x_dgx_h100_ndr", {}),
    16384: ("cluster_2048x_dgx_h100_ndr", {}),
    131072: ("cluster_2048x_dgx_h100_ndr", {"nodes": 16384, "scale_out": {"switch_radix": 128}}),
}
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("ecmp", {"routing": "ecmp", "background_load": 0.0}),
    ("ecmp, bg 0.3", {"routing": "ecmp", "background_load": 0.3}),
    ("adaptive, bg 0.3", {"routing": "adaptive", "background_load": 0.3}),
)
DP_STEP = {"model": "llama-2-7b", "batch": 1, "seq": 4096}
TARGET_ADAPTIVE_16K_S = 10.0  # 1 GiB, adaptive routing, 30% background load, 16,384 GPUs
TARGET_IDLE_131K_S = 30.0  # 1 GiB, idle, 131,072 GPUs
TARGET_EXPONENT = 1.2  # N log N over 2k..131k GPUs fits an exponent of about 1.1
TARGET_GRADIENT_SYNC_S = 30.0  # the 256-node gradient-sync run config


@dataclass
class Outcome:
    """What one repetition simulated (the same every repetition; the last one is kept)."""

    algorithm: str = "-"
    ops: int | None = None
    buckets: int | None = None  # all-reduce ops (a DP step's gradient buckets)
    simulated_s: float = 0.0  # the collective's time, or the step's latency
    exposed_s: float | None = None


@dataclass
class Case:
    name: str
    gpus: int
    prepare: Callable[[], object]  # untimed: loads what `run` takes (a fresh System, a config)
    run: Callable[[object], Outcome]  # timed
    trace_memory: bool = False


@dataclass
class Row:
    name: str
    gpus: int
    outcome: Outcome
    flows: int
    steps: int
    best_s: float
    median_s: float
    peak_mib: float | None = None


class FlowCount:
    """Counts what the flow-level simulator actually runs: flows per simulated phase, and the
    collective steps each phase stands for (a ring step simulated once counts `repeat` steps).
    Collectives answered from chipsim's cache are not simulated again, so they add nothing."""

    def __init__(self) -> None:
        self.flows = 0
        self.steps = 0

    @contextmanager
    def active(self) -> Iterator[FlowCount]:
        original = net_collectives.simulate_phase

        def counted(topo: Any, phase: Any) -> tuple[float, int, float]:
            seconds, flows, latency = original(topo, phase)
            if flows:
                self.flows += flows
                self.steps += phase.repeat
            return seconds, flows, latency

        net_collectives.simulate_phase = counted  # looked up at call time by `collective`
        try:
            yield self
        finally:
            net_collectives.simulate_phase = original


def cluster(gpus: int, **overrides: Any) -> System:
    """A new System object on every call (load_system builds one each time), so nothing is cached."""
    name, base = CLUSTERS[gpus]
    return load_system(name, overrides={**base, **overrides})


def all_reduce_algorithms(records: list[Any]) -> str:
    """The algorithms the system chose for the all-reduce ops (their mode reads 'all_reduce ALGO over ...')."""
    chosen = {rec.mode.split()[1] for rec in records if rec.kind == "all_reduce" and " over " in rec.mode}
    return "/".join(sorted(chosen)) or "-"


def all_reduce_case(gpus: int, label: str, overrides: dict[str, Any]) -> Case:
    def prepare() -> object:
        return cluster(gpus, **overrides)

    def run(system: object) -> Outcome:
        assert isinstance(system, System)
        report = collective(system, "all_reduce", ALL_REDUCE_BYTES, system.world, "auto")
        return Outcome(algorithm=report.algorithm, simulated_s=report.seconds)

    return Case(f"all-reduce 1 GiB, {label}", gpus, prepare, run, trace_memory=gpus == 16384)


def dp_step_case(gpus: int) -> Case:
    workload = chipsim.build_workload("data_parallel_train_step", {**DP_STEP, "ranks": gpus})  # built once, untimed
    buckets = sum(1 for op in workload.ops if op.kind == "all_reduce")
    options = chipsim.SimOptions(sustained=True)

    def prepare() -> object:
        return cluster(gpus)

    def run(system: object) -> Outcome:
        assert isinstance(system, System)
        result = chipsim.simulate(workload, system.chip, options, Fabric(system))
        return Outcome(algorithm=all_reduce_algorithms(result.records), ops=len(result.records), buckets=buckets,
                       simulated_s=result.latency_s, exposed_s=result.exposed_comm_s)

    return Case("dp step llama-2-7b", gpus, prepare, run)


def config_case(path: Path) -> Case:
    config = load_run_config(path)
    gpus = max((t.network.system.world for t in api.load_targets(config) if isinstance(t.network, Fabric)), default=0)

    def prepare() -> object:
        return config  # api.run loads the config's systems itself: fresh System objects every call

    def run(loaded: object) -> Outcome:
        results = api.run(loaded)  # type: ignore[arg-type]
        records = [rec for r in results for rec in r.records]
        return Outcome(
            algorithm=all_reduce_algorithms(records),
            ops=len(records),
            buckets=sum(1 for rec in records if rec.kind == "all_reduce"),
            simulated_s=max((r.latency_s for r in results), default=0.0),
            exposed_s=max((r.exposed_comm_s for r in results), default=0.0),
        )

    return Case(path.name, gpus, prepare, run)


def timed(fn: Callable[[], Outcome]) -> tuple[float, Outcome]:
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(case: Case, repeat: int) -> Row:
    times = []
    outcome = Outcome()
    count = FlowCount()
    for _ in range(repeat):
        prepared = case.prepare()
        count = FlowCount()
        with count.active():
            seconds, outcome = timed(lambda p=prepared: case.run(p))  # type: ignore[misc]
        times.append(seconds)
        del prepared
    peak = None
    if case.trace_memory:  # peak of one run (fresh system), traced separately: tracing slows Python down
        prepared = case.prepare()
        gc.collect()
        tracemalloc.start()
        case.run(prepared)
        _, peak_bytes = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak = peak_bytes / 2**20
    return Row(case.name, case.gpus, outcome, count.flows, count.steps, min(times), statistics.median(times), peak)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.1f} ms"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def render(rows: list[Row], repeat: int) -> str:
    header = ("case", "GPUs", "algorithm", "flows", "steps", "ops", "all-reduces", "simulated", "exposed comm",
              f"wall best/{repeat}", "wall median", "peak mem")
    body = [
        (
            r.name,
            f"{r.gpus:,}" if r.gpus else "-",
            r.outcome.algorithm,
            _int(r.flows),
            _int(r.steps),
            _int(r.outcome.ops),
            _int(r.outcome.buckets),
            _ms(r.outcome.simulated_s),
            _ms(r.outcome.exposed_s),
            _ms(r.best_s),
            _ms(r.median_s),
            "-" if r.peak_mib is None else f"{r.peak_mib:.1f} MiB",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(w) if i <= 2 and i != 1 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def verdict(seconds: float, target: float) -> str:
    return "PASS" if seconds < target else "MISS"


def growth_exponent(rows: list[Row]) -> float:
    """Least-squares slope of log(wall time) against log(GPUs)."""
    x = np.log([r.gpus for r in rows])
    y = np.log([r.best_s for r in rows])
    return float(np.polyfit(x, y, 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions per case (default 3)")
    args = parser.parse_args(argv)
    repeat = max(1, args.repeat)

    cases = [all_reduce_case(gpus, label, overrides) for label, overrides in VARIANTS for gpus in CLUSTERS]
    cases += [dp_step_case(2048), dp_step_case(16384)]
    skipped = None
    if GRADIENT_SYNC.is_file():
        cases.append(config_case(GRADIENT_SYNC))
    else:
        skipped = f"skipped {GRADIENT_SYNC.relative_to(ROOT)}: the file does not exist"
    print(f"chipsim {chipsim.__version__}, Python {sys.version.split()[0]}; wall times are best and median of "
          f"{repeat}, a fresh System each repetition", flush=True)
    rows = []
    for case in cases:
        print(f"  running {case.name} on {case.gpus:,} GPUs ...", file=sys.stderr, flush=True)
        rows.append(measure(case, repeat))
    print(render(rows, repeat))
    if skipped:
        print(f"\n{skipped}")

    def series(label: str) -> list[Row]:
        return [r for r in rows if r.name == f"all-reduce 1 GiB, {label}"]

    print("\ngrowth of wall time with GPUs (2,048 -> 131,072), exponent of a power law fit:")
    exponents = {label: growth_exponent(series(label)) for label, _ in VARIANTS}
    for label, exponent in exponents.items():
        print(f"  {label:<18} N^{exponent:.2f}")
    print("\ntargets:")
    adaptive_16k = next(r for r in series("adaptive, bg 0.3") if r.gpus == 16384)
    idle_131k = next(r for r in series("ecmp") if r.gpus == 131072)
    worst = max(exponents.values())
    print(f"  1 GiB all-reduce, adaptive routing, 30% background, 16,384 GPUs under {TARGET_ADAPTIVE_16K_S:.0f} s: "
          f"best {adaptive_16k.best_s:.3f} s  {verdict(adaptive_16k.best_s, TARGET_ADAPTIVE_16K_S)}")
    print(f"  1 GiB all-reduce, idle, 131,072 GPUs under {TARGET_IDLE_131K_S:.0f} s: "
          f"best {idle_131k.best_s:.3f} s  {verdict(idle_131k.best_s, TARGET_IDLE_131K_S)}")
    print(f"  growth no faster than N log N (exponent < {TARGET_EXPONENT}): worst N^{worst:.2f}  "
          f"{verdict(worst, TARGET_EXPONENT)}")
    sync = [r for r in rows if r.name == GRADIENT_SYNC.name]
    if sync:
        print(f"  256-node gradient-sync run under {TARGET_GRADIENT_SYNC_S:.0f} s: best {sync[0].best_s:.3f} s  "
              f"{verdict(sync[0].best_s, TARGET_GRADIENT_SYNC_S)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
