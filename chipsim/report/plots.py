"""Matplotlib figures: time by op kind, power over time, a per-op roofline, predicted vs measured."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from pandas.api.types import is_numeric_dtype

from chipsim.hardware.chip import Chip
from chipsim.report.result import Result

if TYPE_CHECKING:
    import pandas as pd


def plot_breakdown(results: Sequence[Result]) -> Figure:
    """Stacked bars: busy time by op kind for each chip (ms)."""
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(results) + 3), 4))
    frames = [r.ops_frame() for r in results]
    kinds = sorted({k for f in frames for k in f["kind"]})
    bottom = np.zeros(len(results))
    for kind in kinds:
        values = np.array([f.loc[f["kind"] == kind, "duration_s"].sum() * 1e3 for f in frames])
        ax.bar([r.chip for r in results], values, bottom=bottom, label=kind)
        bottom += values
    ax.plot([r.chip for r in results], [r.latency_s * 1e3 for r in results], "k_", markersize=30,
            label="end-to-end latency")
    ax.set_ylabel("time (ms)")
    ax.set_title(f"{results[0].workload}: time by op kind")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_power(results: Sequence[Result]) -> Figure:
    """Board power over the run, with each chip's power limit dashed."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for r in results:
        if not r.power_timeline:
            continue
        t = [p[0] * 1e3 for p in r.power_timeline]
        w = [p[1] for p in r.power_timeline]
        line = ax.step(t, w, where="post", label=f"{r.chip} (avg {r.avg_power_w:.0f} W)")[0]
        if r.limit_w:
            ax.axhline(r.limit_w, color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("board power (W)")
    ax.set_title(f"{results[0].workload}: power (dashed: power limit)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_roofline(result: Result, chip: Chip, dtype: str = "bf16") -> Figure:
    """Each op's achieved FLOP/s against its arithmetic intensity, under the chip's roofline."""
    frame = result.ops_frame()
    frame = frame[(frame["flops"] > 0) & (frame["bytes"] > 0) & (frame["duration_s"] > 0)]
    fig, ax = plt.subplots(figsize=(7, 5))
    peak = chip.peak(dtype)
    bw = chip.hbm.bandwidth_bytes_per_s
    x = np.logspace(-1, 4, 200)
    ax.loglog(x, np.minimum(peak, x * bw), "k-", label=f"roofline ({dtype} peak, HBM)")
    for kind, group in frame.groupby("kind"):
        ax.loglog(group["flops"] / group["bytes"], group["flops"] / group["duration_s"], "o", ms=3,
                  alpha=0.7, label=str(kind))
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved FLOP/s")
    ax.set_title(f"{result.workload} on {result.chip}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_validation(predictions: pd.DataFrame) -> Figure:
    """Predicted against measured time, log-log, one colour per op family, with a +-10% band."""
    ok = predictions[predictions["skipped_reason"] == ""]
    fig, ax = plt.subplots(figsize=(7, 6))
    lo = float(min(ok["measured_us"].min(), ok["predicted_us"].min())) * 0.7
    hi = float(max(ok["measured_us"].max(), ok["predicted_us"].max())) * 1.4
    x = np.array([lo, hi])
    ax.loglog(x, x, "k-", linewidth=0.8, label="predicted = measured")
    ax.fill_between(x, x * 0.9, x * 1.1, color="0.85", label="+-10%")
    for family, group in ok.groupby("family"):
        med = float(np.median(group["ape"]))
        ax.loglog(group["measured_us"], group["predicted_us"], "o", ms=3.5, alpha=0.75,
                  label=f"{family} (n={len(group)}, median APE {med:.1%})")
    ax.set_xlabel("measured (us)")
    ax.set_ylabel("predicted (us)")
    chips = ", ".join(sorted(set(ok["chip"])))
    ax.set_title(f"chipsim vs measurements ({chips})")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_sweep_metrics(table: pd.DataFrame, parameters: Sequence[str], metrics: Sequence[str]) -> Figure:
    """Each metric against each varied parameter, one colour per (workload, target)."""
    ok = table[table["status"] == "ok"]
    fig, axes = plt.subplots(len(metrics), len(parameters), figsize=(3.6 * len(parameters), 2.8 * len(metrics)),
                             squeeze=False)
    groups = list(ok.groupby(["workload", "target"], sort=True))
    for i, metric in enumerate(metrics):
        for j, param in enumerate(parameters):
            ax = axes[i][j]
            for (workload, target), group in groups:
                x = group[param]
                x = x if is_numeric_dtype(x) else x.astype(str)
                ax.plot(x, group[metric], "o", ms=4, alpha=0.75, label=f"{workload} / {target}")
            ax.set_xlabel(param.split(".", 1)[-1], fontsize=7)
            ax.set_ylabel(metric, fontsize=7)
            ax.tick_params(labelsize=6)
    if groups:
        axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_pareto(table: pd.DataFrame, front: pd.DataFrame, x: str = "latency_s", y: str = "energy_j") -> Figure:
    """Every design point's latency and energy, the Pareto front joined."""
    ok = table[table["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for (workload, target), group in ok.groupby(["workload", "target"], sort=True):
        ax.plot(group[x], group[y], "o", ms=4, alpha=0.6, label=f"{workload} / {target}")
    ax.plot(front[x], front[y], "k-", marker="*", ms=9, label="Pareto front")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title("design points: latency vs energy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
