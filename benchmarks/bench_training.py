#!/usr/bin/env python3
"""How fast does chipsim simulate a training step under a parallel layout?

    python3 benchmarks/bench_training.py [--repeat 3]

Cases, bf16 on H100s of cluster_2048x_dgx_h100_ndr (resized to the GPUs): Llama-3-8B with TP8 on 8
GPUs; Llama-3.1-405B (TP8, PP16 with 7-layer first and last stages, global batch 2048 x 8192 tokens)
on 512, 2,048 and 16,384 GPUs; Llama-3-70B with interleaving (TP4 PP4 VP5 CP2) at 64 to 2,048 GPUs.
For each: the wall time of `simulate_training` (best of N, time.perf_counter), the schedule's ops and
the kernels simulated. The wall time follows the schedule's ops (stages x micro-batches x chunks), not
the GPU count: data-parallel replicas are folded. Then the plan search's layouts per second on one
process (Llama-3-70B on 1,024 and, with context parallelism, 2,048 GPUs; Mixtral-8x7B with expert
parallelism on 1,024). The target: the 16,384-GPU 405B step in under 10 s on one core. Nothing
here asserts on time.
"""

from __future__ import annotations

import argparse
import math
import time

from chipsim.models import load_model, resolve_layout
from chipsim.network.system import load_system
from chipsim.training import simulate_training
from chipsim.training.plan import plan_layouts

CLUSTER = "cluster_2048x_dgx_h100_ndr"


def cases() -> list[tuple[str, str, int, dict[str, int]]]:
    big = {"tp": 8, "pp": 16, "first_stage_layers": 7, "last_stage_layers": 7, "seq": 8192}
    return [
        ("llama3-8b TP8", "llama3-8b", 8, {"tp": 8, "global_batch": 64, "seq": 8192}),
        *[("llama3.1-405b TP8 PP16", "llama3.1-405b", n, {**big, "global_batch": 2048}) for n in (512, 2048, 16384)],
        *[("llama3-70b TP4 PP4 VP5 CP2", "llama3-70b", n,
           {"tp": 4, "pp": 4, "vp": 5, "cp": 2, "seq": 8192, "global_batch": 2 * n}) for n in (64, 512, 2048)],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'case':28s} {'GPUs':>7s} {'micro-batches':>13s} {'schedule ops':>12s} {'kernels':>8s} "
          f"{'step (sim.)':>11s} {'wall':>8s}")
    walls: dict[str, list[tuple[int, float]]] = {}
    for label, model_id, gpus, sizes in cases():
        model = load_model(model_id)
        layout = resolve_layout(model, gpus, zero=1, micro_batch=1, **sizes)
        system = load_system(CLUSTER, overrides={"nodes": max(1, gpus // 8)})
        best = math.inf
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = simulate_training(model, layout, system)
            best = min(best, time.perf_counter() - start)
        kernels = sum(p.ops for p in result.pieces)
        print(f"{label:28s} {gpus:7,d} {layout.num_microbatches:13,d} {result.schedule_ops:12,d} {kernels:8,d} "
              f"{result.step_s:10.2f}s {best:7.2f}s")
        walls.setdefault(label, []).append((gpus, best))
    # the plan search: every layout, one process (pipelines list-scheduled, the best 10 again on the engine)
    print()
    for model_id, gpus, global_batch, seq in (("llama3-70b", 1024, 512, 4096), ("llama3-70b", 2048, 1024, 8192),
                                              ("mixtral-8x7b", 1024, 1024, 4096)):
        model = load_model(model_id)
        system = load_system(CLUSTER, overrides={"nodes": gpus // 8})
        start = time.perf_counter()
        table = plan_layouts(model, system, gpus, global_batch, seq, workers=1)
        seconds = time.perf_counter() - start
        simulated = int(table["fits"].sum())
        print(f"plan: {model_id} on {gpus:,} GPUs, global batch {global_batch}, seq {seq}: {len(table)} layouts, "
              f"{simulated} simulated in {seconds:.1f} s on one process: {simulated / seconds:.1f} layouts/s "
              f"({simulated / seconds * 60:,.0f} a minute)")
    target = next(w for g, w in walls["llama3.1-405b TP8 PP16"] if g == 16384)
    print(f"\ntarget: the 405B step on 16,384 GPUs under 10 s: {target:.2f} s  {'PASS' if target < 10 else 'MISS'}")


if __name__ == "__main__":
    main()
