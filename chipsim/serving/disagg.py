"""Serving on several engine instances. Disaggregated serving: prompts prefilled on prefill instances,
their KV caches sent to decode instances that generate the rest (Splitwise, DistServe, NVIDIA Dynamo,
vLLM's P/D disaggregation); and data-parallel attention ranks (`simulate_dp_ranks`).

Simulated in two passes, since a prefill instance never waits for a decode instance (its KV cache is
sent and freed; a decode instance that has no room queues the request): first each prefill instance
serves its share of the arrivals as prompts with one output token (round robin over the instances);
then each request's KV cache crosses to its decode instance (`KVLink`: the prefill GPUs' shards
in parallel, each at one GPU's share of the link), and the decode instances serve the requests from
there, arriving prefilled (`Arrivals.prefilled`). The first token reaches the client when the KV cache
has reached the decode instance (the decode instance streams every token): TTFT = queueing and
prefill on the prefill instance + the transfer. A closed loop, whose next arrivals depend on the
decode instances' finishes, cannot be split into the two passes and is refused when the config is read.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chipsim.serving.engine import Arrivals, Request, ServingTrace, simulate_serving
from chipsim.serving.iteration import IterationModel


@dataclass(frozen=True)
class KVLink:
    """What carries a KV cache from a prefill instance to a decode instance, per GPU of the prefill
    instance (each sends its tensor-parallel shard)."""

    name: str  # "nvlink" (both instances in one node) or "network" (across nodes)
    bytes_per_s: float
    latency_s: float

    def seconds(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bytes_per_s


@dataclass(frozen=True, eq=False)
class Disaggregation:
    prefill: IterationModel = field(repr=False)
    decode: IterationModel = field(repr=False)
    prefill_instances: int
    decode_instances: int
    link: KVLink

    @property
    def gpus(self) -> int:
        return self.prefill_instances * self.prefill.tp + self.decode_instances * self.decode.tp

    def label(self) -> str:
        return (f"disaggregated: {self.prefill_instances} prefill instance(s) of tp {self.prefill.tp}, "
                f"{self.decode_instances} decode instance(s) of tp {self.decode.tp}, KV over {self.link.name}")


def _deal(count: int, instances: int) -> list[tuple[int, list[int]]]:
    """Requests 0..count-1 dealt round robin: (instance k, its requests i with i % instances == k), for
    the instances that get any."""
    return [(k, mine) for k in range(instances) if (mine := list(range(k, count, instances)))]


def _share(mine: list[int], lengths: Callable[[int], tuple[int, int]], times: list[float],
           **options: Any) -> Arrivals:
    """The open arrivals of requests `mine` (their lengths and times), renumbered from 0."""
    return Arrivals(lambda j: lengths(mine[j]), len(mine), times=[times[i] for i in mine], **options)


def _offset(progress: Callable[[int, int], None] | None, done: int,
            total: int) -> Callable[[int, int], None] | None:
    """`progress` of one instance's run, counted after the `done` requests already served."""
    if progress is None:
        return None
    return lambda finished, _: progress(done + finished, total)


def _instance(model: IterationModel, arrivals: Arrivals, progress: Callable[[int, int], None] | None,
              log: bool = False) -> ServingTrace:
    """One engine instance's run: its data-parallel attention ranks, or one scheduler."""
    if model.dp_attention:
        return simulate_dp_ranks(model, arrivals, progress, log=log)
    return simulate_serving(model, arrivals, progress, log=log)


def simulate_disaggregated(spec: Disaggregation, arrivals: Arrivals,
                           progress: Callable[[int, int], None] | None = None, log: bool = False) -> ServingTrace:
    """Serve an open stream of `arrivals` on `spec`'s instances (see the module notes). The trace's
    energy is per GPU (the average over every GPU of both kinds), its KV-cache figures the decode
    instances', its iteration log (with `log`) the first decode instance's."""
    assert arrivals.times is not None, "disaggregated serving needs open arrivals"
    count = len(arrivals.times)
    lengths = [arrivals.lengths(i) for i in range(count)]
    total = 2 * count
    done_before = 0

    # 1. prefill: request i on instance i % P, as a prompt with one output token
    first: list[float] = [math.nan] * count
    prefill_traces = []
    for _, mine in _deal(count, spec.prefill_instances):
        part = _share(mine, lambda i: (lengths[i][0], 1), arrivals.times, shared_prefix=arrivals.shared_prefix)
        trace = _instance(spec.prefill, part, _offset(progress, done_before, total))
        done_before += len(mine)
        for r in trace.requests:
            first[mine[r.id]] = r.first_token_s
        prefill_traces.append(trace)
    # 2. the KV caches cross; decode: request i on instance i % D, prefilled
    per_token = spec.prefill.kv_bytes_per_token  # one prefill GPU's shard
    ready = [first[i] + spec.link.seconds(lengths[i][0] * per_token) for i in range(count)]
    requests: list[Request | None] = [None] * count
    decode_traces = []
    for k, mine in _deal(count, spec.decode_instances):
        part = _share(mine, lengths.__getitem__, ready, prefilled=True)
        trace = _instance(spec.decode, part, _offset(progress, done_before, total), log=log and k == 0)
        done_before += len(mine)
        for r in trace.requests:
            i = mine[r.id]
            r.id, r.arrival_s = i, arrivals.times[i]  # the client's request: its own arrival
            requests[i] = r
        decode_traces.append(trace)
    return merge([r for r in requests if r is not None], prefill_traces, spec.prefill.tp, decode_traces,
                 spec.decode.tp)


def merge(served: list[Request], other: list[ServingTrace], other_tp: int, main: list[ServingTrace],
          main_tp: int, warmup: int = 0) -> ServingTrace:
    """One trace of several engine instances: `main` (the ones whose requests are `served`, and whose
    KV cache, batch and iteration log are reported: the mean instance's, the first one's log) and
    `other` (prefill instances: their time and energy only). Energy and busy time are per GPU, averaged
    over every instance's GPUs."""
    traces = other + main
    tps = [other_tp] * len(other) + [main_tp] * len(main)
    gpus = sum(tps)
    itl = array("d")
    for t in main:
        itl.extend(t.itl_s)
    makespan = max(t.makespan_s for t in traces)
    share = 1.0 / len(main)
    return ServingTrace(
        sorted(served, key=lambda r: r.id), sum(t.iterations for t in traces), makespan,
        energy_j=sum(t.energy_j * tp for t, tp in zip(traces, tps, strict=True)) / gpus,
        gpu_busy_s=sum(t.gpu_busy_s * tp for t, tp in zip(traces, tps, strict=True)) / gpus,
        itl_s=itl,
        kv_utilization=sum(t.kv_utilization * t.makespan_s for t in main) * share / makespan,
        kv_peak=max(t.kv_peak for t in main),
        preemptions=sum(t.preemptions for t in traces),
        batch_mean=sum(t.batch_mean * t.makespan_s for t in main) * share / makespan,
        kv_capacity_tokens=main[0].kv_capacity_tokens,
        steps=main[0].steps,
        warmup=warmup,
        prefix_hit_tokens=sum(t.prefix_hit_tokens for t in traces),
        tokens_per_decode_step=sum(t.tokens_per_decode_step for t in main) * share)


def simulate_dp_ranks(model: IterationModel, arrivals: Arrivals,
                      progress: Callable[[int, int], None] | None = None, log: bool = False) -> ServingTrace:
    """Data-parallel attention: each of the `model.tp` GPUs schedules its own requests (request i on
    rank i % tp; a closed loop's clients dealt the same way), its MoE layers exchanging tokens with
    the others by all-to-all (`IterationModel(dp_attention=True)` prices that exchange at its own
    batch, the ranks' loads being alike). Each rank is simulated in turn and the traces merged."""
    n = model.tp
    lengths = arrivals.lengths
    traces: list[ServingTrace] = []
    served: list[Request] = []
    done = 0
    if arrivals.concurrency:  # a closed loop's clients dealt like its requests
        shares = [(k, mine) for k, mine in _deal(arrivals.count, n) if k < arrivals.concurrency]
    else:
        assert arrivals.times is not None
        shares = _deal(len(arrivals.times), n)
    for k, mine in shares:
        if arrivals.concurrency:
            part = Arrivals(lambda j, m=mine: lengths(m[j]), len(mine),  # type: ignore[misc]
                            concurrency=len(range(k, arrivals.concurrency, n)), think_s=arrivals.think_s,
                            seed=arrivals.seed + k, warmup=len(range(k, arrivals.warmup, n)),
                            shared_prefix=arrivals.shared_prefix)
        else:
            assert arrivals.times is not None
            part = _share(mine, lengths, arrivals.times, shared_prefix=arrivals.shared_prefix,
                          prefilled=arrivals.prefilled)
        trace = simulate_serving(model, part, _offset(progress, done, arrivals.count), log=log and not traces)
        done += len(mine)
        for r in trace.requests:
            r.id = mine[r.id]
        served += trace.requests
        traces.append(trace)
    return merge(served, [], 1, traces, 1, arrivals.warmup)
