"""Chrome trace event format (opens in Perfetto / chrome://tracing): one process per chip, one
thread per (device, stream), dependency arrows as flow events, a counter track for board power.

Time. The format's `ts` and `dur` are microseconds; trace processors turn them into integer
nanoseconds (Perfetto's JSON importer reads the number's text and keeps three decimals, i.e.
`ns = round(value * 1000)`). So every time here is first rounded to an integer nanosecond, and
`ts = start_ns / 1000`, `dur = (end_ns - start_ns) / 1000` are written as decimals with at most three
fractional digits: the importer gets back exactly `start_ns` and `end_ns - start_ns`, and two ops
that follow each other on one stream (the engine runs a (device, stream) queue in order) can never
overlap after the conversion. `displayTimeUnit` is left out on purpose: the spec makes it a display
hint only, but older Perfetto releases read `"ns"` as the unit of `ts`.

Threads. One thread per (device, stream) of the op records, numbered in (device, stream) order
(compute, copy, comm, then any other stream by name) and named "dev{d} {stream}". Should two ops on
one queue ever overlap, the later one goes to an overflow thread "dev{d} {stream} #2" (and so on),
so every thread's slices are disjoint or nested, as the format requires.

Flows. Each dependency of an op (`OpRecord.deps`) is a flow-v1 pair that shares one `id` (and the
name and category Perfetto keys v1 flows by): `ph: "s"` at the dependency's last nanosecond, which
binds to the slice enclosing it, and `ph: "f"` with `bp: "e"` at the op's first nanosecond inside its
slice, which binds to that enclosing slice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chipsim.report.result import OpRecord, Result

_STREAM_ORDER = {"compute": 0, "copy": 1, "comm": 2}
_FLOW_NAME = "dep"


def to_ns(seconds: float) -> int:
    """Seconds to the nearest integer nanosecond."""
    return round(seconds * 1e9)


def to_us(ns: int) -> float | int:
    """Integer nanoseconds as the format's microseconds: the shortest decimal that reads back as
    `ns` (an int when whole, else a float whose repr has at most three decimals)."""
    whole, rest = divmod(ns, 1000)
    return whole if rest == 0 else ns / 1000


def _track_key(record: OpRecord) -> tuple[int, int, str]:
    return record.device, _STREAM_ORDER.get(record.stream, len(_STREAM_ORDER)), record.stream


def _lanes(records: Sequence[OpRecord]) -> dict[int, tuple[tuple[int, int, str], int]]:
    """Op id -> ((device, stream order, stream), lane). Lane 0 is the queue's own thread; an op that
    starts before the previous one on every open lane ends takes the first lane that is free."""
    out: dict[int, tuple[tuple[int, int, str], int]] = {}
    by_track: dict[tuple[int, int, str], list[OpRecord]] = {}
    for r in records:
        by_track.setdefault(_track_key(r), []).append(r)
    for key, recs in by_track.items():
        lane_end_ns: list[int] = []
        for r in sorted(recs, key=lambda r: (to_ns(r.start_s), -to_ns(r.end_s), r.id)):
            start_ns, end_ns = to_ns(r.start_s), to_ns(r.end_s)
            for lane, busy_until in enumerate(lane_end_ns):
                if start_ns >= busy_until:
                    lane_end_ns[lane] = end_ns
                    break
            else:
                lane = len(lane_end_ns)
                lane_end_ns.append(end_ns)
            out[r.id] = (key, lane)
    return out


def chrome_trace(results: Sequence[Result]) -> dict[str, Any]:
    """The trace of one or more simulations, one process (pid 1, 2, ...) per result."""
    events: list[dict[str, Any]] = []
    flow_id = 0
    for pid, result in enumerate(results, start=1):
        events.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": result.chip}})
        lanes = _lanes(result.records)
        tids: dict[tuple[tuple[int, int, str], int], int] = {}
        for tid, (key, lane) in enumerate(sorted(set(lanes.values())), start=1):
            tids[(key, lane)] = tid
            device, _, stream = key
            name = f"dev{device} {stream}" + (f" #{lane + 1}" if lane else "")
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}})
            events.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                           "args": {"sort_index": tid}})
        tid_of = {op_id: tids[where] for op_id, where in lanes.items()}
        span_ns = {r.id: (to_ns(r.start_s), to_ns(r.end_s)) for r in result.records}
        ordered = sorted(result.records, key=lambda r: (tid_of[r.id], span_ns[r.id][0], -span_ns[r.id][1], r.id))
        for r in ordered:
            start_ns, end_ns = span_ns[r.id]
            events.append({
                "name": r.name, "cat": r.kind, "ph": "X", "pid": pid, "tid": tid_of[r.id],
                "ts": to_us(start_ns), "dur": to_us(end_ns - start_ns),
                "args": {"id": r.id, "device": r.device, "stream": r.stream, "flops": r.flops, "bytes": r.bytes,
                         "energy_j": r.energy_j, "bound": r.bound, "clock_scale": r.clock_scale,
                         "issued_us": to_us(to_ns(r.issue_s))},
            })
        for r in result.records:
            for dep in r.deps:
                if dep not in span_ns:
                    continue
                flow_id += 1
                dep_start_ns, dep_end_ns = span_ns[dep]
                start_ns, end_ns = span_ns[r.id]
                # a point inside each slice: [start, end) holds end - 1 and start + 1 when dur >= 2 ns
                out_ns = max(dep_start_ns, dep_end_ns - 1)
                in_ns = min(start_ns + 1, max(start_ns, end_ns - 1))
                events.append({"name": _FLOW_NAME, "cat": _FLOW_NAME, "ph": "s", "id": flow_id, "pid": pid,
                               "tid": tid_of[dep], "ts": to_us(out_ns)})
                events.append({"name": _FLOW_NAME, "cat": _FLOW_NAME, "ph": "f", "bp": "e", "id": flow_id,
                               "pid": pid, "tid": tid_of[r.id], "ts": to_us(in_ns)})
        for t, watts in result.power_timeline:
            events.append({"name": "board power (W)", "ph": "C", "pid": pid, "ts": to_us(to_ns(t)),
                           "args": {"W": round(watts, 3)}})
    return {"traceEvents": events}
