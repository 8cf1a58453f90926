#!/usr/bin/env python3
"""DeepSeek's inference system as DeepSeek published it, against chipsim's serving model.

    python3 validation/deepseek_serving_check.py

DeepSeek-V3/R1 inference system overview (DeepSeek, open-infra-index, 2025-03-01, "Day 6"): prefill
on EP32 with data-parallel attention (4 H800 nodes), decode on EP144 (18 nodes, 2 routed experts a GPU
with redundant copies), FP8 GEMMs, MTP speculative decoding; over 24 h: 608 B input tokens of which
56.3% hit the on-disk KV cache, 168 B output tokens, "the average output speed was 20-22 tokens per
second, and the average kvcache length per output token was 4,989 tokens", "each H800 node delivers
an average throughput of ~73.7k tokens/s input (including cache hits) during prefilling or ~14.8k
tokens/s output during decoding".

What this prints, from the same iteration model `chipsim serve` runs (a steady state of one GPU, every
GPU alike): decode, the tokens per second per node when each GPU decodes the batch whose time per
output token is DeepSeek's 1/21 s, at a KV length of 4,989, with MTP (1 token, acceptance 0.85, the
DeepSeek-V3 report's lower bound); prefill, the prompt tokens per second per node an EP32 GPU computes
in 16k-token iterations of 4,380-token prompts (608 B / 168 B input to output, and 4,989 = input +
output / 2), against DeepSeek's figure without its cache hits (43.7% computed). Nothing is fitted.
"""

from __future__ import annotations

from chipsim.hardware.registry import load_chip
from chipsim.models import load_model
from chipsim.network.system import system_for
from chipsim.serving.iteration import IterationModel
from chipsim.serving.profiles import engine_profile
from chipsim.serving.quant import quantization
from chipsim.serving.speculative import MTP_ACCEPTANCE, Speculation

PUBLISHED_DECODE_PER_NODE = 14_800  # output tokens/s per H800 node
PUBLISHED_PREFILL_PER_NODE = 73_700  # input tokens/s per node, cache hits included
CACHE_HIT = 0.563  # of input tokens, from the on-disk KV cache
TPOT_S = 1 / 21  # "20-22 tokens per second" per user
KV_LENGTH = 4_989  # average KV-cache length per output token
PROMPT = 4_380  # input length that gives 4,989 at 3.62 input tokens per output token (608 B / 168 B)
GPUS_PER_NODE = 8


def engine(gpus: int, speculation: Speculation | None = None) -> IterationModel:
    return IterationModel(load_model("deepseek-v3"), load_chip("h800"), quantization("fp8"), engine_profile("sglang"),
                          tp=gpus, kv_dtype="bf16", system=system_for("h800", gpus), dp_attention=True,
                          speculation=speculation)


def main() -> None:
    mtp = Speculation("mtp", 1, MTP_ACCEPTANCE)
    decode = engine(144, mtp)
    tokens = mtp.expected_tokens
    best = None
    for batch in range(8, 257, 8):
        step = decode.step([], batch, batch * KV_LENGTH, batch).seconds
        if step / tokens <= TPOT_S:
            best = (batch, step)
    assert best is not None
    batch, step = best
    per_node = GPUS_PER_NODE * batch * tokens / step
    print(f"decode, EP144 on H800, MTP 1 token at acceptance {MTP_ACCEPTANCE}: {batch} sequences a GPU keep TPOT "
          f"under {TPOT_S * 1e3:.1f} ms ({step / tokens * 1e3:.1f} ms)")
    print(f"  output tokens/s per node: chipsim {per_node:,.0f}, DeepSeek {PUBLISHED_DECODE_PER_NODE:,} "
          f"({per_node / PUBLISHED_DECODE_PER_NODE - 1:+.0%})")
    prefill = engine(32)
    chunk = 16_384
    prompts = [(PROMPT, PROMPT)] * (chunk // PROMPT) + [(chunk % PROMPT, chunk % PROMPT)]
    step = prefill.step(prompts, 0, 0, len(prompts) - 1).seconds
    computed = GPUS_PER_NODE * chunk / step
    published = PUBLISHED_PREFILL_PER_NODE * (1 - CACHE_HIT)
    print(f"prefill, EP32 on H800, {chunk:,}-token iterations of {PROMPT:,}-token prompts: {step * 1e3:.0f} ms each")
    print(f"  computed input tokens/s per node: chipsim {computed:,.0f}, DeepSeek {published:,.0f} "
          f"(73.7k with cache hits x {1 - CACHE_HIT:.3f}) ({computed / published - 1:+.0%})")


if __name__ == "__main__":
    main()
