"""The `moe_train_step` generator: training steps of Mixtral-like MoE blocks (RMSNorm, a softmax top-k
router, routed SwiGLU experts, the residual add), kernel by kernel as plain PyTorch runs them under
bf16 autocast, eagerly, with expert parallelism over `ep` ranks.

Each rank routes its own tokens (batch x seq), sorts the token copies by expert, copies the
per-expert counts to the host (`.tolist()`: the host waits for the device) and dispatches the copies
to the ranks holding their experts (an all-to-all over the `ep` ranks); each rank then runs its
experts/ep local experts one after the other, one gate/up GEMM and one down GEMM each (a loop, no
grouped GEMM), and the outputs go back (the combine all-to-all) to be scaled by the router weights and
added into the token rows (`index_add`). The backward mirrors it; AdamW (fused) steps the fp32 master
weights.

`expert_weights: stacked` keeps each projection of the local experts as one parameter
[experts, in, out], indexed per expert: autograd then gives each expert's slice a gradient the size
of the whole stack (zeros, the slice copied in) and adds them up, a pass over the full stack per
expert. That is what the reference MoE block does: with 8 stacked experts of 4096 x 14336 it is ~40 ms
of an 89 ms step (reference/h200/parallel_calibration.csv; the same block with `separate` expert
parameters measures ~50 ms on an H200).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from chipsim.errors import InputError
from chipsim.workload.generators.registry import check_range, param, register_generator
from chipsim.workload.generators.transformer import MAX_LAYERS, Linears
from chipsim.workload.graph import Workload, WorkloadBuilder
from chipsim.workload.kinds import DTYPE_BYTES

MAX_EXPERTS = 4096
MAX_PARALLEL = 4096


@dataclass(frozen=True)
class MoETrainStepParams:
    layers: int = param(1, "MoE blocks")
    d_model: int = param(4096, "hidden size")
    experts: int = param(8, "routed experts (all ranks together)")
    topk: int = param(2, "experts each token is routed to")
    expert_ffn: int = param(14336, "SwiGLU hidden size of one expert")
    batch: int = param(2, "sequences per GPU")
    seq: int = param(4096, "tokens per sequence")
    ep: int = param(1, "expert-parallel ranks: each holds experts/ep experts; dispatch and combine are "
                       "all-to-alls over them")
    dp: int = param(1, "data-parallel replicas of the expert-parallel group: all gradients all-reduced")
    precision: Literal["bf16", "fp32"] = param("bf16", "bf16 (autocast: fp32 master weights, bf16 GEMMs) or fp32")
    expert_weights: Literal["stacked", "separate"] = param(
        "stacked", "the local experts' projections as one [experts, in, out] parameter indexed per expert "
        "(each slice's gradient is a zero-filled copy of the whole stack, summed over the experts), or one "
        "parameter per expert")

    def __post_init__(self) -> None:
        check_range(self, "layers", maximum=MAX_LAYERS)
        check_range(self, "d_model", "expert_ffn", "batch", "seq")
        check_range(self, "experts", "topk", maximum=MAX_EXPERTS)
        check_range(self, "ep", "dp", maximum=MAX_PARALLEL)
        if self.topk > self.experts:
            raise InputError(f"topk ({self.topk}) cannot exceed experts ({self.experts})", key="topk")
        if self.experts % self.ep:
            raise InputError(f"experts ({self.experts}) must be a multiple of ep ({self.ep})", key="ep")

    @property
    def local_experts(self) -> int:
        return self.experts // self.ep

    def layer_params(self) -> int:
        """One rank's parameters of one block: its experts' gate/up and down, the router, the norm."""
        return self.local_experts * 3 * self.d_model * self.expert_ffn + self.d_model * self.experts + self.d_model


class _MoEEmitter:
    def __init__(self, b: WorkloadBuilder, p: MoETrainStepParams) -> None:
        self.b, self.p = b, p
        self.t = p.batch * p.seq  # this rank's tokens
        self.routed = self.t * p.topk  # token copies this rank sends and (balanced) receives
        self.per_expert = math.ceil(self.routed / p.local_experts)
        master = p.precision == "bf16"
        self.res = "fp32"  # the residual stream and norms (fp32 under autocast)
        self.act = "bf16" if master else "fp32"
        self.router = Linears(b, p.precision, self.t, master_fp32=master)
        self.expert = Linears(b, p.precision, self.per_expert, master_fp32=master)

    def _a2a(self, name: str, dep: int, nbytes: float) -> int:
        if self.p.ep == 1:
            return dep
        return self.b.add("all_to_all", name, "bf16", [dep], stream="comm", bytes=nbytes, group=self.p.ep)

    def forward(self, layer: int, x: int | None) -> int:
        b, p, t, r, d, f = self.b, self.p, self.t, self.routed, self.p.d_model, self.p.expert_ffn
        n = f"layer{layer}"
        h = b.add("norm", f"{n}.norm", self.res, [x], rows=t, cols=d, attrs={"type": "rms_norm"})
        logits = self.router.forward(f"{n}.router", h, d, p.experts, input_dtype=self.res)
        probs = b.add("softmax", f"{n}.router_softmax", "fp32", [logits], rows=t, cols=p.experts)
        top = b.add("elementwise", f"{n}.topk", "fp32", [probs], numel=t * p.experts, attrs={"op": "reduce"})
        order = b.add("elementwise", f"{n}.sort_by_expert", "int32", [top], numel=r, attrs={"op": "copy"})
        # the per-expert counts go to the host (.tolist()) to size the exchange and the loop
        xs = b.add("elementwise", f"{n}.gather", self.res, [order, h], numel=r * d,
                   attrs={"op": "copy", "host_sync": True})
        xs = self._a2a(f"{n}.dispatch", xs, r * d * DTYPE_BYTES[self.res])
        outs = []
        for e in range(p.local_experts):
            gu = self.expert.forward(f"{n}.expert{e}.gate_up", xs, d, 2 * f, input_dtype=self.res)
            act = b.add("elementwise", f"{n}.expert{e}.silu", self.act, [gu], numel=self.per_expert * f,
                        attrs={"op": "silu"})
            act = b.add("elementwise", f"{n}.expert{e}.mul", self.act, [act], numel=self.per_expert * f,
                        attrs={"op": "mul"})
            outs.append(self.expert.forward(f"{n}.expert{e}.down", act, f, d, input_dtype=self.act))
        y = b.add("elementwise", f"{n}.cat", self.act, outs, numel=r * d, attrs={"op": "copy"})
        y = b.add("elementwise", f"{n}.scale", self.act, [y], numel=r * d, attrs={"op": "mul"})
        y = self._a2a(f"{n}.combine", y, r * d * DTYPE_BYTES[self.act])
        zeros = b.add("elementwise", f"{n}.zeros", self.res, [y], numel=t * d, attrs={"op": "write"})
        out = b.add("elementwise", f"{n}.index_add", self.res, [zeros], numel=r * d, attrs={"op": "add"})
        return b.add("elementwise", f"{n}.residual", self.res, [out, x], numel=t * d, attrs={"op": "add"})

    def _slice_grad(self, name: str, dep: int, whole: float, part: float, accumulate: bool) -> int:
        """Autograd's gradient of a slice (select/narrow) of a tensor of `whole` elements: a zero-filled
        tensor of the whole size with the slice's `part` copied in, added to the gradient of the
        slices before it."""
        b = self.b
        g = b.add("elementwise", f"{name}.zeros", "fp32", [dep], numel=whole, attrs={"op": "write"})
        g = b.add("elementwise", f"{name}.copy", "fp32", [g], numel=part, attrs={"op": "copy"})
        if accumulate:
            g = b.add("elementwise", f"{name}.accumulate", "fp32", [g], numel=whole, attrs={"op": "add"})
        return g

    def backward(self, layer: int, dy: int, grads: list[int]) -> int:
        b, p, t, r, d, f = self.b, self.p, self.t, self.routed, self.p.d_model, self.p.expert_ffn
        n, m, le = f"layer{layer}", self.per_expert, p.local_experts
        dy_rows = b.add("elementwise", f"{n}.index_add_bwd", self.res, [dy], numel=r * d, attrs={"op": "copy"})
        dy_rows = self._a2a(f"{n}.combine_bwd", dy_rows, r * d * DTYPE_BYTES[self.res])
        dy_rows = b.add("elementwise", f"{n}.scale_bwd", self.act, [dy_rows], numel=r * d, attrs={"op": "mul_bwd"})
        dxs: int | None = None
        for e in reversed(range(le)):
            dg, wg = self.expert.backward(f"{n}.expert{e}.down", dy_rows, f, d, self.res)
            grads.append(self._weight_grad(f"{n}.expert{e}.down", wg, f * d, e < le - 1))
            dm = b.add("elementwise", f"{n}.expert{e}.mul_bwd", self.act, [dg], numel=m * f, attrs={"op": "mul_bwd"})
            ds = b.add("elementwise", f"{n}.expert{e}.silu_bwd", self.act, [dm], numel=m * f,
                       attrs={"op": "silu_bwd"})
            dcat = b.add("elementwise", f"{n}.expert{e}.gate_up_cat", self.act, [ds], numel=m * 2 * f,
                         attrs={"op": "copy"})
            dg, wg = self.expert.backward(f"{n}.expert{e}.gate_up", dcat, d, 2 * f, self.act)
            grads.append(self._weight_grad(f"{n}.expert{e}.gate_up", wg, d * 2 * f, e < le - 1))
            if self.p.precision == "bf16":  # the input's autocast cast, backward: bf16 -> fp32
                dg = b.add("elementwise", f"{n}.expert{e}.x_cast_bwd", "bf16", [dg], numel=m * d,
                           attrs={"op": "cast", "out_dtype": "fp32"})
            # the expert's rows of the gathered tokens: a slice of them
            dxs = self._slice_grad(f"{n}.expert{e}.rows_bwd", dg if dxs is None else dxs, r * d, m * d,
                                   dxs is not None)
        assert dxs is not None
        dxs = self._a2a(f"{n}.dispatch_bwd", dxs, r * d * DTYPE_BYTES[self.res])
        dz = b.add("elementwise", f"{n}.gather_bwd_zeros", self.res, [dxs], numel=t * d, attrs={"op": "write"})
        dh = b.add("elementwise", f"{n}.gather_bwd", self.res, [dz], numel=r * d, attrs={"op": "add"})
        dp = b.add("elementwise", f"{n}.router_softmax_bwd", "fp32", [dy_rows], numel=t * p.experts,
                   attrs={"op": "mul_bwd"})
        dr, wg = self.router.backward(f"{n}.router", dp, d, p.experts, self.res)
        grads.append(wg)
        dh = b.add("elementwise", f"{n}.router_dx_add", self.res, [dh, dr], numel=t * d, attrs={"op": "add"})
        dn = b.add("norm", f"{n}.norm_bwd", self.res, [dh], rows=t, cols=d, attrs={"type": "rms_norm", "pass": "bwd"})
        grads.append(dn)
        return b.add("elementwise", f"{n}.residual_bwd", self.res, [dn, dy], numel=t * d, attrs={"op": "add"})

    def _weight_grad(self, name: str, wgrad: int, numel: int, accumulate: bool) -> int:
        if self.p.expert_weights == "separate":
            return wgrad
        return self._slice_grad(f"{name}.stack_bwd", wgrad, self.p.local_experts * numel, numel, accumulate)


@register_generator("moe_train_step", MoETrainStepParams,
                    "Mixtral-like MoE blocks trained eagerly: top-k router, experts looped one GEMM pair each, "
                    "all-to-all dispatch and combine over ep ranks, fused AdamW")
def moe_train_step(p: MoETrainStepParams) -> Workload:
    b = WorkloadBuilder(f"moe_{p.experts}x{p.expert_ffn}_top{p.topk}_ep{p.ep}_b{p.batch}_s{p.seq}",
                        "moe_train_step", vars(p))
    e = _MoEEmitter(b, p)
    t, d = e.t, p.d_model
    x: int | None = None
    for layer in range(p.layers):
        x = e.forward(layer, x)
    assert x is not None
    # the loss: a reduction of the blocks' output, and its gradient
    loss = b.add("elementwise", "loss", e.res, [x], numel=t * d, attrs={"op": "reduce"})
    dy = b.add("elementwise", "loss_bwd", e.res, [loss], numel=t * d, attrs={"op": "scale"})
    grads: list[int] = []
    for layer in reversed(range(p.layers)):
        dy = e.backward(layer, dy, grads)
    params = p.layers * p.layer_params()
    if p.ep > 1:  # the router and norm are replicated over the expert-parallel ranks: their gradients summed
        grads.append(b.add("all_reduce", "dense_grad_sync", "fp32", [dy], stream="comm",
                           bytes=p.layers * (d * p.experts + d) * DTYPE_BYTES["fp32"], group=p.ep))
    if p.dp > 1:
        grads.append(b.add("all_reduce", "grad_sync", "fp32", [dy], stream="comm",
                           bytes=params * DTYPE_BYTES["fp32"], group=p.dp, attrs={"stride": p.ep}))
    tensors = p.layers * ((2 if p.expert_weights == "stacked" else 2 * p.local_experts) + 2)
    b.add("optimizer", "adamw", "fp32", [dy, *grads], params=params,
          attrs={"algorithm": "adamw", "kernels": max(1, math.ceil(tensors / 64)), "master_weights": False})
    routed_flops = 6.0 * 3 * d * p.expert_ffn * e.routed * p.layers
    b.memory.update(weights=params * 4.0, gradients=params * 4.0, optimizer_state=params * 8.0,
                    activations=p.layers * e.routed * (d + 3 * p.expert_ffn) * DTYPE_BYTES["bf16"])
    b.meta.update(params=params, tokens=t, model_flops=routed_flops)
    return b.build()
