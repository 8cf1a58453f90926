"""The `serving:` section, `chipsim serve` and the capacity search. No test pins a calibrated latency
(the serving model is being calibrated): they assert errors, ordering and queueing behaviour."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from chipsim.config.runconfig import load_run_config, parse_run_config
from chipsim.errors import InputError
from chipsim.serving.capacity import FLOOR, find_capacity, parse_slo, search_rate, violations
from chipsim.serving.config import ServingSetup, resolve_serving
from chipsim.serving.engine import Arrivals, poisson_times, simulate_serving
from chipsim.serving.metrics import summarize
from chipsim.serving.run import run_serving

BASE: dict[str, Any] = {"model": "llama3-8b", "chip": "h100_sxm", "engine": "trtllm", "requests": 300,
                        "arrival": {"process": "poisson", "rate": 10}, "lengths": {"input": 1024, "output": 128}}


def _setup(**over: Any) -> ServingSetup:
    return resolve_serving(parse_run_config({"serving": {**BASE, **over}}))


def _write(tmp_path: Path, serving: dict[str, Any], name: str = "serve.yaml", **top: Any) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "serve_test", **top, "serving": serving}), encoding="utf-8")
    return path


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize("over, key", [
    ({"colour": "blue"}, "serving.colour"),
    ({"egine": "trtllm"}, "serving.egine"),  # the typo, not the missing `engine`
    ({"arrival": {"process": "poisson", "rat": 5}}, "serving.arrival.rat"),
    ({"lengths": {"input": {"dist": "normal", "mean": 9, "sd": 1}, "output": 1}}, "serving.lengths.input.sd"),
    ({"lengths": {"inputs": 9, "output": 1}}, "serving.lengths.inputs"),
    ({"engine": "tgi"}, "serving.engine"),
    ({"engine_settings": {"max_batchsize": 8}}, "serving.engine_settings.max_batchsize"),
    ({"engine_settings": {"admission": "lazy"}}, "serving.engine_settings.admission"),
    ({"engine_settings": {"memory_fraction": 1.5}}, "serving.engine_settings.memory_fraction"),
    ({"engine_settings": {"moe_efficiency": 0}}, "serving.engine_settings.moe_efficiency"),
    ({"engine_settings": {"moe_compute_efficiency": 1.5}}, "serving.engine_settings.moe_compute_efficiency"),
    ({"engine_settings": {"chunked_prefill": "no"}}, "serving.engine_settings.chunked_prefill"),
    ({"engine_settings": {"chunked_prefill": False, "max_tokens": 512}}, "serving.engine_settings.max_tokens"),
    ({"engine": "trtllm 1.0.0rc3", "engine_settings": {"max_batch": 1}}, "serving.engine_settings.max_batch"),
    ({"engine_settings": {"frontend_token_s": "fast"}}, "serving.engine_settings.frontend_token_s"),
    ({"engine_settings": {"eager_layer_s": -1}}, "serving.engine_settings.eager_layer_s"),
    ({"quantization": "int3"}, "serving.quantization"),
    ({"chip": "h9000"}, "serving.chip"),
    ({"chip": "h100_sxm", "system": "hgx_h200"}, "serving.system"),
    ({"model": "llama9-1t"}, "serving.model"),
    ({"model": {"layers": 2, "d_model": 256, "heads": 4, "wings": 2}}, "serving.model.wings"),
    ({"kv_cache_dtype": "fp4"}, "serving.kv_cache_dtype"),
    ({"chip": "a100_sxm", "kv_cache_dtype": "fp8"}, "serving.kv_cache_dtype"),
    ({"chip": "a100_sxm", "quantization": "fp8"}, "serving.quantization"),  # a zero fp8 rate: no format
    ({"chip": "mi300x", "engine": "trtllm"}, "serving.engine"),  # TensorRT-LLM is NVIDIA's only
    ({"chip": "mi300x", "engine": "lmdeploy"}, "serving.engine"),  # so is TurboMind
    ({"tp": 3, "system": "dgx_h100"}, "serving.tp"),
    ({"tp": 0}, "serving.tp"),
    ({"tp": 16}, "serving.tp"),
    ({"model": "llama3-70b"}, "serving.tp"),  # 140 GB of weights on one 80 GB GPU
    ({"requests": 0}, "serving.requests"),
    ({"requests": 1.5}, "serving.requests"),
    ({"seed": -1}, "serving.seed"),
    ({"arrival": {"process": "poisson"}}, "serving.arrival.rate"),
    ({"arrival": {"process": "poisson", "rate": -1}}, "serving.arrival.rate"),
    ({"arrival": {"process": "poisson", "rate": float("nan")}}, "serving.arrival.rate"),
    ({"arrival": {"process": "poisson", "rate": 5, "cv": 2}}, "serving.arrival.cv"),
    ({"arrival": {"process": "gamma", "rate": 5}}, "serving.arrival.cv"),
    ({"arrival": {"process": "closed", "concurrency": 0}}, "serving.arrival.concurrency"),
    ({"arrival": {"process": "closed", "concurrency": 4, "think": "soon"}}, "serving.arrival.think"),
    ({"arrival": {"process": "closed", "concurrency": 4, "think": -1}}, "serving.arrival.think"),
    ({"arrival": {"process": "uniform"}}, "serving.arrival.process"),
    ({"arrival": {"process": "trace", "file": "missing.csv"}}, "serving.arrival.file"),
    ({"lengths": {"input": 9000, "output": 128}}, "serving.lengths.input"),
    ({"lengths": {"input": 8000, "output": 500}}, "serving.lengths.output"),
    ({"lengths": {"input": {"dist": "zipf"}, "output": 128}}, "serving.lengths.input.dist"),
    ({"lengths": {"input": {"dist": "uniform", "low": 900, "high": 100}, "output": 128}},
     "serving.lengths.input.high"),
    ({"lengths": {"input": {"dist": "normal", "mean": 1024}, "output": 128}}, "serving.lengths.input.std"),
    ({"lengths": {"input": {"dist": "lognormal", "mean": 4000, "sigma": 1.5}, "output": 128}},
     "serving.lengths.input"),  # the tail beyond the context
    ({"lengths": {"input": "long", "output": 128}}, "serving.lengths.input"),
    ({"lengths": {"input": 1024}}, "serving.lengths.output"),
    ({"engine_settings": {"memory_fraction": 0.001}}, "serving.lengths"),  # KV cache < one request
    ({"shared_prefix": 1024}, "serving.shared_prefix"),  # the whole prompt: nothing left to compute
    ({"shared_prefix": -1}, "serving.shared_prefix"),
    ({"engine_settings": {"prefix_caching": "yes"}}, "serving.engine_settings.prefix_caching"),
    ({"disaggregation": {"prefill": {"tp": 1}}, "tp": 2}, "serving.tp"),
    ({"disaggregation": {"prefill": {"tp": 3}}}, "serving.disaggregation.prefill.tp"),
    ({"disaggregation": {"decode": {"instances": 0}}}, "serving.disaggregation.decode.instances"),
    ({"disaggregation": {"decode": {"tp": 1, "gpus": 2}}}, "serving.disaggregation.decode.gpus"),
    ({"disaggregation": {"link": "carrier pigeon"}}, "serving.disaggregation.link"),
    ({"disaggregation": {"prefill": {"instances": 8}, "link": "nvlink"}}, "serving.disaggregation.link"),
    ({"disaggregation": {}, "arrival": {"process": "closed", "concurrency": 4}}, "serving.arrival.process"),
    ({"model": "llama3-70b", "disaggregation": {"prefill": {"tp": 1}, "decode": {"tp": 4}}},
     "serving.disaggregation.prefill.tp"),  # 140 GB of weights on one prefill GPU
    ({"dp_attention": True, "tp": 2}, "serving.dp_attention"),  # a dense model: no experts to split
    ({"dp_attention": "on"}, "serving.dp_attention"),
])
def test_config_errors_name_their_key(over: dict[str, Any], key: str) -> None:
    with pytest.raises(InputError) as info:
        _setup(**over)
    assert info.value.key == key, info.value


def test_file_errors_name_the_config_the_key_and_the_row(tmp_path: Path, cli: Callable) -> None:
    (tmp_path / "good.csv").write_text("arrival_s,input_len,output_len\n0.0,100,10\n")
    path = _write(tmp_path, {**BASE, "arrival": {"process": "trace", "file": "good.csv"}})
    rc, out, err = cli(["serve", path])
    assert rc == 2 and out == ""
    assert str(path) in err and "serving.lengths" in err  # a trace gives the lengths itself
    (tmp_path / "trace.csv").write_text("arrival_s,input_len,output_len\n0.0,100,10\n0.5,abc,10\n")
    path = _write(tmp_path, {k: v for k, v in BASE.items() if k != "lengths"} |
                  {"arrival": {"process": "trace", "file": "trace.csv"}})
    rc, _, err = cli(["serve", path])
    assert rc == 2 and "serving.arrival.file" in err and "row 1, column input_len" in err
    (tmp_path / "lengths.csv").write_text("input,output\n100,10\n")
    path = _write(tmp_path, {**BASE, "lengths": {"file": "lengths.csv"}})
    rc, _, err = cli(["serve", path])
    assert rc == 2 and "serving.lengths.file" in err and "input_len" in err


def test_a_serving_config_takes_nothing_else(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_run_config(_write(tmp_path, BASE, chips=["h100_sxm"]))
    assert info.value.key == "chips"


def test_trace_and_length_files_are_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "trace.csv").write_text("arrival_s,input_len,output_len\n0.2,300,20\n0.0,100,10\n1.0,50,5\n")
    (tmp_path / "data" / "lengths.csv").write_text("input_len,output_len\n100,10\n200,20\n")
    serving = {k: v for k, v in BASE.items() if k not in ("lengths", "requests")}
    setup = resolve_serving(load_run_config(_write(tmp_path, {
        **serving, "arrival": {"process": "trace", "file": "data/trace.csv"}})))
    assert setup.requests == 3 and setup.arrival.times == (0.0, 0.2, 1.0)  # sorted by arrival
    frame = run_serving(setup).requests_frame()
    assert list(frame["input_len"]) == [100, 300, 50] and list(frame["arrival_s"]) == [0.0, 0.2, 1.0]
    setup = resolve_serving(load_run_config(_write(tmp_path, {**BASE, "requests": 5, "lengths": {
        "file": "data/lengths.csv"}})))
    assert [setup.lengths()(i) for i in range(5)] == [(100, 10), (200, 20), (100, 10), (200, 20), (100, 10)]


def test_same_inputs_same_numbers() -> None:
    over = {"lengths": {"input": {"dist": "lognormal", "mean": 800, "sigma": 0.5, "max": 4000},
                        "output": {"dist": "normal", "mean": 100, "std": 50}}}
    a, b = _setup(**over), _setup(**over)
    assert (a.input_lens == b.input_lens).all() and (a.output_lens == b.output_lens).all()
    assert a.output_lens.min() >= 1 and a.input_lens.max() <= 4000
    assert abs(a.input_lens.mean() - 800) < 80  # `mean` is the lengths' mean, not the log's
    assert run_serving(a).summary == run_serving(b).summary
    c = _setup(seed=1, **over)
    assert not (a.input_lens == c.input_lens).all()


# ---------------------------------------------------------------- behaviour


def test_latency_rises_with_the_rate_and_throughput_saturates() -> None:
    runs = {rate: run_serving(_setup(arrival={"process": "poisson", "rate": rate})).summary for rate in (2, 10, 40)}
    burst = run_serving(_setup(arrival={"process": "burst"})).summary
    ttft = [runs[r]["ttft_p99_s"] for r in (2, 10, 40)]
    assert ttft == sorted(ttft) and ttft[-1] > 2 * ttft[0]
    assert runs[2]["requests_per_s"] == pytest.approx(2, rel=0.15)  # below saturation: throughput follows load
    assert burst["output_tokens_per_s"] >= max(r["output_tokens_per_s"] for r in runs.values()) * 0.99
    over = run_serving(_setup(arrival={"process": "poisson", "rate": 4 * burst["requests_per_s"]})).summary
    assert over["output_tokens_per_s"] == pytest.approx(burst["output_tokens_per_s"], rel=0.1)  # saturated
    closed = {c: run_serving(_setup(arrival={"process": "closed", "concurrency": c})).summary for c in (1, 16, 256)}
    assert closed[1]["output_tokens_per_s"] < closed[16]["output_tokens_per_s"] < closed[256]["output_tokens_per_s"]
    assert closed[1]["tpot_mean_s"] < closed[256]["tpot_mean_s"]  # bigger batches, slower steps
    assert closed[1]["batch_mean"] == pytest.approx(1, abs=0.05)


def test_think_time_spreads_a_closed_loop_and_warmup_drops_the_start() -> None:
    from chipsim.serving.engine import Arrivals, simulate_serving
    from chipsim.serving.metrics import summarize

    setup = _setup()
    lock = Arrivals(lambda i: (2048, 64), count=64, concurrency=16)
    think = Arrivals(lambda i: (2048, 64), count=64, concurrency=16, think_s=0.05, seed=3)
    a, b = simulate_serving(setup.iteration, lock), simulate_serving(setup.iteration, think)
    def gaps(trace: Any) -> list[float]:  # request 16 + k is sent on the k-th finish, a think time later
        finishes = sorted(r.finish_s for r in trace.requests)
        sent = sorted((r for r in trace.requests if r.id >= 16), key=lambda r: r.id)
        return [r.arrival_s - finishes[k] for k, r in enumerate(sent)]

    assert max(gaps(a)) == 0.0 and min(gaps(b)) >= 0.0 and sum(gaps(b)) / len(gaps(b)) > 0.02
    assert b.makespan_s > a.makespan_s
    assert simulate_serving(setup.iteration, think).makespan_s == b.makespan_s  # seeded: the same numbers
    warm = simulate_serving(setup.iteration, Arrivals(lambda i: (2048, 64), count=64, concurrency=16, warmup=16))
    cold, hot = summarize(a, 1), summarize(warm, 1)
    assert hot["requests"] == 48 and cold["requests"] == 64
    # the first wave queues 16 prompts of 2,048 tokens for an 8,192-token budget: its TTFT is the worst
    assert hot["ttft_mean_s"] < cold["ttft_mean_s"]
    config = _setup(arrival={"process": "closed", "concurrency": 8, "think": "20 ms"})
    assert config.arrival.think_s == pytest.approx(0.02) and "think time 20 ms" in config.arrival.label()


def test_a_release_that_holds_a_sequence_slot_keeps_one_closed_loop_client_waiting() -> None:
    """TensorRT-LLM 1.0's release candidates hold one of max_batch_size's slots: c clients on a server of
    max_batch c always have one request queued, which waits for the next finish (~ E2E / c)."""
    from chipsim.serving.engine import Arrivals, simulate_serving
    from chipsim.serving.metrics import summarize
    from chipsim.serving.profiles import engine_profile

    assert engine_profile("trtllm 1.0.0rc3").reserved_slots == 1
    assert engine_profile("trtllm").reserved_slots == engine_profile("trtllm 1.0.0").reserved_slots == 0
    c = 8
    loop = Arrivals(lambda i: (1024, 256), count=10 * c, concurrency=c, warmup=2 * c)
    runs = {}
    for engine in ("trtllm", "trtllm 1.0.0rc3"):
        setup = _setup(engine=engine, engine_settings={"max_batch": c, "max_tokens": c + 1024 + 1500,
                                                      "chunked_prefill": False})
        runs[engine] = summarize(simulate_serving(setup.iteration, loop), 1)
    free, held = runs["trtllm"], runs["trtllm 1.0.0rc3"]
    assert held["batch_mean"] < c - 0.9 < free["batch_mean"]
    assert held["ttft_mean_s"] > 4 * free["ttft_mean_s"]
    # the wait is the time to the next of c - 1 running requests' finishes
    assert held["ttft_mean_s"] - free["ttft_mean_s"] == pytest.approx(held["e2e_mean_s"] / c, rel=0.25)


def test_a_front_end_caps_the_tokens_a_server_streams() -> None:
    """One front-end process at 1 ms a token streams at most 1,000 tokens/s: the clients see the tokens
    that late, and a closed loop's throughput levels off there while the engine alone goes far beyond."""
    from chipsim.serving.engine import Arrivals, simulate_serving
    from chipsim.serving.metrics import summarize
    from chipsim.serving.profiles import engine_profile

    loop = Arrivals(lambda i: (256, 64), count=640, concurrency=64, warmup=64)
    free = _setup(engine_settings={"max_batch": 64})
    capped = _setup(engine_settings={"max_batch": 64, "frontend_token_s": "1 ms"})
    assert capped.iteration.profile.frontend_token_s == pytest.approx(1e-3)
    a, b = (summarize(simulate_serving(s.iteration, loop), 1) for s in (free, capped))
    assert a["output_tokens_per_s"] > 3000
    assert 900 < b["output_tokens_per_s"] <= 1000 * 1.001
    assert b["tpot_mean_s"] > 3 * a["tpot_mean_s"] and b["e2e_mean_s"] > 3 * a["e2e_mean_s"]
    assert engine_profile("trtllm 1.0.0rc3").frontend_token_s == pytest.approx(100e-6)  # trtllm-serve's, fitted


def test_an_eager_step_costs_the_engines_host_time_per_layer() -> None:
    """A prompt's step, launched op by op, takes at least layers x eager_layer_s of host time (TensorRT-LLM
    1.0's release candidates: 0.5 ms); a decode-only step, replayed from a CUDA graph, does not."""
    from chipsim.serving.profiles import engine_profile

    assert engine_profile("trtllm 1.0.0rc3").eager_layer_s == pytest.approx(500e-6)
    assert engine_profile("trtllm").eager_layer_s == 0
    plain = _setup(tp=8)
    slow = _setup(tp=8, engine_settings={"eager_layer_s": "1 ms"})
    layers = slow.iteration.model.layers
    prompt = [(1024, 1024)]
    fast_s, slow_s = (s.iteration.step(prompt, 4, 4 * 1024, 5).seconds for s in (plain, slow))
    assert fast_s < layers * 1e-3 < slow_s
    assert slow_s - fast_s > 0.5 * layers * 1e-3
    decode = [s.iteration.step([], 4, 4 * 1024, 4).seconds for s in (plain, slow)]
    assert decode[0] == decode[1]


def test_sglang_runs_prompts_in_steps_of_their_own() -> None:
    """Without mixed batches (SGLang's default) no step holds both a prompt and decoding sequences, and
    prompts start sooner while the decoding sequences wait longer between tokens than when they mix."""
    common: dict[str, Any] = {"engine": "sglang", "lengths": {"input": 1024, "output": 256}, "requests": 200,
                              "arrival": {"process": "poisson", "rate": 8}}
    alone, mixed = (_setup(engine_settings={"mixed_batches": m}, **common) for m in (False, True))
    assert alone.iteration.profile.mixed_batches is False and mixed.iteration.profile.mixed_batches
    arrivals = Arrivals(lambda i: (1024, 256), count=200, times=poisson_times(8, 200, 0))
    traces = [simulate_serving(s.iteration, arrivals, log=True) for s in (alone, mixed)]
    steps = [t.steps.arrays() for t in traces if t.steps is not None]
    both = [int(((a["prefill_tokens"] > 0) & (a["decode_sequences"] > 0)).sum()) for a in steps]
    assert both[0] == 0 < both[1]
    a, b = (summarize(t, 1) for t in traces)
    assert a["ttft_mean_s"] < b["ttft_mean_s"]
    assert a["itl_p99_s"] > b["itl_p99_s"]


def test_ratio_admission_keeps_room_for_the_outputs_to_come() -> None:
    """SGLang's admission holds back requests whose outputs the cache could not hold: with a cache of ten
    such sequences and long outputs it preempts far less than admitting every prompt that fits, though
    more than reserving every sequence whole."""
    common: dict[str, Any] = {"engine": "sglang", "lengths": {"input": 256, "output": 2048}, "requests": 120,
                              "arrival": {"process": "poisson", "rate": 50}}
    runs = {a: run_serving(_setup(engine_settings={"admission": a, "memory_fraction": 0.05}, **common)).summary
            for a in ("greedy", "ratio", "reserve")}
    assert runs["reserve"]["preemptions"] == 0 < runs["ratio"]["preemptions"] < 0.3 * runs["greedy"]["preemptions"]


def test_decode_steps_beyond_the_graphs_batch_run_op_by_op() -> None:
    """SGLang captures decode CUDA graphs up to 256 sequences on an 80 GB GPU at tp 1 (512 from tp 4;
    160 in its 0.4 releases); a larger decode step is launched op by op and costs the eager host time."""
    from chipsim.serving.profiles import engine_profile, for_chip

    setup = _setup(engine="sglang")
    assert setup.iteration.profile.graph_max_batch == 256
    assert for_chip(engine_profile("sglang"), setup.chip, 4).graph_max_batch == 512
    assert for_chip(engine_profile("sglang 0.4.1"), setup.chip, 4).graph_max_batch == 160
    assert engine_profile("sglang v0.4.1") == engine_profile("sglang 0.4.1")  # a version written with a v
    step = setup.iteration.step
    layers = setup.iteration.model.layers
    graphed, eager = step([], 256, 256 * 512, 256).seconds, step([], 257, 257 * 512, 257).seconds
    assert eager > layers * setup.iteration.profile.eager_layer_s > graphed  # host-bound
    assert _setup().iteration.profile.graph_max_batch == 0  # TensorRT-LLM: every decode step graphed


def test_lmdeploy_runs_turbominds_defaults_by_device() -> None:
    """LMDeploy's TurboMind: 384 requests on an A100, 1,024 on an H100, 128 elsewhere; its 0.1 release 64
    with half the free memory for the KV cache; no Python dispatch (kernels launched from C++)."""
    from chipsim.hardware.registry import load_chip
    from chipsim.serving.profiles import engine_profile, for_chip
    from chipsim.study.serving_validate import profile_of

    assert _setup(engine="lmdeploy").iteration.profile.max_batch == 1024
    assert _setup(engine="lmdeploy", chip="a100_sxm").iteration.profile.max_batch == 384
    assert for_chip(engine_profile("lmdeploy"), load_chip("mi300x")).max_batch == 128
    old = _setup(engine="lmdeploy 0.1.0a1").iteration.profile
    assert (old.max_batch, old.memory_fraction, old.block_size) == (64, 0.5, 128)
    assert profile_of("LMDeploy 0.6 (TurboMind)") == profile_of("turbomind") == "lmdeploy"
    prompt = _setup(engine="lmdeploy").iteration.step([(1024, 1024)], 0, 0, 1)
    eager = _setup(engine="vllm").iteration.step([(1024, 1024)], 0, 0, 1)
    assert prompt.seconds < eager.seconds


def test_fp8_checkpoints_run_weight_only_where_the_gpu_has_no_fp8() -> None:
    """vLLM and SGLang run an FP8 checkpoint on an A100 with FP8 Marlin kernels (weights in FP8, 16-bit
    math); TensorRT-LLM has no such path."""
    common: dict[str, Any] = {"chip": "a100_sxm", "quantization": "fp8"}
    for engine in ("vllm", "sglang"):
        setup = _setup(engine=engine, **common)
        assert setup.iteration.quant.name == "fp8_weight"
        assert setup.iteration.weight_bytes < 0.6 * _setup(engine=engine, chip="a100_sxm").iteration.weight_bytes
    with pytest.raises(InputError) as err:
        _setup(engine="trtllm", **common)
    assert err.value.key == "serving.quantization"


def test_mxfp4_checkpoints_run_weight_only_where_the_gpu_has_no_fp4() -> None:
    """gpt-oss's MXFP4 checkpoint runs on Hopper with 16-bit math on 4-bit weights (every engine has such
    kernels): a small decode step streams a quarter of the 16-bit weights; a B200 runs FP4 tensor cores."""
    common: dict[str, Any] = {"engine": "vllm", "chip": "h200_sxm", "model": "gpt-oss-120b", "tp": 4}
    mxfp4 = _setup(quantization="mxfp4", **common).iteration
    bf16 = _setup(**common).iteration
    assert mxfp4.quant.name == "mxfp4_weight"
    assert mxfp4.weight_bytes < 0.6 * bf16.weight_bytes
    assert mxfp4.step([], 8, 8 * 1024, 8).seconds < 0.8 * bf16.step([], 8, 8 * 1024, 8).seconds
    blackwell = _setup(engine="trtllm", chip="b200", model="gpt-oss-120b", quantization="mxfp4").iteration
    assert blackwell.quant.name == "mxfp4"


def test_an_engines_moe_kernels_slow_only_the_experts() -> None:
    """vLLM's fused MoE kernels stream their weights at half chipsim's grouped-GEMM rate and compute at a
    quarter of it (fitted): an MoE model's decode step takes longer than with CUTLASS-class kernels through
    the first, a prompt's step through the second; a dense model's steps do not change."""
    def steps(model: str, **settings: Any) -> tuple[float, float]:
        it = _setup(engine="vllm", chip="h200_sxm", model=model, quantization="fp8", tp=4,
                    engine_settings=settings).iteration
        return float(it.step([], 32, 32 * 1024, 32).seconds), float(it.step([(8192, 8192)], 0, 0, 1).seconds)
    full = {"moe_efficiency": 1.0, "moe_compute_efficiency": 1.0}
    (decode, prompt), (decode_full, prompt_full) = steps("qwen3-235b-a22b"), steps("qwen3-235b-a22b", **full)
    assert decode > 1.2 * decode_full and prompt > 1.5 * prompt_full
    assert steps("qwen3-235b-a22b", moe_compute_efficiency=1.0)[0] == decode  # decode streams: compute-side aside
    assert steps("qwen3-235b-a22b", moe_efficiency=1.0)[1] == pytest.approx(prompt, rel=0.02)
    assert steps("llama3-70b") == steps("llama3-70b", **full)


def test_a_shared_prefix_is_computed_once_with_prefix_caching() -> None:
    common: dict[str, Any] = {"lengths": {"input": 2048, "output": 64}, "requests": 200,
                              "arrival": {"process": "poisson", "rate": 10}}
    plain = run_serving(_setup(**common)).summary
    cached = run_serving(_setup(shared_prefix=1536, **common)).summary
    off = run_serving(_setup(shared_prefix=1536, engine_settings={"prefix_caching": False}, **common)).summary
    assert off == {**plain, "shared_prefix": 1536}  # without caching a shared prefix changes nothing
    # every request but the first serves 1,536 of its 2,048 prompt tokens (whole blocks of 32) from the cache
    assert cached["prefix_hit_rate"] == pytest.approx(1536 / 2048 * 199 / 200)
    assert cached["ttft_mean_s"] < 0.5 * plain["ttft_mean_s"]
    assert cached["kv_utilization_mean"] < plain["kv_utilization_mean"]  # the prefix's blocks held once
    assert math.isnan(plain["prefix_hit_rate"]) or plain["prefix_hit_rate"] == 0


def test_disaggregated_prefill_and_decode() -> None:
    common: dict[str, Any] = {"lengths": {"input": 2048, "output": 128}, "requests": 200,
                              "arrival": {"process": "poisson", "rate": 6}}
    aggregated = run_serving(_setup(tp=2, **common)).summary
    split = _setup(disaggregation={"prefill": {"tp": 1}, "decode": {"tp": 1}}, **common)
    assert split.gpus == 2 and split.disagg is not None and split.disagg.link.name == "nvlink"
    run = run_serving(split)
    s = run.summary
    assert s["requests"] == 200 and s["gpus"] == 2 and "disaggregated" in s["disaggregation"]
    # decode steps never wait for a prompt: no token gap carries a prefill (the aggregated TP2 instance's do)
    assert s["itl_p99_s"] < 1.2 * s["itl_p50_s"] and s["itl_p99_s"] < 0.5 * aggregated["itl_p99_s"]
    frame = run.requests_frame()
    assert (frame["ttft_s"] > 0).all() and (frame["e2e_s"] > frame["ttft_s"]).all()
    # the KV cache crosses the network more slowly than NVLink: the first token comes later, the rest as fast
    network = run_serving(_setup(disaggregation={"prefill": {"tp": 1}, "decode": {"tp": 1}, "link": "network"},
                                 **common)).summary
    assert network["ttft_mean_s"] > s["ttft_mean_s"] and network["tpot_mean_s"] == pytest.approx(s["tpot_mean_s"])
    two = run_serving(_setup(disaggregation={"prefill": {"tp": 1, "instances": 2}, "decode": {"tp": 2}},
                             **{**common, "arrival": {"process": "poisson", "rate": 12}})).summary
    assert two["gpus"] == 4 and two["requests"] == 200


def test_mla_and_moe_models_are_served() -> None:
    """DeepSeek-V3 (MLA, 3 dense then 58 MoE layers of 256 experts): its KV cache is the compressed
    latent, whole on every tensor-parallel rank; a decode batch reads only the experts its tokens route to."""
    ds = _setup(model="deepseek-v3", chip="h200_sxm", tp=8, quantization="fp8", kv_cache_dtype="fp8",
                lengths={"input": 1000, "output": 200}, requests=16, arrival={"process": "closed", "concurrency": 8})
    assert ds.iteration.kv_bytes_per_token == 61 * (512 + 64)  # one byte each, not split over tp
    one, many = (ds.iteration.step([], n, n * 1000, n).seconds for n in (1, 64))
    assert one < many < 8 * one  # 64 tokens touch ~222 of 256 experts, one token 8
    run = run_serving(ds).summary
    assert run["requests"] == 16 and 0.005 < run["tpot_mean_s"] < 0.1
    # a dense layer stays dense: the first three layers cost less than MoE ones at large batch
    it = ds.iteration
    dense, moe = (sum(max(o, c) for o, c, *_ in it._layer(4096, kind)) for kind in (False, True))
    assert dense < moe
    mixtral = _setup(model="mixtral-8x7b", tp=2, lengths={"input": 512, "output": 64})
    step1, step32 = (mixtral.iteration.step([], n, n * 512, n).seconds for n in (1, 32))
    assert 2 * step1 < step32 < 4 * step1  # one token reads 2 of 8 experts' weights, 32 tokens all 8


def test_fp8_kv_cache_halves_the_decode_attention() -> None:
    from chipsim.serving.quant import quantization

    bf16, fp8 = _setup(), _setup(kv_cache_dtype="fp8")
    assert fp8.iteration.kv_bytes_per_token == bf16.iteration.kv_bytes_per_token / 2
    long_decode = (256, 256 * 4096, 256)  # 256 sequences of 4,096 cached tokens: attention-bound
    t16, t8 = (s.iteration.step([], *long_decode).seconds for s in (bf16, fp8))
    assert 0.5 * t16 < t8 < 0.8 * t16
    assert quantization("fp8").name == "fp8"


def test_an_unfused_eager_engine_is_host_bound_at_small_batches_and_tp_scales_poorly() -> None:
    eager = {"model": "llama2-70b", "tp": 4, "engine": "eager"}
    four, eight = _setup(**eager), _setup(**{**eager, "tp": 8})
    fused = _setup(**{**eager, "engine_settings": {}, "engine": "trtllm"})
    step = (four.iteration.step([], 1, 512, 1).seconds, eight.iteration.step([], 1, 512, 1).seconds)
    assert step[0] == pytest.approx(step[1], rel=0.05)  # the host's dispatch, not the GPUs, sets the pace
    assert step[0] > 1.5 * fused.iteration.step([], 1, 512, 1).seconds
    prefill = [s.iteration.step([(8192, 8192)], 0, 0, 1).seconds for s in (four, eight)]
    assert prefill[1] > 0.75 * prefill[0]  # the engine's all-reduce eats most of TP8's gain


def test_trtllm_launches_context_steps_op_by_op_and_replays_decode_steps_from_graphs() -> None:
    from dataclasses import replace

    from chipsim.serving.iteration import IterationModel

    it = _setup(model="llama2-7b", quantization="fp8", kv_cache_dtype="fp8").iteration
    graphed = IterationModel(it.model, it.chip, it.quant, replace(it.profile, graphs="all"), tp=it.tp,
                             kv_dtype=it.kv_dtype)
    # an FP8 128-token prompt's kernels are shorter than their dispatch: the host sets the pace
    short, long = ([(128, 128)], 0, 0, 1), ([(2048, 2048)], 0, 0, 1)
    assert it.step(*short).seconds > 1.3 * graphed.step(*short).seconds
    assert it.step(*long).seconds == graphed.step(*long).seconds  # a long prompt's GPU time hides it
    decode = ([], 64, 64 * 1024, 64)
    assert it.step(*decode).seconds == graphed.step(*decode).seconds


def test_fp8_raises_kv_capacity_and_decode_throughput() -> None:
    decode_heavy: dict[str, Any] = {"arrival": {"process": "closed", "concurrency": 64}, "requests": 128,
                                    "lengths": {"input": 128, "output": 512}}
    bf16 = run_serving(_setup(**decode_heavy)).summary
    fp8 = run_serving(_setup(quantization="fp8", kv_cache_dtype="fp8", **decode_heavy)).summary
    assert fp8["kv_capacity_tokens"] > 2 * bf16["kv_capacity_tokens"]  # half the weights, half the bytes/token
    assert fp8["output_tokens_per_s"] > 1.2 * bf16["output_tokens_per_s"]
    assert fp8["tpot_mean_s"] < bf16["tpot_mean_s"]


def test_reserve_admission_never_preempts_greedy_does_under_kv_pressure() -> None:
    pressure: dict[str, Any] = {"arrival": {"process": "burst"}, "requests": 64,
                                "lengths": {"input": 512, "output": 1024}}
    reserve = run_serving(_setup(engine_settings={"admission": "reserve", "memory_fraction": 0.05}, **pressure))
    greedy = run_serving(_setup(engine_settings={"admission": "greedy", "memory_fraction": 0.05}, **pressure))
    assert reserve.summary["preemptions"] == 0
    assert greedy.summary["preemptions"] > 0
    assert (greedy.requests_frame()["preemptions"] > 0).any()
    assert reserve.summary["requests"] == greedy.summary["requests"] == 64
    assert greedy.summary["kv_utilization_peak"] > 0.9


# ---------------------------------------------------------------- capacity


@pytest.mark.parametrize("text, expected", [
    ("ttft_p99=500ms,tpot_p99=50ms", {"ttft_p99": 0.5, "tpot_p99": 0.05}),
    ("e2e_mean=2s", {"e2e_mean": 2.0}),
    (" itl_p90 = 40 ", {"itl_p90": 0.04}),
])
def test_slo_strings_parse(text: str, expected: dict[str, float]) -> None:
    assert parse_slo(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "ttft_p99", "ttft_p99=fast", "ttft_p95=1s", "ttft_p99=0ms", "ttft_p99=5min",
                                  "ttft_p99=1s,ttft_p99=2s", "ttft_p99=1s,", "latency=1s"])
def test_bad_slo_strings_name_the_option(text: str) -> None:
    with pytest.raises(InputError) as info:
        parse_slo(text)
    assert info.value.key == "--slo"


def test_find_capacity_returns_a_rate_that_meets_the_slo_and_1_3x_does_not() -> None:
    setup = _setup()
    slo = parse_slo("ttft_p99=150ms,tpot_p99=20ms")
    found = find_capacity(setup, slo)
    assert found.rate is not None and not found.throughput_bound
    assert 0 < found.rate < found.saturation_rate
    assert found.run is not None and not violations(found.run.summary, slo)
    assert found.run.summary["rate_per_s"] == found.rate
    faster = run_serving(setup.at_rate(1.3 * found.rate)).summary
    assert violations(faster, slo)
    assert not find_capacity(setup, parse_slo("ttft_p99=1ms")).rate  # unattainable: no rate
    loose = find_capacity(setup, parse_slo("e2e_p99=1000s"))
    assert loose.throughput_bound and loose.rate == loose.saturation_rate


def test_search_rate_brackets_the_highest_rate_that_holds() -> None:
    tried: list[float] = []

    def meets(rate: float) -> bool:
        tried.append(rate)
        return rate <= 3.7

    found = search_rate(10.0, meets)
    assert found is not None and 3.7 / 1.02 <= found <= 3.7 and len(tried) < 12
    assert search_rate(10.0, lambda r: True) == 10.0
    assert search_rate(10.0, lambda r: r < 10.0 * FLOOR) is None


# ---------------------------------------------------------------- CLI


def _strict(text: str) -> Any:
    def refuse(token: str) -> None:
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_serve_cli_json_out_and_exit_codes(tmp_path: Path, cli: Callable) -> None:
    path = _write(tmp_path, {**BASE, "requests": 200})
    out_dir = tmp_path / "out"
    rc, out, err = cli(["serve", path, "--json", "--out", out_dir])
    assert rc == 0, err
    summary = _strict(out)["serving"]
    assert summary["requests"] == 200 and summary["output_tokens_per_s"] > 0 and summary["tpot_p99_s"] > 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["latency.png", "requests.csv", "summary.csv",
                                                         "timeline.json"]
    requests = pd.read_csv(out_dir / "requests.csv")
    assert len(requests) == 200 and requests["id"].tolist() == list(range(200))
    assert (requests["ttft_s"] > 0).all()
    assert pd.read_csv(out_dir / "summary.csv")["requests"].iloc[0] == 200
    trace = json.loads((out_dir / "timeline.json").read_text())
    assert sum(e.get("name") == "decode" for e in trace["traceEvents"]) == 200
    # the table, and the same run through `chipsim run`
    rc, out, err = cli(["serve", path])
    assert rc == 0 and "TTFT" in out and "KV cache" in out and "J per output token" in out and err == ""
    rc, out, _ = cli(["run", path, "--json", "--no-files"])
    assert rc == 0 and _strict(out)["serving"] == summary
    # an SLO on a plain run: exit 1 when missed
    rc, out, _ = cli(["serve", path, "--json", "--slo", "ttft_p99=1ms"])
    assert rc == 1 and _strict(out)["slo"]["meets"] is False
    # bad input: exit 2, one line, nothing on stdout, before any work
    for argv, key in ((["serve", path, "--slo", "ttft=1s"], "--slo"),
                      (["serve", path, "--find-capacity"], "--slo"),
                      (["run", path, "--chip", "h200_sxm"], "--chip"),
                      (["serve", tmp_path / "nope.yaml"], "nope.yaml"),
                      (["serve", _write(tmp_path, {**BASE, "tp": "two"}, "bad.yaml")], "serving.tp")):
        rc, out, err = cli(argv)
        assert rc == 2 and out == "" and key in err and err.count("\n") == 1, (argv, err)
    rc, _, err = cli(["serve", "quickstart"])
    assert rc == 2 and "serving" in err


def test_find_capacity_cli(tmp_path: Path, cli: Callable) -> None:
    path = _write(tmp_path, {**BASE, "requests": 200})
    rc, out, err = cli(["serve", path, "--find-capacity", "--slo", "ttft_p99=150ms,tpot_p99=20ms", "--json"])
    assert rc == 0, err
    result = _strict(out)
    rate = result["capacity"]["rate_per_s"]
    assert rate > 0 and result["serving"]["rate_per_s"] == rate
    assert all(p["meets"] == (p["rate_per_s"] <= rate) for p in result["capacity"]["probes"])
    rc, out, _ = cli(["serve", path, "--find-capacity", "--slo", "ttft_p99=150ms,tpot_p99=20ms"])
    assert rc == 0 and out.strip().splitlines()[-1].startswith(f"capacity: {rate:.4g} req/s")


def test_the_shipped_example_runs() -> None:
    from chipsim import examples

    setup = resolve_serving(load_run_config(examples.path("runs", "serve_llama3_8b.yaml")))
    assert setup.requests == 1000 and setup.arrival.process == "poisson"
    assert math.isclose(setup.input_lens.mean(), 1024, rel_tol=0.1)
    assert math.isclose(setup.output_lens.mean(), 128, rel_tol=0.05)


def test_vllm_takes_its_device_defaults_and_settings_win() -> None:
    big = _setup(engine="vllm")  # an H100: 80 GB
    small = _setup(engine="vllm", chip="a100_sxm")
    tuned = _setup(engine="vllm", engine_settings={"max_batch": 64})
    assert (big.profile.max_batch, big.profile.max_tokens) == (1024, 8192)
    assert (small.profile.max_batch, small.profile.max_tokens) == (256, 2048)
    assert tuned.profile.max_batch == 64 and tuned.profile.max_tokens == 8192
    assert _setup(engine="sglang", chip="mi300x").profile.max_tokens == 16384  # 192 GB
    assert _setup(engine="sglang").profile.max_tokens == 8192


def test_a_disaggregated_config_serves_from_the_cli_but_not_in_a_sweep(tmp_path: Path, cli: Callable) -> None:
    path = _write(tmp_path, {**BASE, "requests": 60, "disaggregation": {"prefill": {"tp": 1}, "decode": {"tp": 1}}})
    rc, out, err = cli(["serve", path, "--json"])
    assert rc == 0, err
    summary = _strict(out)["serving"]
    assert summary["gpus"] == 2 and summary["requests"] == 60 and "disaggregated" in summary["disaggregation"]
    rc, out, err = cli(["serve", path, "--sweep", "concurrency=1,4"])
    assert rc == 2 and "--sweep" in err and "disaggregation" in err and "Traceback" not in err


def test_data_parallel_attention_splits_only_the_experts() -> None:
    """Each GPU attends for its own requests with whole heads (its KV cache its own requests', not a
    replica), the experts split over the GPUs and reached by all-to-all."""
    common: dict[str, Any] = {"model": "mixtral-8x7b", "tp": 2, "requests": 64, "lengths": {"input": 512, "output": 64},
                              "arrival": {"process": "closed", "concurrency": 16}}
    tp, dp = _setup(**common), _setup(dp_attention=True, **common)
    assert dp.iteration.heads == tp.iteration.heads * 2 and dp.iteration.weight_bytes > tp.iteration.weight_bytes
    assert dp.iteration.kv_bytes_per_token == 2 * tp.iteration.kv_bytes_per_token  # whole kv heads per GPU
    a, b = run_serving(tp).summary, run_serving(dp).summary
    assert a["requests"] == b["requests"] == 64 and b["gpus"] == 2 and b["dp_attention"]
    assert b["batch_mean"] < 0.75 * a["batch_mean"]  # each rank schedules half the clients
    assert run_serving(dp).summary == b  # the ranks' seeds are fixed: the same numbers


def test_expert_parallelism_spans_nodes_with_data_parallel_attention() -> None:
    """Wide EP (DeepSeek decodes on 144 GPUs, SGLang's large-scale EP): with dp_attention the group
    spans a cluster's nodes, each GPU holding ceil(experts / GPUs) whole experts (the rest redundant
    copies), its tokens dispatched over the network; without it, tensor parallelism stays in a node."""
    common: dict[str, Any] = {"model": "qwen3-30b-a3b", "chip": "h100_sxm", "dp_attention": True, "requests": 96,
                              "lengths": {"input": 512, "output": 32}, "arrival": {"process": "closed", "concurrency": 48}}
    node, wide = _setup(tp=8, **common), _setup(tp=24, **common)
    assert wide.system is not None and wide.system.world >= 24 and wide.system.gpus_per_node == 8
    assert wide.iteration.local_experts == 6 and node.iteration.local_experts == 16  # 128 experts: 128 / 24 -> 6
    assert wide.iteration.weight_bytes < node.iteration.weight_bytes
    summary = run_serving(wide).summary
    assert summary["requests"] == 96 and summary["gpus"] == 24 and summary["tpot_mean_s"] > 0
    for over, key in (({"tp": 24, "dp_attention": False}, "serving.tp"),  # tensor parallelism: one node
                      ({"tp": 16, "system": "dgx_h100"}, "serving.tp"),  # 8 GPUs
                      ({"tp": 2000}, "serving.tp")):
        with pytest.raises(InputError) as info:
            _setup(**{**common, **over})
        assert info.value.key == key, info.value


def test_disaggregated_instances_with_data_parallel_attention() -> None:
    """DeepSeek's layout in small: prefill and decode instances each an expert-parallel group with
    data-parallel attention, every request's KV cache crossing between them."""
    setup = _setup(model="qwen3-30b-a3b", chip="h100_sxm", dp_attention=True, requests=64,
                   disaggregation={"prefill": {"tp": 4}, "decode": {"tp": 8}},
                   arrival={"process": "poisson", "rate": 20}, lengths={"input": 1024, "output": 64})
    assert setup.disagg is not None and setup.disagg.prefill.dp_attention and setup.disagg.decode.dp_attention
    run = run_serving(setup)
    assert run.summary["requests"] == 64 and run.summary["gpus"] == 12
    frame = run.requests_frame()
    assert frame["first_token_s"].notna().all() and (frame["finish_s"] > frame["first_token_s"]).all()


def test_a_wide_expert_exchange_crosses_the_network_once_per_node() -> None:
    """DeepEP's exchange over 4 nodes: a token's 8 expert copies cross the network once per node that
    holds any of them (at most DeepSeek-V3's route_nodes = 4), so node-limited routing moves fewer
    bytes than sending every copy; inside one node every copy goes to its expert's GPU."""
    from dataclasses import replace

    from chipsim.hardware.registry import load_chip
    from chipsim.models import load_model
    from chipsim.network.system import system_for
    from chipsim.serving.iteration import IterationModel
    from chipsim.serving.profiles import engine_profile
    from chipsim.serving.quant import quantization

    v3 = load_model("deepseek-v3")
    assert v3.route_nodes == 4

    def prefill_s(model: Any, gpus: int) -> float:
        engine = IterationModel(model, load_chip("h800"), quantization("fp8"), engine_profile("sglang"), tp=gpus,
                                system=system_for("h800", gpus), dp_attention=True)
        return engine.step([(4096, 4096)], 0, 0, 1).gpu_seconds

    anywhere = replace(v3, route_nodes=0)
    assert prefill_s(v3, 64) < 0.9 * prefill_s(anywhere, 64)  # 8 nodes: a token reaches at most 4 of them
    assert prefill_s(v3, 8) == prefill_s(anywhere, 8)  # one node: nothing crosses the network
