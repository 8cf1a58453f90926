"""Plain-text tables for the terminal."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from chipsim.config.units import format_si
from chipsim.report.result import Result


def summary_table(results: Sequence[Result]) -> str:
    rows = []
    for r in results:
        rows.append({
            "chip": r.chip,
            "latency": format_si(r.latency_s, "s"),
            "FLOP/s": format_si(r.achieved_flops_per_s, "FLOP/s"),
            "bandwidth": format_si(r.achieved_bandwidth_bytes_per_s, "B/s"),
            "avg power": f"{r.avg_power_w:.0f} W",
            "peak power": f"{r.peak_power_w:.0f} W",
            "energy": format_si(r.energy_j, "J"),
            "memory": f"{r.footprint_bytes / 1e9:.1f}/{r.capacity_bytes / 1e9:.0f} GB"
                      + ("" if r.fits_in_memory else " DOES NOT FIT"),
        })
    return pd.DataFrame(rows).to_string(index=False)


def top_ops_table(result: Result, n: int = 8) -> str:
    top = result.top_ops(n)
    if top.empty:
        return "(no ops)"
    view = pd.DataFrame({
        "op": top["group"], "kind": top["kind"], "count": top["count"],
        "time": [format_si(t, "s") for t in top["time_s"]],
        "share": [f"{s:.1%}" for s in top["share"]], "bound": top["bound"],
    })
    return view.to_string(index=False)


def render(results: Sequence[Result], workload_name: str) -> str:
    lines = [f"workload: {workload_name}", "", summary_table(results)]
    for r in results:
        lines += ["", f"{r.chip}: top ops by time", top_ops_table(r)]
        lines += [f"  note: {note}" for note in r.notes]
    return "\n".join(lines)
