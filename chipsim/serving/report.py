"""What a serving run shows: the summary table on stdout, `latency.png`, the timeline of requests and
engine iterations (`timeline.json`) and the files `--out` gets (summary.csv, requests.csv), staged then
moved into place."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from chipsim.serving.engine import IterationLog
    from chipsim.serving.run import ServingRun

FAMILIES = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E"))
STATS = ("mean", "p50", "p90", "p99")
TIMELINE_MAX_REQUESTS = 20_000  # a Chrome trace of more requests is too big to open
TIMELINE_MAX_ITERATIONS = 200_000  # engine iterations shown (a slice and up to two counter values each)
ENGINE_PID = 2


def _num(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"


def render_summary(summary: Mapping[str, Any]) -> str:
    """The compact table: latency percentiles (ms), throughput, KV cache, preemptions, power, energy."""
    s = summary
    where = s["chip"] if s["tp"] == 1 else f"{s['tp']} x {s['chip']} ({s['system']})"
    if s.get("disaggregation"):
        where = f"{s['gpus']} x {s['chip']} ({s['disaggregation']})"
    lines = [f"{s['model']} on {where}, {s['engine']}, quantization {s['quantization']}, KV cache {s['kv_cache_dtype']}",
             f"{s['requests']:,} requests in {_num(s['duration_s'])} s, {s['arrival_label']}; "
             f"lengths {s['lengths_label']} (mean {s['input_len_mean']:,.0f} / {s['output_len_mean']:,.0f})",
             "",
             f"{'latency (ms)':<13}" + "".join(f"{k:>10}" for k in STATS)]
    for key, label in FAMILIES:
        lines.append(f"{label:<13}" + "".join(f"{_num(s[f'{key}_{k}_s'] * 1e3):>10}" for k in STATS))
    gpus = s["gpus"]
    per = " per GPU" if gpus > 1 else ""
    lines += [
        "",
        f"throughput    output {_num(s['output_tokens_per_s'])} tok/s ({_num(s['output_tokens_per_s_per_gpu'])}"
        f"{per or ' per GPU'}), total {_num(s['total_tokens_per_s'])} tok/s "
        f"({_num(s['total_tokens_per_s_per_gpu'])}{per or ' per GPU'}), {_num(s['requests_per_s'])} req/s",
        f"KV cache      {s['kv_capacity_tokens']:,} tokens{per}; utilization mean {s['kv_utilization_mean']:.1%}, "
        f"peak {s['kv_utilization_peak']:.1%}; batch mean {_num(s['batch_mean'], 3)}; "
        f"preemptions {s['preemptions']:,}"
        + (f"; prefix cache {s['shared_prefix']:,} tokens shared, {s['prefix_hit_rate']:.1%} of prompt tokens "
           f"served from it" if s.get("shared_prefix") else ""),
        f"power         {_num(s['avg_power_w'])} W per GPU; {_num(s['energy_per_output_token_j'], 3)} J per output "
        f"token",
    ]
    if s.get("speculative"):
        lines.append(f"speculative   {s['speculative']}: {s['tokens_per_decode_step']:.3g} tokens per decode step")
    return "\n".join(lines)


# ---------------------------------------------------------------- latency.png


def _cdf(ax: Any, values: np.ndarray, label: str) -> None:
    values = np.sort(values[np.isfinite(values)])
    if not len(values):
        return
    ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=label)


def plot_latency(run: ServingRun, slo: Mapping[str, float] | None = None) -> Figure:
    """CDFs of TTFT, TPOT and ITL, E2E (ms), p50 and p99 marked and any SLO dashed; and each request's
    TTFT and E2E against its arrival time (queueing shows up as a rising band)."""
    import matplotlib.pyplot as plt

    s = run.summary
    frame = run.requests_frame()
    frame = frame[frame["finish_s"].notna()]
    itl = np.frombuffer(run.trace.itl_s, dtype=float) * 1e3
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [(axes[0][0], "ttft", [("TTFT", frame["ttft_s"].to_numpy(float) * 1e3)]),
              (axes[0][1], "tpot", [("TPOT", frame["tpot_s"].to_numpy(float) * 1e3), ("ITL", itl)]),
              (axes[1][0], "e2e", [("E2E", frame["e2e_s"].to_numpy(float) * 1e3)])]
    for ax, family, series in panels:
        for label, values in series:
            _cdf(ax, values, label)
        for stat, style in (("p50", ":"), ("p99", "--")):
            value = s[f"{family}_{stat}_s"] * 1e3
            if math.isfinite(value):
                ax.axvline(value, color="grey", linestyle=style, linewidth=1,
                           label=f"{family.upper()} {stat} {_num(value, 3)} ms")
        for name, limit in (slo or {}).items():
            if name.split("_")[0] in {family, "itl" if family == "tpot" else family}:
                ax.axvline(limit * 1e3, color="red", linestyle="--", linewidth=1.2,
                           label=f"SLO {name} {_num(limit * 1e3, 3)} ms")
        if family == "tpot" and len(itl):  # the ITL's tail (a prefill joining the batch) would squeeze TPOT
            finite = frame["tpot_s"].to_numpy(float) * 1e3
            finite = finite[np.isfinite(finite)]
            right = max(float(finite.max()) if len(finite) else 0.0, float(np.percentile(itl, 99)))
            ax.set_xlim(0, right * 1.3)
        ax.set_xlabel(f"{family.upper()} (ms)")
        ax.set_ylabel("fraction of requests" if family != "tpot" else "fraction (requests / tokens)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[1][1]
    ax.scatter(frame["arrival_s"], frame["e2e_s"] * 1e3, s=4, alpha=0.5, label="E2E")
    ax.scatter(frame["arrival_s"], frame["ttft_s"] * 1e3, s=4, alpha=0.5, label="TTFT")
    positive = (frame["ttft_s"] > 0).all() and len(frame)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("arrival time (s)")
    ax.set_ylabel("latency (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("each request over the run", fontsize=9)
    fig.suptitle(f"{s['model']} on {s['chip']} (tp {s['tp']}), {s['engine']}, {s['arrival_label']}: "
                 f"{s['requests']:,} requests, {_num(s['output_tokens_per_s'])} output tok/s", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- timeline.json


def request_timeline(frame: pd.DataFrame) -> dict[str, Any]:
    """A Chrome trace of the requests (Perfetto, chrome://tracing): each on a lane, 'waiting + prefill'
    from arrival to its first token, then 'decode' to its last; counters of requests in the engine and
    decoding. Times in whole nanoseconds written as microseconds (`chipsim.report.trace`'s convention).
    The first `TIMELINE_MAX_REQUESTS` requests by arrival only."""
    from chipsim.report.trace import to_ns, to_us

    done = frame[frame["finish_s"].notna()].sort_values(["arrival_s", "id"]).head(TIMELINE_MAX_REQUESTS)
    events: list[dict[str, Any]] = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "requests"}}]
    lane_end: list[int] = []
    for r in done.itertuples(index=False):
        start, first, end = to_ns(r.arrival_s), to_ns(r.first_token_s), to_ns(r.finish_s)
        lane = next((i for i, e in enumerate(lane_end) if e <= start), len(lane_end))
        if lane == len(lane_end):
            lane_end.append(end)
            events.append({"ph": "M", "name": "thread_name", "pid": 1, "tid": lane, "args": {"name": f"lane {lane}"}})
        lane_end[lane] = end
        args = {"id": int(r.id), "input_len": int(r.input_len), "output_len": int(r.output_len),
                "preemptions": int(r.preemptions)}
        events.append({"ph": "X", "name": "waiting + prefill", "cat": "ttft", "pid": 1, "tid": lane,
                       "ts": to_us(start), "dur": to_us(first - start), "args": args})
        if end > first:
            events.append({"ph": "X", "name": "decode", "cat": "decode", "pid": 1, "tid": lane, "ts": to_us(first),
                           "dur": to_us(end - first), "args": args})
    changes: list[tuple[int, int, int]] = []  # (time, d in engine, d decoding)
    for r in done.itertuples(index=False):
        changes += [(to_ns(r.arrival_s), 1, 0), (to_ns(r.first_token_s), 0, 1), (to_ns(r.finish_s), -1, -1)]
    inside = decoding = 0
    for t, d_in, d_dec in sorted(changes):
        inside, decoding = inside + d_in, decoding + d_dec
        events.append({"ph": "C", "name": "requests", "pid": 1, "ts": to_us(t),
                       "args": {"in engine": inside, "decoding": decoding}})
    return {"traceEvents": events, "otherData": {"requests_shown": len(done), "requests": int(len(frame))}}


def iteration_events(steps: IterationLog, limit: int = TIMELINE_MAX_ITERATIONS) -> tuple[list[dict[str, Any]],
                                                                                         dict[str, Any]]:
    """The engine's process of the timeline: an "iterations" track with one slice per iteration, named
    by what it ran ("prefill+decode", "prefill" or "decode-only"; args: tokens, prefill tokens,
    sequences, KV use), and counter tracks of the batch (sequences per iteration, 0 while idle) and
    the KV cache's use (% of blocks), each written when it changes. The first `limit` iterations only:
    a cut ends the track with an instant event saying how many were left out. Also returns the
    `otherData` entries (`iterations`, `iterations_shown`)."""
    from chipsim.report.trace import to_us

    a = steps.arrays()
    total = len(steps)
    k = min(total, limit)
    start = np.rint(a["start_s"][:k] * 1e9).astype(np.int64).tolist()  # chipsim.report.trace.to_ns, vectorised
    end = np.rint(a["end_s"][:k] * 1e9).astype(np.int64).tolist()
    p_tok = a["prefill_tokens"][:k].tolist()
    p_seq = a["prefill_sequences"][:k].tolist()
    d_seq = a["decode_sequences"][:k].tolist()
    kv = np.round(a["kv_utilization"][:k] * 100, 2).tolist()
    pid = ENGINE_PID
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": "engine"}},
        {"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": -1}},  # above the requests
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": 0, "args": {"name": "iterations"}},
    ]
    batch_now: int | None = None
    kv_now: float | None = None

    def counters(ns: int, batch: int, use: float) -> None:
        nonlocal batch_now, kv_now
        if batch != batch_now:
            events.append({"ph": "C", "name": "batch size", "pid": pid, "ts": to_us(ns), "args": {"sequences": batch}})
            batch_now = batch
        if use != kv_now:
            events.append({"ph": "C", "name": "KV utilization", "pid": pid, "ts": to_us(ns), "args": {"used %": use}})
            kv_now = use

    for i in range(k):
        prefill, decode = p_seq[i], d_seq[i]
        name = "prefill+decode" if prefill and decode else "prefill" if prefill else "decode-only"
        events.append({"ph": "X", "name": name, "cat": "iteration", "pid": pid, "tid": 0, "ts": to_us(start[i]),
                       "dur": to_us(end[i] - start[i]),
                       "args": {"tokens": p_tok[i] + decode, "prefill tokens": p_tok[i], "sequences": prefill + decode,
                                "KV use %": kv[i]}})
        counters(start[i], prefill + decode, kv[i])
        if i + 1 == k or start[i + 1] > end[i]:  # idle after it: nothing runs, every sequence has finished
            counters(end[i], 0, 0.0)
    if k < total:
        events.append({"ph": "i", "name": f"timeline cut: {total - k:,} later iterations not shown", "s": "p",
                       "pid": pid, "tid": 0, "ts": to_us(end[-1] if end else 0),
                       "args": {"iterations": total, "iterations_shown": k}})
    return events, {"iterations": total, "iterations_shown": k}


def serving_timeline(run: ServingRun) -> dict[str, Any]:
    """timeline.json: the requests' lanes (`request_timeline`) and the engine's iterations
    (`iteration_events`)."""
    trace = request_timeline(run.requests_frame())
    events, other = iteration_events(run.iteration_log())
    trace["traceEvents"] += events
    trace["otherData"].update(other)
    return trace


# ---------------------------------------------------------------- files


def output_writers(run: ServingRun, reports: Sequence[str], slo: Mapping[str, float] | None = None
                   ) -> dict[str, Callable[[Path], Any]]:
    """File name -> a function writing it: `csv`: summary.csv and requests.csv; `plots`: latency.png;
    `timeline`: timeline.json."""
    writers: dict[str, Callable[[Path], Any]] = {}
    if "csv" in reports:
        writers["summary.csv"] = lambda p: pd.DataFrame([run.summary]).to_csv(p, index=False)
        writers["requests.csv"] = lambda p: run.requests_frame().to_csv(p, index=False)
    if "plots" in reports:
        def plot(p: Path) -> None:
            import matplotlib.pyplot as plt

            fig = plot_latency(run, slo)
            try:
                fig.savefig(p, dpi=110, format="png")
            finally:
                plt.close(fig)

        writers["latency.png"] = plot
    if "timeline" in reports:
        writers["timeline.json"] = lambda p: p.write_text(json.dumps(serving_timeline(run)))
    return writers
