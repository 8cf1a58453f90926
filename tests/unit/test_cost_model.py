"""Cost model limits: roofline physics that hold whatever the calibration, with bounds from the specs."""

from __future__ import annotations

import pytest

import chipsim
from chipsim.cost import cost_of
from chipsim.errors import InputError
from chipsim.hardware import load_chip
from chipsim.workload.graph import Op, make_op

GiB = 2**30


@pytest.fixture(scope="module")
def h200():
    return load_chip("h200_sxm")


def gemm(m: int, n: int, k: int, dtype: str = "bf16", **attrs) -> Op:
    return make_op(0, f"gemm{m}x{n}x{k}", "gemm", dtype, {"m": m, "n": n, "k": k}, attrs=attrs)


def memcpy(nbytes: float) -> Op:
    return make_op(0, "copy", "memcpy", "bf16", {"bytes": nbytes})


def decode_attention(batch: int = 8, seq_kv: int = 8192) -> Op:
    return make_op(0, "decode", "attention", "bf16", {"batch": batch, "heads": 32, "kv_heads": 8, "seq_q": 1,
                                                       "seq_kv": seq_kv, "head_dim": 128})


def test_huge_bf16_gemm_is_compute_bound_between_half_and_full_peak(h200) -> None:
    op = gemm(16384, 16384, 16384)
    assert op.flops == 2 * 16384**3
    cost = cost_of(op, h200)
    assert cost.bound == "compute"
    achieved = op.flops / cost.seconds
    assert 0.5 * h200.peak("bf16") <= achieved <= h200.peak("bf16")
    assert cost.compute_s > 10 * cost.mem_s
    assert cost.mode == ""


def test_gemm_never_beats_the_roofline(h200) -> None:
    for m, n, k in [(1, 4096, 4096), (8, 8192, 4096), (512, 512, 512), (4096, 4096, 4096), (8192, 1, 8192),
                    (16384, 16384, 16384), (100, 3000, 7)]:
        op = gemm(m, n, k)
        cost = cost_of(op, h200)
        assert op.flops / cost.seconds <= h200.peak("bf16") * (1 + 1e-9)
        assert op.bytes / cost.seconds <= h200.hbm.bandwidth_bytes_per_s * (1 + 1e-9)


def test_tiny_gemm_is_latency_bound(h200) -> None:
    cost = cost_of(gemm(64, 64, 64), h200)
    assert cost.bound == "latency"
    assert cost.fixed_s >= max(cost.compute_s, cost.mem_s)
    # the fixed part is at least the kernel's device latency (and far below a millisecond)
    assert h200.calibration.kernel_latency_s <= cost.fixed_s < 1e-4
    assert cost.seconds < 2 * cost.fixed_s


def test_a_gemm_library_streams_weights_up_to_its_gemv_max_rows_then_tiles_without_split_k(h200) -> None:
    # MI300X's hipBLASLt / aiter (chips/mi300x.yaml): a 1280 x 8192 FP8 GEMM costs about the same from
    # m = 1 to 192 (a skinny kernel streaming its weights), then jumps: 80 tiles of 128 x 128 at most, no
    # split-k over 304 CUs; cuBLAS on the H200 splits k and grows smoothly
    mi300x = load_chip("mi300x")
    t = {m: cost_of(gemm(m, 1280, 8192, "fp8"), mi300x).seconds for m in (1, 128, 192, 256, 1024)}
    assert t[192] < 1.3 * t[1]
    assert t[256] > 3 * t[192]
    assert 0.7 < t[1024] / t[256] < 1.3  # one wave of output tiles either way
    h = {m: cost_of(gemm(m, 1280, 8192, "fp8"), h200).seconds for m in (192, 256)}
    assert h[256] < 1.5 * h[192]


def test_4gib_memcpy_approaches_hbm_bandwidth(h200) -> None:
    op = memcpy(4 * GiB)
    assert op.bytes == 2 * 4 * GiB  # read + write
    cost = cost_of(op, h200)
    assert cost.bound == "memory"
    achieved = op.bytes / cost.seconds
    assert 0.70 * 4.8e12 <= achieved <= 4.8e12
    assert cost.compute_s == 0.0
    assert cost.memory_energy_j == pytest.approx(op.bytes * h200.hbm.energy_j_per_byte)


def test_memcpy_time_scales_linearly_when_large(h200) -> None:
    one, four = cost_of(memcpy(GiB), h200), cost_of(memcpy(4 * GiB), h200)
    assert four.mem_s == pytest.approx(4 * one.mem_s, rel=1e-9)


def test_decode_attention_is_memory_bound(h200) -> None:
    op = decode_attention()
    cost = cost_of(op, h200)
    assert cost.bound == "memory"
    assert cost.mem_s > cost.compute_s
    assert op.bytes / cost.seconds <= h200.hbm.bandwidth_bytes_per_s
    # arithmetic intensity of decode is ~1 FLOP/byte per query head group: far left of the ridge
    assert op.flops / op.bytes < h200.peak("bf16") / h200.hbm.bandwidth_bytes_per_s / 50


def test_prefill_attention_is_compute_bound(h200) -> None:
    op = make_op(0, "prefill", "attention", "bf16", {"batch": 8, "heads": 32, "kv_heads": 8, "seq_q": 4096,
                                                      "seq_kv": 4096, "head_dim": 128, "causal": True})
    cost = cost_of(op, h200)
    assert cost.bound == "compute"
    assert op.flops / cost.seconds <= h200.peak("bf16")


def test_causal_attention_does_about_half_the_work() -> None:
    shape = {"batch": 1, "heads": 8, "kv_heads": 8, "seq_q": 4096, "seq_kv": 4096, "head_dim": 128}
    full = make_op(0, "a", "attention", "bf16", shape)
    causal = make_op(0, "a", "attention", "bf16", {**shape, "causal": True})
    assert causal.flops / full.flops == pytest.approx(0.5, abs=0.01)
    bwd = make_op(0, "a", "attention", "bf16", {**shape, "pass": "bwd"})
    assert bwd.flops == pytest.approx(2.5 * full.flops)


def test_fp8_gemm_is_faster_than_bf16_when_compute_bound(h200) -> None:
    op = gemm(8192, 8192, 8192, "fp8")
    bf16, fp8 = cost_of(gemm(8192, 8192, 8192), h200), cost_of(op, h200)
    assert fp8.bound == "compute"
    assert fp8.seconds < bf16.seconds
    assert fp8.compute_s >= op.flops / h200.peak("fp8")


def test_collective_is_link_bound_and_bounded_by_ring_traffic(h200) -> None:
    size = GiB
    op = make_op(0, "ar", "all_reduce", "bf16", {"bytes": size, "group": 8}, stream="comm")
    cost = cost_of(op, h200)
    assert cost.bound == "link"
    ring_bytes = 2 * 7 / 8 * size
    assert cost.link_bytes == pytest.approx(ring_bytes)
    assert cost.seconds >= ring_bytes / h200.link.bandwidth_bytes_per_s
    single = cost_of(make_op(0, "ar", "all_reduce", "bf16", {"bytes": size, "group": 1}, stream="comm"), h200)
    assert single.link_bytes == 0 and single.seconds < cost.seconds


def test_missing_dtype_on_a_chip_is_an_input_error_naming_the_op() -> None:
    op = gemm(64, 64, 64, "tf32")
    with pytest.raises(InputError, match="tf32") as info:
        cost_of(op, load_chip("dojo_int4"))
    assert info.value.key == "ops[0].dtype"
    assert op.name in str(info.value)


def test_int4_weights_are_weight_only_on_hopper_and_native_on_dojo() -> None:
    op = gemm(16, 4096, 4096, weight_dtype="int4", group_size=128)
    assert "weight-only" in cost_of(op, load_chip("h200_sxm")).mode
    assert "native" in cost_of(op, load_chip("dojo_int4")).mode


# ---------------------------------------------------------------- more HBM bandwidth never hurts


@pytest.fixture(scope="module")
def double_bw(tmp_path_factory):
    path = tmp_path_factory.mktemp("chips") / "h200_2x_hbm.yaml"
    path.write_text("extends: h200_sxm\nname: h200_2x_hbm\nmemory:\n  hbm:\n    bandwidth: 9.6 TB/s\n")
    return load_chip(path)


def _sample_ops() -> list[Op]:
    ops = [gemm(16384, 16384, 16384), gemm(64, 64, 64), gemm(8, 8192, 4096), gemm(16, 4096, 4096, weight_dtype="int4",
           group_size=128), memcpy(4 * GiB), memcpy(4096), decode_attention(), decode_attention(1, 512),
           make_op(0, "ar", "all_reduce", "bf16", {"bytes": GiB, "group": 8}, stream="comm"),
           make_op(0, "ag", "all_gather", "int8", {"bytes": 2**20, "group": 8}, stream="comm"),
           make_op(0, "h2d", "memcpy", "bf16", {"bytes": GiB}, attrs={"src": "host", "dst": "hbm"})]
    for generator, params in [("transformer_train_step", {"layers": 1, "batch": 1, "seq": 512}),
                              ("quantized_inference", {"layers": 1, "weights": "int4"}),
                              ("dynamic_attention", {"batch": 1, "seq": 1024, "passes": "fwd_bwd"}),
                              ("all_reduce", {"scheme": "int8_compressed", "size": "64 MiB"})]:
        ops += chipsim.build_workload(generator, params).ops
    return ops


def test_doubling_hbm_bandwidth_never_makes_an_op_slower(h200, double_bw) -> None:
    assert double_bw.hbm.bandwidth_bytes_per_s == pytest.approx(2 * h200.hbm.bandwidth_bytes_per_s)
    assert double_bw.peak_flops_per_s == h200.peak_flops_per_s
    ops = _sample_ops()
    assert len(ops) > 50
    for op in ops:
        base, fast = cost_of(op, h200), cost_of(op, double_bw)
        assert fast.seconds <= base.seconds * (1 + 1e-12), op.name
        # a GEMM's compute part carries its stalls on memory near the ridge (the knee): never longer
        assert fast.compute_s <= base.compute_s * (1 + 1e-12), op.name


def test_doubling_hbm_bandwidth_speeds_up_memory_bound_ops(h200, double_bw) -> None:
    for op in (memcpy(4 * GiB), gemm(8, 8192, 4096)):
        base, fast = cost_of(op, h200), cost_of(op, double_bw)
        assert base.bound == "memory"
        assert fast.mem_s == pytest.approx(base.mem_s / 2, rel=1e-9)
        assert fast.seconds < 0.6 * base.seconds
    # and not compute-bound ones
    big = gemm(16384, 16384, 16384)  # (the knee between compute and memory moves it by < 1e-5)
    assert cost_of(big, double_bw).seconds == pytest.approx(cost_of(big, h200).seconds, rel=1e-5)


def test_doubling_hbm_bandwidth_never_slows_a_whole_simulation(h200, double_bw) -> None:
    wl = chipsim.build_workload("transformer_train_step", {"layers": 2, "batch": 1, "seq": 512})
    base, fast = chipsim.simulate(wl, h200), chipsim.simulate(wl, double_bw)
    assert fast.latency_s <= base.latency_s
    assert fast.latency_s < base.latency_s  # a training step has memory-bound kernels


# ---------------------------------------------------------------- dynamic weight buffer


def test_weight_buffer_serves_small_buffered_operands_faster() -> None:
    dwb, base = load_chip("h100_dwb"), load_chip("h100_sxm")
    wb = dwb.weight_buffer
    assert wb is not None
    op = gemm(8, 4096, 4096, buffer_bytes=4096 * 4096 * 2)  # a 32 MiB weight
    assert op.attrs["buffer_bytes"] <= wb.capacity_bytes
    on_dwb, on_base = cost_of(op, dwb), cost_of(op, base)
    assert on_dwb.level == "weight_buffer"
    assert on_base.level == "hbm"
    assert on_dwb.fixed_s < on_base.fixed_s
    assert on_base.fixed_s - on_dwb.fixed_s == pytest.approx(dwb.hbm.latency_s - wb.latency_s)
    assert on_dwb.mem_bytes < on_base.mem_bytes  # buffered bytes no longer cross HBM
    assert on_dwb.seconds < on_base.seconds


def test_weight_buffer_serves_what_fits_and_hbm_the_rest() -> None:
    """An operand larger than the buffer is served partly from it (capacity bytes) and partly from
    HBM, so it is faster than on the plain H100, but it keeps HBM's access latency."""
    dwb, h100 = load_chip("h100_dwb"), load_chip("h100_sxm")
    too_big = gemm(8, 8192, 8192, buffer_bytes=dwb.weight_buffer.capacity_bytes * 2)
    cost, plain = cost_of(too_big, dwb), cost_of(too_big, h100)
    assert cost.level == "weight_buffer"
    assert cost.mem_bytes == pytest.approx(too_big.bytes - dwb.weight_buffer.capacity_bytes)
    assert cost.mem_s < plain.mem_s
    assert cost.fixed_s == pytest.approx(plain.fixed_s)  # HBM latency: not all of it fits
    no_attr = gemm(8, 4096, 4096)
    assert cost_of(no_attr, dwb).level == "hbm"
