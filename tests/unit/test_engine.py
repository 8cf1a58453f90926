"""Engine properties (chipsim.simulate): ordering, overlap, contention, determinism, launch, power."""

from __future__ import annotations

from collections import defaultdict

import pandas.testing as pdt
import pytest
from conftest import build

import chipsim
from chipsim import SimOptions, simulate
from chipsim.cost import cost_of
from chipsim.errors import InputError
from chipsim.hardware import load_chip
from chipsim.report.result import Result
from chipsim.workload.graph import Workload, WorkloadBuilder

GiB = 2**30
EPS = 1e-12  # seconds of float slack in event times


@pytest.fixture(scope="module")
def h200():
    return load_chip("h200_sxm")


@pytest.fixture(scope="module")
def default_runs(h200) -> list[tuple[Workload, Result]]:
    """The default transformer training step and dynamic attention layer, as the generators ship them."""
    runs = []
    for generator, params in [("transformer_train_step", {}), ("dynamic_attention", {}),
                              ("dynamic_attention", {"passes": "fwd_bwd", "weight_gen": "per_token"}),
                              ("all_reduce", {"scheme": "int8_compressed"})]:
        wl = chipsim.build_workload(generator, params)
        runs.append((wl, simulate(wl, h200)))
    return runs


def test_dependencies_are_respected(default_runs) -> None:
    for wl, result in default_runs:
        assert len(result.records) == len(wl.ops)
        by_id = {r.id: r for r in result.records}
        for op in wl.ops:
            rec = by_id[op.id]
            assert rec.start_s >= rec.issue_s - EPS
            assert rec.end_s >= rec.start_s
            for dep in op.deps:
                assert rec.start_s >= by_id[dep].end_s - EPS, (wl.name, op.name, wl.ops[dep].name)


def test_ops_on_one_stream_never_overlap_and_keep_program_order(default_runs) -> None:
    for wl, result in default_runs:
        streams: dict[tuple[int, str], list] = defaultdict(list)
        for rec in result.records:
            streams[(rec.device, rec.stream)].append(rec)
        for recs in streams.values():
            recs.sort(key=lambda r: r.id)  # program order
            for before, after in zip(recs, recs[1:], strict=False):
                assert after.start_s >= before.end_s - EPS, (wl.name, before.name, after.name)


def test_latency_is_the_last_op_end_and_at_least_the_critical_op(default_runs) -> None:
    for _, result in default_runs:
        assert result.latency_s == max(r.end_s for r in result.records)
        assert result.latency_s >= max(r.alone_s for r in result.records)
        # no op runs faster than it would alone (sharing and throttling only slow ops down)
        for rec in result.records:
            assert rec.duration_s >= rec.alone_s * (1 - 1e-9) - EPS, rec.name


def test_compute_and_communication_overlap(h200) -> None:
    g = ("gemm", "gemm", "bf16", [], {"m": 8192, "n": 8192, "k": 8192})
    ar = ("all_reduce", "all_reduce", "bf16", [], {"bytes": GiB, "group": 8, "stream": "comm"})
    alone_g = simulate(build("g", g), h200).latency_s
    alone_ar = simulate(build("ar", ar), h200).latency_s
    both = simulate(build("both", g, ar), h200)
    assert both.latency_s < alone_g + alone_ar
    assert both.latency_s >= max(alone_g, alone_ar) - EPS
    recs = {r.name: r for r in both.records}
    # they really ran at the same time
    assert recs["all_reduce"].start_s < recs["gemm"].end_s


def test_same_stream_serializes_even_without_dependencies(h200) -> None:
    g = ("gemm", "gemm", "bf16", [], {"m": 8192, "n": 8192, "k": 8192})
    ar_on_compute = ("all_reduce", "all_reduce", "bf16", [], {"bytes": GiB, "group": 8})
    result = simulate(build("serial", g, ar_on_compute), h200)
    recs = {r.name: r for r in result.records}
    assert recs["all_reduce"].start_s >= recs["gemm"].end_s


def test_two_memcpys_contend_for_hbm(h200) -> None:
    m1 = ("memcpy", "m1", "bf16", [], {"bytes": GiB})
    m2 = ("memcpy", "m2", "bf16", [], {"bytes": GiB, "stream": "copy"})
    for launch in ("eager", "graph"):
        opts = SimOptions(launch=launch)
        alone1 = simulate(build("m1", m1), h200, opts).latency_s
        alone2 = simulate(build("m2", m2), h200, opts).latency_s
        both = simulate(build("both", m1, m2), h200, opts)
        assert both.latency_s > max(alone1, alone2)
        assert both.latency_s <= alone1 + alone2
        # the shared port never carries more than the HBM's bandwidth
        assert both.total_bytes / both.latency_s <= h200.hbm.bandwidth_bytes_per_s
        recs = {r.name: r for r in both.records}
        assert recs["m2"].start_s < recs["m1"].end_s  # overlapping, hence sharing


def test_same_workload_gives_identical_results(h200) -> None:
    params = {"layers": 2, "batch": 2, "seq": 1024}
    first = simulate(chipsim.build_workload("transformer_train_step", params), h200)
    second = simulate(chipsim.build_workload("transformer_train_step", params), h200)
    assert first.latency_s == second.latency_s
    assert first.energy_j == second.energy_j
    pdt.assert_frame_equal(first.ops_frame(), second.ops_frame(), check_exact=True)
    assert first.power_timeline == second.power_timeline


def test_eager_chain_of_tiny_ops_is_host_dispatch_bound(h200) -> None:
    n = 50
    b = WorkloadBuilder("chain")
    last = None
    for i in range(n):
        last = b.add("elementwise", f"add{i}", "bf16", [last], numel=1024, attrs={"op": "add"})
    wl = b.build()
    dispatch = h200.calibration.host_dispatch_s["elementwise"]
    per_op = cost_of(wl.ops[0], h200).seconds
    assert dispatch > per_op  # the premise: Python issues slower than the GPU runs a 1024-element add

    eager = simulate(wl, h200, SimOptions(launch="eager"))
    graph = simulate(wl, h200, SimOptions(launch="graph"))
    assert eager.latency_s == pytest.approx(n * dispatch + per_op, rel=1e-6)
    starts = sorted(r.start_s for r in eager.records)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(g == pytest.approx(dispatch, rel=1e-6) for g in gaps)  # one op per dispatch

    assert graph.latency_s == pytest.approx(n * (per_op + h200.calibration.graph_launch_s), rel=1e-6)
    assert graph.latency_s < eager.latency_s / 2
    assert graph.launch == "graph" and eager.launch == "eager"


def test_unknown_launch_mode_is_an_input_error() -> None:
    with pytest.raises(InputError, match="eager"):
        SimOptions(launch="lazy")


def test_energy_is_idle_power_plus_op_energies(default_runs, h200) -> None:
    for _, r in default_runs:
        expected = h200.power.idle_w * r.latency_s + sum(rec.energy_j for rec in r.records)
        assert r.energy_j == pytest.approx(expected, rel=1e-9)
        assert r.avg_power_w * r.latency_s == pytest.approx(r.energy_j, rel=1e-9)
        assert h200.power.idle_w < r.avg_power_w <= r.peak_power_w
        assert r.limit_w == h200.power.limit_w


def test_power_timeline_starts_and_ends_at_idle(default_runs, h200) -> None:
    for _, r in default_runs:
        times = [t for t, _ in r.power_timeline]
        assert times == sorted(times)
        assert r.power_timeline[-1][1] == pytest.approx(h200.power.idle_w)
        assert min(w for _, w in r.power_timeline) >= h200.power.idle_w - 1e-6


def _gemm_chain(n: int, size: int = 16384) -> Workload:
    b = WorkloadBuilder("hot")
    last = None
    for i in range(n):
        last = b.add("gemm", f"gemm{i}", "bf16", [last], m=size, n=size, k=size)
    return b.build()


def test_sustained_gemm_chain_is_power_capped(h200) -> None:
    wl = _gemm_chain(10)
    cost = cost_of(wl.ops[0], h200)
    # the premise, from the spec sheet: at the boost clock this GEMM draws more than the power limit
    assert h200.power.idle_w + cost.compute_energy_j / cost.seconds > h200.power.limit_w

    capped = simulate(wl, h200, SimOptions(sustained=True))
    scales = [r.clock_scale for r in capped.records]
    assert all(s < 1.0 for s in scales)
    min_scale = h200.power.min_clock_hz / h200.clock_hz
    assert all(s >= min_scale - 1e-12 for s in scales)
    assert capped.min_clock_scale < 1.0
    assert capped.throttled_time_s > 0
    assert any("power-capped" in note for note in capped.notes)
    # throttled: slower than at the boost clock, cheaper in energy per op, average power near the limit
    free = simulate(wl, h200, SimOptions(sustained=True, power_capping=False))
    assert capped.latency_s > free.latency_s
    assert capped.energy_j - h200.power.idle_w * capped.latency_s < free.energy_j - h200.power.idle_w * free.latency_s
    assert capped.avg_power_w <= h200.power.limit_w * 1.01
    assert free.min_clock_scale == 1.0 and not any("power-capped" in n for n in free.notes)


def test_short_burst_is_not_throttled(h200) -> None:
    # one GEMM far shorter than the power controller's window runs at the boost clock
    wl = _gemm_chain(1, 4096)
    assert cost_of(wl.ops[0], h200).seconds < h200.power.window_s / 10
    result = simulate(wl, h200)
    assert result.records[0].clock_scale == 1.0
    assert result.throttled_time_s == 0.0


def test_memory_footprint_note(h200) -> None:
    wl = chipsim.build_workload("transformer_train_step", {"layers": 1, "batch": 1, "seq": 256})
    r = simulate(wl, h200)
    assert r.footprint_bytes == pytest.approx(sum(wl.memory.values()))
    assert r.fits_in_memory
    assert not any("does not fit" in n for n in r.notes)
