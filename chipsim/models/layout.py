"""Megatron-Core parallel layouts: tensor (tp), pipeline (pp, with vp virtual stages), context (cp),
data (dp) and expert (ep, etp) parallelism, checked the way Megatron-Core checks them.

Rank arithmetic (Megatron-Core ``parallel_state``, MoE "parallel folding"):

* dense part: ``gpus = tp * pp * cp * dp``;
* experts: inside each pipeline stage the ``tp * cp * dp`` ranks are regrouped as ``etp * ep * edp``,
  so ``etp * ep`` must divide ``tp * cp * dp`` and ep does not multiply the GPU count; the expert
  data-parallel size is ``edp = tp * cp * dp / (etp * ep)``;
* gradients of dense parameters are reduced (and ZeRO-sharded) over ``dp * cp`` ranks (Megatron's
  data-parallel group with context parallelism), those of expert parameters over ``edp``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chipsim.errors import InputError
from chipsim.models.zoo import ModelConfig

RECOMPUTE = ("none", "selective", "full")
_SIZES = ("tp", "pp", "cp", "dp", "ep", "etp", "vp", "micro_batch", "global_batch", "seq", "zero", "recompute",
          "sequence_parallel", "first_stage_layers", "last_stage_layers", "moe_imbalance")


@dataclass(frozen=True, kw_only=True)
class Layout:
    """A resolved, validated layout (build it with :func:`resolve_layout`)."""

    tp: int
    pp: int
    cp: int
    dp: int
    ep: int
    etp: int = 1
    vp: int = 1
    micro_batch: int
    global_batch: int
    seq: int
    zero: int = 0  # 0 none, 1 optimizer states (Megatron's distributed optimizer), 2 + grads, 3 + weights (FSDP)
    recompute: str = "none"
    sequence_parallel: bool = True
    first_stage_layers: int | None = None
    last_stage_layers: int | None = None
    # layers that do not divide over pp*vp chunks (and no first/last stage sizes given): split as
    # Megatron-Core does with account_for_embedding/loss_in_pipeline_split (see balanced_chunks)
    balanced: bool = False
    # MoE routing imbalance: the busiest expert-parallel rank's routed tokens over the mean (1.0: the
    # force-balanced routing of benchmark runs; dropless training with an auxiliary loss runs ~1.1-1.3)
    moe_imbalance: float = 1.0

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    @property
    def num_microbatches(self) -> int:
        """Micro-batches per step on each data-parallel rank: global_batch / (micro_batch * dp)."""
        return self.global_batch // (self.micro_batch * self.dp)

    @property
    def dense_shard(self) -> int:
        """Ranks over which a dense parameter's gradient is reduced and ZeRO-sharded: dp * cp."""
        return self.dp * self.cp

    @property
    def expert_dp(self) -> int:
        """Expert data-parallel size: tp * cp * dp / (etp * ep)."""
        return self.tp * self.cp * self.dp // (self.etp * self.ep)

    def chunk_layers(self, layers: int) -> list[int]:
        """Transformer layers of each model chunk, in model order: chunk c of stage s is entry c*pp + s."""
        if self.balanced:
            return balanced_chunks(layers, self.pp * self.vp)
        counts = self.stage_layers(layers)
        return [counts[s] // self.vp for _ in range(self.vp) for s in range(self.pp)]

    def stage_layers(self, layers: int) -> list[int]:
        """Transformer layers on each pipeline stage (all vp chunks of that stage together)."""
        first, last = self.first_stage_layers, self.last_stage_layers
        if self.balanced:
            chunks = balanced_chunks(layers, self.pp * self.vp)
            return [sum(chunks[c * self.pp + s] for c in range(self.vp)) for s in range(self.pp)]
        if first is None and last is None:
            return [layers // self.pp] * self.pp
        if self.pp == 1:
            return [layers]
        middle_stages = self.pp - (first is not None) - (last is not None)
        rest = layers - (first or 0) - (last or 0)
        each = rest // middle_stages if middle_stages else 0
        counts = [each] * self.pp
        if first is not None:
            counts[0] = first
        if last is not None:
            counts[-1] = last
        return counts

    def stage_range(self, layers: int, stage: int) -> list[int]:
        """Indices of the layers that live on ``stage`` (vp chunks round-robin over the stages)."""
        out: list[int] = []
        start = 0
        for i, n in enumerate(self.chunk_layers(layers)):
            if i % self.pp == stage:
                out.extend(range(start, start + n))
            start += n
        return out


def balanced_chunks(layers: int, chunks: int) -> list[int]:
    """Layers per model chunk (model order) when ``layers`` do not divide over ``chunks``, as
    Megatron-Core's account_for_embedding_in_pipeline_split and account_for_loss_in_pipeline_split
    place them: the embedding and the loss each take one layer's slot, in the first and last chunk,
    and the ``layers + 2`` slots are spread as evenly as they go, the earlier chunks taking one more."""
    slots = layers + 2
    each, extra = divmod(slots, chunks)
    sizes = [each + (1 if i < extra else 0) for i in range(chunks)]
    sizes[0] -= 1  # the embedding's slot
    sizes[-1] -= 1  # the loss's slot
    if min(sizes) < 0:  # fewer slots than chunks: no balanced split
        raise InputError(f"{layers} layers cannot fill {chunks} pipeline chunks", key="pp")
    return sizes


def _int(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"expected an integer >= {minimum}, got {value!r}", key=key)
    return value


def _get(sizes: dict[str, Any], key: str, default: Any) -> Any:
    value = sizes.get(key)
    return default if value is None else value


def resolve_layout(model: ModelConfig, gpus: int, **sizes: Any) -> Layout:
    """Fill in and check a layout for ``model`` on ``gpus`` GPUs.

    Sizes: tp, pp, cp, ep, etp, vp (default 1), dp (default: what remains, gpus / (tp*pp*cp)),
    micro_batch (1), global_batch (micro_batch * dp: one micro-batch per step), seq (model.max_seq),
    zero (0), recompute ('none'), sequence_parallel (True), first_stage_layers / last_stage_layers
    (uneven pipelines), moe_imbalance (1.0: the busiest EP rank's routed tokens over the mean). A bad layout raises InputError whose key is the offending size.
    """
    for key in sizes:
        if key not in _SIZES:
            raise InputError(f"unknown layout size '{key}'; expected one of {', '.join(_SIZES)}", key=key)
    gpus = _int(gpus, "gpus")
    tp, pp, cp, ep, etp, vp = (_int(_get(sizes, k, 1), k) for k in ("tp", "pp", "cp", "ep", "etp", "vp"))
    micro_batch = _int(_get(sizes, "micro_batch", 1), "micro_batch")
    seq = _int(_get(sizes, "seq", model.max_seq), "seq")

    # world size
    if sizes.get("dp") is None:
        if gpus % (tp * pp * cp):
            raise InputError(f"gpus ({gpus}) must be a multiple of tp*pp*cp = {tp}*{pp}*{cp} = {tp * pp * cp} "
                             "to leave a whole data-parallel size", key="dp")
        dp = gpus // (tp * pp * cp)
    else:
        dp = _int(sizes["dp"], "dp")
        if tp * pp * cp * dp != gpus:
            raise InputError(f"tp*pp*cp*dp = {tp}*{pp}*{cp}*{dp} = {tp * pp * cp * dp} must equal gpus ({gpus})",
                             key="dp")

    # tensor parallelism: heads, KV heads and MLP columns split over tp ranks
    if model.heads % tp:
        raise InputError(f"heads ({model.heads}) must be divisible by tp ({tp})", key="tp")
    if model.kv_heads % tp and tp % model.kv_heads:
        raise InputError(f"kv_heads ({model.kv_heads}) must be divisible by tp ({tp}), or tp a multiple of "
                         "kv_heads (each KV head then replicated on tp/kv_heads ranks)", key="tp")
    has_dense_mlp = not model.is_moe or model.first_dense_layers > 0 or model.moe_every > 1
    if has_dense_mlp and model.ffn % tp:
        raise InputError(f"ffn ({model.ffn}) must be divisible by tp ({tp})", key="tp")

    # experts
    if not model.is_moe and ep * etp > 1:
        raise InputError(f"{model.model_id} is dense: expected ep=1 and etp=1, got ep={ep} etp={etp}", key="ep")
    if model.is_moe:
        if model.experts % ep:
            raise InputError(f"experts ({model.experts}) must be divisible by ep ({ep})", key="ep")
        if model.expert_ffn % etp:
            raise InputError(f"expert_ffn ({model.expert_ffn}) must be divisible by etp ({etp})", key="etp")
        if (tp * cp * dp) % (ep * etp):
            raise InputError(f"ep*etp = {ep}*{etp} must divide tp*cp*dp = {tp}*{cp}*{dp} = {tp * cp * dp} "
                             "(expert ranks are the attention ranks regrouped)", key="ep")

    # pipeline
    first, last = sizes.get("first_stage_layers"), sizes.get("last_stage_layers")
    first = None if first is None else _int(first, "first_stage_layers", 0)
    last = None if last is None else _int(last, "last_stage_layers", 0)
    if vp > 1 and pp == 1:
        raise InputError("virtual pipeline stages need pp > 1", key="vp")
    balanced = False
    if first is None and last is None:
        # layers that do not divide: Megatron-Core's balanced split (embedding and loss as a layer each)
        balanced = model.layers % (pp * vp) != 0
        if balanced:
            balanced_chunks(model.layers, pp * vp)
    else:
        key = "first_stage_layers" if first is not None else "last_stage_layers"
        if pp == 1:
            raise InputError("uneven pipeline stages need pp > 1", key=key)
        middle = pp - (first is not None) - (last is not None)
        rest = model.layers - (first or 0) - (last or 0)
        if rest < 0 or (middle == 0 and rest) or (middle and rest % middle):
            raise InputError(f"the {rest} layers left after first/last stages ({first}/{last}) must split "
                             f"evenly over the other {middle} stages (layers {model.layers}, pp {pp})", key=key)
        counts = [rest // middle if middle else 0] * pp
        if first is not None:
            counts[0] = first
        if last is not None:
            counts[-1] = last
        if any(c % vp for c in counts):
            raise InputError(f"every stage's layer count ({counts}) must be divisible by vp ({vp})", key="vp")

    # context and sequence parallelism
    if cp > 1 and seq % (2 * cp):
        raise InputError(f"seq ({seq}) must be divisible by 2*cp = {2 * cp} (load-balanced causal chunks)", key="seq")
    sequence_parallel = bool(_get(sizes, "sequence_parallel", True))
    imbalance = _get(sizes, "moe_imbalance", 1.0)
    if isinstance(imbalance, bool) or not isinstance(imbalance, int | float) or not 1.0 <= imbalance <= 64:
        raise InputError(f"expected a routing imbalance from 1.0 (balanced) to 64, got {imbalance!r}",
                         key="moe_imbalance")
    if model.is_moe and tp > 1 and not sequence_parallel:
        raise InputError("Megatron-Core needs sequence parallelism for MoE with tp > 1", key="sequence_parallel")
    if sequence_parallel and tp > 1 and (seq // cp) % tp:
        raise InputError(f"seq/cp ({seq // cp}) must be divisible by tp ({tp}) with sequence parallelism", key="seq")

    # batch
    global_batch = sizes.get("global_batch")
    global_batch = micro_batch * dp if global_batch is None else _int(global_batch, "global_batch")
    if global_batch % (micro_batch * dp):
        raise InputError(f"global_batch ({global_batch}) must be divisible by micro_batch*dp = "
                         f"{micro_batch}*{dp} = {micro_batch * dp}", key="global_batch")

    zero = _get(sizes, "zero", 0)
    if zero not in (0, 1, 2, 3) or isinstance(zero, bool):
        raise InputError(f"expected ZeRO stage 0, 1, 2 or 3 (3 = FSDP), got {zero!r}", key="zero")
    recompute = sizes.get("recompute") or "none"
    if recompute not in RECOMPUTE:
        raise InputError(f"expected one of {', '.join(RECOMPUTE)}, got {recompute!r}", key="recompute")

    return Layout(tp=tp, pp=pp, cp=cp, dp=dp, ep=ep, etp=etp, vp=vp, micro_batch=micro_batch,
                  global_batch=global_batch, seq=seq, zero=int(zero), recompute=recompute,
                  sequence_parallel=sequence_parallel, first_stage_layers=first, last_stage_layers=last,
                  balanced=balanced, moe_imbalance=float(imbalance))
