"""`dynamic_attention`: the article's attention layer whose heads are scaled by weights that a small
MLP (Linear d->2d, SiLU, Linear 2d->heads) generates per sequence or per token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from chipsim.errors import InputError
from chipsim.vocab import AttentionBackend
from chipsim.workload.generators.registry import param, register_generator
from chipsim.workload.graph import Workload, WorkloadBuilder


@dataclass(frozen=True)
class DynamicAttentionParams:
    batch: int = param(8, "sequences")
    seq: int = param(2048, "tokens per sequence")
    d_model: int = param(4096, "hidden size")
    heads: int = param(32, "attention heads")
    kv_heads: int | None = param(None, "key/value heads (default: heads)")
    causal: bool = param(True, "causal mask")
    weight_gen: Literal["none", "per_sequence", "per_token"] = param(
        "per_sequence", "none: plain attention; per_sequence: one weight per head and sequence (from the "
        "mean-pooled input); per_token: one per head and token")
    passes: Literal["fwd", "fwd_bwd"] = param("fwd", "forward only, or forward and backward")
    dtype: Literal["bf16", "fp16"] = param("bf16", "activation and weight dtype")
    attention_backend: AttentionBackend = param("flash", "SDPA backend")

    def __post_init__(self) -> None:
        if min(self.batch, self.seq, self.d_model, self.heads) < 1:
            raise InputError("batch, seq, d_model and heads must be >= 1", key="batch")
        if self.d_model % self.heads:
            raise InputError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})", key="heads")
        kvh = self.kv_heads or self.heads
        if self.heads % kvh:
            raise InputError(f"heads ({self.heads}) must be a multiple of kv_heads ({kvh})", key="kv_heads")


@register_generator("dynamic_attention", DynamicAttentionParams,
                    "attention layer with MLP-generated per-head weights (the article's dynamic attention)")
def dynamic_attention(p: DynamicAttentionParams) -> Workload:
    kvh = p.kv_heads or p.heads
    hd = p.d_model // p.heads
    t = p.batch * p.seq
    d, dt = p.d_model, p.dtype
    e = 2  # bytes per element
    b = WorkloadBuilder(f"dynamic_attention_{p.weight_gen}_{p.passes}_b{p.batch}_s{p.seq}", "dynamic_attention",
                        vars(p))
    qkv_n = (p.heads + 2 * kvh) * hd
    qkv = b.add("gemm", "qkv_proj", dt, [], m=t, n=qkv_n, k=d)
    attn = b.add("attention", "attention", dt, [qkv], batch=p.batch, heads=p.heads, kv_heads=kvh, seq_q=p.seq,
                 seq_kv=p.seq, head_dim=hd, causal=p.causal, attrs={"backend": p.attention_backend})
    gen_ops: dict[str, int] = {}
    mixed = attn
    if p.weight_gen != "none":
        rows = p.batch if p.weight_gen == "per_sequence" else t
        # the generator's parameters and its outputs are what a dynamic weight buffer would hold
        mlp_weights = (d * 2 * d + 2 * d * p.heads) * e
        src: int | None = None
        if p.weight_gen == "per_sequence":
            src = b.add("elementwise", "weight_gen.mean_pool", dt, [], numel=t * d, attrs={"op": "reduce"})
        l1 = b.add("gemm", "weight_gen.fc1", dt, [src], m=rows, n=2 * d, k=d,
                   attrs={"buffer_bytes": d * 2 * d * e})
        act = b.add("elementwise", "weight_gen.silu", dt, [l1], numel=rows * 2 * d, attrs={"op": "silu"})
        l2 = b.add("gemm", "weight_gen.fc2", dt, [act], m=rows, n=p.heads, k=2 * d,
                   attrs={"buffer_bytes": 2 * d * p.heads * e})
        gen_ops = {"fc1": l1, "act": act, "fc2": l2}
        # scale each head's output by its generated weight (weights read from the buffer if present)
        mixed = b.add("elementwise", "head_scale", dt, [attn, l2], numel=t * d,
                      attrs={"op": "mul", "buffer_bytes": rows * p.heads * e})
        b.meta["generated_weight_bytes"] = rows * p.heads * e
        b.meta["generator_weight_bytes"] = mlp_weights
    out = b.add("gemm", "out_proj", dt, [mixed], m=t, n=d, k=p.heads * hd)
    if p.passes == "fwd_bwd":
        dout_d = b.add("gemm", "out_proj.dgrad", dt, [out], m=t, n=p.heads * hd, k=d)
        b.add("gemm", "out_proj.wgrad", dt, [out], m=p.heads * hd, n=d, k=t)
        dattn_in = dout_d
        if gen_ops:
            dscale = b.add("elementwise", "head_scale_bwd", dt, [dout_d], numel=t * d,
                           attrs={"op": "mul", "buffer_bytes": t * p.heads * e if p.weight_gen == "per_token" else 0})
            rows = p.batch if p.weight_gen == "per_sequence" else t
            dl2 = b.add("gemm", "weight_gen.fc2.dgrad", dt, [dscale], m=rows, n=2 * d, k=p.heads)
            b.add("gemm", "weight_gen.fc2.wgrad", dt, [dscale], m=2 * d, n=p.heads, k=rows)
            dact = b.add("elementwise", "weight_gen.silu_bwd", dt, [dl2], numel=rows * 2 * d, attrs={"op": "gelu_bwd"})
            b.add("gemm", "weight_gen.fc1.dgrad", dt, [dact], m=rows, n=d, k=2 * d)
            b.add("gemm", "weight_gen.fc1.wgrad", dt, [dact], m=d, n=2 * d, k=rows)
            dattn_in = dscale
        da = b.add("attention", "attention_bwd", dt, [dattn_in], batch=p.batch, heads=p.heads, kv_heads=kvh,
                   seq_q=p.seq, seq_kv=p.seq, head_dim=hd, causal=p.causal, attrs={"backend": p.attention_backend},
                   shape={"pass": "bwd"})
        b.add("gemm", "qkv_proj.dgrad", dt, [da], m=t, n=d, k=qkv_n)
        b.add("gemm", "qkv_proj.wgrad", dt, [da], m=d, n=qkv_n, k=t)
    b.memory.update({
        "weights": (d * qkv_n + p.heads * hd * d + (d * 2 * d + 2 * d * p.heads if gen_ops else 0)) * e,
        "activations": t * (d + qkv_n + 2 * d) * e,
    })
    return b.build()
