"""Llama-style transformer blocks (RMSNorm, fused QKV, RoPE, SDPA, SwiGLU MLP) as op graphs, and
the `transformer_train_step` generator: forward, backward and fused AdamW, in fp32, bf16 or fp8."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from chipsim.errors import InputError
from chipsim.models.zoo import load_model
from chipsim.vocab import Algorithm, AttentionBackend
from chipsim.workload.generators import inductor
from chipsim.workload.generators.registry import check_range, param, register_generator
from chipsim.workload.graph import Workload, WorkloadBuilder
from chipsim.workload.kinds import DTYPE_BYTES

# Activation bytes a layer keeps for backward, per token and per unit of d_model, in 16-bit
# training with flash attention: 34 (Korthikanti et al., "Reducing Activation Recomputation in Large
# Transformer Models", 2022, eq. 1; the 5*a*s/h term drops since flash attention stores no scores).
ACTIVATION_BYTES_PER_TOKEN_PER_DIM = 34
# Framework calls that launch no kernel, per attention block of the reference implementation
# (reference/h200/traces: split_with_sizes, 3 views and 3 transposes for q/k/v, then transpose and
# reshape of the output); their host cost is the chip's `host.dispatch.call`.
ATTENTION_HOST_CALLS = 9
MAX_LAYERS = 1024  # the deepest published models have ~130 blocks
MAX_STEPS = 100  # training steps in one graph


@dataclass(frozen=True)
class ModelShape:
    layers: int
    d_model: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int

    def __post_init__(self) -> None:
        check_range(self, "d_model", "heads", "kv_heads", "ffn", "vocab")
        check_range(self, "layers", maximum=MAX_LAYERS)
        if self.d_model % self.heads:
            raise InputError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})", key="heads")
        if self.heads % self.kv_heads:
            raise InputError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})", key="kv_heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def qkv_out(self) -> int:
        return (self.heads + 2 * self.kv_heads) * self.head_dim

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, in_features, out_features) of one block's linears."""
        return [("qkv", self.d_model, self.qkv_out), ("out", self.heads * self.head_dim, self.d_model),
                ("gate_up", self.d_model, 2 * self.ffn), ("down", self.ffn, self.d_model)]

    @property
    def block_params(self) -> int:
        return sum(i * o for _, i, o in self.linears()) + 2 * self.d_model

    @property
    def params(self) -> int:
        # untied embedding and LM head, final norm
        return self.layers * self.block_params + 2 * self.vocab * self.d_model + self.d_model


def _from_zoo(model_id: str) -> ModelShape:
    """A dense Llama-style model of the zoo (chipsim/models/zoo.yaml, the one place official
    architectures live) as the shape these generators build."""
    m = load_model(model_id)
    assert not m.is_moe and m.mla is None and m.activation == "swiglu" and m.head_dim * m.heads == m.d_model
    return ModelShape(m.layers, m.d_model, m.heads, m.kv_heads, m.ffn, m.vocab)


PRESETS = {
    # this project's own measured shapes (reference/h200): not published models, so not in the zoo
    "llama-350m": ModelShape(24, 1024, 16, 16, 2816, 32000),
    "llama-1.3b": ModelShape(24, 2048, 16, 16, 5632, 32000),
    "llama-2-7b": _from_zoo("llama2-7b"),
    "llama-3-8b": _from_zoo("llama3-8b"),
    "llama-2-70b": _from_zoo("llama2-70b"),
}


def model_shape(preset: str | None, layers: int | None, d_model: int | None, heads: int | None,
                kv_heads: int | None, ffn: int | None, vocab: int | None) -> ModelShape:
    """A preset, with any explicitly given dimension overriding it."""
    if preset is not None and preset not in PRESETS:
        raise InputError(f"unknown model preset '{preset}'; expected one of {', '.join(PRESETS)}", key="model")
    base = PRESETS[preset or "llama-350m"]
    heads_v = heads if heads is not None else base.heads
    return ModelShape(
        layers if layers is not None else base.layers,
        d_model if d_model is not None else base.d_model,
        heads_v,
        kv_heads if kv_heads is not None else (heads_v if heads is not None else base.kv_heads),
        ffn if ffn is not None else base.ffn,
        vocab if vocab is not None else base.vocab,
    )


class Linears:
    """Emits the ops of one linear layer (forward, backward) at a given precision."""

    def __init__(self, b: WorkloadBuilder, precision: str, tokens: int, *, weight_dtype: str | None = None,
                 group_size: int = 128, master_fp32: bool = False, compiled: bool = False,
                 fp8_scaling: str = "tensorwise") -> None:
        self.b = b
        self.precision = precision
        self.tokens = tokens
        self.weight_dtype = weight_dtype
        self.group_size = group_size
        self.master_fp32 = master_fp32
        # torch.compile: elementwise chains fused into their neighbours (chipsim.workload.generators.inductor);
        # fp8 then means torchao's float8 training with `fp8_scaling` (tensorwise | rowwise) dynamic scales
        self.compiled = compiled
        self.fp8_scaling = fp8_scaling

    def _act_dtype(self) -> str:
        return "fp32" if self.precision == "fp32" else "bf16"

    def forward(self, name: str, dep: int | None, k: int, n: int, *, input_dtype: str | None = None,
                fused_input: bool = True) -> int:
        """A linear's forward. Under autocast (`master_fp32`), the fp32 weight is cast to bf16 and so
        is an fp32 input, as separate kernels (what torch.autocast launches). Compiled, the input
        comes from a fused kernel that already wrote it in the form the GEMM reads (`fused_input`:
        False when its producer is a library kernel, e.g. SDPA)."""
        b, m = self.b, self.tokens
        if self.compiled:
            return self._compiled_forward(name, dep, k, n, fused_input)
        if self.precision == "fp8":
            cast_x = self._fp8_cast(f"{name}.x", input_dtype or "bf16", m * k, dep)
            cast_w = self._fp8_cast(f"{name}.w", "fp32", k * n, dep)
            return b.add("gemm", f"{name}.fwd", "fp8", [cast_x, cast_w], m=m, n=n, k=k)
        deps = [dep]
        if self.master_fp32 and self.precision == "bf16":
            deps.append(b.add("elementwise", f"{name}.cast_w", "fp32", [dep], numel=k * n,
                              attrs={"op": "cast", "out_dtype": "bf16"}))
            if input_dtype == "fp32":
                deps.append(b.add("elementwise", f"{name}.cast_x", "fp32", [dep], numel=m * k,
                                  attrs={"op": "cast", "out_dtype": "bf16"}))
        attrs: dict[str, Any] = {}
        if self.weight_dtype in ("int4", "int8"):  # packed-weight kernels take 2D input: reshape, view back
            attrs = {"weight_dtype": self.weight_dtype, "group_size": self.group_size, "host_calls": 2}
        return b.add("gemm", f"{name}.fwd", self._act_dtype(), deps, m=m, n=n, k=k, attrs=attrs)

    def _fp8_cast(self, name: str, src_dtype: str, numel: int, dep: int | None) -> int:
        """Per-tensor amax scaling to FP8 as unfused PyTorch ops: abs, max, scale, mul, clamp, cast
        (the multiply by an fp32 scale promotes to fp32)."""
        b = self.b
        absv = b.add("elementwise", f"{name}.abs", src_dtype, [dep], numel=numel, attrs={"op": "abs"})
        amax = b.add("elementwise", f"{name}.amax", src_dtype, [absv], numel=numel, attrs={"op": "reduce"})
        scale = b.add("elementwise", f"{name}.scale", "fp32", [amax], numel=1, attrs={"op": "scale"})
        mul = b.add("elementwise", f"{name}.mul", src_dtype, [dep, scale], numel=numel,
                    attrs={"op": "scale", "out_dtype": "fp32"})
        clamp = b.add("elementwise", f"{name}.clamp", "fp32", [mul], numel=numel, attrs={"op": "clamp"})
        return b.add("quantize", f"{name}.to_fp8", "fp32", [clamp], numel=numel, attrs={"narrow_dtype": "fp8"})

    def _compiled_forward(self, name: str, dep: int | None, k: int, n: int, fused_input: bool) -> int:
        b, m = self.b, self.tokens
        if self.precision == "fp8":
            cast_x = inductor.fp8_activation_cast(self, f"{name}.x", dep, m * k, fused_input)
            cast_w = inductor.fp8_weight_cast(self, f"{name}.w", dep, k * n, backward=False)
            return b.add("gemm", f"{name}.fwd", "fp8", [cast_x, cast_w], m=m, n=n, k=k, attrs=self._scaling())
        deps = [dep]
        if self.master_fp32 and self.precision == "bf16":  # the weight cast stays a kernel of its own
            deps.append(b.add("elementwise", f"{name}.cast_w", "fp32", [dep], numel=k * n,
                              attrs={"op": "cast", "out_dtype": "bf16"}))
        return b.add("gemm", f"{name}.fwd", self._act_dtype(), deps, m=m, n=n, k=k)

    def _scaling(self) -> dict[str, Any]:
        return {"scaling": self.fp8_scaling} if self.fp8_scaling != "tensorwise" else {}

    def _compiled_backward(self, name: str, dep: int, k: int, n: int) -> tuple[int, int]:
        """The incoming gradient was written by a fused kernel in the form the GEMMs read (bf16, or
        FP8's first cast kernel); the weight gradient is cast to the fp32 .grad by a kernel."""
        b, m = self.b, self.tokens
        if self.precision == "fp8":
            cast_g = inductor.fp8_activation_cast(self, f"{name}.dy", dep, m * n, fused_with_producer=True)
            cast_w = inductor.fp8_weight_cast(self, f"{name}.w_t", cast_g, k * n, backward=True)
            dgrad = b.add("gemm", f"{name}.dgrad", "fp8", [cast_g, cast_w], m=m, n=k, k=n, attrs=self._scaling())
            wgrad = b.add("gemm", f"{name}.wgrad", "fp8", [cast_g], m=k, n=n, k=m, attrs=self._scaling())
        else:
            dt = self._act_dtype()
            dgrad = b.add("gemm", f"{name}.dgrad", dt, [dep], m=m, n=k, k=n)
            wgrad = b.add("gemm", f"{name}.wgrad", dt, [dep], m=k, n=n, k=m)
        if self.master_fp32 or self.precision == "fp8":
            wgrad = b.add("elementwise", f"{name}.grad_to_fp32", "bf16", [wgrad], numel=k * n,
                          attrs={"op": "cast", "out_dtype": "fp32"})
        return dgrad, wgrad

    def backward(self, name: str, dep: int, k: int, n: int, dy_dtype: str = "bf16") -> tuple[int, int]:
        """Returns (dgrad op, wgrad op)."""
        b, m = self.b, self.tokens
        if self.compiled:
            return self._compiled_backward(name, dep, k, n)
        if self.precision == "fp8":
            cast_g = self._fp8_cast(f"{name}.dy", dy_dtype, m * n, dep)
            t_w = b.add("elementwise", f"{name}.transpose_w", "fp8", [cast_g], numel=k * n, attrs={"op": "transpose"})
            dgrad = b.add("gemm", f"{name}.dgrad", "fp8", [cast_g, t_w], m=m, n=k, k=n)
            t_x = b.add("elementwise", f"{name}.transpose_x", "fp8", [cast_g], numel=m * k, attrs={"op": "transpose"})
            t_g = b.add("elementwise", f"{name}.transpose_dy", "fp8", [cast_g], numel=m * n,
                        attrs={"op": "transpose"})
            wgrad = b.add("gemm", f"{name}.wgrad", "fp8", [t_x, t_g], m=k, n=n, k=m)
            wgrad = b.add("elementwise", f"{name}.grad_to_fp32", "bf16", [wgrad], numel=k * n,
                          attrs={"op": "cast", "out_dtype": "fp32"})
            return dgrad, wgrad
        dt = self._act_dtype()
        if self.master_fp32 and self.precision == "bf16":  # the incoming fp32 gradient is cast to bf16
            dep = b.add("elementwise", f"{name}.cast_dy", "fp32", [dep], numel=m * n,
                        attrs={"op": "cast", "out_dtype": "bf16"})
        dgrad = b.add("gemm", f"{name}.dgrad", dt, [dep], m=m, n=k, k=n)
        wgrad = b.add("gemm", f"{name}.wgrad", dt, [dep], m=k, n=n, k=m)
        if self.master_fp32 and self.precision == "bf16":  # accumulate into the fp32 .grad
            wgrad = b.add("elementwise", f"{name}.grad_to_fp32", "bf16", [wgrad], numel=k * n,
                          attrs={"op": "cast", "out_dtype": "fp32"})
        return dgrad, wgrad


@dataclass(frozen=True)
class BlockArgs:
    batch: int
    seq_q: int
    seq_kv: int
    causal: bool = True
    backend: str = "cudnn"
    rope: bool = False


def _residual_dtype(lin: Linears) -> str:
    """Under autocast the residual stream and norms stay fp32; only the linears run in bf16/fp8."""
    return "fp32" if lin.precision in ("fp32", "fp8") or lin.master_fp32 else "bf16"


def block_forward(b: WorkloadBuilder, lin: Linears, shape: ModelShape, args: BlockArgs, layer: int,
                  x: int | None) -> int:
    """One Llama block forward, kernel by kernel as PyTorch launches it; returns the output op."""
    if lin.compiled:
        return inductor.block_forward(b, lin, shape, args, layer, x)
    t = args.batch * args.seq_q
    d, hd = shape.d_model, shape.head_dim
    act = lin._act_dtype()
    res = _residual_dtype(lin)
    p = f"layer{layer}"
    n1 = b.add("norm", f"{p}.attn_norm", res, [x], rows=t, cols=d, attrs={"type": "rms_norm"})
    h = lin.forward(f"{p}.qkv", n1, d, shape.qkv_out, input_dtype=res)
    if args.rope:
        h = b.add("elementwise", f"{p}.rope", act, [h], numel=t * (shape.heads + shape.kv_heads) * hd,
                  attrs={"op": "rope"})
    attn = b.add("attention", f"{p}.attn", act, [h], batch=args.batch, heads=shape.heads,
                 kv_heads=shape.kv_heads, seq_q=args.seq_q, seq_kv=args.seq_kv, head_dim=hd,
                 causal=args.causal, attrs={"backend": args.backend, "host_calls": ATTENTION_HOST_CALLS})
    out = lin.forward(f"{p}.out", attn, shape.heads * hd, d, input_dtype=act)
    res1 = b.add("elementwise", f"{p}.residual1", res, [out, x], numel=t * d, attrs={"op": "add"})
    n2 = b.add("norm", f"{p}.mlp_norm", res, [res1], rows=t, cols=d, attrs={"type": "rms_norm"})
    gu = lin.forward(f"{p}.gate_up", n2, d, 2 * shape.ffn, input_dtype=res)
    silu = b.add("elementwise", f"{p}.silu", act, [gu], numel=t * shape.ffn, attrs={"op": "silu", "host_calls": 1})
    mul = b.add("elementwise", f"{p}.mul", act, [silu], numel=t * shape.ffn, attrs={"op": "mul"})
    down = lin.forward(f"{p}.down", mul, shape.ffn, d, input_dtype=act)
    return b.add("elementwise", f"{p}.residual2", res, [down, res1], numel=t * d, attrs={"op": "add"})


def block_backward(b: WorkloadBuilder, lin: Linears, shape: ModelShape, args: BlockArgs, layer: int,
                   dy: int, wgrads: list[int]) -> int:
    if lin.compiled:
        return inductor.block_backward(b, lin, shape, args, layer, dy, wgrads)
    t = args.batch * args.seq_q
    d, hd = shape.d_model, shape.head_dim
    act = lin._act_dtype()
    res = _residual_dtype(lin)
    p = f"layer{layer}"
    dg, wg = lin.backward(f"{p}.down", dy, shape.ffn, d, res)
    wgrads.append(wg)
    dmul = b.add("elementwise", f"{p}.mul_bwd", act, [dg], numel=t * shape.ffn, attrs={"op": "mul_bwd"})
    dsilu = b.add("elementwise", f"{p}.silu_bwd", act, [dmul], numel=t * shape.ffn, attrs={"op": "silu_bwd"})
    dcat = b.add("elementwise", f"{p}.gate_up_cat", act, [dsilu], numel=t * 2 * shape.ffn, attrs={"op": "copy"})
    dg, wg = lin.backward(f"{p}.gate_up", dcat, d, 2 * shape.ffn, act)
    wgrads.append(wg)
    dn2 = b.add("norm", f"{p}.mlp_norm_bwd", res, [dg], rows=t, cols=d, attrs={"type": "rms_norm", "pass": "bwd"})
    record_grad(wgrads, dn2, d)
    dres = b.add("elementwise", f"{p}.residual1_bwd", res, [dn2, dy], numel=t * d, attrs={"op": "add"})
    dg, wg = lin.backward(f"{p}.out", dres, shape.heads * hd, d, res)
    wgrads.append(wg)
    da = b.add("attention", f"{p}.attn_bwd", act, [dg], batch=args.batch, heads=shape.heads,
               kv_heads=shape.kv_heads, seq_q=args.seq_q, seq_kv=args.seq_kv, head_dim=hd,
               causal=args.causal, attrs={"backend": args.backend}, shape={"pass": "bwd"})
    if args.rope:
        da = b.add("elementwise", f"{p}.rope_bwd", act, [da], numel=t * (shape.heads + shape.kv_heads) * hd,
                   attrs={"op": "rope"})
    dcat = b.add("elementwise", f"{p}.qkv_cat", act, [da], numel=t * shape.qkv_out, attrs={"op": "copy"})
    dg, wg = lin.backward(f"{p}.qkv", dcat, d, shape.qkv_out, act)
    wgrads.append(wg)
    dn1 = b.add("norm", f"{p}.attn_norm_bwd", res, [dg], rows=t, cols=d, attrs={"type": "rms_norm", "pass": "bwd"})
    record_grad(wgrads, dn1, d)
    return b.add("elementwise", f"{p}.residual0_bwd", res, [dn1, dres], numel=t * d, attrs={"op": "add"})


@dataclass(frozen=True)
class TrainStepParams:
    model: str | None = param("llama-350m", "preset: llama-350m, llama-1.3b, llama-2-7b, llama-3-8b, llama-2-70b")
    layers: int | None = param(None, "transformer blocks (overrides the preset)")
    d_model: int | None = param(None, "hidden size")
    heads: int | None = param(None, "attention heads")
    kv_heads: int | None = param(None, "key/value heads (GQA when < heads)")
    ffn: int | None = param(None, "SwiGLU hidden size")
    vocab: int | None = param(None, "vocabulary size")
    batch: int = param(8, "sequences per step")
    seq: int = param(2048, "tokens per sequence")
    precision: Literal["fp32", "bf16", "fp8"] = param(
        "bf16", "fp32 (tf32 off); bf16 (autocast: fp32 master weights, bf16 math); fp8 (block linears in "
        "FP8 with per-tensor amax scaling, unfused casts and transposes; with `compiled`, torchao's float8)")
    overflow_probability: float = param(
        0.0, "fp8 only: chance a step overflows and re-runs in bf16 (the article's dynamic fallback)")
    steps: int = param(1, "training steps in the graph")
    seed: int = param(0, "seed of the overflow draws")
    attention_backend: AttentionBackend = param(
        "cudnn", "SDPA backend (PyTorch 2.11 picks cuDNN on Hopper)")
    rope: bool = param(False, "apply rotary embeddings as separate kernels (the reference model has none)")
    compiled: bool = param(
        False, "torch.compile (Inductor): elementwise chains fused into single kernels between the GEMMs and "
        "SDPA; with fp8, torchao float8 training (dynamic scales, casts fused by the compiler)")
    fp8_scaling: Literal["tensorwise", "rowwise"] = param(
        "tensorwise", "fp8 and compiled: torchao's recipe, one scale per tensor (cuBLAS) or per row (each "
        "tensor cast along both axes; rowwise-scaled GEMMs)")

    def __post_init__(self) -> None:
        check_range(self, "batch", "seq")
        check_range(self, "steps", maximum=MAX_STEPS)
        if self.overflow_probability > 1:
            raise InputError(f"expected a probability in [0, 1], got {self.overflow_probability}",
                             key="overflow_probability")
        if self.fp8_scaling == "rowwise" and not (self.precision == "fp8" and self.compiled):
            raise InputError("rowwise scaling is torchao's compiled fp8 recipe: it needs precision fp8 and "
                             "compiled true", key="fp8_scaling")


def training_memory(shape: ModelShape, batch: int, seq: int, precision: str) -> dict[str, float]:
    params = shape.params
    act_bytes = 2 if precision != "fp32" else 4
    return {
        "weights": params * 4.0,  # fp32 parameters (master weights under autocast / fp8)
        "gradients": params * 4.0,
        "optimizer_state": params * 8.0,  # AdamW m and v in fp32
        "activations": shape.layers * ACTIVATION_BYTES_PER_TOKEN_PER_DIM / 2 * act_bytes * batch * seq * shape.d_model,
        "logits": batch * seq * shape.vocab * (act_bytes + 4.0),
    }


def record_grad(grads: list[int], op_id: int, numel: float) -> None:
    """Note a parameter gradient produced by `op_id` (a norm's weight: `numel` = its width)."""
    if isinstance(grads, GradientBuckets):
        grads.add(op_id, numel)
    else:
        grads.append(op_id)


class GradientBuckets(list[int]):
    """Weight-gradient ops of a backward pass; every `bucket_bytes` of gradients it issues an
    all-reduce on the comm stream, at that point of the backward (as DDP's hooks do), so gradient
    synchronization overlaps with the rest of the backward."""

    def __init__(self, b: WorkloadBuilder, bucket_bytes: float, ranks: int, grad_dtype: str, algorithm: str) -> None:
        super().__init__()
        self.b, self.bucket_bytes, self.ranks = b, bucket_bytes, ranks
        self.grad_dtype, self.algorithm = grad_dtype, algorithm
        self.pending: list[int] = []
        self.pending_bytes = 0.0
        self.buckets = 0

    def append(self, op_id: int) -> None:
        shape = self.b.ops[op_id].shape
        self.add(op_id, shape["numel"] if "numel" in shape else shape["m"] * shape["n"])

    def add(self, op_id: int, numel: float) -> None:
        """A gradient of `numel` elements produced by op `op_id`."""
        self.pending.append(op_id)
        self.pending_bytes += numel * DTYPE_BYTES[self.grad_dtype]
        if self.pending_bytes >= self.bucket_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        sync = self.b.add("all_reduce", f"grad_sync.bucket{self.buckets}", self.grad_dtype, self.pending,
                          stream="comm", bytes=self.pending_bytes, group=self.ranks,
                          attrs={"algorithm": self.algorithm})
        super().append(sync)
        self.buckets += 1
        self.pending, self.pending_bytes = [], 0.0


def emit_train_step(b: WorkloadBuilder, shape: ModelShape, p: TrainStepParams, precision: str, step: int,
                    after: int | None, grads: list[int] | None = None) -> int:
    """One training step; with `grads` (a GradientBuckets) the gradients are synchronized in buckets."""
    t = p.batch * p.seq
    d = shape.d_model
    lin = Linears(b, precision, t, master_fp32=precision == "bf16", compiled=p.compiled, fp8_scaling=p.fp8_scaling)
    act = lin._act_dtype()
    args = BlockArgs(p.batch, p.seq, p.seq, True, p.attention_backend if precision != "fp32" else "efficient",
                     p.rope)
    s = f"step{step}." if p.steps > 1 or step else ""
    emb = b.add("elementwise", f"{s}embedding", act, [after], numel=t * d, attrs={"op": "embedding"})
    x: int | None = emb
    for layer in range(shape.layers):
        x = block_forward(b, lin, shape, args, layer, x)
    res = _residual_dtype(lin)
    head = Linears(b, "bf16" if precision == "fp8" else precision, t, master_fp32=precision != "fp32",
                   compiled=p.compiled)
    wgrads: list[int] = grads if grads is not None else []
    if p.compiled:  # the last block's residual add fused into the final norm; the loss in two kernels
        fn = inductor.norm_forward(b, head, f"{s}final_norm", x, t, d, res, add=True)
        logits = head.forward(f"{s}lm_head", fn, d, shape.vocab, input_dtype=act)
        _, dlogits = inductor.loss(b, s, logits, t, shape.vocab, act)
        dg, wg = head.backward(f"{s}lm_head", dlogits, d, shape.vocab)
        wgrads.append(wg)
        dy = inductor.norm_backward(b, lin, f"{s}final_norm_bwd", dg, t, d, res, True, wgrads, residual_in=False,
                                    consumer=head)
    else:
        fn = b.add("norm", f"{s}final_norm", res, [x], rows=t, cols=d, attrs={"type": "rms_norm"})
        logits = head.forward(f"{s}lm_head", fn, d, shape.vocab, input_dtype=res)
        loss = b.add("softmax", f"{s}cross_entropy", "fp32", [logits], rows=t, cols=shape.vocab)
        dlogits = b.add("elementwise", f"{s}cross_entropy_bwd", act, [loss], numel=t * shape.vocab,
                        attrs={"op": "add"})
        dg, wg = head.backward(f"{s}lm_head", dlogits, d, shape.vocab)
        wgrads.append(wg)
        dy = b.add("norm", f"{s}final_norm_bwd", res, [dg], rows=t, cols=d, attrs={"type": "rms_norm", "pass": "bwd"})
        record_grad(wgrads, dy, d)
    for layer in reversed(range(shape.layers)):
        dy = block_backward(b, lin, shape, args, layer, dy, wgrads)
    emb_bwd = b.add("elementwise", f"{s}embedding_bwd", "fp32", [dy], numel=t * d, attrs={"op": "embedding"})
    if isinstance(wgrads, GradientBuckets):  # the embedding's gradient, then the last partial bucket
        wgrads.pending.append(emb_bwd)
        wgrads.pending_bytes += shape.vocab * d * DTYPE_BYTES[wgrads.grad_dtype]
        wgrads.flush()
    n_tensors = shape.layers * 6 + 3
    return b.add("optimizer", f"{s}adamw", "fp32", [emb_bwd, *wgrads], params=shape.params,
                 attrs={"algorithm": "adamw", "kernels": math.ceil(n_tensors / 64), "master_weights": False})


@register_generator("transformer_train_step", TrainStepParams,
                    "Llama-style training step: forward, backward and fused AdamW (fp32 | bf16 | fp8)")
def transformer_train_step(p: TrainStepParams) -> Workload:
    shape = model_shape(p.model, p.layers, p.d_model, p.heads, p.kv_heads, p.ffn, p.vocab)
    b = WorkloadBuilder(f"train_{p.model or 'custom'}_{p.precision}_b{p.batch}_s{p.seq}",
                        "transformer_train_step", vars(p))
    rng = np.random.default_rng(p.seed)
    last: int | None = None
    reruns = 0
    for step in range(p.steps):
        last = emit_train_step(b, shape, p, p.precision, step, last)
        if p.precision == "fp8" and p.overflow_probability > 0 and rng.random() < p.overflow_probability:
            reruns += 1
            last = emit_train_step(b, shape, p, "bf16", step, last)
    b.memory.update(training_memory(shape, p.batch, p.seq, p.precision))
    b.meta.update(params=shape.params, tokens=p.batch * p.seq * p.steps, fp8_overflow_reruns=reruns,
                  model_flops=6.0 * shape.params * p.batch * p.seq * p.steps)
    return b.build()


@dataclass(frozen=True)
class DataParallelParams(TrainStepParams):
    ranks: int = param(8, "data-parallel ranks (GPUs); the workload is one representative rank")
    bucket: str | int = param("25 MiB", "gradient bucket size (PyTorch DDP's default is 25 MiB)")
    grad_dtype: Literal["fp32", "bf16"] = param("fp32", "dtype gradients are all-reduced in")
    algorithm: Algorithm = param(
        "auto", "all-reduce algorithm on a system (auto: the system's best fit)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ranks < 1:
            raise InputError("expected at least 1 rank", key="ranks")


@register_generator("data_parallel_train_step", DataParallelParams,
                    "transformer_train_step on each of N data-parallel ranks, gradients all-reduced in buckets "
                    "overlapped with the backward")
def data_parallel_train_step(p: DataParallelParams) -> Workload:
    from chipsim.config.units import parse_quantity

    shape = model_shape(p.model, p.layers, p.d_model, p.heads, p.kv_heads, p.ffn, p.vocab)
    bucket = parse_quantity(p.bucket, "bytes", key="bucket")
    if bucket <= 0:
        raise InputError("expected a positive bucket size", key="bucket")
    b = WorkloadBuilder(f"dp{p.ranks}_{p.model or 'custom'}_{p.precision}_b{p.batch}_s{p.seq}",
                        "data_parallel_train_step", vars(p))
    last: int | None = None
    for step in range(p.steps):
        grads = GradientBuckets(b, bucket, p.ranks, p.grad_dtype, p.algorithm)
        last = emit_train_step(b, shape, p, p.precision, step, last, grads)
    b.memory.update(training_memory(shape, p.batch, p.seq, p.precision))
    b.meta.update(params=shape.params, ranks=p.ranks, tokens=p.batch * p.seq * p.steps * p.ranks,
                  gradient_bytes=shape.params * DTYPE_BYTES[p.grad_dtype])
    return b.build()
