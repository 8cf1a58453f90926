"""`chipsim validate` on the published serving schema: rows become serving runs, predicted in their
own metric and unit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from chipsim.serving.profiles import PYTORCH_EXECUTOR_LAYER_S
from chipsim.study.serving_validate import (
    Unsupported,
    harness_settings,
    model_id_of,
    parse_metric,
    predict_row,
    quantization_of,
    request_count,
    scenario_for_row,
    server_slo,
    validate_serving,
)

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "published"


@pytest.mark.parametrize("name, expected", [
    ("ttft", ("ttft", "mean")), ("median_ttft", ("ttft", "p50")), ("ttft_p99", ("ttft", "p99")),
    ("server_ttft_mean", ("ttft", "mean")), ("e2e_latency_avg", ("e2e", "mean")),
    ("per_token_latency_p50", ("tpot", "p50")), ("first_token_latency", ("ttft", "mean")),
    ("output_throughput_per_gpu", ("throughput", "value")), ("speedup_vs_fp16", ("ratio", "value")),
    ("decode_step_time", ("decode_step_time", "value"))])
def test_metric_names_parse_to_a_family_and_a_statistic(name: str, expected: tuple[str, str]) -> None:
    assert parse_metric(name) == expected


def test_names_and_formats_map_to_the_zoo_and_the_quantizations() -> None:
    assert model_id_of("Llama-3.1-8B-Instruct") == "llama3-8b"
    assert model_id_of("meta-llama/Llama-2-70B-chat-hf") == "llama2-70b"
    assert model_id_of("GPT-J-6B") == "gptj-6b"
    assert model_id_of("mistralai/Mistral-7B-Instruct-v0.3") == "mistral-7b"
    assert model_id_of("meta-llama/Llama-3.2-3B-Instruct") == "llama3.2-3b"
    assert model_id_of("Qwen/Qwen2.5-72B-Instruct") == "qwen2.5-72b"
    assert model_id_of("Qwen/Qwen3-32B-FP8") == "qwen3-32b"
    assert model_id_of("deepseek-ai/DeepSeek-R1") == model_id_of("DeepSeek-V3-0324") == model_id_of("DeepSeek-V3") \
        == "deepseek-v3"  # "-v3" is the name, not a version suffix
    with pytest.raises(Unsupported):
        model_id_of("DeepSeek-R1-Distill-Llama-70B")  # a Llama, not DeepSeek-V3's architecture
    assert quantization_of({"quant_method": "fp8", "precision": "FP8"}) == ("fp8", "fp8")
    assert quantization_of({"quant_method": "none recorded", "precision": "not recorded (16-bit assumed)"}) == \
        ("none", "bf16")
    assert quantization_of({"quant_method": "AWQ", "precision": "INT4"})[0] == "int4_awq"
    # ModelOpt's NVFP4 checkpoints declare an FP8 KV cache; gpt-oss's MXFP4 keeps a 16-bit one
    assert quantization_of({"quant_method": "nvfp4", "precision": "FP4"}) == ("nvfp4", "fp8")
    assert quantization_of({"quant_method": "MXFP4", "precision": "FP4"}) == ("mxfp4", "bf16")
    with pytest.raises(Unsupported):
        model_id_of("Falcon-180B")
    with pytest.raises(Unsupported):
        parse_metric("joules_per_token")


def _row(**over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "engine": "trtllm 1.0.0rc3", "model": "Llama-3.1-8B-Instruct", "gpu": "H100", "gpus": 1, "tp": 1,
        "precision": "BF16", "quant_method": "none", "input_len": 1024, "output_len": 128,
        "batch_or_concurrency": "8", "request_rate": "closed loop (concurrency)", "metric_name": "tpot",
        "metric_value": 7.944, "unit": "ms", "notes": ""}
    row.update(over)
    return row


def test_rows_are_served_and_predicted_in_their_metric() -> None:
    frame = pd.DataFrame([
        _row(),  # AIConfigurator's measured 7.94 ms
        _row(metric_name="ttft", metric_value=190.95),
        _row(batch_or_concurrency="max load", request_rate="inf", metric_name="output_throughput", engine="trtllm",
             metric_value=16116.63, unit="tokens/s", input_len=128, output_len=128),  # TensorRT-LLM v0.15
        _row(engine="splitwise characterization", model="Llama-2-70B", tp=2, gpus=2, batch_or_concurrency="1",
             request_rate=float("nan"), metric_name="decode_step_time", metric_value=37.24, input_len=128),
        _row(engine="mystery-engine"),
    ])
    out, skipped = validate_serving(frame)
    assert list(skipped.index) == [4] and "engine" in skipped["skipped_reason"].iloc[0]
    assert out["ape"].iloc[0] < 0.15  # decode steps of 8 sequences: memory-bound weights
    assert 100 < out["predicted_value"].iloc[1] < 400  # the closed loop's first prompts prefill together
    assert out["ape"].iloc[2] < 0.15
    assert 20 < out["predicted_value"].iloc[3] < 60
    assert list(out["family"].iloc[:4]) == ["tpot", "ttft", "throughput", "decode_step_time"]


@pytest.mark.skipif(not (REFERENCE / "serving_calibration.csv").is_file(), reason="reference data not present")
def test_the_cli_detects_the_serving_schema(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    frame = pd.read_csv(REFERENCE / "serving_calibration.csv")
    rows = frame[frame["source"].str.contains("perf-overview v0.15")].head(3)
    csv = tmp_path / "rows.csv"
    rows.to_csv(csv, index=False)
    code, stdout, _ = cli(["validate", str(csv), "--out", str(tmp_path / "pred.csv")])
    assert code == 0 and "3 of 3 serving rows simulated" in stdout
    assert pd.read_csv(tmp_path / "pred.csv")["predicted_value"].notna().all()
    code, _, stderr = cli(["validate", str(csv), "--plot", str(tmp_path / "x.png")])
    assert code == 2 and "--plot" in stderr


def test_a_rows_load_is_split_over_its_data_parallel_replicas() -> None:
    """8 GPUs serving at tp 1 are 8 engines: a request rate or a concurrency is the system's, shared."""
    base = {"engine": "trtllm", "model": "Llama-3.1-8B", "gpu": "H100", "tp": 1, "input_len": 1024, "output_len": 128,
            "metric_name": "output_throughput", "unit": "tokens/s", "metric_value": 1.0}
    rows = pd.DataFrame([{**base, "gpus": 1, "batch_or_concurrency": "", "request_rate": "2"},
                         {**base, "gpus": 8, "batch_or_concurrency": "", "request_rate": "16"}])
    out, skipped = validate_serving(rows)
    assert skipped.empty
    one, eight = out["predicted_value"]
    assert one == pytest.approx(2 * 128, rel=0.05)  # below saturation the throughput is the load's
    assert eight == pytest.approx(8 * one, rel=1e-9)  # 8 replicas of 2 req/s each


def test_a_rows_request_count_sets_the_runs_length() -> None:
    """"N prompts" in the load or the notes is the run's request count: one prompt at "max load" is a
    batch of one, and a Poisson run of 50 requests ends before a queue of 1,000 would build."""
    assert request_count({"batch_or_concurrency": "max load (all requests at once, 1,500 prompts)"}) == 1500
    assert request_count({"batch_or_concurrency": "", "notes": "bench_serving --num-prompts 50 --request-rate 10"}) == 50
    assert request_count({"batch_or_concurrency": "max load (IFB, engine-chosen batch)", "notes": ""}) == 0
    row = _row(batch_or_concurrency="max load (all requests at once, 1 prompts)", request_rate="inf",
               metric_name="e2e_latency_mean", input_len=128, output_len=256)
    one, _ = predict_row(row, {})
    default, _ = predict_row({**row, "batch_or_concurrency": "max load"}, {})
    assert one < 0.2 * default  # alone: prefill plus 255 small decode steps, no queue of 2,000
    assert one == pytest.approx(predict_row(_row(batch_or_concurrency="1", metric_name="e2e_latency_mean",
                                                 input_len=128, output_len=256), {})[0], rel=0.05)


def test_aiconfigurator_rows_run_the_engine_as_its_harness_configured_it() -> None:
    """AIConfigurator's TensorRT-LLM servers (max_batch_size the concurrency) prefill whole prompts within
    max_num_tokens = max_batch_size + isl + 1500: one or two a step, so its closed-loop clients spread out
    instead of prefilling in waves."""
    aic = _row(source="NVIDIA AIConfigurator silicon_sample.csv", metric_name="ttft", batch_or_concurrency="32",
               engine="trtllm")
    settings = dict(harness_settings(aic, "trtllm", 1024, 32))
    assert settings == {"chunked_prefill": False, "max_batch": 32, "max_tokens": 32 + 1024 + 1500,
                        "eager_layer_s": PYTORCH_EXECUTOR_LAYER_S}  # trtllm-serve's PyTorch executor
    assert dict(harness_settings(aic, "vllm", 1024, 32)) == {"chunked_prefill": True, "max_batch": 32,
                                                             "max_tokens": 32 + 1024 + 1500}
    # SGLang: chunked prefill off (and with it mixed chunks), a prompt budget of isl + 1500, graphs up to 32
    assert dict(harness_settings(aic, "sglang", 1024, 32)) == {"chunked_prefill": False, "graph_max_batch": 32,
                                                               "max_batch": 32, "max_tokens": 1024 + 1500}
    assert harness_settings(_row(), "trtllm", 1024, 32) == () and harness_settings(aic, "eager", 1024, 32) == ()
    # the release the row names: TensorRT-LLM 1.0.0rc3 holds one of the 32 slots
    scenario, _, _ = scenario_for_row({**aic, "engine": "trtllm 1.0.0rc3"})
    assert scenario.release == "1.0.0rc3" and scenario_for_row(aic)[0].release == ""
    rc3, _ = predict_row({**aic, "engine": "trtllm 1.0.0rc3"}, {})
    spread, _ = predict_row(aic, {})
    waves, _ = predict_row({**aic, "source": "another benchmark"}, {})
    assert spread < 0.7 * waves  # 32 prompts of 1,024 tokens no longer queue for one 8,192-token budget
    assert rc3 > 1.5 * spread  # one of 32 clients always waits for the next finish


def test_sglang_clients_stay_in_step_where_vllm_clients_spread_out() -> None:
    """SGLang without mixed chunks prefills every waiting prompt before its decoding requests go on, so a
    closed loop's clients, started together, finish together and come back together: a prompt waits for
    the others' prefills (TTFT grows with the concurrency, as AIConfigurator's SGLang H100 rows do:
    841 ms at 16 clients, 4.4 s at 128, Qwen3-32B TP2 1024/128). vLLM's mixed steps let them drift apart."""
    aic = _row(source="NVIDIA AIConfigurator silicon_sample.csv", metric_name="ttft", model="Qwen3-32B",
               tp=2, gpus=2, output_len=128)
    ttft = {(engine, c): predict_row({**aic, "engine": engine, "batch_or_concurrency": str(c)}, {})[0]
            for engine in ("sglang 0.5.1", "vllm 0.12.0") for c in (4, 32)}
    assert ttft["sglang 0.5.1", 32] > 4 * ttft["sglang 0.5.1", 4]
    assert ttft["vllm 0.12.0", 32] < 2 * ttft["vllm 0.12.0", 4]


def test_server_scenario_limits_come_from_the_row_else_from_mlperf() -> None:
    stated = {"batch_or_concurrency": "server (Poisson, TTFT p99 <= 450 ms, TPOT p99 <= 40 ms)", "notes": ""}
    assert dict(server_slo(stated, "llama2-70b")) == {"ttft_p99": 0.45, "tpot_p99": 0.04}
    assert dict(server_slo({"batch_or_concurrency": "server (latency p99 <= 20 s)"}, "gptj-6b")) == {"e2e_p99": 20.0}
    assert dict(server_slo({"batch_or_concurrency": "server"}, "llama2-70b")) == {"ttft_p99": 2.0, "tpot_p99": 0.2}
    assert dict(server_slo({"batch_or_concurrency": "server", "notes": "interactive"}, "llama2-70b")) == \
        {"ttft_p99": 0.45, "tpot_p99": 0.04}
    with pytest.raises(Unsupported, match="no latency limits"):
        server_slo({"batch_or_concurrency": "server"}, "qwen3-30b-a3b")


def test_server_rows_run_at_the_highest_rate_meeting_their_limits() -> None:
    """MLPerf's server scenario: Poisson arrivals at the rate the submitter tuned to just meet the p99
    limits. Offline (every sample at once) bounds it; a tighter limit lowers it; its p99 latencies
    sit within the limits."""
    base = _row(engine="trtllm", model="Llama-2-70B", gpu="H200", tp=1, gpus=8, precision="FP8", input_len=512,
                output_len=256, request_rate=float("nan"), unit="tokens/s", notes="")
    offline = {**base, "batch_or_concurrency": "offline", "metric_name": "offline_tokens_per_s"}
    loose = {**base, "batch_or_concurrency": "server", "metric_name": "server_tokens_per_s"}
    tight = {**loose, "batch_or_concurrency": "server (TTFT p99 <= 450 ms, TPOT p99 <= 25 ms)"}
    assert scenario_for_row(loose)[0].load == "server" and scenario_for_row(offline)[0].load == "max"
    cache: dict = {}
    values = {name: predict_row(row, cache)[0] for name, row in
              (("offline", offline), ("loose", loose), ("tight", tight))}
    assert values["tight"] < 0.8 * values["loose"] <= 0.8 * values["offline"] * 1.001
    s = scenario_for_row(tight)[0]
    run = cache[("run", s)]
    assert run["tpot_p99_s"] <= 0.025 and run["ttft_p99_s"] <= 0.45
    assert values["tight"] == pytest.approx(8 * run["requests_per_s"] * 256)  # the rate's tokens, 8 replicas
    ttft, family = predict_row({**tight, "metric_name": "server_ttft_p99", "unit": "ms"}, cache)
    assert family == "ttft" and ttft == pytest.approx(run["ttft_p99_s"] * 1e3)
    with pytest.raises(Unsupported, match="not even"):
        predict_row({**loose, "batch_or_concurrency": "server (TPOT p99 <= 1 ms)"}, {})


def test_a_concurrency_with_an_infinite_rate_is_a_closed_loop_of_the_rows_requests() -> None:
    """`--max-concurrency 8 --request-rate inf`: 8 clients, for the row's prompt count."""
    row = _row(engine="vllm 0.11.0", request_rate="inf", notes="100 prompts", metric_name="e2e_latency_mean")
    s, _, _ = scenario_for_row(row)
    assert (s.load, s.batch, s.requests) == ("closed", 8, 100)
    assert scenario_for_row({**row, "batch_or_concurrency": "max load"})[0].load == "max"


def test_random_lengths_between_a_rows_minimum_and_its_length() -> None:
    """`input_len_min` / `output_len_min` (a benchmark's random range ratio 0): lengths uniform in
    [min, len], the same draws every run; the mean prompt is about half as long, so it costs less."""
    row = _row(engine="sglang 0.5.6", request_rate="inf", batch_or_concurrency="1", notes="20 prompts",
               metric_name="ttft_mean", input_len=4096, output_len=64)
    fixed, _ = predict_row(row, {})
    drawn, _ = predict_row({**row, "input_len_min": 1, "output_len_min": 1}, {})
    assert scenario_for_row({**row, "input_len_min": 1})[0].input_min == 1
    assert 0.2 * fixed < drawn < 0.8 * fixed
    assert drawn == predict_row({**row, "input_len_min": 1, "output_len_min": 1}, {})[0]


def test_throughput_in_input_and_output_tokens_where_the_unit_says_so() -> None:
    """vLLM's and SGLang's "Total token throughput" counts prompt tokens too."""
    row = _row(batch_or_concurrency="max load", request_rate="inf", metric_name="throughput",
               unit="tokens/s", input_len=512, output_len=128)
    out, _ = predict_row(row, {})
    total, _ = predict_row({**row, "unit": "tokens/s (input+output)"}, {})
    assert total == pytest.approx(out * (512 + 128) / 128, rel=0.02)


def test_an_fp8_checkpoint_without_kv_scales_keeps_a_16_bit_cache() -> None:
    assert quantization_of({"quant_method": "fp8 (block-wise checkpoint); KV cache bf16"}) == ("fp8", "bf16")


def test_a_rows_engine_settings_column_configures_its_engine() -> None:
    """`engine_settings` ("max_batch=8; max_tokens=2048") runs the row's engine so configured, checked as a
    run config's keys are; a bad item names the column and the key."""
    row = _row(batch_or_concurrency="max load", request_rate="inf", metric_name="ttft_mean", unit="ms",
               input_len=1024, output_len=128, notes="64 prompts")
    s, _, _ = scenario_for_row({**row, "engine_settings": "max_batch=8; chunked_prefill=false"})
    assert dict(s.settings) == {"max_batch": 8, "chunked_prefill": False}
    wide, _ = predict_row(row, {})
    narrow, _ = predict_row({**row, "engine_settings": "max_batch=8"}, {})
    assert narrow > 2 * wide  # 64 prompts through 8 slots queue behind one another
    for bad, key in (("max_batch=0", "engine_settings.max_batch"), ("speed=2", "engine_settings.speed"),
                     ("max_batch", "engine_settings")):
        with pytest.raises(Unsupported, match=key.replace(".", r"\.")):
            scenario_for_row({**row, "engine_settings": bad})


def test_a_matmul_speedup_is_the_linear_layers_alone() -> None:
    """`speedup_vs_fp16_matmul`: one layer's GEMMs at the row's batch of tokens. On an A100 Marlin's 4-bit
    weights stream ~3x faster at batch 1 (its premise, less the scales and the 16-bit activations);
    compute-bound at 512 tokens, both run 16-bit MMAs. The end-to-end `speedup_vs_fp16` of the same row is
    smaller: attention and host time do not shrink. On Hopper, where Marlin streams at under half the
    copy's bandwidth (fitted), it gains less."""
    row = _row(engine="vllm", model="Llama-2-7B", gpu="A100", precision="INT4",
               quant_method="int4 awq (w4a16, group 128)", input_len=128, output_len=128, request_rate="", unit="x")
    def speedup(metric: str, batch: int, gpu: str = "A100") -> float:
        return predict_row({**row, "gpu": gpu, "metric_name": metric, "batch_or_concurrency": str(batch)}, {})[0]
    assert speedup("speedup_vs_fp16_matmul", 1) > 2.7
    assert speedup("speedup_vs_fp16_matmul", 512) == pytest.approx(1.0, abs=0.1)
    assert 1.2 < speedup("speedup_vs_fp16", 1) < speedup("speedup_vs_fp16_matmul", 1)
    assert speedup("speedup_vs_fp16_matmul", 1, "H100 SXM") < 0.7 * speedup("speedup_vs_fp16_matmul", 1)
