"""Chrome trace event format (opens in Perfetto / chrome://tracing): one process per chip, one
thread per stream, a counter track for board power."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chipsim.report.result import Result

_STREAM_TID = {"compute": 1, "copy": 2, "comm": 3}


def chrome_trace(results: Sequence[Result]) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    for pid, result in enumerate(results, start=1):
        events.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": result.chip}})
        for stream, tid in _STREAM_TID.items():
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": stream}})
        for r in result.records:
            events.append({
                "name": r.name, "cat": r.kind, "ph": "X", "pid": pid, "tid": _STREAM_TID.get(r.stream, 9),
                "ts": r.start_s * 1e6, "dur": (r.end_s - r.start_s) * 1e6,
                "args": {"flops": r.flops, "bytes": r.bytes, "energy_j": r.energy_j, "bound": r.bound,
                         "clock_scale": r.clock_scale, "issued_us": r.issue_s * 1e6},
            })
        for t, watts in result.power_timeline:
            events.append({"name": "board power (W)", "ph": "C", "pid": pid, "ts": t * 1e6,
                           "args": {"W": round(watts, 3)}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}
