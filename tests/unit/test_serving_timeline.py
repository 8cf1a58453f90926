"""The serving engine's iteration log (`simulate_serving(..., log=True)`) and timeline.json's engine
track: one record per iteration, the fast-forwarded decode stretches included, and a log that
changes nothing about the simulation."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chipsim.config.runconfig import parse_run_config
from chipsim.serving.config import ServingSetup, resolve_serving
from chipsim.serving.engine import ServingTrace, simulate_serving
from chipsim.serving.metrics import summarize
from chipsim.serving.report import iteration_events, output_writers, serving_timeline
from chipsim.serving.run import run_serving

BASE: dict[str, Any] = {"model": "llama3-8b", "chip": "h100_sxm", "engine": "trtllm", "requests": 120,
                        "arrival": {"process": "poisson", "rate": 8},
                        "lengths": {"input": {"dist": "lognormal", "mean": 1024, "sigma": 0.4, "max": 4096},
                                    "output": {"dist": "uniform", "low": 16, "high": 256}}}
GREEDY: dict[str, Any] = {"engine_settings": {"admission": "greedy", "memory_fraction": 0.02},
                          "arrival": {"process": "burst"}, "requests": 60,
                          "lengths": {"input": 512, "output": {"dist": "uniform", "low": 64, "high": 1024}}}


def _setup(**over: Any) -> ServingSetup:
    return resolve_serving(parse_run_config({"serving": {**BASE, **over}}))


def _logged(setup: ServingSetup) -> ServingTrace:
    trace = simulate_serving(setup.iteration, setup.arrivals(), log=True)
    assert trace.steps is not None
    return trace


@pytest.mark.parametrize("over", [{}, {"arrival": {"process": "burst"}},
                                  {"arrival": {"process": "closed", "concurrency": 8, "think": 0.2}}, GREEDY],
                         ids=["poisson", "burst", "closed", "greedy"])
def test_one_record_per_iteration_back_to_back(over: dict[str, Any]) -> None:
    trace = _logged(_setup(**over))
    assert trace.steps is not None
    a = trace.steps.arrays()
    assert len(trace.steps) == trace.iterations == len(a["end_s"]) == len(a["kv_utilization"])
    start, end = a["start_s"], a["end_s"]
    assert start[0] >= 0 and (end > start).all()
    assert (start[1:] >= end[:-1]).all()  # in order, never overlapping
    assert end[-1] == trace.makespan_s
    assert (a["prefill_sequences"] + a["decode_sequences"] > 0).all()
    assert ((a["prefill_tokens"] > 0) == (a["prefill_sequences"] > 0)).all()
    assert ((a["kv_utilization"] >= 0) & (a["kv_utilization"] <= 1)).all()
    # the peak: the most blocks an iteration held (greedy: also those a decode stretch grew into, after it)
    assert a["kv_utilization"].max() <= trace.kv_peak
    if "engine_settings" not in over:
        assert a["kv_utilization"].max() == trace.kv_peak
    dur = end - start
    # the engine's time-weighted means are the log's
    assert float((a["kv_utilization"] * dur).sum()) / trace.makespan_s == pytest.approx(trace.kv_utilization)
    batch = a["prefill_sequences"] + a["decode_sequences"]
    assert float((batch * dur).sum()) / trace.makespan_s == pytest.approx(trace.batch_mean)
    if over.get("arrival", {}).get("process") == "burst":  # busy from the first arrival to the last token
        assert (start[1:] == end[:-1]).all() and start[0] == 0


def test_tokens_add_up_without_preemption() -> None:
    setup = _setup()
    trace = _logged(setup)
    assert trace.steps is not None and trace.preemptions == 0
    a = trace.steps.arrays()
    inputs = sum(r.input_len for r in trace.requests)
    assert int(a["prefill_tokens"].sum()) == inputs
    # every token after the first is one decode step, fast-forwarded or not
    assert int(a["decode_sequences"].sum()) == sum(r.output_len - 1 for r in trace.requests)
    assert (a["decode_sequences"] > 0).sum() > (a["prefill_sequences"] > 0).sum()  # the decode stretches are logged
    # a preempted request prefills its prompt again (and what it had generated)
    greedy = _logged(_setup(**GREEDY))
    assert greedy.steps is not None and greedy.preemptions > 0
    assert int(greedy.steps.arrays()["prefill_tokens"].sum()) > sum(r.input_len for r in greedy.requests)


@pytest.mark.parametrize("over", [{}, GREEDY], ids=["reserve", "greedy"])
def test_the_log_changes_nothing(over: dict[str, Any]) -> None:
    setup = _setup(**over)
    plain = simulate_serving(setup.iteration, setup.arrivals())
    logged = _logged(setup)
    assert plain.steps is None
    assert summarize(plain, 1) == summarize(logged, 1)
    assert plain.itl_s.tobytes() == logged.itl_s.tobytes()
    assert [(r.first_token_s, r.finish_s, r.preemptions) for r in plain.requests] == \
        [(r.first_token_s, r.finish_s, r.preemptions) for r in logged.requests]
    assert (plain.energy_j, plain.gpu_busy_s, plain.kv_peak) == (logged.energy_j, logged.gpu_busy_s, logged.kv_peak)


def _events(trace: dict[str, Any], pid: int = 2) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e.get("pid") == pid]


def _ns(value: Decimal | int) -> int:
    """A `ts`/`dur` as a trace processor reads it (round(us * 1000)), which must be a whole number."""
    ns = Decimal(value) * 1000
    assert ns == ns.to_integral_value(), f"{value} us is not a whole number of nanoseconds"
    return int(ns)


def test_timeline_json_has_the_iterations(tmp_path: Path) -> None:
    setup = _setup()
    run = run_serving(setup, log=True)
    assert run.trace.steps is not None
    path = tmp_path / "timeline.json"
    output_writers(run, ["timeline"])["timeline.json"](path)
    trace = json.loads(path.read_text(), parse_float=Decimal)
    engine = _events(trace)
    names = {e["args"]["name"] for e in engine if e["ph"] == "M" and e["name"] in ("process_name", "thread_name")}
    assert names == {"engine", "iterations"}
    slices = [e for e in engine if e["ph"] == "X"]
    assert len(slices) == run.trace.iterations == trace["otherData"]["iterations_shown"]
    assert {e["name"] for e in slices} == {"prefill+decode", "prefill", "decode-only"}
    # contiguous or idle between, never overlapping, in the importer's integer nanoseconds
    ns = [(_ns(e["ts"]), _ns(e["ts"]) + _ns(e["dur"])) for e in slices]
    assert all(start < end for start, end in ns)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(ns, ns[1:], strict=False))
    assert ns[-1][1] == round(run.trace.makespan_s * 1e9)
    a = run.trace.steps.arrays()
    assert sum(e["args"]["prefill tokens"] for e in slices) == int(a["prefill_tokens"].sum())
    assert [e["args"]["sequences"] for e in slices] == (a["prefill_sequences"] + a["decode_sequences"]).tolist()
    assert all(0 <= e["args"]["KV use %"] <= 100 for e in slices)
    counters = {e["name"] for e in engine if e["ph"] == "C"}
    assert counters == {"batch size", "KV utilization"}
    batch = [e for e in engine if e["ph"] == "C" and e["name"] == "batch size"]
    assert batch[-1]["args"]["sequences"] == 0 and max(e["args"]["sequences"] for e in batch) > 1
    # the request lanes are still there
    assert sum(e.get("name") == "decode" for e in _events(trace, 1)) == setup.requests
    assert not [e for e in engine if e["ph"] == "i"]  # nothing cut


def test_a_long_log_is_cut_and_says_so() -> None:
    trace = _logged(_setup())
    assert trace.steps is not None
    events, other = iteration_events(trace.steps, limit=50)
    assert other == {"iterations": trace.iterations, "iterations_shown": 50}
    assert sum(e["ph"] == "X" for e in events) == 50
    cut = [e for e in events if e["ph"] == "i"]
    assert len(cut) == 1 and cut[0]["args"] == other
    assert f"{trace.iterations - 50:,} later iterations not shown" in cut[0]["name"]
    end = max(e["ts"] + e["dur"] for e in events if e["ph"] == "X")
    assert cut[0]["ts"] == pytest.approx(end)


def test_a_run_without_a_log_gets_the_same_one_for_its_timeline() -> None:
    setup = _setup(requests=40)
    logged, plain = run_serving(setup, log=True), run_serving(setup)
    assert plain.trace.steps is None and logged.trace.steps is not None
    a, b = logged.trace.steps.arrays(), plain.iteration_log().arrays()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert serving_timeline(plain) == serving_timeline(logged)
