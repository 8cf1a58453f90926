"""Sweep throughput: design points per second, local process pool vs Dask LocalCluster (2 workers).

    python3 benchmarks/bench_sweep.py [--points N]

Evaluates the same grid (a training step on two chips, varying HBM bandwidth and the weight
buffer) with each executor into a fresh folder and prints points/s. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from chipsim.study.sweep import design_points, load_sweep, run_sweep

BASE = """
name: bench
chips: [h100_sxm, h100_dwb]
workload:
  generator: transformer_train_step
  params: {model: llama-350m, layers: 8, batch: 8, seq: 2048, precision: bf16}
options: {sustained: true}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=48, help="design points (a bandwidth x capacity grid)")
    args = parser.parse_args()
    bandwidths = [1.0e12 + i * 0.25e12 for i in range(max(1, args.points // 4))]
    capacities = ["16 MiB", "32 MiB", "64 MiB", "128 MiB"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "base.yaml").write_text(BASE)
        (folder / "sweep.yaml").write_text(
            "name: bench\nbase: base.yaml\nparameters:\n"
            f"  chips.*.memory.hbm.bandwidth: {bandwidths}\n"
            f"  chips.h100_dwb.memory.weight_buffer.capacity: {capacities}\n")
        sweep = load_sweep(folder / "sweep.yaml")
        n = len(design_points(sweep))
        print(f"{n} design points x 2 chips (an 8-layer 350M-shaped bf16 training step, ~350 ops)")
        print(f"{'executor':<22} {'wall':>8} {'points/s':>9}")
        for label, executor, workers in (("local, 1 process", "local", 1), ("local, 2 processes", "local", 2),
                                         ("dask LocalCluster, 2", "dask", 2)):
            start = time.perf_counter()
            run_sweep(sweep, folder / f"out_{executor}_{workers}", executor, workers)
            wall = time.perf_counter() - start
            print(f"{label:<22} {wall:>7.2f}s {n / wall:>9.1f}")


if __name__ == "__main__":
    main()
