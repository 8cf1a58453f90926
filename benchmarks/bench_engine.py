#!/usr/bin/env python3
"""How fast is the chipsim engine? Build and replay a few op graphs and time them.

    python3 benchmarks/bench_engine.py [--repeat 3]

Cases:
  llama-2-7b bf16  one 32-layer Llama-2-7B training step (batch 1, seq 4096, bf16) on h200_sxm
  llama-2-7b fp8   the same step with FP8 block linears (about twice the ops: casts, transposes)
  quickstart       configs/runs/quickstart.yaml as `chipsim run` does it (its workload on all its chips)

For each case: op count, graph build time (best of N), simulation wall time (best and median of N,
time.perf_counter), ops simulated per second (from the best time) and peak Python memory during one
build + simulate (tracemalloc, measured in a separate untimed pass, since tracing slows Python down).
The target is a 7B step in under 1 s on one core. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import chipsim
from chipsim import api
from chipsim.config.runconfig import load_run_config

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "runs" / "quickstart.yaml"
TARGET_S = 1.0  # a 7B training step should simulate in under a second on one core

LLAMA_7B = {"model": "llama-2-7b", "batch": 1, "seq": 4096, "precision": "bf16"}


@dataclass
class Case:
    name: str
    build: Callable[[], object]  # returns what `simulate` takes
    simulate: Callable[[object], int]  # returns the number of ops simulated


@dataclass
class Row:
    name: str
    ops: int
    build_s: float
    sim_best_s: float
    sim_median_s: float
    peak_mib: float

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.sim_best_s if self.sim_best_s > 0 else float("inf")


def train_case(name: str, params: dict[str, object], chip_name: str = "h200_sxm") -> Case:
    chip = chipsim.load_chip(chip_name)

    def build() -> object:
        return chipsim.build_workload("transformer_train_step", params)

    def simulate(workload: object) -> int:
        result = chipsim.simulate(workload, chip)  # type: ignore[arg-type]
        return len(result.records)

    return Case(name, build, simulate)


def config_case(name: str, path: Path) -> Case:
    config = load_run_config(path)
    chips = api.load_chips(config.chips, config.file)
    options = chipsim.SimOptions(launch=config.launch, sustained=config.sustained)

    def build() -> object:
        return api.workload_from_spec(config.workload)

    def simulate(workload: object) -> int:
        return sum(len(chipsim.simulate(workload, chip, options).records) for chip in chips)  # type: ignore[arg-type]

    return Case(f"{name} ({len(chips)} chips)", build, simulate)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(case: Case, repeat: int) -> Row:
    build_times, sim_times = [], []
    ops = 0
    for _ in range(repeat):
        seconds, workload = timed(case.build)
        build_times.append(seconds)
        seconds, ops = timed(lambda w=workload: case.simulate(w))  # type: ignore[misc]
        sim_times.append(seconds)
        del workload
    # peak memory of one build + simulate, traced separately (tracing slows everything down)
    gc.collect()
    tracemalloc.start()
    case.simulate(case.build())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return Row(
        case.name, int(ops), min(build_times), min(sim_times), statistics.median(sim_times), peak / 2**20
    )


def render(rows: list[Row], repeat: int) -> str:
    header = ("case", "ops", "build", f"sim best/{repeat}", "sim median", "ops/s", "peak mem")
    body = [
        (
            r.name,
            f"{r.ops:,}",
            f"{r.build_s * 1e3:.1f} ms",
            f"{r.sim_best_s * 1e3:.1f} ms",
            f"{r.sim_median_s * 1e3:.1f} ms",
            f"{r.ops_per_s:,.0f}",
            f"{r.peak_mib:.1f} MiB",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions per case (default 3)")
    args = parser.parse_args(argv)
    repeat = max(1, args.repeat)

    cases = [
        train_case("llama-2-7b bf16 step", LLAMA_7B),
        train_case("llama-2-7b fp8 step", {**LLAMA_7B, "precision": "fp8"}),
        config_case("quickstart", QUICKSTART),
    ]
    print(
        f"chipsim {chipsim.__version__}, Python {sys.version.split()[0]}; "
        f"sim times are wall clock, best and median of {repeat}",
        flush=True,
    )
    rows = []
    for case in cases:
        print(f"  running {case.name} ...", file=sys.stderr, flush=True)
        rows.append(measure(case, repeat))
    print(render(rows, repeat))
    first = rows[0]
    verdict = "meets" if first.sim_best_s < TARGET_S else "misses"
    print(
        f"\ntarget: a Llama-2-7B training step in under {TARGET_S:.0f} s on one core; "
        f"best {first.sim_best_s:.3f} s ({verdict} it)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
