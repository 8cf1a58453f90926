"""Engine profiles: what an inference engine adds to each iteration beyond its kernels, and the
scheduler defaults it ships with.

`iteration_s` is the host's work per iteration that the GPU waits for: scheduling, preparing the
batch's inputs and metadata, sampling and detokenizing, launching the step (decode steps replay a
CUDA graph; the per-kernel replay cost is the chip's `calibration.latency.graph_launch`).
`per_sequence_s` is the part of it that grows with the sequences in the batch (per-request
bookkeeping, sampling and output processing).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from chipsim.errors import InputError
from chipsim.hardware.chip import Chip


@dataclass(frozen=True)
class EngineProfile:
    name: str
    iteration_s: float  # host time per iteration the GPU waits for
    per_sequence_s: float  # host time per sequence in the batch, per iteration
    max_batch: int  # sequences per iteration (TensorRT-LLM max_batch_size, vLLM max_num_seqs)
    max_tokens: int  # tokens per iteration (max_num_tokens / max_num_batched_tokens)
    chunked_prefill: bool
    block_size: int  # KV-cache block (page) in tokens
    memory_fraction: float  # of the GPU memory left after the weights that holds the KV cache
    attention_backend: str  # the calibrated attention kernels its kernels are closest to
    graphs: str  # steps replayed from CUDA graphs: "all", "decode" (decode-only steps) or "none" (eager)
    # "reserve": a request's whole sequence must fit the free KV blocks; "greedy": its prompt, the latest
    # arrival preempted when the cache runs out; "ratio": its prompt and a share of the outputs to come
    # (SGLang's new_token_ratio; chipsim.serving.engine)
    admission: str
    all_reduce_s: float  # fixed cost of the engine's custom tensor-parallel all-reduce (0: NCCL for all sizes)
    source: str
    # False: rotary embedding, KV-cache writes and residual adds run as their own kernels and each layer
    # costs framework module calls (an HF Transformers-style PyTorch model); True: fused into the
    # engine's kernels (TensorRT-LLM, vLLM, SGLang)
    fused: bool = True
    # prompt blocks already in the KV cache are reused, not recomputed (vLLM's automatic prefix caching,
    # SGLang's radix cache, TensorRT-LLM's KV-cache block reuse: each on by default)
    prefix_caching: bool = True
    # an engine whose tensor-parallel all-reduce exchanges the whole message in log2(tp) rounds
    # (recursive doubling) at this rate per round, where NCCL's ring would move 2(tp-1)/tp of it at the
    # link's bus bandwidth; the slower of the two counts (0: the fabric's model only)
    all_reduce_round_bytes_per_s: float = 0.0
    # sequence slots of `max_batch` the engine holds for itself: a request is admitted only beside
    # max_batch - reserved_slots others (see RELEASES)
    reserved_slots: int = 0
    # host time of the server's front end per token it streams to a client (detokenizing it, building and
    # sending its chunk), one process for every request: a server streams at most 1 / frontend_token_s
    # tokens a second, and a token reaches its client after those queued before it (0: no front end, as
    # an offline benchmark such as trtllm-bench runs the engine)
    frontend_token_s: float = 0.0
    # host time per decoder layer of a step launched op by op, beyond its kernels' dispatch (the
    # framework's module, custom-op and metadata calls around them; 0: the chip's dispatch costs only)
    eager_layer_s: float = 0.0
    # an FP8 checkpoint on a GPU without FP8 tensor cores runs weight-only, its FP8 weights dequantized
    # to 16 bits inside the GEMM (vLLM's and SGLang's FP8 Marlin fallback below compute capability 8.9)
    fp8_marlin: bool = False
    # prompts' chunks and decoding sequences share a step (vLLM, TensorRT-LLM); False: a step of prompts
    # runs alone whenever one is waiting, the decoding sequences paused (SGLang without
    # --enable-mixed-chunk: prefill first, then decode)
    mixed_batches: bool = True
    # decode steps of more sequences than this have no CUDA graph and run op by op (0: every decode step
    # has one); see `for_chip` for the engines' defaults
    graph_max_batch: int = 0
    # the engine's MoE kernels' share of the rate chipsim's grouped GEMM model gives FP8 and 16-bit
    # experts' GEMMs (weight-only experts run Marlin-class kernels, FP4 ones Blackwell's, costed as
    # such): `moe_efficiency` where they stream their weights (the memory time of a decode step's
    # experts is divided by it), `moe_compute_efficiency` where their tensor cores bound them (the
    # compute time of a prompt's); 1 and 1 for TensorRT-LLM's CUTLASS grouped GEMMs
    moe_efficiency: float = 1.0
    moe_compute_efficiency: float = 1.0
    release: str = ""  # the engine's version as it was named ("1.0.0rc3"; `base_profile`)


PROFILES: dict[str, EngineProfile] = {p.name: p for p in (
    # TensorRT-LLM (in-flight batching, fused kernels); CUDA graphs only for decode-only steps (the
    # PyTorch flow's cuda_graph_config captures generation batches; context steps are dispatched op by
    # op): fitted on the TensorRT-LLM first-token rows of published/serving_calibration.csv, where an
    # FP8 128-token prompt takes 5.0-6.3 ms on one H100/H200 (GPT-J, Llama-2-7B), ~1.5x its kernels'
    # GPU time - host-bound, as the eager dispatch model gives; 2,048-token prompts stay GPU-bound;
    # defaults from TensorRT-LLM's trtllm-bench / LLM API: max_batch_size 2048, max_num_tokens 8192,
    # free_gpu_memory_fraction 0.9, tokens_per_block 32 (tensorrt_llm/llmapi/llm_args.py, KvCacheConfig)
    EngineProfile("trtllm", iteration_s=1.0e-3, per_sequence_s=2.0e-6, max_batch=2048, max_tokens=8192,
                  chunked_prefill=True, block_size=32, memory_fraction=0.9, attention_backend="cudnn",
                  graphs="decode", admission="reserve", all_reduce_s=8e-6, source="calibrated on published/serving_calibration.csv (TensorRT-LLM rows)"),
    # vLLM V1 (engine core in its own process, CUDA graphs for decode, chunked prefill always on);
    # defaults of its OpenAI server: max_num_seqs 256, max_num_batched_tokens 2048, raised to 1024 and
    # 8192 on GPUs of 70 GiB or more other than the A100 (`for_chip`; vllm/engine/arg_utils.py,
    # get_batch_defaults), gpu_memory_utilization 0.9, block_size 16
    # host time in the GPU's path per step (scheduling, input preparation, sampling and output processing
    # without async scheduling): 3 ms, fitted to AIConfigurator's vLLM rows on H100 and H200
    # (validation/published_crosscheck/aic_silicon.csv: Llama-3.1-70B FP8 TP 1-8 and Qwen3-32B TP 2-8,
    # vLLM 0.12; at 4-8 clients a decode step takes 1.2-2 ms more than the kernels and the 1.5 ms
    # assumed before explain, and 1.4-1.9 ms more than TensorRT-LLM's on the same GPUs and shapes).
    # TPOT median APE 14.2% -> 5.3% (70B) and 7.5% -> 5.2% (Qwen3-32B); TTFT 15.5% -> 16.4%, 20.2% -> 18.5%;
    # the vLLM rows of vllm_sglang_dense.csv 25.2% -> 25.1%.
    # Its fused MoE kernels (Triton, FP8 block-scaled or 16-bit experts) stream their weights at 0.5 of
    # chipsim's grouped GEMM rate: fitted on Qwen3-235B-A22B FP8 (AIConfigurator, vLLM 0.12, H200 TP2-4:
    # TPOT 48% -> 16%) and DeepSeek-R1 (vllm_sglang_mi300x_h200.csv, vLLM 0.8.4, H200 TP8: ITL 43% ->
    # 10%); where compute bounds them (prompts) they reach 0.25 of it: fitted on the same rows' TTFT,
    # which at 0.5 sat at 0.70x the measured (Qwen3-235B, 1,000-8,000-token prompts: median APE 30% ->
    # 12.5%, TPOT 16.4% -> 14.1%) and 0.39x (DeepSeek-R1, 1,000-10,000: 61% -> 36%; throughput 42% -> 20%)
    EngineProfile("vllm", iteration_s=3.0e-3, per_sequence_s=5.0e-6, max_batch=256, max_tokens=2048,
                  chunked_prefill=True, block_size=16, memory_fraction=0.9, attention_backend="flash",
                  graphs="decode", admission="greedy", all_reduce_s=8e-6, fp8_marlin=True, moe_efficiency=0.5,
                  moe_compute_efficiency=0.25,
                  source="host time and MoE kernels fitted to AIConfigurator's vLLM rows (validation/published_crosscheck/aic_silicon.csv)"),
    # SGLang (overlap scheduler hides most host work, radix cache, decode CUDA graphs up to `for_chip`'s
    # batch); defaults: chunked_prefill_size 8192, mem_fraction_static ~0.88, page_size 1
    # (sglang/srt/server_args.py), max_running_requests up to its request pool's 4,096 (model_runner.py);
    # prompts run in steps of their own, ahead of decoding (mixed chunks off), and admission keeps room
    # for a share of the outputs to come (`admission="ratio"`)
    # A prompt's (extend) step runs eagerly, ~1 ms of host time a layer: sglang PR #34299 measures a
    # 20-layer model's whole prefill at TP2 flat at 21-22 ms from 64 to 1,024 tokens. Checked on the 162
    # SGLang rows of validation/published_crosscheck/vllm_sglang_dense.csv (A100, H100, H200;
    # 0.4.1-0.5.6): with it their TTFT is at 28% median APE, 38% without; all of them 22%, 26% without.
    # Its MoE kernels stream their weights at 0.65 of chipsim's grouped GEMM rate: fitted on
    # AIConfigurator's SGLang H200 rows (Qwen3-235B-A22B FP8, 0.5.6, TPOT 29% -> 11%; DeepSeek-R1/V3,
    # 0.5.9, 18% -> 8%) and DeepSeek-R1 in vllm_sglang_mi300x_h200.csv (SGLang 0.4.5: ITL 34% -> 12%);
    # compute-bound, 0.35 of it: fitted on the TTFT of the Qwen3-235B rows (35% -> 21%) and of DeepSeek-R1
    # in vllm_sglang_mi300x_h200.csv (63% -> 56%; throughput 28% -> 20%). AIConfigurator's SGLang 0.5.9
    # DeepSeek-R1/V3 rows disagree (TTFT 46% -> 60% on B200, 117-136% -> 174-198% on H200, already
    # predicted high at 0.65): their TTFT does not grow with concurrency as a closed loop's does, so their
    # harness is not the one modelled, and they were left out of the fit
    EngineProfile("sglang", iteration_s=1.5e-3, per_sequence_s=5.0e-6, max_batch=4096, max_tokens=8192,
                  chunked_prefill=True, block_size=1, memory_fraction=0.88, attention_backend="flash",
                  graphs="decode", admission="ratio", all_reduce_s=8e-6, fp8_marlin=True, eager_layer_s=1e-3,
                  mixed_batches=False, moe_efficiency=0.65, moe_compute_efficiency=0.35,
                  source="assumption, but for the eager step's host time and the MoE kernels (see above)"),
    # LMDeploy's TurboMind (a C++ engine: persistent batching, its own fused kernels launched from C++, so
    # no Python dispatch; a long prompt split into chunks of max_prefill_token_num 8,192): host costs as
    # TensorRT-LLM's C++ executor (assumption); defaults of TurbomindEngineConfig: cache_max_entry_count
    # 0.8 of the free memory, cache_block_seq_len 64, max_batch_size by device (`for_chip`;
    # lmdeploy/messages.py, utils.get_max_batch_size). Checked, not fitted, on LMDeploy 0.1's A100 rows
    # (docs/en/benchmark/a100_fp16.md; validation/published_crosscheck/vllm_sglang_dense.csv)
    EngineProfile("lmdeploy", iteration_s=1.0e-3, per_sequence_s=2.0e-6, max_batch=128, max_tokens=8192,
                  chunked_prefill=True, block_size=64, memory_fraction=0.8, attention_backend="cudnn",
                  graphs="all", admission="greedy", all_reduce_s=8e-6,
                  source="assumption: TensorRT-LLM's host costs; TurboMind's scheduler defaults"),
    # PyTorch under torch.compile (gpt-fast, torchao's generate.py): the decode step compiled with
    # mode="reduce-overhead", one CUDA graph whose elementwise ops Inductor fuses; the Python loop queues
    # the next step without waiting for the GPU (no per-token sync), so no host time is in the GPU's path
    # (assumption); one sequence or a fixed batch at a time, each prompt prefilled whole
    EngineProfile("compiled", iteration_s=0.0, per_sequence_s=0.0, max_batch=256, max_tokens=1 << 20,
                  chunked_prefill=False, block_size=16, memory_fraction=0.9, attention_backend="flash",
                  graphs="all", admission="reserve", all_reduce_s=0.0, prefix_caching=False,
                  source="assumption (see above)"),
    # a PyTorch engine without CUDA graphs (HF Transformers-style, the harness of Splitwise's
    # characterization): every op dispatched from Python, static batches, no chunked prefill
    # fitted on published/serving_calibration.csv's Splitwise rows (Llama-2-70B FP16 on DGX-H100, TP 2-8):
    # batch-1 decode steps take ~30 ms at TP4 and TP8 alike (host-bound: 6 unfused kernels and 3 module
    # calls a layer beyond the fused op list), and prefill time per token stops falling with TP
    # (8,192 prompt tokens: TP2 1,340 ms, TP4 954, TP8 845): what a ring all-reduce at NVLink speed
    # leaves unexplained grows as log2(tp) (~160 ms per doubling: 160 all-reduces of 134 MB at ~135 GB/s
    # per round)
    EngineProfile("eager", iteration_s=1.0e-3, per_sequence_s=0.0, max_batch=256, max_tokens=1 << 20,
                  chunked_prefill=False, block_size=16, memory_fraction=0.9, attention_backend="flash",
                  graphs="none", admission="reserve", all_reduce_s=0.0, fused=False, prefix_caching=False,
                  all_reduce_round_bytes_per_s=135e9,
                  source="calibrated on published/serving_calibration.csv (Splitwise rows)"),
)}
OVERRIDABLE = ("iteration_s", "per_sequence_s", "frontend_token_s", "eager_layer_s", "max_batch", "max_tokens",
               "chunked_prefill", "mixed_batches", "graph_max_batch", "block_size", "memory_fraction", "admission",
               "prefix_caching", "moe_efficiency", "moe_compute_efficiency")


# A context step (launched op by op, no CUDA graph) costs TensorRT-LLM's PyTorch executor ~0.5 ms of host
# time per layer beyond its kernels' launches: how much a prompt's step adds to the others' TPOT (the TPOT
# difference between output lengths 128 and 512 at the same concurrency) is 12-16 ms for an 8B model on
# 4 and 8 GPUs whatever the prompt length (1,024 or 2,048 tokens), where its kernels take 4-9 ms; on 1-2
# GPUs the kernels are the longer. 500 us a layer (fitted to AIConfigurator's 1.0.0rc3 H100 rows of
# published/serving_calibration.csv: TTFT 11.9% -> 8.5%, TPOT unchanged at 5.8%) makes such a step ~21 ms of
# host time for 32 layers with its kernels' launches (the chip's dispatch costs). Checked on the
# later releases' AIConfigurator rows (validation/published_crosscheck/aic_silicon.csv, B200 and H200):
# TensorRT-LLM B200 Llama-3.1-70B TTFT 27.8% -> 15.7%, gpt-oss 51% -> 29%; the calibration file's H200
# TTFT family 18.2% -> 17.9% (its 1,024/1,024 rows stay 2x the prediction)
PYTORCH_EXECUTOR_LAYER_S = 500e-6

# what an engine's release changes in its profile, by (profile, version prefix): applied to an engine
# named with its version ("trtllm 1.0.0rc3")
RELEASES: dict[tuple[str, str], dict[str, Any]] = {
    # TensorRT-LLM 1.x runs the PyTorch executor by default (trtllm-serve's, trtllm-bench's): its
    # context steps are launched op by op (CUDA graphs cover decode-only steps), at
    # `PYTORCH_EXECUTOR_LAYER_S` of host time a layer
    ("trtllm", "1."): {"eager_layer_s": PYTORCH_EXECUTOR_LAYER_S},
    # TensorRT-LLM 1.0's release candidates (PyTorch executor, CUDA-graph padding on): a closed loop of c
    # clients on a server of max_batch_size c keeps one request waiting at all times, its TTFT the wait
    # for the next finish (about the end-to-end latency / c) plus its prefill, at every TP, length and
    # concurrency of AIConfigurator's H100 rows in published/serving_calibration.csv (177 TTFT rows,
    # c = 8-128, tp 1-8: median TTFT APE 65% with every slot usable, 13% with one held; TPOT 7.1% ->
    # 5.7%). Which part of the release holds the slot is not established: the padding's dummy request,
    # which takes a KV-cache sequence (pyexecutor's add_dummy_requests, reworked in TensorRT-LLM PRs
    # #4729 and #16072), is the suspect. The later release AIConfigurator measured on H200 (its 2025-10
    # rows, same harness) keeps no request waiting, and neither does a profile named without a version.
    # Its OpenAI server (trtllm-serve) streams at most ~9,200 tokens a second: the same rows at 64-128
    # clients on 2-8 GPUs level off at 9,100-9,300 output tokens/s whatever the TP and lengths (osl 256
    # and 512), with TTFT up to 8x and TPOT up to 1.7x what the engine alone gives. One front-end process
    # at 100 us a token (fitted to that level) brings those rows' TTFT from 0.12-0.5x to 0.4-1.0x and
    # their TPOT from 0.8x to 0.9-1.1x. A single front-end process is the documented bottleneck of LLM
    # servers at high concurrency (ai-dynamo/dynamo PR #865: tokenizer processes; SGLang's detokenizer
    # workers; vLLM's api-server-count).
    ("trtllm", "1.0.0rc"): {"reserved_slots": 1, "frontend_token_s": 100e-6},
    # LMDeploy 0.1 (TurboMind 2.0's config.ini: max_batch_size 64, cache_max_entry_count 0.5,
    # cache_block_seq_len 128; docs/en/inference/turbomind_config.md)
    ("lmdeploy", "0.1"): {"max_batch": 64, "memory_fraction": 0.5, "block_size": 128},
    # SGLang 0.4 captured decode CUDA graphs up to 160 sequences on every GPU of 25 GB or more
    # (sglang/srt/server_args.py of its 0.4 releases)
    ("sglang", "0.4"): {"graph_max_batch": 160},
}


def base_profile(name: str) -> EngineProfile | None:
    """The profile an engine name selects (its first word), with what its release changes (`RELEASES`,
    by the version after a space: 'trtllm 1.0.0rc3'); None for an unknown name."""
    words = name.strip().lower().split()
    base = PROFILES.get(words[0]) if words else None
    if base is None:
        return None
    version = words[1].removeprefix("v") if len(words) > 1 else ""  # "v0.4.1" names release 0.4.1
    base = replace(base, release=version)
    for (profile, prefix), settings in RELEASES.items():
        if profile == base.name and version.startswith(prefix):
            base = replace(base, **settings)
    return base


def for_chip(profile: EngineProfile, chip: Chip, tp: int = 1) -> EngineProfile:
    """The profile's defaults on `chip` at tensor parallelism `tp`, as the engines pick them by device:
    LMDeploy runs 384 requests on an A100, 1,024 on an H100/H200/H800, else 128 (unless its release
    sets its own); vLLM raises its batch and token limits on GPUs of 70 GiB or more except the A100
    (vllm/engine/arg_utils.py, get_batch_defaults: the larger budget cut the A100's throughput, vLLM PR
    #17885); SGLang's chunked prefill is 2,048 tokens under 35 GiB, 8,192 under 160 GiB, else 16,384
    (B200, MI300), and it captures decode CUDA graphs up to 32 sequences (160 at tp 4 or more) under 60
    GiB, else 256 (512) (sglang/srt/server_args.py; its 0.4 releases: 160 on every GPU of 25 GB or
    more, `RELEASES`)."""
    gib = chip.hbm.capacity_bytes / 2**30
    if profile.name == "vllm" and gib >= 70 and "a100" not in chip.name.lower():
        return replace(profile, max_batch=1024, max_tokens=8192)
    if profile.name == "lmdeploy" and profile.max_batch == PROFILES["lmdeploy"].max_batch:
        name = chip.name.lower()
        batch = 384 if "a100" in name else 1024 if name.startswith(("h100", "h200", "h800")) else profile.max_batch
        return replace(profile, max_batch=batch)
    if profile.name == "sglang":
        graphs = profile.graph_max_batch or ((32 if tp < 4 else 160) if gib < 60 else (256 if tp < 4 else 512))
        return replace(profile, max_tokens=2048 if gib < 35 else 8192 if gib < 160 else 16384,
                       graph_max_batch=graphs)
    return profile


def engine_profile(name: str, overrides: dict[str, Any] | None = None, key: str = "engine") -> EngineProfile:
    """A profile by name (`base_profile`: 'trtllm', 'trtllm 1.0.0rc3'), with scheduler settings
    overridden."""
    base = base_profile(name)
    if base is None:
        raise InputError(f"unknown engine profile {name!r}; expected one of {', '.join(PROFILES)}", key=key)
    for k in overrides or {}:
        if k not in OVERRIDABLE:
            raise InputError(f"unknown engine setting '{k}'; expected one of {', '.join(OVERRIDABLE)}", key=k)
    return replace(base, **(overrides or {}))
