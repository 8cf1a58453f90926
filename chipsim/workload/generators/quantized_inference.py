"""`quantized_inference`: one prefill or decode step of a Llama-style model with bf16, int8 or int4
weights (weight-only on GPUs; native INT4 MACs where the chip has them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from chipsim.vocab import AttentionBackend
from chipsim.workload.generators.registry import check_range, param, register_generator
from chipsim.workload.generators.transformer import BlockArgs, Linears, block_forward, model_shape
from chipsim.workload.graph import Workload, WorkloadBuilder
from chipsim.workload.kinds import DTYPE_BYTES

MAX_DECODE_TOKENS = 4096  # decode steps in one graph (each is a whole forward pass)


@dataclass(frozen=True)
class InferenceParams:
    model: str | None = param("llama-1.3b", "preset (see transformer_train_step)")
    layers: int | None = param(None, "transformer blocks (overrides the preset)")
    d_model: int | None = param(None, "hidden size")
    heads: int | None = param(None, "attention heads")
    kv_heads: int | None = param(None, "key/value heads")
    ffn: int | None = param(None, "SwiGLU hidden size")
    vocab: int | None = param(None, "vocabulary size")
    phase: Literal["prefill", "decode"] = param("decode", "prefill: the whole prompt; decode: one token per sequence")
    batch: int = param(16, "sequences")
    prompt: int = param(2048, "prompt length (prefill) or KV-cache length (decode)")
    tokens: int = param(1, "decode steps to generate (decode only)")
    weights: Literal["bf16", "int8", "int4"] = param("bf16", "weight format of the block linears")
    group_size: int = param(128, "quantization group size along k")
    quantize_lm_head: bool = param(False, "also quantize the LM head")
    attention_backend: AttentionBackend = param(
        "cudnn", "SDPA backend (PyTorch 2.11 picks cuDNN on Hopper)")
    rope: bool = param(False, "apply rotary embeddings as separate kernels")
    kv_append: bool = param(False, "decode: copy the new token's K and V into the cache as a separate kernel")

    def __post_init__(self) -> None:
        check_range(self, "batch", "prompt", "group_size")
        check_range(self, "tokens", maximum=MAX_DECODE_TOKENS)


@register_generator("quantized_inference", InferenceParams,
                    "Llama-style prefill or decode step with bf16 / int8 / int4 (group-wise) weights")
def quantized_inference(p: InferenceParams) -> Workload:
    shape = model_shape(p.model, p.layers, p.d_model, p.heads, p.kv_heads, p.ffn, p.vocab)
    wdt = None if p.weights == "bf16" else p.weights
    b = WorkloadBuilder(f"{p.phase}_{p.model or 'custom'}_{p.weights}_b{p.batch}_s{p.prompt}",
                        "quantized_inference", vars(p))
    last: int | None = None
    steps = p.tokens if p.phase == "decode" else 1
    for step in range(steps):
        seq_q = 1 if p.phase == "decode" else p.prompt
        seq_kv = p.prompt + step if p.phase == "decode" else p.prompt
        t = p.batch * seq_q
        lin = Linears(b, "bf16", t, weight_dtype=wdt, group_size=p.group_size)
        args = BlockArgs(p.batch, seq_q, seq_kv, causal=p.phase == "prefill", backend=p.attention_backend,
                         rope=p.rope)
        prefix = f"tok{step}." if steps > 1 else ""
        x: int | None = b.add("elementwise", f"{prefix}embedding", "bf16", [last], numel=t * shape.d_model,
                              attrs={"op": "embedding"})
        for layer in range(shape.layers):
            if p.phase == "decode" and p.kv_append:  # append this token's K and V to the cache
                x = b.add("elementwise", f"{prefix}layer{layer}.kv_append", "bf16", [x],
                          numel=2 * t * shape.kv_heads * shape.head_dim, attrs={"op": "copy"})
            x = block_forward(b, lin, shape, args, layer, x)
        fn = b.add("norm", f"{prefix}final_norm", "bf16", [x], rows=t, cols=shape.d_model, attrs={"type": "rms_norm"})
        head = Linears(b, "bf16", p.batch, weight_dtype=wdt if p.quantize_lm_head else None, group_size=p.group_size)
        last = head.forward(f"{prefix}lm_head", fn, shape.d_model, shape.vocab)  # logits of the last token only
    linear_params = shape.layers * sum(i * o for _, i, o in shape.linears())
    wbytes = DTYPE_BYTES[p.weights]
    scales = 0.0 if p.weights == "bf16" else linear_params / p.group_size * 4
    other = shape.params - linear_params
    kv_len = p.prompt + (p.tokens if p.phase == "decode" else 0)
    b.memory.update({
        "weights": linear_params * wbytes + scales + other * 2.0,
        "kv_cache": 2.0 * shape.layers * p.batch * kv_len * shape.kv_heads * shape.head_dim * 2,
        "activations": 4.0 * p.batch * (1 if p.phase == "decode" else p.prompt) * max(shape.d_model, shape.ffn) * 2,
    })
    b.meta.update(params=shape.params, weights=p.weights)
    return b.build()
