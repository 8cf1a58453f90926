"""What a serving run reports: latency percentiles (TTFT, TPOT, ITL, end-to-end), throughput, KV-cache
use, preemptions, power and energy per token; and one row per request."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from chipsim.serving.engine import ServingTrace

PERCENTILES = {"mean": None, "p50": 50, "p90": 90, "p99": 99}
REQUEST_COLUMNS = ["id", "arrival_s", "input_len", "output_len", "first_token_s", "finish_s", "ttft_s", "tpot_s",
                   "e2e_s", "preemptions"]


def request_frame(trace: ServingTrace) -> pd.DataFrame:
    rows = []
    for r in trace.requests:
        ttft = r.first_token_s - r.arrival_s
        e2e = r.finish_s - r.arrival_s
        tpot = (r.finish_s - r.first_token_s) / (r.output_len - 1) if r.output_len > 1 else math.nan
        rows.append((r.id, r.arrival_s, r.input_len, r.output_len, r.first_token_s, r.finish_s, ttft, tpot, e2e,
                     r.preemptions))
    return pd.DataFrame(rows, columns=REQUEST_COLUMNS).sort_values("id").reset_index(drop=True)


def _stats(values: np.ndarray) -> dict[str, float]:
    values = values[~np.isnan(values)]
    if not len(values):
        return {k: math.nan for k in PERCENTILES}
    return {k: float(values.mean()) if q is None else float(np.percentile(values, q)) for k, q in PERCENTILES.items()}


def summarize(trace: ServingTrace, gpus: int) -> dict[str, Any]:
    """Headline figures in SI units (seconds, tokens/s, watts, joules)."""
    frame = request_frame(trace)
    done = frame[frame["finish_s"].notna() & (frame["id"] >= trace.warmup)]
    # after a warm-up, the measured window opens at the first measured request's arrival
    span = trace.makespan_s - (float(done["arrival_s"].min()) if trace.warmup and len(done) else 0.0)
    out_tokens = float(done["output_len"].sum())
    in_tokens = float(done["input_len"].sum())
    summary: dict[str, Any] = {"requests": int(len(done)), "duration_s": span, "iterations": trace.iterations}
    for name, column in (("ttft", "ttft_s"), ("tpot", "tpot_s"), ("e2e", "e2e_s")):
        for k, v in _stats(done[column].to_numpy(float)).items():
            summary[f"{name}_{k}_s"] = v
    for k, v in _stats(np.frombuffer(trace.itl_s, dtype=float)).items():
        summary[f"itl_{k}_s"] = v
    summary.update({
        "output_tokens_per_s": out_tokens / span if span else math.nan,
        "total_tokens_per_s": (out_tokens + in_tokens) / span if span else math.nan,
        "output_tokens_per_s_per_gpu": out_tokens / span / gpus if span else math.nan,
        "requests_per_s": len(done) / span if span else math.nan,
        "kv_utilization_mean": trace.kv_utilization, "kv_utilization_peak": trace.kv_peak,
        "kv_capacity_tokens": trace.kv_capacity_tokens, "batch_mean": trace.batch_mean,
        "preemptions": trace.preemptions, "tokens_per_decode_step": trace.tokens_per_decode_step,
        "prefix_hit_rate": trace.prefix_hit_tokens / in_tokens if in_tokens else math.nan,
        "avg_power_w": trace.energy_j / span if span else math.nan,  # per GPU
        "energy_per_output_token_j": trace.energy_j * gpus / out_tokens if out_tokens else math.nan,
    })
    return summary
