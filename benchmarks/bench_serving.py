#!/usr/bin/env python3
"""How fast does chipsim simulate LLM serving at saturation?

    python3 benchmarks/bench_serving.py [--repeat 2] [--quick]

Llama-3-8B on h100_sxm with the trtllm engine profile (bf16, KV cache bf16), requests of lognormal
input lengths (mean 1,024 tokens, sigma 0.4, at most 4,096) and uniform output lengths (64 to 512),
sampled by the `serving:` config with seed 0. Cases: 10,000 requests in a burst (all at t = 0) and as
a Poisson stream at twice the burst's throughput (above capacity: the queue only grows), and the burst
with EAGLE speculative decoding (3 drafted tokens, acceptance 0.7: no batched decode stretches, each
step's accepted tokens drawn per sequence); then bursts of
1,000, 10,000 and 100,000 requests (`--quick`: not the 100,000), and the growth exponent of the wall
time against the requests (a power-law fit).

For each case: the engine iterations simulated, the simulated run (makespan, requests/s, mean batch),
the wall time of `simulate_serving` (best of N, time.perf_counter) and iterations per second. Each
repetition starts from a fresh `IterationModel`, as a run does: its cache of iteration costs is empty.
Then one instrumented pass of the 10,000-request burst splits its wall time between the iteration cost
model (`IterationModel.step`) and the scheduler. The target: 10,000 requests at saturation in under
10 s on one core. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np

from chipsim.config.runconfig import parse_run_config
from chipsim.serving.config import ServingSetup, resolve_serving
from chipsim.serving.engine import ServingTrace, simulate_serving
from chipsim.serving.iteration import IterationModel, StepCost

TARGET_S = 10.0  # 10,000 requests of an 8B model at saturation, on one core
EAGLE = {"method": "eagle", "tokens": 3, "acceptance": 0.7}  # speculative decoding: every step drawn per sequence
SERVING: dict[str, Any] = {
    "model": "llama3-8b", "chip": "h100_sxm", "engine": "trtllm", "seed": 0,
    "lengths": {"input": {"dist": "lognormal", "mean": 1024, "sigma": 0.4, "max": 4096},
                "output": {"dist": "uniform", "low": 64, "high": 512}},
}


def setup_for(requests: int, arrival: dict[str, Any], **extra: Any) -> ServingSetup:
    return resolve_serving(parse_run_config({"serving": {**SERVING, "requests": requests, "arrival": arrival,
                                                         **extra}}))


def fresh_model(setup: ServingSetup) -> IterationModel:
    """The setup's iteration model with empty cost caches."""
    return IterationModel(setup.model, setup.chip, setup.quant, setup.profile, tp=setup.tp, kv_dtype=setup.kv_dtype,
                          system=setup.system, speculation=setup.iteration.speculation)


def timed(setup: ServingSetup, repeat: int) -> tuple[float, ServingTrace]:
    """Best wall time of `simulate_serving` over `repeat` runs (the model and arrivals built untimed)."""
    best, trace = math.inf, None
    for _ in range(repeat):
        model, arrivals = fresh_model(setup), setup.arrivals()
        start = time.perf_counter()
        trace = simulate_serving(model, arrivals)
        best = min(best, time.perf_counter() - start)
    assert trace is not None
    return best, trace


def row(label: str, requests: int, wall: float, trace: ServingTrace) -> str:
    return (f"{label:34s} {requests:9,d} {trace.iterations:10,d} {trace.makespan_s:9,.0f}s "
            f"{requests / trace.makespan_s:7.2f} {trace.batch_mean:6.0f} {wall:7.2f}s {trace.iterations / wall:9,.0f}")


def cost_model_share(setup: ServingSetup) -> tuple[float, float, int, int]:
    """One run with `IterationModel.step` timed: (wall s, s in step, step calls, cost-cache entries)."""
    model = fresh_model(setup)
    inner = model.step
    spent, calls = 0.0, 0

    def step(*args: Any) -> StepCost:
        nonlocal spent, calls
        t = time.perf_counter()
        out = inner(*args)
        spent += time.perf_counter() - t
        calls += 1
        return out

    model.step = step  # type: ignore[method-assign]
    arrivals = setup.arrivals()
    start = time.perf_counter()
    simulate_serving(model, arrivals)
    return time.perf_counter() - start, spent, calls, len(model._step_cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="leave out the 100,000-request burst")
    args = parser.parse_args()
    print("llama3-8b on h100_sxm, trtllm, bf16; input lognormal(mean 1024, sigma 0.4, max 4096), "
          "output uniform(64-512)")
    print(f"{'case':34s} {'requests':>9s} {'iterations':>10s} {'makespan':>10s} {'req/s':>7s} {'batch':>6s} "
          f"{'wall':>8s} {'iter/s':>9s}")
    burst_10k = setup_for(10_000, {"process": "burst"})
    wall, trace = timed(burst_10k, args.repeat)
    print(row("burst (all at t = 0)", 10_000, wall, trace))
    saturation = 10_000 / trace.makespan_s
    rate = 2 * saturation
    poisson_wall, poisson = timed(setup_for(10_000, {"process": "poisson", "rate": rate}), args.repeat)
    print(row(f"Poisson {rate:.1f} req/s (2x capacity)", 10_000, poisson_wall, poisson))
    spec_wall, spec = timed(setup_for(10_000, {"process": "burst"}, speculative=EAGLE), args.repeat)
    print(row("burst, EAGLE (3 tokens, 0.7)", 10_000, spec_wall, spec))
    print()
    growth: list[tuple[int, float]] = []
    for n in (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000):
        w, t = (wall, trace) if n == 10_000 else timed(setup_for(n, {"process": "burst"}), args.repeat)
        print(row("burst", n, w, t))
        growth.append((n, w))
    slope = float(np.polyfit(np.log([n for n, _ in growth]), np.log([w for _, w in growth]), 1)[0])
    print(f"\ngrowth: wall time ~ requests^{slope:.2f} ({growth[0][0]:,} to {growth[-1][0]:,} requests, bursts)")
    total, spent, calls, entries = cost_model_share(burst_10k)
    print(f"10,000-request burst, instrumented: {total:.2f} s, of which the iteration cost model "
          f"(IterationModel.step) {spent:.2f} s ({spent / total:.0%}): {calls:,} calls, {entries:,} distinct "
          f"shapes costed; the scheduler {total - spent:.2f} s")
    worst = max(wall, poisson_wall, spec_wall)
    print(f"\ntarget: 10,000 requests at saturation under {TARGET_S:.0f} s on one core: {worst:.2f} s  "
          f"{'PASS' if worst < TARGET_S else 'MISS'}")


if __name__ == "__main__":
    main()
