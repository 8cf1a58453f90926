"""Build the quantization cross-check (validation/published_crosscheck/quantization.csv) from two
transcriptions of published results of quantized LLM inference against 16-bit on datacenter GPUs:

- quantization_raw_a.csv: TensorRT-LLM's and TensorRT Model Optimizer's docs and blogs (FP8, INT4 AWQ,
  INT8 SmoothQuant, W4A8 on A100, H100 and H200) and Red Hat AI's (Neural Magic's) vLLM model cards
  (DeepSeek-R1-Distill-Llama-70B in 16-bit, FP8, INT8 and INT4 on A100 and H100);
- quantization_raw_b.csv: gpt-fast's and torchao's batch-1 decoding (INT8 weight-only, INT4 tinygemm,
  FP8 weight-only under torch.compile) and optimum's GPTQ benchmark (transformers with the exllama
  kernels), on A100 and H100.

Every row keeps its source and the notes the transcription gave it. Left out, each for the reason given
in `skip_reason`: formats chipsim has no kernel class for (INT8 SmoothQuant and other W8A8 INT8, W4A8,
bitsandbytes, AutoGPTQ's old CUDA kernel, torchao's unfused AWQ and its int8 path inside vLLM), models
outside the zoo, runs without stated lengths, GPU counts or GPU variant where the figure depends on it,
beam search, 2:4 sparsity, cross-GPU "speedups", and metrics chipsim does not predict (prefill tokens a second).
What the rows leave unstated is filled from the tools' defaults, as `fill_defaults` says.

    python validation/quantization_to_schema.py
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent / "published_crosscheck"
# INT8 W8A8 (SmoothQuant, Neural Magic's w8a8), W4A8, bitsandbytes, AutoGPTQ's old CUDA kernel, torchao's
# unfused AWQ and its int8 path inside vLLM
NO_KERNEL = re.compile(r"smoothquant|int8.*w8a8|w4a8|int4-fp8|bitsandbytes|cuda-old|without efficient|int8_rowwise")
STATIC = re.compile(r"(?<!not )\bstatic batch", re.IGNORECASE)
COLUMNS = ["source", "source_detail", "engine", "model", "params_b", "gpu", "gpus", "tp", "pp", "precision",
           "quant_method", "input_len", "output_len", "batch_or_concurrency", "request_rate", "metric_name",
           "metric_value", "unit", "notes"]
MODELS = {  # the transcriptions' names -> the zoo's (the distilled 70B is Llama-3.3-70B's architecture)
    "GPT-J": "GPT-J-6B", "GPT-J 6B": "GPT-J-6B", "LLaMA-v2-7B": "Llama-2-7B", "LLaMA 7B": "Llama-2-7B",
    "LLaMA 70B": "Llama-2-70B", "llama_13b": "Llama-2-13B", "llama_70b": "Llama-2-70B",
    "Llama-70B (Llama2-70B)": "Llama-2-70B", "Llama-70B": "Llama-2-70B", "Llama3-8B": "Llama-3-8B", "Llama3.1-8B": "Llama-3.1-8B",
    "Llama3-70B": "Llama-3-70B", "Llama3.1-70B": "Llama-3.1-70B",
}


def model_name(raw: str) -> str | None:
    text = re.sub(r"\s*\(.*\)$", "", str(raw)).strip()
    if "DeepSeek-R1-Distill-Llama-70B" in text:
        return "Llama-3.3-70B"
    if "Distill-Qwen" in text or "ToyLinear" in text or "Falcon" in text:
        return None
    if text.lower().startswith("mixtral"):
        return "Mixtral-8x7B"
    return MODELS.get(text, text)


def skip_reason(r: pd.Series) -> str:
    q, src, gpu = str(r.quant_method).lower(), str(r.source), str(r.gpu)
    if NO_KERNEL.search(q):
        return "a format without a kernel class in chipsim"
    if "sparsity" in q:
        return "2:4 sparsity not modelled"
    if model_name(r.model) is None:
        return "model outside the zoo"
    if "AutoGPTQ" in src:
        return "beam search"
    if "Model Optimizer benchmark.md (modelopt v0.1" in src:
        return "lengths and TP not stated"
    if "XQA" in src:
        return "batch and GPU count not stated"
    if "variant not stated" in gpu and "H100" in gpu:
        return "H100 variant not stated (its 16-bit figures fit a PCIe card's bandwidth, not an SXM's)"
    if "40GB" in gpu:
        return "no built-in A100 40GB"
    if r.metric_name == "speedup_vs_fp16" and "70B" in str(r.model) and "TP2" in str(r.notes) and r.tp == 1:
        return "a per-GPU speedup against a 16-bit run at another TP"
    if r.metric_name not in ("speedup_vs_fp16", "output_throughput", "tpot", "ttft", "first_token_latency",
                             "e2e_latency", "decode_tokens_per_s", "prefill_time_batch", "max_request_throughput"):
        return f"metric {r.metric_name} not predicted"
    if pd.isna(r.output_len) and r.metric_name != "first_token_latency" and not str(r.engine).startswith(
            ("gpt-fast", "torchao")):
        return "output length not stated"
    if r.metric_name == "prefill_time_batch" and "optimum" in src:
        return "optimum's prefill column is a per-token latency whose definition the page leaves unclear"
    if isinstance(r.gpus, float) and math.isnan(r.gpus) and not str(r.engine).startswith("trtllm 0.15"):
        return "GPU count not stated"
    return ""


def fill_defaults(r: pd.Series) -> pd.Series:
    """What a row leaves unstated, from its tool's defaults: gpt-fast's and torchao's generate.py decode
    200 new tokens after the 5-token prompt "Hello, my name is" at batch 1 (--max_new_tokens 200); a
    Neural Magic card's "maximum throughput" is GuideLLM's saturated rate (every request at once); TP
    is the row's GPU count where the page runs one engine over them."""
    r = r.copy()
    r["model"] = model_name(r.model)
    if str(r.engine).startswith(("gpt-fast", "torchao")):
        r["input_len"] = 5 if pd.isna(r.input_len) else r.input_len
        r["output_len"] = 200 if pd.isna(r.output_len) else r.output_len
        r["batch_or_concurrency"] = 1 if pd.isna(r.batch_or_concurrency) else r.batch_or_concurrency
    if str(r.engine).startswith("gpt-fast") and str(r.precision).upper() == "INT4":
        # gpt-fast's int4 weight-only linear is tinygemm (quantize.py, linear_forward_int4:
        # torch.ops.aten._weight_int4pack_mm)
        r["quant_method"] = f"{r.quant_method}; tinygemm kernel (torch.ops.aten._weight_int4pack_mm)"
    if r.metric_name == "max_request_throughput":
        r["metric_name"], r["batch_or_concurrency"] = "request_throughput", "max load (all requests at once)"
        r["unit"] = "requests/s"
    if r.metric_name == "decode_tokens_per_s" and str(r.engine).startswith(("gpt-fast", "torchao")):
        r["metric_name"] = "output_throughput"  # one sequence's tokens a second, its prompt included
    if pd.isna(r.batch_or_concurrency) and "1000 requests" in str(r.notes):  # trtllm-bench's burst
        r["batch_or_concurrency"] = "max load (all requests at once, 1000 prompts)"
    if pd.isna(r.output_len) and r.metric_name == "first_token_latency":
        r["output_len"] = 1  # a prompt's first token alone
    for key, value in (("max_num_tokens 16384", "max_batch=512; max_tokens=16384"),
                       ("max_num_tokens 2048", "max_batch=512; max_tokens=2048")):
        if key in str(r.notes):  # the engines' build settings the page prints
            r["engine_settings"] = value
            break
    if pd.isna(r.tp) and not pd.isna(r.gpus):
        r["tp"] = r.gpus
    if STATIC.search(str(r.notes)) and r.metric_name == "output_throughput":
        # a static batch run to completion, per GPU as chipsim reads such rows; TensorRT-LLM's v0.6.1 A100
        # table heads its column "out tok/s" without the H100 table's "/GPU": read per GPU as well (its
        # TP-4 70B figures are then a third of the H100's FP8 ones, not a twelfth)
        r["metric_name"], r["unit"] = "output_throughput_per_gpu", "tokens/s per GPU"
    return r


def main() -> None:
    raw = pd.concat([pd.read_csv(HERE / f"quantization_raw_{k}.csv") for k in ("a", "b")], ignore_index=True)
    reasons = raw.apply(skip_reason, axis=1)
    kept = raw[reasons == ""].apply(fill_defaults, axis=1)[COLUMNS + ["engine_settings"]]
    kept.to_csv(HERE / "quantization.csv", index=False)
    print(f"{len(kept)} of {len(raw)} rows -> {HERE / 'quantization.csv'}")
    print(reasons[reasons != ""].value_counts().to_string())
    print(kept.groupby(["source", "gpu", "precision"]).size().to_string())


if __name__ == "__main__":
    main()
