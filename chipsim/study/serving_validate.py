"""`chipsim validate` on published serving results (the schema of
reference/published/serving_calibration.csv): each row's model, GPU, tensor parallelism, engine,
quantization, lengths and load are served by `chipsim.serving`, and its figure is predicted in the
row's own metric and unit.

How a row's load is run:
- a concurrency (`batch_or_concurrency` a number, `request_rate` "closed loop", infinite or empty:
  a benchmark's --max-concurrency): that many clients, all starting at once and each sending its
  next request when its last one finishes (benchmark tools' closed loop), for the row's request
  count where it states one, else `CLOSED_LOOP_ROUNDS` requests per client, every one counted as the
  tools count them: the synchronized first wave (whose prompts queue for the token budget) is part of
  the mean TTFT;
- `max load` / an infinite `request_rate`: every request there at once, the engine choosing its batch
  (`MAX_LOAD_REQUESTS` requests, or the count the row states: "200 prompts", "--num-prompts 50");
- a finite `request_rate`: Poisson arrivals at that rate (`POISSON_REQUESTS`, or the row's count);
- MLPerf's server scenario (a `server_*` metric, or a load that says "server", with no rate given):
  Poisson arrivals at the highest rate whose run meets the scenario's p99 latency limits, as the
  submitters tune it (`server_slo`: the limits the row states, else MLPerf's for its benchmark),
  found by the capacity search's bisection (`chipsim.serving.capacity.search_rate`); its throughput
  is that rate times the output length, its latencies those of the run at that rate;
- static-batch rows (`prefill_time_batch`, `decode_step_time`, `first_token_latency`, and the
  per-GPU throughput of a fixed batch run to completion): that batch as one group, no new admissions.

A row from a benchmark harness whose engine configuration is published runs the engine so configured
(`harness_settings`: AIConfigurator's TensorRT-LLM, vLLM and SGLang servers); a file may add an
`engine_settings` column for the settings a row's run states ("max_batch=896; max_tokens=16384", a run
config's `engine_settings` keys), which take precedence.

A ratio (`speedup_vs_fp16`, `speedup_vs_bf16_per_gpu`) is the row's output tokens a second over the same
run's in 16-bit; `speedup_vs_fp16_matmul` is a kernel-level one: one layer's linear layers at the row's
batch of tokens (`IterationModel.linear_seconds`), 16-bit over the row's format.

Lengths are the row's `input_len` and `output_len`; a file may add `input_len_min` and
`output_len_min` for a benchmark's random lengths (e.g. SGLang's bench_serving with
`--random-range-ratio 0`): each request's drawn uniformly from [min, len], the same draws every run.
An FP8 checkpoint keeps an FP8 KV cache unless the row's quantization text says "KV cache bf16".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import yaml

from chipsim.config.reader import Section
from chipsim.errors import InputError
from chipsim.hardware.registry import chip_for_device_name
from chipsim.serving.engine import BENCHMARK_ROUNDS
from chipsim.serving.profiles import PYTORCH_EXECUTOR_LAYER_S
from chipsim.study.validate import Unsupported

SERVING_COLUMNS = ("engine", "model", "gpu", "tp", "input_len", "output_len", "batch_or_concurrency",
                   "metric_name", "metric_value", "unit")
CLOSED_LOOP_ROUNDS = BENCHMARK_ROUNDS  # requests per client in a closed-loop row
MAX_LOAD_REQUESTS = 2000
POISSON_REQUESTS = 1000
SEED = 0
LENGTH_DRAWS = 4096  # random lengths drawn per row, cycled over its requests

# metric name -> (family, statistic); the families are what the report groups by
_LATENCY = {"ttft": "ttft", "tpot": "tpot", "itl": "itl", "e2e_latency": "e2e", "e2e": "e2e",
            "first_token_latency": "ttft", "per_token_latency": "tpot"}
# "throughput" is output tokens unless its unit says input + output ("total" tokens: vLLM's and SGLang's
# "Total token throughput")
_THROUGHPUT = {"output_throughput": "output", "output_throughput_per_gpu": "output_per_gpu",
               "throughput": "output", "total_throughput": "total", "total_token_throughput": "total",
               "offline_tokens_per_s": "output", "server_tokens_per_s": "output",
               "decode_tokens_per_s": "output", "request_throughput": "requests",
               "offline_samples_per_s": "requests", "server_samples_per_s": "requests"}
RATIOS = {"speedup_vs_fp16": "none", "speedup_vs_bf16_per_gpu": "none", "speedup_vs_fp16_matmul": "none"}


def is_serving_schema(frame: pd.DataFrame) -> bool:
    return all(c in frame.columns for c in SERVING_COLUMNS)


def _present(row: Mapping[str, Any], key: str) -> bool:
    value = row.get(key)
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value).strip() != ""


def parse_metric(name: str) -> tuple[str, str]:
    """(family, statistic) of a metric name: `ttft`, `median_ttft`, `ttft_p99`, `server_ttft_mean`,
    `per_token_latency_p50`, `output_throughput`, ... Statistic: mean, p50, p90, p99 or value."""
    text = name.strip().lower()
    if text in ("prefill_time_batch", "decode_step_time"):
        return text, "value"
    if text in RATIOS:
        return "ratio", "value"
    if text in _THROUGHPUT:
        return "throughput", "value"
    stat = "mean"
    text = re.sub(r"^server_", "", text)
    for prefix, s in (("median_", "p50"), ("mean_", "mean"), ("avg_", "mean"), ("p99_", "p99"), ("p90_", "p90")):
        if text.startswith(prefix):
            text, stat = text[len(prefix):], s
    for suffix, s in (("_mean", "mean"), ("_avg", "mean"), ("_median", "p50"), ("_p50", "p50"), ("_p90", "p90"),
                      ("_p99", "p99")):
        if text.endswith(suffix):
            text, stat = text[:-len(suffix)], s
    if text in _LATENCY:
        return _LATENCY[text], stat
    raise Unsupported(f"metric {name!r} (known: ttft, tpot, itl, e2e_latency with _mean/_avg/median_/_p99/server_ "
                      f"forms, first_token_latency, per_token_latency_p50, prefill_time_batch, decode_step_time, "
                      f"{', '.join(_THROUGHPUT)}, {', '.join(RATIOS)})")


def model_id_of(name: str) -> str:
    """A zoo id for a published model name: Llama-3.1-8B-Instruct -> llama3-8b, Llama-2-70B ->
    llama2-70b, GPT-J-6B -> gptj-6b."""
    from chipsim.models import known_models

    text = re.sub(r"\s*\(.*\)\s*$", "", name.strip().lower()).split("/")[-1]  # "Name (org/name)" -> name
    # DeepSeek-R1 and V3's updates share DeepSeek-V3's architecture (HF config.json: DeepseekV3ForCausalLM)
    text = re.sub(r"^deepseek-(r1|v3)([-_.][\w.]+)?$", "deepseek-v3", text)
    suffix = re.compile(r"[-_](instruct|chat|hf|base|it|fp8|awq|gptq|int4|int8|v\d+(\.\d+)?)$")
    while text not in known_models() and suffix.search(text):  # Llama-2-70B-chat-hf, Mistral-7B-Instruct-v0.3
        text = suffix.sub("", text)
    candidates = [text, text.replace("llama-3.1-", "llama3-"), text.replace("llama-3.1-", "llama3.1-"),
                  text.replace("llama-3.3-", "llama3-"), text.replace("llama-3-", "llama3-"),
                  text.replace("llama-3.2-", "llama3.2-"),
                  text.replace("llama-2-", "llama2-"), text.replace("gpt-j-", "gptj-"), text.replace("-", "")]
    for c in candidates:
        if c in known_models():
            return c
    raise Unsupported(f"model {name!r} is not in the model zoo (chipsim/models/zoo.yaml)")


def quantization_of(row: Mapping[str, Any]) -> tuple[str, str]:
    """(quantization, KV-cache dtype) of a row: its `quant_method`, else its `precision`."""
    method = str(row.get("quant_method") or "").strip().lower() if _present(row, "quant_method") else ""
    precision = str(row.get("precision") or "").strip().lower() if _present(row, "precision") else ""
    text = method if method and not method.startswith("none") else precision
    if not text or text.startswith(("none", "not recorded", "fp16", "bf16", "16-bit")):
        return "none", "bf16"
    # the engines' FP8 and NVFP4 checkpoints keep an FP8 KV cache too: ModelOpt's export declares
    # kv_cache_quant_algo FP8 (hf_quant_config.json) and the engines' "auto" KV dtype follows it
    if ("fp8" in text or "float8" in text) and re.search(r"weight[- ]only|w8a16", text):
        return "fp8_weight", "bf16"  # FP8 weights dequantized into 16-bit GEMMs
    if "fp8" in text:  # unless the row says the KV cache stays 16-bit (a checkpoint without KV scales)
        return "fp8", "bf16" if re.search(r"kv[- ]cache (bf16|fp16|16-bit)", text) else "fp8"
    if "mxfp4" in text:  # gpt-oss: MXFP4 experts, 16-bit attention and KV cache
        return "mxfp4", "bf16"
    if "fp4" in text:
        return "nvfp4", "fp8"
    for words, quant in ((("tinygemm",), "int4_tinygemm"), (("awq", "gptq", "int4", "w4a16"), "int4_awq"),
                         (("int8", "w8a16"), "int8_weight")):
        if any(w in text for w in words):
            return quant, "bf16"
    raise Unsupported(f"quantization {text!r} (known: none, fp8, fp8 weight-only, int4 awq/gptq/tinygemm, int8, nvfp4, mxfp4)")


def profile_of(engine: str) -> str:
    text = engine.strip().lower()
    for name in ("trtllm", "tensorrt", "vllm", "sglang", "lmdeploy", "turbomind"):
        if text.startswith(name) or name in text.split()[0]:
            return {"tensorrt": "trtllm", "turbomind": "lmdeploy"}.get(name, name)
    if "torch.compile" in text or text.startswith(("gpt-fast", "torchao")):
        return "compiled"
    if "splitwise" in text or "eager" in text or "transformers" in text:
        return "eager"
    raise Unsupported(f"engine {engine!r} (known profiles: trtllm, vllm, sglang, lmdeploy, compiled, eager)")


@dataclass(frozen=True)
class Scenario:
    model: str
    chip: str
    tp: int
    gpus: int
    profile: str
    release: str  # the engine's version as the row names it ("1.0.0rc3"; "" if it names none)
    quant: str
    kv_dtype: str
    input_len: int
    output_len: int
    load: str  # closed, max, poisson, static
    batch: int  # clients, or the static batch
    rate: float = math.inf
    input_min: int = 0  # lengths drawn uniformly from [min, len] where a row gives a minimum (0: fixed)
    output_min: int = 0
    requests: int = 0  # the run's requests where the row states them ("200 prompts"), else 0: the default count
    settings: tuple[tuple[str, Any], ...] = ()  # engine settings the row's benchmark harness ran with
    slo: tuple[tuple[str, float], ...] = ()  # a server-scenario row's latency limits (seconds)

    @property
    def replicas(self) -> int:
        """The row's GPUs beyond one engine's tp: data-parallel engine instances sharing its load."""
        return max(1, self.gpus // self.tp)


def _int(row: Mapping[str, Any], key: str, default: int | None = None) -> int:
    if not _present(row, key):
        if default is None:
            raise Unsupported(f"missing column '{key}'")
        return default
    try:
        value = float(row[key])
    except (TypeError, ValueError):
        raise Unsupported(f"column '{key}': expected a number, got {row[key]!r}") from None
    if not value.is_integer() or value < 1:
        raise Unsupported(f"column '{key}': expected a positive integer, got {row[key]!r}")
    return int(value)


# AIConfigurator's benchmark servers (ai-dynamo/aiconfigurator, generator/rule_plugin/benchmark/*.rule and
# config/backend_config_mapping.yaml): one server per configuration, its max batch size the
# configuration's batch size (a silicon row's concurrency: its id names it, "..._c64_tp8_..."), CUDA graphs
# for every decode batch up to it (cuda_graph_batch_sizes 1..max_batch_size). TensorRT-LLM and vLLM:
# max_num_tokens = max_batch_size + isl + 1500; TensorRT-LLM's chunked prefill off (its default;
# templates/trtllm/extra_engine_args.yaml.j2), vLLM V1's always on. SGLang: chunked prefill off
# (chunked-prefill-size -1, as max_num_tokens is unset), which also turns its enable_mixed_chunk off
# (scheduler.py: is_mixed_chunk needs a chunk size), and max-prefill-tokens = isl + 1500 prompt tokens a
# step. Its TensorRT-LLM servers are trtllm-serve on the PyTorch executor (the templates configure
# cuda_graph_config, which only that executor reads), whose context steps cost `PYTORCH_EXECUTOR_LAYER_S`
# of host time a layer, in the rows that name no release as in those that do.
def harness_settings(row: Mapping[str, Any], profile: str, input_len: int,
                     concurrency: int) -> tuple[tuple[str, Any], ...]:
    """The engine settings a row's benchmark harness is documented to run with (none if unknown)."""
    if "aiconfigurator" not in str(row.get("source", "")).lower():
        return ()
    budget = input_len + 1500 if profile == "sglang" else concurrency + input_len + 1500
    common = (("max_batch", concurrency), ("max_tokens", budget))
    if profile == "trtllm":  # trtllm-serve on the PyTorch executor, release named or not
        return (("chunked_prefill", False), ("eager_layer_s", PYTORCH_EXECUTOR_LAYER_S), *common)
    if profile == "vllm":
        return (("chunked_prefill", True), *common)
    if profile == "sglang":
        return (("chunked_prefill", False), ("graph_max_batch", concurrency), *common)
    return ()


def row_settings(row: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The engine settings a row's optional `engine_settings` column states ("max_batch=896;
    max_tokens=16384; chunked_prefill=true"), checked as a run config's `engine_settings` are."""
    if not _present(row, "engine_settings"):
        return ()
    data: dict[str, Any] = {}
    for item in str(row["engine_settings"]).split(";"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise Unsupported(f"column 'engine_settings': expected 'key=value' items separated by ';', got "
                              f"{item.strip()!r}")
        try:
            data[key.strip()] = yaml.safe_load(value.strip())
        except yaml.YAMLError:
            data[key.strip()] = value.strip()
    from chipsim.serving.config import engine_overrides
    try:
        return tuple(engine_overrides(Section(data, None, "engine_settings")).items())
    except InputError as exc:
        raise Unsupported(f"column 'engine_settings', {exc}") from None


_COUNT = re.compile(r"(?:(\d[\d,]*)\s+(?:prompts|requests)\b|num[-_ ]prompts[ =]+(\d+))")


def request_count(row: Mapping[str, Any]) -> int:
    """The number of requests a row's run sent, where its load or notes say so ("max load (all requests
    at once, 200 prompts)", "--num-prompts 50"); 0 where neither does. A short run's throughput includes
    its ramp-up and drain, and its latencies a queue that never reaches steady state."""
    for key in ("batch_or_concurrency", "notes"):
        if _present(row, key):
            found = _COUNT.search(str(row[key]).lower())
            if found:
                return int((found.group(1) or found.group(2)).replace(",", ""))
    return 0


# MLPerf Inference's server-scenario latency limits (99th percentiles, seconds) per benchmark model, for
# rows that do not state them (mlcommons/inference loadgen/mlperf.conf: ttft_latency, tpot_latency,
# target_latency; the interactive variants from v5.0)
MLPERF_SERVER_SLO: dict[str, dict[str, float]] = {
    "gptj-6b": {"e2e_p99": 20.0},
    "llama2-70b": {"ttft_p99": 2.0, "tpot_p99": 0.2},
    "llama2-70b-interactive": {"ttft_p99": 0.45, "tpot_p99": 0.04},
    "mixtral-8x7b": {"ttft_p99": 2.0, "tpot_p99": 0.2},
    "llama3.1-405b": {"ttft_p99": 6.0, "tpot_p99": 0.175},
    "llama3.1-405b-interactive": {"ttft_p99": 4.5, "tpot_p99": 0.08},
    "llama3-8b": {"ttft_p99": 2.0, "tpot_p99": 0.1},  # Llama-3.1-8B (v5.1)
    "llama3-8b-interactive": {"ttft_p99": 0.5, "tpot_p99": 0.03},
    "deepseek-v3": {"ttft_p99": 2.0, "tpot_p99": 0.08},  # DeepSeek-R1 (v5.1)
    "deepseek-v3-interactive": {"ttft_p99": 1.5, "tpot_p99": 0.015},
}
_LIMIT = re.compile(r"\b(ttft|tpot|itl|latency|e2e)\s*(?:p(50|90|99)\b)?\s*(?:<=|≤|<)\s*([0-9]*\.?[0-9]+)\s*(ms|s)\b")


def server_slo(row: Mapping[str, Any], model: str) -> tuple[tuple[str, float], ...]:
    """The latency limits of a server-scenario row: those its load or notes state ("TTFT p99 <= 2 s,
    TPOT p99 <= 200 ms"; a bare "latency" is the whole request's), else MLPerf's for its model
    (`MLPERF_SERVER_SLO`; the interactive variant where the row says "interactive")."""
    text = " ".join(str(row[k]) for k in ("batch_or_concurrency", "notes") if _present(row, k)).lower()
    stated = {f"{'e2e' if name in ('latency', 'e2e') else name}_p{pct or '99'}":
              float(value) * (1e-3 if unit == "ms" else 1.0) for name, pct, value, unit in _LIMIT.findall(text)}
    if stated:
        return tuple(sorted(stated.items()))
    known = MLPERF_SERVER_SLO.get(f"{model}-interactive" if "interactive" in text else model)
    if known is None:
        raise Unsupported(f"server scenario: the row states no latency limits (e.g. 'TTFT p99 <= 2 s') and MLPerf "
                          f"has none known for {model} (known: {', '.join(MLPERF_SERVER_SLO)})")
    return tuple(sorted(known.items()))


def scenario_for_row(row: Mapping[str, Any], chip_override: str | None = None) -> tuple[Scenario, str, str]:
    """The row's scenario, its metric family and statistic."""
    family, stat = parse_metric(str(row["metric_name"]))
    chip = chip_override or chip_for_device_name(str(row["gpu"]))
    if chip is None:
        raise Unsupported(f"no built-in chip for gpu {row['gpu']!r}")
    tp = _int(row, "tp", 1)
    gpus = _int(row, "gpus", tp)
    quant, kv = quantization_of(row)
    load_text = str(row.get("batch_or_concurrency") or "").strip().lower()
    rate_text = str(row.get("request_rate") or "").strip().lower() if _present(row, "request_rate") else ""
    metric = str(row["metric_name"]).strip().lower()
    server = (metric.startswith("server_") or load_text.startswith("server")) and not rate_text \
        and not load_text.isdigit()
    static = family in ("prefill_time_batch", "decode_step_time") or (
        family == "ttft" and metric == "first_token_latency") or (
        metric == "output_throughput_per_gpu" and "static" in str(row.get("notes", "")).lower())
    infinite = rate_text in ("inf", "infinity")  # with a concurrency: a benchmark's --max-concurrency
    if static:
        load, batch, rate = "static", _int(row, "batch_or_concurrency", 1), math.inf
    elif server:
        load, batch, rate = "server", 0, math.inf
    elif load_text.startswith("max") or (infinite and not load_text.isdigit()) or "offline" in metric:
        load, batch, rate = "max", 0, math.inf
    elif rate_text and not rate_text.startswith("closed") and not infinite:
        try:
            rate = float(rate_text)
        except ValueError:
            raise Unsupported(f"request_rate {rate_text!r}: expected a number, inf or 'closed loop'") from None
        load, batch = "poisson", 0
    else:
        load, batch, rate = "closed", _int(row, "batch_or_concurrency"), math.inf
    profile, input_len, model = profile_of(str(row["engine"])), _int(row, "input_len"), model_id_of(str(row["model"]))
    words = str(row["engine"]).split()
    release = words[1] if len(words) > 1 and words[0].lower() == profile else ""
    scenario = Scenario(model, chip, tp, gpus, profile, release, quant, kv, input_len, _int(row, "output_len"), load,
                        batch, rate, _int(row, "input_len_min", 0), _int(row, "output_len_min", 0),
                        request_count(row) if load in ("max", "poisson", "server", "closed") else 0,
                        tuple({**dict(harness_settings(row, profile, input_len, batch) if load == "closed" else ()),
                               **dict(row_settings(row))}.items()),
                        server_slo(row, model) if load == "server" else ())
    return scenario, family, stat


def _iteration_model(s: Scenario, cache: dict[Any, Any]) -> Any:
    from chipsim.hardware.registry import load_chip
    from chipsim.models import load_model
    from chipsim.network.system import system_for
    from chipsim.serving.iteration import IterationModel
    from chipsim.serving.profiles import engine_profile, for_chip
    from chipsim.serving.quant import quantization

    key = ("model", s.model, s.chip, s.tp, s.profile, s.release, s.quant, s.kv_dtype, s.load, s.batch, s.settings)
    if key not in cache:
        chip = load_chip(s.chip)
        profile = replace(for_chip(engine_profile(f"{s.profile} {s.release}"), chip, s.tp), **dict(s.settings))
        if s.load == "static":  # one batch as a group: every prompt prefilled together, then decoded
            profile = replace(profile, chunked_prefill=False, max_tokens=1 << 30, max_batch=s.batch + profile.reserved_slots,
                              admission="reserve")
        system = system_for(s.chip, s.tp) if s.tp > 1 else None
        cache[key] = IterationModel(load_model(s.model), chip, quantization(s.quant), profile, tp=s.tp,
                                    kv_dtype=s.kv_dtype, system=system)
    return cache[key]


def simulate_scenario(s: Scenario, cache: dict[Any, Any]) -> dict[str, Any]:
    """The serving summary of a scenario (`chipsim.serving.metrics.summarize`), or for the static
    step metrics the iteration times."""
    from chipsim.serving.engine import Arrivals, cycled, poisson_times, simulate_serving
    from chipsim.serving.metrics import summarize

    key = ("run", s)
    if key in cache:
        return cache[key]  # type: ignore[no-any-return]
    model = _iteration_model(s, cache)
    b, inp, out = s.batch, s.input_len, s.output_len
    result: dict[str, Any] = {
        "prefill_time_batch_s": model.step([(inp, inp)] * max(1, b), 0, 0, max(1, b)).seconds,
        "decode_step_time_s": model.step([], max(1, b), max(1, b) * inp, max(1, b)).seconds,
    } if s.load == "static" else {}

    rng = np.random.default_rng(SEED)  # a benchmark's random lengths: uniform in [min, len], the same every run
    lengths = cycled(*(rng.integers(low, high, endpoint=True, size=LENGTH_DRAWS) if low else np.full(LENGTH_DRAWS, high)
                       for low, high in ((s.input_min, inp), (s.output_min, out))))
    if s.load == "closed":  # every client's first request at once, as a benchmark starts; over the replicas
        b = max(1, -(-b // s.replicas))
        n = max(b, -(-s.requests // s.replicas)) if s.requests else b * CLOSED_LOOP_ROUNDS
        arrivals = Arrivals(lengths, count=n, concurrency=b)
    elif s.load == "max":
        n = max(1, -(-s.requests // s.replicas)) if s.requests else MAX_LOAD_REQUESTS
        arrivals = Arrivals(lengths, count=n, times=[0.0] * n)
    elif s.load == "poisson":
        n = max(1, -(-s.requests // s.replicas)) if s.requests else POISSON_REQUESTS
        arrivals = Arrivals(lengths, count=n, times=poisson_times(s.rate / s.replicas, n, SEED))
    elif s.load == "server":
        cache[key] = result = _server(s, cache)
        return result
    else:
        arrivals = Arrivals(lengths, count=max(1, b), times=[0.0] * max(1, b))
    result.update(summarize(simulate_serving(model, arrivals), s.tp))
    cache[key] = result
    return result


def _server(s: Scenario, cache: dict[Any, Any]) -> dict[str, Any]:
    """A server-scenario row on one replica: the highest Poisson rate whose run (the row as a Poisson
    one at that rate) meets the row's p99 latency limits, by bisection between the saturation rate of
    the row as a burst and a thousandth of it; that run's summary with the rate's throughput."""
    from chipsim.serving.capacity import search_rate, violations

    saturation = float(simulate_scenario(replace(s, load="max", slo=()), cache)["requests_per_s"])
    slo, runs = dict(s.slo), {}

    def meets(rate: float) -> bool:  # `rate` per replica; a Poisson row's rate is the system's
        runs[rate] = simulate_scenario(replace(s, load="poisson", rate=rate * s.replicas, slo=()), cache)
        return not violations(runs[rate], slo)

    rate = search_rate(saturation, meets)
    if rate is None:
        raise Unsupported(f"server scenario: not even {min(runs):.3g} req/s meets its limits: "
                          f"{'; '.join(violations(runs[min(runs)], slo))}")
    return {**runs[rate], "requests_per_s": rate, "output_tokens_per_s": rate * s.output_len}


def _value(s: Scenario, family: str, stat: str, metric: str, unit: str, cache: dict[Any, Any]) -> float:
    if family == "ratio":  # this row's quantization against 16-bit
        base = replace(s, quant=RATIOS[metric], kv_dtype="bf16")
        if metric == "speedup_vs_fp16_matmul":  # the linear layers alone, at the row's batch of tokens
            tokens = max(1, s.batch)
            return float(_iteration_model(base, cache).linear_seconds(tokens) /
                         _iteration_model(s, cache).linear_seconds(tokens))
        # the same load, in output tokens a second
        return float(simulate_scenario(s, cache)["output_tokens_per_s"] /
                     simulate_scenario(base, cache)["output_tokens_per_s"])
    r = simulate_scenario(s, cache)
    replicas = s.replicas
    if family == "prefill_time_batch":
        seconds = r["prefill_time_batch_s"]
    elif family == "decode_step_time":
        seconds = r["decode_step_time_s"]
    elif family in ("ttft", "tpot", "itl", "e2e"):
        seconds = r[f"{family}_{stat}_s"]
    elif family == "throughput":
        kind = _THROUGHPUT[metric]
        if kind == "requests":
            return float(r["requests_per_s"] * replicas)
        if re.search(r"total|input ?\+ ?output", unit.lower()):
            kind = "total"
        per_gpu = kind == "output_per_gpu" or "gpu" in unit
        total = r["total_tokens_per_s" if kind == "total" else "output_tokens_per_s"] * replicas
        return float(total / s.gpus if per_gpu else total)
    return float(seconds * 1e3 if unit.strip().lower().startswith("ms") else seconds)


def predict_row(row: Mapping[str, Any], cache: dict[Any, Any], chip_override: str | None = None) -> tuple[float, str]:
    s, family, stat = scenario_for_row(row, chip_override)
    try:
        value = _value(s, family, stat, str(row["metric_name"]).strip().lower(), str(row.get("unit") or ""), cache)
    except InputError as exc:
        raise Unsupported(f"{exc.key}: {exc.message}" if exc.key else exc.message) from None
    return value, family


def validate_serving(frame: pd.DataFrame, chip: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every input row plus predicted_value, ape, family and skipped_reason; and the skipped rows."""
    from chipsim.study.training_validate import predict_rows

    cache: dict[Any, Any] = {}
    out, skipped = predict_rows(frame, lambda row: predict_row(row, cache, chip), progress)
    return out.rename(columns={"detail": "family"}), skipped.rename(columns={"detail": "family"})


def _load_label(row: Mapping[str, Any]) -> str:
    """A row's load in words: its concurrency or batch, else its request rate."""
    if _present(row, "batch_or_concurrency"):
        return str(row["batch_or_concurrency"])
    return f"{row['request_rate']} req/s" if _present(row, "request_rate") else "unstated load"


def serving_summary(predictions: pd.DataFrame) -> pd.DataFrame:
    """Median and p90 APE per metric family (and GPU), plus the worst row of each."""
    done = predictions[predictions["skipped_reason"] == ""]
    rows = []
    for (family, gpu), part in done.groupby(["family", "gpu"], sort=True):
        worst = part.loc[part["ape"].idxmax()]
        rows.append({"family": family, "gpu": gpu, "rows": len(part), "median_ape": part["ape"].median(),
                     "p90_ape": part["ape"].quantile(0.9),
                     "worst": f"{worst['ape']:.0%} {worst['model']} tp{worst['tp']:g} {worst['input_len']}/"
                              f"{worst['output_len']} at {_load_label(worst)} {worst['metric_name']}"})
    return pd.DataFrame(rows, columns=["family", "gpu", "rows", "median_ape", "p90_ape", "worst"])
