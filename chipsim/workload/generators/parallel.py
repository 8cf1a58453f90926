"""The `parallel_train_step` generator: a Llama-style training step under a parallel layout, kernel by
kernel, as plain PyTorch runs it (bf16 autocast, eager):

- tensor parallelism (`tp`, Megatron-LM's column/row-parallel linears, no sequence parallelism):
  each rank holds heads/tp attention heads and ffn/tp of the MLP; the row-parallel output projection
  and down projection end in an all-reduce of the activation (forward), the column-parallel QKV and
  gate/up projections' input gradients are all-reduced (backward): 2 + 2 per block, over the fabric;
- pipeline parallelism (`pp`): the layers split evenly over `pp` stages, one device each; the
  micro-batches run in Megatron's 1F1B order (chipsim.training.step's `_schedule_order`), each
  stage's activations sent to the next stage (and gradients back) as send/recv ops on the fabric, so
  the pipeline bubble comes out of the simulation;
- data parallelism (`dp`): DDP's bucketed gradient all-reduce during the last micro-batch's backward;
- gradient accumulation (`micro_batches`): forward and backward per micro-batch of batch /
  micro_batches sequences, the fp32 gradients accumulated (`.grad +=`), one optimizer step;
- `blocks_only`: the transformer blocks alone (no embedding, LM head or cross-entropy; the loss is a
  reduction of the last block's output), as the reference's tensor-parallel rows measure.

Tensor- and data-parallel ranks are symmetric, so each pipeline stage is one representative rank
(device); rank order is Megatron's (tp fastest, then dp, then pp).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from chipsim.config.units import parse_quantity
from chipsim.errors import InputError
from chipsim.vocab import Algorithm
from chipsim.workload.generators.registry import check_range, param, register_generator
from chipsim.workload.generators.transformer import (
    ACTIVATION_BYTES_PER_TOKEN_PER_DIM,
    BlockArgs,
    GradientBuckets,
    Linears,
    ModelShape,
    TrainStepParams,
    _residual_dtype,
    block_backward,
    block_forward,
    model_shape,
    record_grad,
    transformer_train_step,
)
from chipsim.workload.graph import Workload, WorkloadBuilder
from chipsim.workload.kinds import DTYPE_BYTES

# Megatron-LM's split of a block's linears over tensor-parallel ranks: column-parallel layers split
# their output features (their input gradient is all-reduced in backward), row-parallel layers their
# input features (their output is all-reduced in forward). The LM head is vocabulary-parallel.
COLUMN_PARALLEL = ("qkv", "gate_up", "lm_head")
ROW_PARALLEL = ("out", "down")
MAX_PARALLEL = 4096  # ranks along one parallel dimension
MAX_MICRO_BATCHES = 1024


@dataclass(frozen=True)
class ShardShape(ModelShape):
    """One tensor-parallel rank's share of a block: heads, key/value heads and FFN divided by tp, the
    head dim kept (`head_size`)."""

    head_size: int = 0

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.heads


def shard(shape: ModelShape, tp: int) -> ModelShape:
    """The shape one of `tp` tensor-parallel ranks computes (the whole shape for tp = 1)."""
    if tp == 1:
        return shape
    for key, value in (("heads", shape.heads), ("kv_heads", shape.kv_heads), ("ffn", shape.ffn)):
        if value % tp:
            raise InputError(f"{key} ({value}) must be a multiple of tp ({tp}) to split over tensor-parallel "
                             "ranks", key="tp")
    return ShardShape(shape.layers, shape.d_model, shape.heads // tp, shape.kv_heads // tp, shape.ffn // tp,
                      shape.vocab, head_size=shape.head_dim)


class StageBuilder(WorkloadBuilder):
    """A builder whose ops land on `device` (the pipeline stage being emitted) unless told otherwise,
    so the block emitters need not know about devices."""

    device = 0

    def add(self, kind: str, name: str, dtype: str, deps: Iterable[int | None] = (), *,
            device: int | None = None, **kwargs: Any) -> int:
        return super().add(kind, name, dtype, deps, device=self.device if device is None else device, **kwargs)


class ParallelLinears(Linears):
    """`Linears` of one tensor-parallel rank: the all-reduces of Megatron's column/row-parallel layers
    (bf16, over the `tp` consecutive ranks from `tp_first`), and the fp32 gradient accumulation
    (`.grad += grad`: one more read and write of the fp32 gradient) of micro-batches after the first."""

    def __init__(self, b: WorkloadBuilder, precision: str, tokens: int, *, tp: int = 1, tp_first: int = 0,
                 master_fp32: bool = False) -> None:
        super().__init__(b, precision, tokens, master_fp32=master_fp32)
        self.tp, self.tp_first = tp, tp_first
        self.accumulating = False  # a later micro-batch: the .grad tensors exist

    def all_reduce(self, name: str, dep: int | None, nbytes: float) -> int:
        attrs = {"first": self.tp_first} if self.tp_first else {}
        return self.b.add("all_reduce", name, "bf16", [dep], stream="comm", bytes=nbytes, group=self.tp, attrs=attrs)

    def forward(self, name: str, dep: int | None, k: int, n: int, **kwargs: Any) -> int:
        out = super().forward(name, dep, k, n, **kwargs)
        if self.tp > 1 and name.rsplit(".", 1)[-1] in ROW_PARALLEL:
            out = self.all_reduce(f"{name}.all_reduce", out, self.tokens * n * DTYPE_BYTES["bf16"])
        return out

    def backward(self, name: str, dep: int, k: int, n: int, dy_dtype: str = "bf16") -> tuple[int, int]:
        dgrad, wgrad = super().backward(name, dep, k, n, dy_dtype)
        if self.accumulating and self.master_fp32:
            wgrad = self.b.add("elementwise", f"{name}.grad_accumulate", "fp32", [wgrad], numel=k * n,
                               attrs={"op": "add"})
        if self.tp > 1 and name.rsplit(".", 1)[-1] in COLUMN_PARALLEL:
            dgrad = self.all_reduce(f"{name}.dgrad_all_reduce", dgrad, self.tokens * k * DTYPE_BYTES["bf16"])
        return dgrad, wgrad


@dataclass(frozen=True)
class ParallelTrainStepParams(TrainStepParams):
    tp: int = param(1, "tensor-parallel ranks (Megatron column/row-parallel linears, no sequence parallelism)")
    pp: int = param(1, "pipeline stages: a 1F1B schedule of the micro-batches, one device per stage")
    dp: int = param(1, "data-parallel ranks: gradients all-reduced in buckets during the last backward")
    micro_batches: int = param(1, "gradient accumulation: micro-batches of batch / micro_batches sequences, "
                                  "one optimizer step")
    blocks_only: bool = param(False, "the transformer blocks alone: no embedding, LM head or cross-entropy")
    bucket: str | int = param("25 MiB", "data-parallel gradient bucket size (PyTorch DDP's default)")
    grad_dtype: Literal["fp32", "bf16"] = param("fp32", "dtype gradients are all-reduced (or, with fsdp, "
                                                           "reduce-scattered) in (data parallel)")
    algorithm: Algorithm = param("auto", "all-reduce algorithm on a system (auto: the system's best fit)")
    fsdp: bool = param(False, "FSDP2 (fully_shard on each block, then the root) instead of DDP: parameters sharded "
                              "over the dp ranks, each block's all-gathered in bf16 before its forward and again "
                              "before its backward, its gradients reduce-scattered (in grad_dtype) after it")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "tp", "pp", "dp", maximum=MAX_PARALLEL)
        check_range(self, "micro_batches", maximum=MAX_MICRO_BATCHES)
        if self.batch % self.micro_batches:
            raise InputError(f"batch ({self.batch}) must be a multiple of micro_batches ({self.micro_batches})",
                             key="micro_batches")
        if self.fsdp and (self.dp < 2 or self.tp > 1 or self.pp > 1):
            raise InputError(f"fsdp shards over data-parallel ranks alone: it needs dp of 2 or more and tp = pp = 1 "
                             f"(got dp {self.dp}, tp {self.tp}, pp {self.pp})", key="fsdp")


@dataclass
class _Stage:
    """What one pipeline stage (one representative GPU) holds and has emitted so far."""

    index: int
    layers: list[int]
    lin: ParallelLinears
    first: bool  # holds the embedding
    last: bool  # holds the final norm, LM head and loss
    forward_out: dict[int, int]  # micro-batch -> its forward's last op
    backward_out: dict[int, int]  # micro-batch -> its backward's last op
    grads: list[int]


def stage_layers(layers: int, pp: int) -> list[list[int]]:
    """Layer indices of each pipeline stage: as even a split as the count allows, earlier stages the larger."""
    if layers < pp:
        raise InputError(f"{layers} layers cannot fill {pp} pipeline stages", key="pp")
    base, extra = divmod(layers, pp)
    sizes = [base + (1 if s < extra else 0) for s in range(pp)]
    starts = [sum(sizes[:s]) for s in range(pp)]
    return [list(range(starts[s], starts[s] + sizes[s])) for s in range(pp)]


def _stage_params(full: ModelShape, local: ModelShape, stage: _Stage, p: ParallelTrainStepParams) -> float:
    """Parameters of one rank of the stage: its blocks' shards, plus the vocabulary-parallel
    embedding (first stage) and LM head and final norm (last stage); under FSDP its 1/dp shard."""
    params = float(len(stage.layers) * local.block_params)
    if not p.blocks_only:
        if stage.first:
            params += full.vocab * full.d_model / p.tp
        if stage.last:
            params += full.vocab * full.d_model / p.tp + full.d_model
    return params / p.dp if p.fsdp else params


class _PipelineEmitter:
    def __init__(self, b: StageBuilder, p: ParallelTrainStepParams, full: ModelShape) -> None:
        self.b, self.p, self.full = b, p, full
        self.local = shard(full, p.tp)
        self.mb = p.batch // p.micro_batches
        self.tokens = self.mb * p.seq
        self.precision = p.precision
        self.args = BlockArgs(self.mb, p.seq, p.seq, True, p.attention_backend if p.precision != "fp32"
                              else "efficient", p.rope)
        per_stage = p.tp * p.dp  # ranks of one stage (Megatron order: tp fastest, then dp, then pp)
        self.stages = [
            _Stage(s, layers, ParallelLinears(b, p.precision, self.tokens, tp=p.tp, tp_first=s * per_stage,
                                              master_fp32=p.precision == "bf16"),
                   s == 0, s == p.pp - 1, {}, {}, [])
            for s, layers in enumerate(stage_layers(full.layers, p.pp))]
        self.res = _residual_dtype(self.stages[0].lin)
        self.act_bytes = self.tokens * full.d_model * DTYPE_BYTES[self.res]  # what crosses a stage boundary
        self._last_unshard: int | None = None  # FSDP: the last module's parameters copied out
        self._root_params = 2.0 * full.vocab * full.d_model + full.d_model  # embedding, final norm, LM head

    def _p2p(self, name: str, src: int, dst: int, dep: int) -> int:
        """The activation (or its gradient) from stage `src` to stage `dst`: a send/recv on the fabric,
        on the receiver's p2p stream."""
        stride = self.p.tp * self.p.dp
        low, high = sorted((src * stride, dst * stride))
        return self.b.add("send_recv", name, "bf16", [dep], device=dst, stream="p2p", bytes=float(self.act_bytes),
                          group=2, attrs={"ranks": [low, high]})

    def _unshard(self, name: str, params: float, dep: int | None) -> int:
        """FSDP2's unshard of a module before its forward or backward: the rank's shard cast to bf16 into
        the all-gather buffer and all-gathered over the dp ranks on the comm stream, issued as soon as
        the previous module's parameters are in place (one all-gather in flight ahead of the compute,
        as FSDP2's implicit prefetch), then copied out into the module's parameters, which the compute
        waits for."""
        b, dp = self.b, self.p.dp
        after = [self._last_unshard] if self._last_unshard is not None else []
        copy_in = b.add("elementwise", f"{name}.fsdp_copy_in", "bf16", after, stream="comm", numel=params / dp,
                        attrs={"op": "copy"})
        gather = b.add("all_gather", f"{name}.fsdp_all_gather", "bf16", [copy_in], stream="comm",
                       bytes=params / dp * 2.0, group=dp)
        out = b.add("elementwise", f"{name}.fsdp_copy_out", "bf16", [d for d in (dep, gather) if d is not None],
                    numel=params, attrs={"op": "copy"})
        self._last_unshard = out
        return out

    def _reduce_scatter(self, name: str, params: float, grads: list[int]) -> int:
        """FSDP2's gradient reduce-scatter of a module after its backward, on the comm stream."""
        return self.b.add("reduce_scatter", f"{name}.fsdp_reduce_scatter", self.p.grad_dtype, grads, stream="comm",
                          bytes=params * DTYPE_BYTES[self.p.grad_dtype], group=self.p.dp,
                          attrs={"algorithm": self.p.algorithm})

    def forward(self, st: _Stage, mb: int) -> None:
        b, full, lin, t, d = self.b, self.full, st.lin, self.tokens, self.full.d_model
        b.device = st.index
        lin.accumulating = mb > 0
        x: int | None = None
        if not st.first:
            x = self._p2p(f"act.s{st.index - 1}.mb{mb}", st.index - 1, st.index,
                          self.stages[st.index - 1].forward_out[mb])
        elif not self.p.blocks_only:
            root = [self._unshard("root", self._root_params, None)] if self.p.fsdp and mb == 0 else []
            x = b.add("elementwise", f"mb{mb}.embedding", self.res, root, numel=t * d, attrs={"op": "embedding"})
            if self.p.tp > 1:  # the vocabulary-parallel embedding's partial rows summed
                x = lin.all_reduce(f"mb{mb}.embedding.all_reduce", x, t * d * DTYPE_BYTES[self.res])
        for layer in st.layers:
            if self.p.fsdp:
                x = self._unshard(f"mb{mb}.L{layer}", self.local.block_params, x)
            x = block_forward(b, lin, self.local, self.args, layer, x)
        if st.last and self.p.blocks_only:  # the loss: a reduction of the output, and its gradient
            x = b.add("elementwise", f"mb{mb}.loss", self.res, [x], numel=t * d, attrs={"op": "reduce"})
            x = b.add("elementwise", f"mb{mb}.loss_bwd", self.res, [x], numel=t * d, attrs={"op": "scale"})
        elif st.last:
            vocab = -(-full.vocab // self.p.tp)
            fn = b.add("norm", f"mb{mb}.final_norm", self.res, [x], rows=t, cols=d, attrs={"type": "rms_norm"})
            logits = lin.forward(f"mb{mb}.lm_head", fn, d, vocab, input_dtype=self.res)
            x = b.add("softmax", f"mb{mb}.cross_entropy", "fp32", [logits], rows=t, cols=vocab)
            if self.p.tp > 1:  # vocabulary-parallel cross-entropy: the rows' max and sum over the ranks
                x = lin.all_reduce(f"mb{mb}.cross_entropy.all_reduce", x, 2 * t * DTYPE_BYTES["fp32"])
            x = b.add("elementwise", f"mb{mb}.cross_entropy_bwd", lin._act_dtype(), [x], numel=t * vocab,
                      attrs={"op": "add"})
        assert x is not None
        st.forward_out[mb] = x

    def backward(self, st: _Stage, mb: int, grads: list[int]) -> None:
        b, full, lin, t, d = self.b, self.full, st.lin, self.tokens, self.full.d_model
        b.device = st.index
        lin.accumulating = mb > 0
        dy = st.forward_out[mb]
        root = [] if self.p.fsdp else grads  # FSDP: the root module's gradients, reduce-scattered together
        if not st.last:
            dy = self._p2p(f"grad.s{st.index + 1}.mb{mb}", st.index + 1, st.index,
                           self.stages[st.index + 1].backward_out[mb])
        elif not self.p.blocks_only:
            dg, wg = lin.backward(f"mb{mb}.lm_head", dy, d, -(-full.vocab // self.p.tp))
            root.append(wg)
            dy = b.add("norm", f"mb{mb}.final_norm_bwd", self.res, [dg], rows=t, cols=d,
                       attrs={"type": "rms_norm", "pass": "bwd"})
            record_grad(root, dy, d)
        for layer in reversed(st.layers):
            if self.p.fsdp:
                dy = self._unshard(f"mb{mb}.L{layer}.bwd", self.local.block_params, dy)
            mine: list[int] = [] if self.p.fsdp else grads  # FSDP: the block's gradients, reduce-scattered
            dy = block_backward(b, lin, self.local, self.args, layer, dy, mine)
            if self.p.fsdp and mb == self.p.micro_batches - 1:  # earlier micro-batches accumulate unsharded
                grads.append(self._reduce_scatter(f"L{layer}", self.local.block_params, mine))
        if st.first and not self.p.blocks_only:
            dy = b.add("elementwise", f"mb{mb}.embedding_bwd", "fp32", [dy], numel=t * d, attrs={"op": "embedding"})
            root.append(dy)
        if self.p.fsdp and root and mb == self.p.micro_batches - 1:
            grads.append(self._reduce_scatter("root", self._root_params, root))
        st.backward_out[mb] = dy

    def optimizer(self, st: _Stage, grads: list[int]) -> int:
        self.b.device = st.index
        if isinstance(grads, GradientBuckets):
            grads.flush()
        tensors = len(st.layers) * 6 + (0 if self.p.blocks_only else int(st.first) + 2 * int(st.last))
        return self.b.add("optimizer", f"s{st.index}.adamw", "fp32", [st.backward_out[self.p.micro_batches - 1],
                                                                        *grads],
                          params=max(1, round(_stage_params(self.full, self.local, st, self.p))),
                          attrs={"algorithm": "adamw", "kernels": max(1, math.ceil(tensors / 64)),
                                 "master_weights": False})


def _grads_for(emitter: _PipelineEmitter, st: _Stage, mb: int, bucket: float) -> list[int]:
    """Where the micro-batch's weight-gradient ops are noted: DDP's buckets on the last micro-batch of
    a data-parallel step (earlier ones accumulate under no_sync), else a plain list."""
    p = emitter.p
    if p.dp > 1 and mb == p.micro_batches - 1 and not p.fsdp:
        return GradientBuckets(emitter.b, bucket, p.dp, p.grad_dtype, p.algorithm)
    return []


def one_f_one_b(pp: int, micro_batches: int, stage: int) -> list[tuple[str, int]]:
    """Megatron's 1F1B order on one stage, as ('F' or 'B', micro-batch): pp - stage - 1 warm-up
    forwards, then one forward and one backward in turn, then the remaining backwards (the
    non-interleaved case of chipsim.training.step's `_schedule_order`)."""
    warmup = min(micro_batches, pp - stage - 1)
    order = [("F", k) for k in range(warmup)]
    for k in range(micro_batches - warmup):
        order += [("F", warmup + k), ("B", k)]
    return order + [("B", k) for k in range(micro_batches - warmup, micro_batches)]


def emit_pipeline(b: StageBuilder, p: ParallelTrainStepParams, full: ModelShape, bucket: float) -> list[int]:
    """Every stage's micro-batches in 1F1B order, then each stage's optimizer; returns the optimizer ops."""
    e = _PipelineEmitter(b, p, full)
    orders = [one_f_one_b(p.pp, p.micro_batches, s) for s in range(p.pp)]
    position = [0] * p.pp
    last_grads: dict[int, list[int]] = {}
    progress = True
    while progress:  # emit each stage's next step as soon as what it receives has been emitted
        progress = False
        for st in e.stages:
            s = st.index
            while position[s] < len(orders[s]):
                what, mb = orders[s][position[s]]
                if what == "F":
                    if not st.first and mb not in e.stages[s - 1].forward_out:
                        break
                    e.forward(st, mb)
                else:
                    if not st.last and mb not in e.stages[s + 1].backward_out:
                        break
                    grads = _grads_for(e, st, mb, bucket)
                    e.backward(st, mb, grads)
                    if mb == p.micro_batches - 1:
                        last_grads[s] = grads
                position[s] += 1
                progress = True
    if any(position[s] < len(orders[s]) for s in range(p.pp)):  # pragma: no cover - 1F1B's order is valid
        raise RuntimeError("pipeline schedule deadlocked")
    return [e.optimizer(st, last_grads.get(st.index, [])) for st in e.stages]


def parallel_memory(full: ModelShape, p: ParallelTrainStepParams) -> dict[str, float]:
    """One GPU's footprint (the first stage's: it holds the most micro-batches' activations in 1F1B)."""
    local = shard(full, p.tp)
    layers = stage_layers(full.layers, p.pp)[0]
    params = len(layers) * local.block_params + (0 if p.blocks_only else full.vocab * full.d_model / p.tp)
    in_flight = min(p.pp, p.micro_batches)  # micro-batches whose activations a 1F1B first stage holds
    act = 2 if p.precision != "fp32" else 4
    # FSDP: fp32 shards, plus the bf16 parameters of the root and two blocks unsharded at a time
    weights = params / p.dp * 4.0 + 2.0 * (2 * local.block_params + 2 * full.vocab * full.d_model) if p.fsdp \
        else params * 4.0
    sharded = params / p.dp if p.fsdp else params
    return {"weights": weights, "gradients": sharded * 4.0, "optimizer_state": sharded * 8.0,
            "activations": in_flight * len(layers) * ACTIVATION_BYTES_PER_TOKEN_PER_DIM / 2 * act
            * (p.batch // p.micro_batches) * p.seq * full.d_model / p.tp}


@register_generator("parallel_train_step", ParallelTrainStepParams,
                    "transformer_train_step under a parallel layout: tensor parallel (tp), a 1F1B pipeline (pp, one "
                    "device per stage), data parallel (dp), gradient accumulation (micro_batches), blocks only")
def parallel_train_step(p: ParallelTrainStepParams) -> Workload:
    full = model_shape(p.model, p.layers, p.d_model, p.heads, p.kv_heads, p.ffn, p.vocab)
    plain = p.tp == p.pp == p.dp == p.micro_batches == 1 and not p.blocks_only
    if plain:
        base = {k: v for k, v in vars(p).items() if k in TrainStepParams.__dataclass_fields__}
        workload = transformer_train_step(TrainStepParams(**base))
        workload.generator, workload.params = "parallel_train_step", dict(vars(p))
        return workload
    if p.compiled or p.precision == "fp8" or p.steps > 1:
        raise InputError("a parallel layout is modelled for eager bf16/fp32 steps, one per graph (compiled, fp8 "
                         "or several steps: transformer_train_step without tp, pp, dp, micro_batches, "
                         "blocks_only)", key="precision")
    bucket = parse_quantity(p.bucket, "bytes", key="bucket")
    if bucket <= 0:
        raise InputError("expected a positive bucket size", key="bucket")
    b = StageBuilder(f"train_{p.model or 'custom'}_tp{p.tp}_pp{p.pp}_dp{p.dp}_mb{p.micro_batches}",
                     "parallel_train_step", vars(p))
    emit_pipeline(b, p, full, bucket)
    block_params = full.layers * full.block_params
    params = block_params + (0 if p.blocks_only else 2 * full.vocab * full.d_model + full.d_model)
    b.memory.update(parallel_memory(full, p))
    b.meta.update(params=params, tokens=p.batch * p.seq * p.dp, gpus=p.tp * p.pp * p.dp,
                  model_flops=6.0 * params * p.batch * p.seq * p.dp)
    return b.build()
