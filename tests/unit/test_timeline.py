"""The timeline (Chrome trace JSON) read the way a trace processor reads it.

Perfetto turns `ts` and `dur` (microseconds) into integer nanoseconds and then requires the slices of
one thread to nest: a slice that starts inside another must end inside it. The checks below parse the
numbers exactly (as decimals), convert them to nanoseconds, and hold every thread, every flow arrow and
the power counter to that contract.
"""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import chipsim
from chipsim.report.result import Result
from chipsim.report.trace import chrome_trace, to_ns
from tests.conftest import REPO_ROOT, build

Slice = tuple[int, int, int | None]  # start ns, end ns, op id


def _ns(value: Any, exact: bool = True) -> int:
    """A `ts`/`dur` value as a trace processor stores it: integer nanoseconds, round(us * 1000). With
    `exact`, the value must hold a whole number of nanoseconds (no rounding needed)."""
    ns = Decimal(str(value)) * 1000
    if exact:
        assert ns == ns.to_integral_value(), f"{value!r} us is not a whole number of nanoseconds"
    return int(ns.to_integral_value())


def _parse(text: str) -> dict[str, Any]:
    return json.loads(text, parse_float=Decimal)


def _threads(trace: dict[str, Any], exact: bool = True) -> dict[tuple[int, int], list[Slice]]:
    tracks: dict[tuple[int, int], list[Slice]] = defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            start = _ns(e["ts"], exact)
            dur = _ns(e["dur"], exact)
            assert dur >= 0
            tracks[(e["pid"], e["tid"])].append((start, start + dur, e.get("args", {}).get("id")))
    return tracks


def _assert_nested(tracks: dict[tuple[int, int], list[Slice]]) -> None:
    """On each thread, slices are disjoint or properly nested (never partially overlapping)."""
    for track, slices in tracks.items():
        stack: list[Slice] = []
        for s in sorted(slices, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1][1] <= s[0]:
                stack.pop()
            if stack:
                assert s[1] <= stack[-1][1], f"{track}: slice {s} partially overlaps {stack[-1]}"
            stack.append(s)


def _enclosing(slices: list[Slice], ts_ns: int) -> Slice | None:
    """The innermost slice that holds `ts_ns` ([start, end), or a zero-length slice at ts)."""
    inside = [s for s in slices if s[0] <= ts_ns < s[1] or s[0] == s[1] == ts_ns]
    return min(inside, key=lambda s: s[1] - s[0]) if inside else None


def _flows(trace: dict[str, Any], tracks: dict[tuple[int, int], list[Slice]]) -> list[tuple[Slice, Slice]]:
    """(from slice, to slice) of every flow-v1 pair; each end binds to the slice enclosing it."""
    ends: dict[Any, dict[str, dict[str, Any]]] = defaultdict(dict)
    for e in trace["traceEvents"]:
        if e["ph"] in ("s", "t", "f"):
            assert e["ph"] != "t"
            assert e["ph"] not in ends[(e["cat"], e["name"], e["id"])], f"flow {e['id']} has two {e['ph']}"
            ends[(e["cat"], e["name"], e["id"])][e["ph"]] = e
    pairs = []
    for key, pair in ends.items():
        assert set(pair) == {"s", "f"}, f"flow {key} lacks an end: {sorted(pair)}"
        assert pair["f"].get("bp") == "e"
        bound = []
        for ph in ("s", "f"):
            e = pair[ph]
            hit = _enclosing(tracks[(e["pid"], e["tid"])], _ns(e["ts"]))
            assert hit is not None, f"flow {key} {ph} at {e['ts']} us is inside no slice of its thread"
            bound.append(hit)
        pairs.append((bound[0], bound[1]))
    return pairs


def _two_device_result() -> Result:
    """Two devices, each with compute and comm streams, with dependencies within and across them."""
    gemm = {"m": 512, "n": 512, "k": 512}
    workload = build(
        "two_devices",
        ("gemm", "g0", "bf16", [], gemm),
        ("all_reduce", "ar0", "bf16", [0], {"bytes": 2**20, "group": 2, "stream": "comm"}),
        ("gemm", "g1", "bf16", [0], gemm),
        ("gemm", "g2", "bf16", [], {**gemm, "device": 1}),
        ("all_reduce", "ar1", "bf16", [3], {"bytes": 2**20, "group": 2, "stream": "comm", "device": 1}),
        ("gemm", "g3", "bf16", [4, 2], {**gemm, "device": 1}),
    )
    return chipsim.simulate(workload, chipsim.load_chip("h200_sxm"))


def test_two_devices_get_their_own_threads_and_arrows() -> None:
    result = _two_device_result()
    trace = _parse(json.dumps(chrome_trace([result])))
    tracks = _threads(trace)
    _assert_nested(tracks)
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    tid_of = {e["args"]["id"]: e["tid"] for e in trace["traceEvents"] if e["ph"] == "X"}
    by_id = {r.id: r for r in result.records}
    for op_id, tid in tid_of.items():
        assert names[tid] == f"dev{by_id[op_id].device} {by_id[op_id].stream}"
    # one thread per (device, stream), and different devices never share one
    assert len(set(tid_of.values())) == len({(r.device, r.stream) for r in result.records}) == 4
    assert not {tid_of[r.id] for r in result.records if r.device == 0} & \
        {tid_of[r.id] for r in result.records if r.device == 1}
    # every dependency is one arrow, from the dependency's slice to the op's slice
    edges = {(a[2], b[2]) for a, b in _flows(trace, tracks)}
    assert edges == {(d, r.id) for r in result.records for d in r.deps}
    assert (2, 5) in edges  # across devices


def test_slices_hold_integer_nanoseconds() -> None:
    result = _two_device_result()
    trace = _parse(json.dumps(chrome_trace([result])))
    spans = {e["args"]["id"]: (_ns(e["ts"]), _ns(e["dur"])) for e in trace["traceEvents"] if e["ph"] == "X"}
    for r in result.records:
        start_ns, end_ns = to_ns(r.start_s), to_ns(r.end_s)
        assert spans[r.id] == (start_ns, end_ns - start_ns)  # dur = end - start, exactly
    counters = [e for e in trace["traceEvents"] if e["ph"] == "C"]
    assert [_ns(e["ts"]) for e in counters] == [to_ns(t) for t, _ in result.power_timeline]


def test_back_to_back_ops_do_not_overlap_once_in_nanoseconds() -> None:
    """Times that are not whole nanoseconds: float microseconds (what the old writer emitted) would
    round `ts` and `dur` separately and let an op end after its successor starts."""
    from chipsim.report.result import OpRecord

    def record(op_id: int, start_s: float, end_s: float) -> OpRecord:
        return OpRecord(id=op_id, name=f"op{op_id}", kind="gemm", dtype="bf16", stream="compute", device=0,
                        issue_s=0.0, start_s=start_s, end_s=end_s, flops=0.0, bytes=0.0, energy_j=0.0,
                        clock_scale=1.0, bound="compute", level="hbm", mode="", alone_s=end_s - start_s,
                        deps=(op_id - 1,) if op_id else ())

    # boundaries at x.4 and x.6 ns: rounding start and duration separately gives end > next start
    times = [0.0, 1.0006e-6, 2.0012e-6, 3.4e-9 + 3e-6, 4.0016e-6]
    records = [record(i, times[i], times[i + 1]) for i in range(len(times) - 1)]
    result = _two_device_result()
    result.records = records
    result.power_timeline = []
    trace = _parse(json.dumps(chrome_trace([result])))
    tracks = _threads(trace)
    _assert_nested(tracks)
    slices = sorted(next(iter(tracks.values())))
    assert [s[0] for s in slices] == [to_ns(t) for t in times[:-1]]
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:], strict=False))
    assert len(_flows(trace, tracks)) == len(records) - 1


def test_an_op_that_overlaps_its_queue_gets_an_overflow_thread() -> None:
    result = _two_device_result()
    first, second = result.records[0], result.records[2]  # both dev0 compute
    from dataclasses import replace
    result.records = [first, replace(second, start_s=first.start_s + 1e-7, end_s=first.end_s + 1e-6)]
    trace = _parse(json.dumps(chrome_trace([result])))
    _assert_nested(_threads(trace))
    names = sorted(e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name")
    assert names == ["dev0 compute", "dev0 compute #2"]


@pytest.fixture(scope="module")
def quickstart_timeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    from chipsim.cli import main

    out = tmp_path_factory.mktemp("quickstart")
    assert main(["run", str(REPO_ROOT / "configs" / "runs" / "quickstart.yaml"), "--out", str(out)]) == 0
    return _parse((out / "timeline.json").read_text()), out


def test_quickstart_timeline_parses_as_a_trace_processor_would(
        quickstart_timeline: tuple[dict[str, Any], Path]) -> None:
    """Before integer nanoseconds, 534 of the 4,088 slices overlapped their predecessor here."""
    trace, out = quickstart_timeline
    _assert_nested(_threads(trace, exact=False))  # as converted, rounding included
    tracks = _threads(trace)  # and no rounding needed
    _assert_nested(tracks)
    assert "displayTimeUnit" not in trace  # older Perfetto reads "ns" as the unit of ts
    assert sum(len(s) for s in tracks.values()) == len(pd.read_csv(out / "ops.csv"))
    flows = _flows(trace, tracks)
    assert flows
    for source, target in flows:
        assert source[1] <= target[0]  # a dependency ends before its dependant starts
    for e in trace["traceEvents"]:
        if e["ph"] == "C":
            _ns(e["ts"])


def test_timeline_is_deterministic() -> None:
    first = json.dumps(chrome_trace([_two_device_result()]))
    assert json.dumps(chrome_trace([_two_device_result()])) == first
