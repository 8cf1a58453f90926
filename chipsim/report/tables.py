"""Plain-text tables for the terminal."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from chipsim.config.units import format_si
from chipsim.report.result import Result


def summary_table(results: Sequence[Result]) -> str:
    rows = []
    several = len({r.workload for r in results}) > 1
    for r in results:
        rows.append({
            **({"workload": r.workload} if several else {}),
            "target": r.target,
            "latency": format_si(r.latency_s, "s"),
            "FLOP/s": format_si(r.achieved_flops_per_s, "FLOP/s"),
            "bandwidth": format_si(r.achieved_bandwidth_bytes_per_s, "B/s"),
            "avg power": f"{r.avg_power_w:.0f} W",
            "peak power": f"{r.peak_power_w:.0f} W",
            "energy": format_si(r.energy_j, "J"),
            "memory": (f"{r.footprint_bytes / 1e9:.1f}/{r.capacity_bytes / 1e9:.0f} GB"
                       + ("" if r.fits_in_memory else " DOES NOT FIT")) if r.memory_breakdown else "unknown",
            **({"exposed comm": format_si(r.exposed_comm_s, "s")} if any(x.exposed_comm_s for x in results) else {}),
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


def render(results: Sequence[Result]) -> str:
    """One summary table; per-target top ops and notes when the run has a single workload."""
    workloads = sorted({r.workload for r in results})
    lines = [f"workload: {workloads[0]}" if len(workloads) == 1 else f"{len(workloads)} workloads", "",
             summary_table(results)]
    for r in results:
        if len(workloads) == 1:
            lines += ["", f"{r.target}: top ops by time", top_ops_table(r)]
            lines += [f"  note: {note}" for note in r.notes]
        else:
            lines += [f"  {r.workload} on {r.target}: {note}" for note in r.notes if not note.startswith("ran:")]
    return "\n".join(lines)
