"""Per-GPU training memory of a model under a Megatron-Core layout, stage by stage.

Assumptions (docs/models.md explains each):

* **Model states**, mixed precision (bf16, fp16, fp8): 16-bit weights (2 B/param; fp8 GEMMs cast them on
  the fly, Transformer Engine's cached fp8 copies are not counted), fp32 gradient accumulation buffers
  (4 B/param, Megatron's ``--accumulate-allreduce-grads-in-fp32``; ``grad_accum_fp32=False`` gives
  16-bit grads), Adam with an fp32 master copy and two fp32 moments (12 B/param): 18 B/param in all,
  Megatron's table for "bf16 params, fp32 grads" (16 B/param with 16-bit grads, the ZeRO paper's
  figure). fp32 training: 4 + 4 + 8 (no master copy) = 16 B/param.
* **Sharding**: matrices and embeddings split over tp (norm and router weights, replicated in
  Megatron, are divided too: < 0.1% of any zoo model); routed experts over ep * etp. ZeRO stage 1
  (Megatron's distributed optimizer) shards optimizer states, 2 also gradients, 3 (FSDP) also
  weights, over the data-parallel group with context parallelism (dp * cp) for dense parameters and
  over the expert data-parallel group (tp * cp * dp / (ep * etp)) for expert parameters.
* **Pipeline**: stage 0 holds the input embedding, the last stage the final norm, LM head (a second
  copy of a tied embedding when pp > 1), the logits and the MTP modules. The reported figure is the
  stage that needs the most.
* **Activations**: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", sbh(34 + 5as/h) bytes per layer, rebuilt term by term so GQA, MLA, SwiGLU, MoE and
  dropout-free models come out right (see :func:`layer_activation_bytes`).
* **Communication**: a constant for NCCL buffers and library workspaces, one DDP gradient bucket when
  gradients are reduced, the pipeline send/receive buffers, and under ZeRO-3 the gathered weights of
  two layers (current and prefetched) plus one layer's unsharded gradients.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from chipsim.errors import InputError
from chipsim.models.layout import Layout
from chipsim.models.zoo import ModelConfig

GB = 1e9
PRECISIONS = ("bf16", "fp16", "fp8", "fp8_block", "fp4", "fp32")
# NCCL communicator buffers (channels x NCCL_BUFFSIZE per peer, several communicators) and the
# cuBLAS/cuDNN workspaces: a flat allowance per GPU.
COMM_CONSTANT_BYTES = 1.0 * 2**30
# Megatron-Core DDP bucket size in parameters (--ddp-bucket-size default, 40M elements).
DDP_BUCKET_PARAMS = 40_000_000
COMPONENTS = ("weights", "gradients", "optimizer", "activations", "comm")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU on one pipeline stage."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    comm: float
    stage: int = 0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.comm

    def components(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k in COMPONENTS}

    def largest(self) -> tuple[str, float]:
        return max(self.components().items(), key=lambda kv: kv[1])


@dataclass(frozen=True)
class _Bytes:
    weight: float
    grad: float
    optimizer: float
    activation: float


def _bytes_per_value(precision: str, grad_accum_fp32: bool) -> _Bytes:
    if precision not in PRECISIONS:
        raise InputError(f"expected one of {', '.join(PRECISIONS)}, got {precision!r}", key="precision")
    if precision == "fp32":
        return _Bytes(weight=4, grad=4, optimizer=8, activation=4)
    return _Bytes(weight=2, grad=4 if grad_accum_fp32 else 2, optimizer=12, activation=2)


def layer_activation_bytes(model: ModelConfig, layout: Layout, layer: int, act_bytes: float = 2,
                           flash_attention: bool = False) -> float:
    """Bytes one layer keeps for backward for one micro-batch, no recomputation, on one GPU.

    Korthikanti et al. 2022 count, per token of a GPT layer (16-bit, hidden h, a heads, dropout on):
    attention 11h + 5as (norm output 2h, Q and K 4h, V 2h, softmax 2as, its dropout mask as and
    output 2as, projection input 2h, dropout mask h), MLP 19h (input 2h, GeLU input 8h and output 8h,
    mask h), two norm inputs 4h: 34h + 5as. Here each term takes the model's width:

    * Q, K, V and the attention output use the real head widths (GQA: K and V are kv_heads*head_dim;
      MLA: the decompressed per-head Q/K/V plus the compressed latents and their norms);
    * the MLP keeps its input, the fc1 output (2*ffn for gated SwiGLU/GeGLU) and the activation
      output (ffn): 2h + 6*ffn gated, 2h + 4*ffn otherwise (GeLU with ffn = 4h gives 2h + 16h);
    * dropout masks (1 byte) and the dropout output of the softmax only when ``model.dropout > 0``;
    * a MoE layer keeps the router's fp32 logits (4*experts) and, for each of the topk copies of a
      token, the expert input and output (2h each, times etp: expert-TP ranks all-gather tokens) and the
      expert's fc1 and activation outputs (split over etp); shared experts count as a dense MLP;
    * ``flash_attention`` (or selective recompute, Megatron's core-attention recompute) keeps no s x s
      matrix, only the fp32 log-sum-exp (4 bytes per head and token).

    With sequence parallelism everything is divided by tp (Korthikanti eq. 4); without it, the norm
    inputs and outputs, masks and MoE dispatch stay whole and only the tensor-parallel region
    (Q, K, V, attention, fc1/activation outputs) is divided (eq. 2). Context parallelism divides the
    tokens by cp. Recompute is applied by the caller.
    """
    h = model.d_model
    a2 = act_bytes
    tp = layout.tp
    seq_div = tp if (layout.sequence_parallel and tp > 1) else 1
    masks = model.dropout > 0
    tokens = layout.micro_batch * layout.seq / layout.cp

    seq_region = model.norms_per_layer * a2 * h + 2 * a2 * h  # norm inputs, QKV and fc1 inputs
    if masks:
        seq_region += 2 * h  # dropout masks after attention and MLP
    tp_region = a2 * (model.q_width + model.k_width + model.v_width + model.attn_out_width)
    if model.mla is not None:
        m = model.mla
        seq_region += a2 * (2 * m.q_lora_rank + 2 * m.kv_lora_rank + m.qk_rope_head_dim)
    if flash_attention:
        tp_region += 4 * model.heads
    else:
        core = a2 * model.heads * layout.seq  # softmax output
        if masks:
            core += model.heads * layout.seq + a2 * model.heads * layout.seq  # dropout mask and output
        tp_region += core
    mlp_width = 3 if model.gated else 2  # fc1 output(s) + activation output, in units of ffn
    if model.is_moe_layer(layer):
        fe = model.expert_ffn
        seq_region += 4 * model.experts + model.topk * (2 * a2 * h * layout.etp + a2 * mlp_width * fe)
        tp_region += a2 * mlp_width * fe * model.shared_experts
    else:
        tp_region += a2 * mlp_width * model.ffn
    return tokens * (seq_region / seq_div + tp_region / tp)


def _core_attention_bytes(model: ModelConfig, layout: Layout, act_bytes: float) -> float:
    """What selective recompute saves per layer: the stored s x s softmax (and dropout) tensors,
    less the log-sum-exp that flash attention keeps instead."""
    return layer_activation_bytes(model, layout, 0, act_bytes) - layer_activation_bytes(
        model, layout, 0, act_bytes, flash_attention=True)


def inflight_layer_microbatches(layout: Layout, stage: int, stage_layers: int) -> float:
    """Layer x micro-batch activation sets alive at the peak of the schedule on ``stage``.

    1F1B (vp = 1): stage r holds min(pp - r, m) micro-batches, so the first stage holds pp.
    Interleaved (vp > 1): Megatron's warm-up runs (pp - r - 1) * 2 + (vp - 1) * pp chunk forwards
    before the first backward, so pp*vp + pp - 1 chunks of stage_layers/vp layers are alive on the
    first stage: pp * (1 + (pp - 1) / (pp * vp)) micro-batches' worth. Capped by the m * vp chunks.
    """
    m = layout.num_microbatches
    if layout.vp == 1:
        return float(min(layout.pp - stage, m) * stage_layers)
    chunks = min((layout.pp - stage - 1) * 2 + (layout.vp - 1) * layout.pp + 1, m * layout.vp)
    return chunks * stage_layers / layout.vp


def memory_per_stage(model: ModelConfig, layout: Layout, precision: str = "bf16", *,
                     grad_accum_fp32: bool = True, flash_attention: bool = False) -> list[MemoryBreakdown]:
    """A :class:`MemoryBreakdown` for one GPU of each pipeline stage (see the module notes)."""
    b = _bytes_per_value(precision, grad_accum_fp32)
    pp, tp = layout.pp, layout.tp
    expert_split = layout.ep * layout.etp
    dense_shard, expert_shard = layout.dense_shard, layout.expert_dp
    seq_div = tp if (layout.sequence_parallel and tp > 1) else 1
    tokens = layout.micro_batch * layout.seq / layout.cp
    h = model.d_model

    out = []
    for stage in range(pp):
        layers = layout.stage_range(model.layers, stage)
        dense = sum(model.layer_params(i)[0] for i in layers)
        expert = sum(model.layer_params(i)[1] for i in layers)
        extra_act = 0.0
        if stage == 0:
            dense += model.embedding_params()
        if stage == pp - 1:
            dense += model.head_params()
            if model.tied_embeddings and pp > 1:
                dense += model.vocab * h  # Megatron keeps a copy of a tied embedding on the last stage
            # final norm input and the fp32 logits of the cross entropy (Korthikanti: 4sbv/t)
            logits = tokens * (b.activation * h / seq_div + 4 * model.vocab / tp)
            extra_act += logits
            if model.mtp_depth:
                mtp_dense, mtp_expert = model.layer_params(model.layers - 1)
                dense += model.mtp_depth * (mtp_dense + 3 * h + 2 * h * h)
                expert += model.mtp_depth * mtp_expert
                mtp_layer = _recomputed(model, layout, model.layers - 1, b.activation, flash_attention)
                extra_act += model.mtp_depth * (mtp_layer + logits + tokens * 2 * b.activation * h / seq_div)
        dense_pg = dense / tp
        expert_pg = expert / expert_split

        def sharded(per_value: float, zero_stage: int, dense_pg: float = dense_pg,
                    expert_pg: float = expert_pg) -> float:
            if layout.zero >= zero_stage:
                return per_value * (dense_pg / dense_shard + expert_pg / expert_shard)
            return per_value * (dense_pg + expert_pg)

        weights = sharded(b.weight, 3)
        gradients = sharded(b.grad, 2)
        optimizer = sharded(b.optimizer, 1)

        # activations
        per_layer = [_recomputed(model, layout, i, b.activation, flash_attention) for i in layers]
        mean_layer = sum(per_layer) / len(per_layer) if per_layer else 0.0
        activations = mean_layer * inflight_layer_microbatches(layout, stage, len(layers)) + extra_act
        if layout.recompute == "full" and layers:  # one layer rebuilt at a time during backward
            activations += max(layer_activation_bytes(model, layout, i, b.activation, flash_attention)
                               for i in layers)

        # communication buffers
        comm = COMM_CONSTANT_BYTES
        if dense_shard > 1 or (expert and expert_shard > 1):
            comm += DDP_BUCKET_PARAMS * b.grad
        if pp > 1:
            comm += 2 * tokens * b.activation * h / seq_div  # p2p send and receive of one micro-batch
        if layout.zero >= 3 and layers:
            biggest = max(model.layer_params(i)[0] / tp + model.layer_params(i)[1] / expert_split for i in layers)
            comm += biggest * (2 * b.weight + b.grad)
        out.append(MemoryBreakdown(weights=weights, gradients=gradients, optimizer=optimizer,
                                   activations=activations, comm=comm, stage=stage))
    return out


def _recomputed(model: ModelConfig, layout: Layout, layer: int, act_bytes: float, flash: bool) -> float:
    """Bytes a layer keeps between its forward and backward under ``layout.recompute``: everything
    (none), all but core attention (selective: Korthikanti's sbh*34/t for GPT), or only the
    layer input (full: 2sbh/t)."""
    if layout.recompute == "full":
        seq_div = layout.tp if (layout.sequence_parallel and layout.tp > 1) else 1
        return layout.micro_batch * layout.seq / layout.cp * act_bytes * model.d_model / seq_div
    return layer_activation_bytes(model, layout, layer, act_bytes,
                                  flash_attention=flash or layout.recompute == "selective")


def check_fits(breakdown: MemoryBreakdown, chip_hbm_bytes: float) -> None:
    """Raise InputError (key "parallelism") when the breakdown exceeds the chip's memory, naming the
    largest component and the overflow in GB (1 GB = 1e9 bytes)."""
    total = breakdown.total
    if total <= chip_hbm_bytes:
        return
    name, value = breakdown.largest()
    hint = {
        "weights": "more tp/pp/ep or ZeRO-3",
        "gradients": "more tp/pp/ep or ZeRO-2",
        "optimizer": "more tp/pp/ep or ZeRO-1 (distributed optimizer)",
        "activations": "recompute, a smaller micro_batch, or more tp/cp",
        "comm": "fewer communicators or smaller buckets",
    }[name]
    raise InputError(
        f"needs {total / GB:.1f} GB per GPU (pipeline stage {breakdown.stage}), "
        f"{(total - chip_hbm_bytes) / GB:.1f} GB over the chip's {chip_hbm_bytes / GB:.1f} GB; "
        f"largest component: {name} {value / GB:.1f} GB (try {hint})",
        key="parallelism")


def memory_per_gpu(model: ModelConfig, layout: Layout, precision: str = "bf16", chip_hbm_bytes: float | None = None,
                   *, grad_accum_fp32: bool = True, flash_attention: bool = False) -> MemoryBreakdown:
    """The most-loaded pipeline stage's per-GPU memory; with ``chip_hbm_bytes``, also
    :func:`check_fits` it (InputError, key "parallelism", when it does not fit)."""
    stages = memory_per_stage(model, layout, precision, grad_accum_fp32=grad_accum_fp32,
                              flash_attention=flash_attention)
    worst = max(stages, key=lambda s: s.total)
    if chip_hbm_bytes is not None:
        check_fits(worst, chip_hbm_bytes)
    return worst
