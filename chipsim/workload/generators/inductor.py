"""Training steps under torch.compile (TorchInductor): the eager step's graph with its elementwise
chains fused, and the FP8 casts of torchao's float8 training fused the same way.

Inductor keeps GEMMs (cuBLAS, `torch._scaled_mm`) and SDPA (cuDNN) as library kernels and fuses what
lies between them into generated kernels that read each unique input once and write each output once
(`fused` elementwise ops, `attrs.bytes` = that traffic). One Llama block (autocast: fp32 residual
stream and master weights, bf16 linears) becomes, forward:
  - residual add + RMSNorm + cast to bf16, one kernel per norm (the add of the block's last linear is
    fused into the next norm, the last block's into the final norm);
  - the fp32 -> bf16 weight casts (one kernel per weight, as eager);
  - SiLU(gate) * up, one kernel;
and backward:
  - SwiGLU backward, one kernel writing the gate/up gradients into their concatenated buffer (no cat);
  - RMSNorm backward + residual-gradient add + the bf16 copy the next linear's dgrad reads, one
    kernel, plus the norm weight's column reduction;
  - the copy of dq, dk, dv into the fused QKV gradient (SDPA writes three tensors);
  - the bf16 -> fp32 weight-gradient casts (as eager).
What the default (min-cut) partitioner recomputes rather than saves - the norm outputs and the SwiGLU
product, cheap pointwise functions of tensors saved anyway - is rewritten in the backward kernels that
already read their inputs (one extra write each); under FP8 the forward casts save FP8 copies instead.
The loss: log-softmax + NLL over the logits in one pass (online softmax) and its backward in one.

FP8 (torchao.float8 `Float8Linear`, dynamic scaling, casts compiled): the kernels of each cast are
those of torchao's own roofline model of float8 training (pytorch/ao,
torchao/testing/training/roofline_utils.py, `get_tensor_memory_traffic_ovhd_s`), by recipe and role:
  tensorwise  activation / gradient: amax stage 1 fused into the producing kernel (else a reduction
              kernel reading the tensor), a one-element kernel for the final amax and scale, then one
              cast kernel reading it and writing FP8 twice (row-major for this GEMM, column-major for
              the backward's); weight: amax, scale, cast for the forward, and a second cast (its
              transpose) in the backward.
  rowwise     activation / gradient: kernel 1 writes the row-scaled FP8 copy and a transposed
              high-precision copy (fused into the producer when there is one), kernel 2 casts the
              transposed copy with its own row scales (each tensor is scaled along both axes, since
              the wgrad GEMM contracts over tokens); weight: a row-scaled cast for the forward, a
              transpose and a second cast for the backward.
Casts that write a transposed (column-major) copy are `cast_transpose` kernels: one side of their
accesses is strided, and Inductor's tiled transposes stream far below the copy's bandwidth (torchao
wrote its own dim1-cast kernels for that reason: pytorch/ao#1869, pytorch/pytorch#148682); the chip's
`calibration.memory.kernels.cast_transpose` says how far.
The GEMMs run on FP8 tensor cores through `torch._scaled_mm` (`gemm` ops of dtype fp8). Rowwise ones
carry `attrs.scaling: rowwise`: PyTorch runs them on its own rowwise kernel, not cuBLAS's tensorwise
one (pytorch/pytorch#147971: mostly 90-100% of tensorwise speed, down to 50% on some shapes), priced
with the chip's `calibration.gemm.rowwise` (its tiles, and a fixed cost per tile that weighs most on
short k loops).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chipsim.workload.graph import WorkloadBuilder
from chipsim.workload.kinds import DTYPE_BYTES

if TYPE_CHECKING:
    from chipsim.workload.generators.transformer import BlockArgs, Linears, ModelShape

FP8 = DTYPE_BYTES["fp8"]


def fused(b: WorkloadBuilder, name: str, dtype: str, deps: list[int | None], numel: float, nbytes: float) -> int:
    """One Inductor-generated kernel over `numel` elements moving `nbytes` through HBM."""
    return b.add("elementwise", name, dtype, deps, numel=numel, attrs={"op": "fused", "bytes": float(nbytes)})


def transposing(b: WorkloadBuilder, name: str, dtype: str, deps: list[int | None], numel: float,
                nbytes: float) -> int:
    """A generated cast kernel that writes a transposed (column-major) copy: one side of its accesses
    is strided, so it streams at the chip's `cast_transpose` kernel bandwidth, not the fused one's."""
    return b.add("elementwise", name, dtype, deps, numel=numel, attrs={"op": "cast_transpose", "bytes": float(nbytes)})


def produced_bytes(lin: Linears) -> float:
    """Bytes per element a fused producing kernel writes for a compiled linear's input or incoming
    gradient: the tensor in the activation dtype (FP8 tensorwise: plus amax partials, a few bytes
    per CTA; FP8 rowwise: the writes of torchao's kernel 1, fused into the producer, are counted on
    that kernel, `fp8_activation_cast`)."""
    return DTYPE_BYTES[lin._act_dtype()]


def recomputed_bytes(lin: Linears) -> float:
    """Bytes per element a backward kernel writes to recompute a linear's input for its wgrad: the
    bf16 input (bf16), nothing under FP8 (the forward saved its column-major FP8 copy)."""
    return 0.0 if lin.precision == "fp8" else DTYPE_BYTES[lin._act_dtype()]


def fp8_activation_cast(lin: Linears, name: str, dep: int | None, numel: float, fused_with_producer: bool) -> int:
    """The compiled casts of an activation or gradient (bf16) to FP8; returns the last kernel. With a
    fused producer, the first kernel's read of the tensor is the producer's (torchao's
    `fuse_with_prev`)."""
    b, act = lin.b, DTYPE_BYTES[lin._act_dtype()]
    read = 0.0 if fused_with_producer else act
    if lin.fp8_scaling == "rowwise":
        # kernel 1: FP8 rows (row scales) + a transposed bf16 copy; kernel 2: that copy cast with its
        # own row scales (the columns of the tensor: the wgrad GEMM contracts over tokens)
        rows = transposing(b, f"{name}.rowwise_cast", "bf16", [dep], numel, numel * (read + FP8 + act))
        return fused(b, f"{name}.colwise_cast", "bf16", [rows], numel, numel * (act + FP8))
    if not fused_with_producer:
        dep = b.add("elementwise", f"{name}.amax", "bf16", [dep], numel=numel, attrs={"op": "reduce"})
    scale = b.add("elementwise", f"{name}.scale", "fp32", [dep], numel=1, attrs={"op": "scale"})
    # read once, write FP8 row-major and column-major
    return transposing(b, f"{name}.to_fp8", "bf16", [dep, scale], numel, numel * (act + 2 * FP8))


def fp8_weight_cast(lin: Linears, name: str, dep: int | None, numel: float, backward: bool) -> int:
    """The compiled casts of an fp32 master weight to FP8 (torchao casts the fp32 parameter itself):
    forward, or backward (its transpose, for the dgrad GEMM)."""
    b = lin.b
    w = DTYPE_BYTES["fp32"]
    if lin.fp8_scaling == "rowwise":
        if backward:  # a transposed copy, then cast with the other axis's scales
            dep = transposing(b, f"{name}.transpose", "fp32", [dep], numel, numel * 2 * w)
            return fused(b, f"{name}.colwise_cast", "fp32", [dep], numel, numel * (w + FP8))
        return fused(b, f"{name}.rowwise_cast", "fp32", [dep], numel, numel * (w + FP8))
    if backward:  # the forward's scale, written transposed
        return transposing(b, f"{name}.to_fp8_t", "fp32", [dep], numel, numel * (w + FP8))
    amax = b.add("elementwise", f"{name}.amax", "fp32", [dep], numel=numel, attrs={"op": "reduce"})
    scale = b.add("elementwise", f"{name}.scale", "fp32", [amax], numel=1, attrs={"op": "scale"})
    return fused(b, f"{name}.to_fp8", "fp32", [amax, scale], numel, numel * (w + FP8))


def norm_forward(b: WorkloadBuilder, lin: Linears, name: str, x: int | None, t: int, d: int, res: str,
                 add: bool) -> int:
    """Residual add (when `add`: the previous linear's output, pending) + RMSNorm + the cast for the
    next linear, one kernel: reads the residual (and the added output), writes the new residual
    (when added) and the linear's input."""
    act = DTYPE_BYTES[lin._act_dtype()]
    r = DTYPE_BYTES[res]
    per = r + (act + r if add else 0.0) + produced_bytes(lin)
    return fused(b, name, res, [x], t * d, t * d * per)


def norm_backward(b: WorkloadBuilder, lin: Linears, name: str, dxn: int, t: int, d: int, res: str,
                  grad_for_next: bool, grads: list[int], residual_in: bool = True,
                  consumer: Linears | None = None) -> int:
    """RMSNorm backward + the residual-gradient add, one kernel: reads the normed input's gradient,
    the saved residual and the incoming residual gradient (`residual_in`); writes the residual
    gradient, the copy the preceding linear's dgrad/wgrad read (`grad_for_next`) and the recomputed
    norm output for the wgrad of its `consumer` (default `lin`). The norm weight's gradient is a
    column reduction over tokens: a second kernel re-reading both."""
    from chipsim.workload.generators.transformer import record_grad

    act = DTYPE_BYTES[lin._act_dtype()]
    r = DTYPE_BYTES[res]
    per = (act + r + (r if residual_in else 0.0) + r + (produced_bytes(lin) if grad_for_next else 0.0)
           + recomputed_bytes(consumer or lin))
    dx = fused(b, name, res, [dxn], t * d, t * d * per)
    wgrad = fused(b, f"{name}.weight_grad", res, [dxn], t * d, t * d * (act + r))
    record_grad(grads, wgrad, d)
    return dx


def block_forward(b: WorkloadBuilder, lin: Linears, shape: ModelShape, args: BlockArgs, layer: int,
                  x: int | None) -> int:
    """One Llama block forward, compiled; returns its last linear (its residual add is fused into
    whatever norm comes next)."""
    from chipsim.workload.generators.transformer import _residual_dtype

    t = args.batch * args.seq_q
    d, hd = shape.d_model, shape.head_dim
    act = lin._act_dtype()
    e = DTYPE_BYTES[act]
    res = _residual_dtype(lin)
    p = f"layer{layer}"
    n1 = norm_forward(b, lin, f"{p}.attn_norm", x, t, d, res, add=layer > 0)
    h = lin.forward(f"{p}.qkv", n1, d, shape.qkv_out, input_dtype=act)
    if args.rope:  # fused with nothing: the GEMM's output, rotated, for SDPA
        rope_numel = t * (shape.heads + shape.kv_heads) * hd
        h = fused(b, f"{p}.rope", act, [h], rope_numel, rope_numel * 2 * e)
    attn = b.add("attention", f"{p}.attn", act, [h], batch=args.batch, heads=shape.heads,
                 kv_heads=shape.kv_heads, seq_q=args.seq_q, seq_kv=args.seq_kv, head_dim=hd,
                 causal=args.causal, attrs={"backend": args.backend})
    out = lin.forward(f"{p}.out", attn, shape.heads * hd, d, input_dtype=act, fused_input=False)
    n2 = norm_forward(b, lin, f"{p}.mlp_norm", out, t, d, res, add=True)
    gu = lin.forward(f"{p}.gate_up", n2, d, 2 * shape.ffn, input_dtype=act)
    swiglu = fused(b, f"{p}.swiglu", act, [gu], t * shape.ffn,
                   t * shape.ffn * (2 * e + produced_bytes(lin)))
    return lin.forward(f"{p}.down", swiglu, shape.ffn, d, input_dtype=act)


def block_backward(b: WorkloadBuilder, lin: Linears, shape: ModelShape, args: BlockArgs, layer: int,
                   dy: int, wgrads: list[int]) -> int:
    """One Llama block backward, compiled; `dy` is the kernel that wrote the residual gradient (and
    the copy the block's last linear reads)."""
    from chipsim.workload.generators.transformer import _residual_dtype

    t = args.batch * args.seq_q
    d, hd = shape.d_model, shape.head_dim
    act = lin._act_dtype()
    e = DTYPE_BYTES[act]
    res = _residual_dtype(lin)
    p = f"layer{layer}"
    dg, wg = lin.backward(f"{p}.down", dy, shape.ffn, d, res)
    wgrads.append(wg)
    # reads dh, gate and up; writes d(gate), d(up) in place of their cat, and the recomputed product
    numel = t * shape.ffn
    dgu = fused(b, f"{p}.swiglu_bwd", act, [dg], numel,
                numel * (3 * e + recomputed_bytes(lin) + 2 * produced_bytes(lin)))
    dg, wg = lin.backward(f"{p}.gate_up", dgu, d, 2 * shape.ffn, act)
    wgrads.append(wg)
    dres = norm_backward(b, lin, f"{p}.mlp_norm_bwd", dg, t, d, res, True, wgrads)
    dg, wg = lin.backward(f"{p}.out", dres, shape.heads * hd, d, res)
    wgrads.append(wg)
    da = b.add("attention", f"{p}.attn_bwd", act, [dg], batch=args.batch, heads=shape.heads,
               kv_heads=shape.kv_heads, seq_q=args.seq_q, seq_kv=args.seq_kv, head_dim=hd,
               causal=args.causal, attrs={"backend": args.backend}, shape={"pass": "bwd"})
    # (RoPE's backward, a pointwise rotation of dq and dk, is fused into this copy)
    qkv_numel = t * shape.qkv_out
    dqkv = fused(b, f"{p}.qkv_cat", act, [da], qkv_numel, qkv_numel * (e + produced_bytes(lin)))
    dg, wg = lin.backward(f"{p}.qkv", dqkv, d, shape.qkv_out, act)
    wgrads.append(wg)
    return norm_backward(b, lin, f"{p}.attn_norm_bwd", dg, t, d, res, layer > 0, wgrads)


def loss(b: WorkloadBuilder, name: str, logits: int, t: int, vocab: int, act: str) -> tuple[int, int]:
    """Cross-entropy over bf16 logits, compiled: the forward reads them once (log-sum-exp by online
    softmax, in fp32 registers), the backward reads them again and writes their gradient."""
    e = DTYPE_BYTES[act]
    fwd = fused(b, f"{name}cross_entropy", act, [logits], t * vocab, t * vocab * e)
    bwd = fused(b, f"{name}cross_entropy_bwd", act, [fwd], t * vocab, t * vocab * 2 * e)
    return fwd, bwd
