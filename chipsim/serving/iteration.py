"""The time and energy of one serving iteration on one GPU of the engine's tensor-parallel group.

An iteration runs every scheduled sequence through the model once: the prefill chunks (each a run
of a prompt's tokens, attending to the prompt so far) and the decode steps (one token each,
attending to the sequence's KV cache) share the GEMMs, which see the iteration's total tokens.
Each op is costed by the op-level model that `chipsim validate` checks (`chipsim.cost`): the GEMMs
at the iteration's token count (their wave quantization and weight traffic), prefill attention per
chunk, decode attention over the batch's KV cache, the tensor-parallel all-reduces on the node's
fabric, the LM head for the sequences that emit a token. Kernels run back to back, replayed from a
CUDA graph (`calibration.latency.graph_launch` per kernel), at the clock the chip's power limit
allows for that mix (`sustained_scale`); an engine that launches a step eagerly (`EngineProfile.graphs`)
takes at least the host's time to dispatch its ops one by one (and the engine's own host time per
layer of such a step, `EngineProfile.eager_layer_s`). The engine's host work per iteration
(`EngineProfile`) is added on top. With speculative decoding (`chipsim.serving.speculative`) a decoding
sequence runs its drafted tokens and the next one through the model (attention over its cache, the
LM head on each), after the drafter's passes.

Costs are cached by the iteration's shape, rounded (`bucket`): token counts exact up to 16, to 16 up to
1,024 and to 128 beyond, context lengths to 64 up to 4,096 and to 256 beyond.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from chipsim.cost.base import OpCost, cost_of
from chipsim.engine.power import sustained_scale
from chipsim.engine.sim import _dispatch_seconds as dispatch_seconds
from chipsim.errors import InputError
from chipsim.hardware.chip import Chip
from chipsim.models.zoo import ModelConfig
from chipsim.network.fabric import Fabric
from chipsim.network.system import System
from chipsim.serving.profiles import EngineProfile
from chipsim.serving.quant import Quantization, quantization
from chipsim.serving.speculative import Speculation
from chipsim.workload.graph import WorkloadBuilder
from chipsim.workload.kinds import BLOCK_SCALE_VALUES, DTYPE_BYTES

# (seconds the clock does not stretch, compute s, compute J, memory J, host dispatch s when launched eagerly)
Part = tuple[float, float, float, float, float]
# the engines' custom all-reduce takes messages up to this size (vLLM: 8 MiB on NVLink,
# vllm/distributed/device_communicators/custom_all_reduce.py max_size); NCCL beyond
CUSTOM_ALL_REDUCE_MAX = 8 * 2**20
# framework module calls per layer of an unfused (HF Transformers-style) model besides its kernels: the
# decoder layer's, the attention's and the MLP's forward (fitted with EngineProfile "eager")
UNFUSED_MODULE_CALLS = 3
ACTIVATION_RESERVE = 0.04  # of HBM kept for activations and workspaces besides weights and KV cache (assumption)


def bucket(n: int, fine: int = 16, coarse: int = 128, knee: int = 1024) -> int:
    """`n` rounded up: to `fine` up to `knee`, to `coarse` beyond; below `fine`, exact (a decode batch
    of a few tokens routes to few experts)."""
    if n <= fine:
        return max(n, 0)
    step = fine if n <= knee else coarse
    return -(-n // step) * step


def ctx_bucket(n: int) -> int:
    return bucket(n, 64, 256, 4096)


@dataclass(frozen=True)
class StepCost:
    seconds: float
    joules: float
    gpu_seconds: float  # the kernels' share of `seconds` (the rest is the engine's host work)


class IterationModel:
    """One GPU of a `tp`-way tensor-parallel engine serving `model` on `chip` (see the module notes)."""

    def __init__(self, model: ModelConfig, chip: Chip, quant: Quantization, profile: EngineProfile, *,
                 tp: int = 1, kv_dtype: str = "bf16", system: System | None = None,
                 dp_attention: bool = False, speculation: Speculation | None = None) -> None:
        if dp_attention and (not model.is_moe or tp < 2):
            raise InputError(f"data-parallel attention splits an MoE model's experts over its {tp} GPUs: it needs "
                             f"an MoE model and tp of 2 or more ({model.model_id}: {model.experts or 'no'} experts)",
                             key="dp_attention")
        if model.heads % tp and not dp_attention:
            raise InputError(f"{model.model_id}'s {model.heads} heads are not divisible by tp {tp}", key="tp")
        if quant.name == "fp8" and not chip.peak_flops_per_s.get("fp8") and profile.fp8_marlin:
            quant = quantization("fp8_weight")  # the engine runs an FP8 checkpoint weight-only
        if quant.name == "mxfp4" and not chip.peak_flops_per_s.get("fp4"):
            quant = quantization("mxfp4_weight")  # every engine runs an MXFP4 checkpoint weight-only there
        if not chip.peak_flops_per_s.get(quant.gemm_dtype):
            raise InputError(f"chip '{chip.name}' has no {quant.gemm_dtype} tensor cores for quantization "
                             f"'{quant.name}'", key="quantization")
        self.model, self.chip, self.quant, self.profile = model, chip, quant, profile
        self.tp, self.kv_dtype = tp, kv_dtype
        if tp > 1 and system is None:
            raise InputError("tensor parallelism needs a system (a node) for its all-reduces", key="tp")
        self.system = system  # the node whose fabric carries the all-reduces (None at tp 1)
        self.network = Fabric(system) if system is not None and tp > 1 else None
        # data-parallel attention (SGLang's --enable-dp-attention with expert parallelism): each GPU
        # attends for its own requests with whole heads and whole dense layers, the experts split over
        # the tp GPUs, tokens sent to them and back by all-to-all
        self.dp_attention = dp_attention
        self.attn_tp = 1 if dp_attention else tp
        self.heads = model.heads // self.attn_tp
        self.kv_heads = max(1, model.kv_heads // self.attn_tp)  # replicated when tp > kv_heads
        self.local_experts = -(-model.experts // tp) if dp_attention else model.experts  # whole experts a GPU holds
        self._layer_cache: dict[tuple[int, bool], list[Part]] = {}
        self._attn_cache: dict[tuple[int, int, int, bool], list[Part]] = {}
        self._head_cache: dict[tuple[int, int], list[Part]] = {}
        self._step_cache: dict[tuple[object, ...], StepCost] = {}
        # speculative decoding: each decoding sequence verifies its drafted tokens and the next one
        self.speculation = speculation
        self.decode_tokens = 1 + (speculation.tokens if speculation is not None else 0)
        self.draft: IterationModel | None = None
        if speculation is not None and speculation.method == "mtp" and not model.mtp_depth:
            raise InputError(f"{model.model_id} has no multi-token-prediction module to draft with: use eagle or "
                             f"draft", key="speculative.method")
        if speculation is not None and speculation.draft_model is not None:
            self.draft = IterationModel(speculation.draft_model, chip, quant, profile, tp=tp, kv_dtype=kv_dtype,
                                        system=system)

    # ---------------------------------------------------------------- memory
    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes one token takes on one GPU (every layer's key and value; MLA's compressed
        latent and rope key, which every tensor-parallel rank holds whole)."""
        m = self.model
        if m.mla is not None:
            per_layer = (m.mla.kv_lora_rank + m.mla.qk_rope_head_dim) * DTYPE_BYTES[self.kv_dtype]
        else:
            per_layer = 2.0 * self.kv_heads * m.head_dim * DTYPE_BYTES[self.kv_dtype]
        return per_layer * (m.layers + self._draft_blocks) + (self.draft.kv_bytes_per_token if self.draft else 0.0)

    @property
    def _draft_blocks(self) -> int:
        """Blocks of the target's width the drafter adds, each with its own KV cache and weights: the
        MTP modules, or an EAGLE head (a draft model is an IterationModel of its own)."""
        s = self.speculation
        return 0 if s is None or s.method == "draft" else (self.model.mtp_depth if s.method == "mtp" else 1)

    @property
    def _draft_block_moe(self) -> bool:
        """Whether a drafting block is an MoE one: an MTP module has the last layer's shape (DeepSeek-V3's
        is MoE); an EAGLE head is a dense decoder layer."""
        s, m = self.speculation, self.model
        return s is not None and s.method == "mtp" and m.is_moe_layer(m.layers - 1)

    @property
    def weight_bytes(self) -> float:
        """This GPU's weights: the block linears in the quantized format, the rest 16-bit, split by tp
        (with data-parallel attention only the experts are split)."""
        m = self.model
        dense = sum(m.layer_params(i)[0] for i in range(m.layers))
        expert = sum(m.layer_params(i)[1] for i in range(m.layers))
        other = m.embedding_params() + m.head_params()
        # the routed experts: split over the tp GPUs (expert tensor parallelism), or with data-parallel
        # attention whole experts, ceil(experts / tp) a GPU (the rest redundant copies of the busiest, as
        # DeepSeek's EPLB places 288 on EP144)
        expert_share = self.local_experts / m.experts if self.dp_attention else 1 / self.tp
        if self._draft_blocks:
            extra = m.layer_params(m.layers - 1) if self._draft_block_moe else (m.attn_params() + m.mlp_params(m.ffn), 0)
            dense += self._draft_blocks * extra[0]
            expert += self._draft_blocks * extra[1]
        drafter = self.draft.weight_bytes if self.draft is not None else 0.0
        return ((dense * self.quant.weight_bytes + other * 2.0) / self.attn_tp
                + expert * self.quant.weight_bytes * expert_share + drafter)

    def kv_capacity_tokens(self) -> int:
        """Tokens the KV cache holds: the memory left after weights and a reserve, times the engine's
        memory fraction."""
        hbm = self.chip.hbm.capacity_bytes
        free = hbm * (1 - ACTIVATION_RESERVE) - self.weight_bytes
        if free <= 0:
            raise InputError(f"{self.model.model_id} in {self.quant.name} needs {self.weight_bytes / 1e9:.1f} GB of "
                             f"weights per GPU at tp={self.tp}; {self.chip.name} has {hbm / 1e9:.0f} GB", key="tp")
        return int(free * self.profile.memory_fraction / self.kv_bytes_per_token)

    # ---------------------------------------------------------------- op costs
    def _parts(self, b: WorkloadBuilder) -> list[Part]:
        out = []
        for op in b.build().ops:
            if op.kind == "all_reduce" and op.shape["bytes"] <= CUSTOM_ALL_REDUCE_MAX and self.profile.all_reduce_s:
                out.append(self._custom_all_reduce(op.shape["bytes"]))
                continue
            c: OpCost = cost_of(op, self.chip, self.network)
            fixed = c.fixed_s + self.chip.calibration.graph_launch_s * c.kernels
            link_s = c.link_s
            if op.kind == "all_reduce" and self.profile.all_reduce_round_bytes_per_s:
                rounds = math.ceil(math.log2(self.tp))
                link_s = max(link_s, rounds * op.shape["bytes"] / self.profile.all_reduce_round_bytes_per_s)
            # the engine's own MoE kernels for FP8 and 16-bit experts (weight-only experts run their format's
            # kernels and FP4 ones Blackwell's CUTLASS/FlashInfer kernels, costed as such)
            moe = op.attrs.get("grouped") and "weight_dtype" not in op.attrs and op.dtype in ("fp8", "bf16")
            mem_scale, compute_scale = (1.0 / self.profile.moe_efficiency,
                                        1.0 / self.profile.moe_compute_efficiency) if moe else (1.0, 1.0)
            out.append((fixed + max(c.mem_s * mem_scale, link_s), c.compute_s * compute_scale, c.compute_energy_j,
                        c.memory_energy_j, dispatch_seconds(op, self.chip)))
        return out

    def _custom_all_reduce(self, nbytes: float) -> Part:
        """The engines' own all-reduce for small tensor-parallel messages (TensorRT-LLM's and vLLM's
        custom all-reduce: every GPU reads its peers' buffers over NVLink, one kernel, no NCCL
        protocol): a fixed cost (`EngineProfile.all_reduce_s`) plus the two-shot exchange's bytes at the
        link's all-reduce efficiency."""
        cal, tp = self.chip.calibration, self.tp
        link = self.chip.link.bandwidth_bytes_per_s * cal.collective_efficiency.get("all_reduce", 1.0)
        seconds = self.profile.all_reduce_s + 2 * (tp - 1) / tp * nbytes / link
        return (seconds + self.chip.calibration.graph_launch_s, 0.0, 0.0, 0.0, 0.0)

    def _gemm(self, b: WorkloadBuilder, name: str, m: int, k: int, n: int, quantized: bool = True) -> None:
        # fp8 / fp4: the activations' cast fused into the previous kernel (the engines' fused quant);
        # weight-only formats: 16-bit GEMMs on narrow weights
        if not quantized:
            b.add("gemm", name, "bf16", [], m=m, n=n, k=k)
        else:
            b.add("gemm", name, self.quant.gemm_dtype, [], m=m, n=n, k=k, attrs=self.quant.gemm_attrs)

    def _layer(self, tokens: int, moe: bool) -> list[Part]:
        """The token-proportional ops of one layer (an MoE one, or a dense one) at `tokens` tokens:
        everything but attention."""
        if (tokens, moe) not in self._layer_cache:
            self._layer_cache[(tokens, moe)] = self._parts(self._layer_ops(tokens, moe))
        return self._layer_cache[(tokens, moe)]

    def linear_seconds(self, tokens: int) -> float:
        """One layer's linear layers (its GEMMs: the projections and the MLP or the router and experts; an
        MoE layer where the model has any) at `tokens` tokens, each at its own roofline: a matmul-level
        time, without the layer's norms, activations, collectives and attention."""
        b = self._layer_ops(tokens, self.model.is_moe)
        ops = b.build().ops
        return sum(max(fixed, compute) for op, (fixed, compute, *_) in zip(ops, self._parts(b), strict=True)
                   if op.kind == "gemm")

    def _layer_ops(self, tokens: int, moe: bool) -> WorkloadBuilder:
        """`_layer`'s ops, uncosted."""
        m, tp, t = self.model, self.tp, tokens
        b = WorkloadBuilder("layer")
        d = m.d_model
        fused = self.profile.fused
        b.add("norm", "attn_norm", "bf16", [], rows=t, cols=d,  # residual add fused, or a module call
              attrs={"type": "rms_norm"} if fused else {"type": "rms_norm", "host_calls": UNFUSED_MODULE_CALLS})
        if m.mla is not None:
            self._mla_projections(b, t)
        else:
            self._gemm(b, "qkv", t, d, (self.heads + 2 * self.kv_heads) * m.head_dim)
        if not fused:  # rotary on q and k, the KV-cache write of k and v, as kernels of their own
            kv = t * self.kv_heads * m.head_dim
            b.add("elementwise", "rope_q", "bf16", [], numel=t * self.heads * m.head_dim, attrs={"op": "rope"})
            b.add("elementwise", "rope_k", "bf16", [], numel=kv, attrs={"op": "rope"})
            b.add("elementwise", "cache_k", "bf16", [], numel=kv, attrs={"op": "copy"})
            b.add("elementwise", "cache_v", "bf16", [], numel=kv, attrs={"op": "copy"})
        self._gemm(b, "o", t, self.heads * (m.mla.v_head_dim if m.mla else m.head_dim), d)
        if self.attn_tp > 1:
            b.add("all_reduce", "o_all_reduce", "bf16", [], bytes=t * d * 2, group=tp)
        b.add("norm", "mlp_norm", "bf16", [], rows=t, cols=d, attrs={"type": "rms_norm"})
        if moe:
            self._moe(b, t)
        else:
            ffn = m.ffn // self.attn_tp
            self._gemm(b, "gate_up", t, d, 2 * ffn if m.gated else ffn)
            b.add("elementwise", "act", "bf16", [], numel=t * ffn, attrs={"op": "silu_mul"})
            self._gemm(b, "down", t, ffn, d)
        if self.attn_tp > 1:
            b.add("all_reduce", "mlp_all_reduce", "bf16", [], bytes=t * d * 2, group=tp)
        if not fused:
            for name in ("attn_residual", "mlp_residual"):
                b.add("elementwise", name, "bf16", [], numel=t * d, attrs={"op": "add"})
        return b

    def _mla_projections(self, b: WorkloadBuilder, t: int) -> None:
        """MLA's (DeepSeek-V2/V3) token-wise projections: the query's down- and up-projection (or one
        projection), the keys' and values' down-projection to the cached latent and rope key (replicated
        over tp), an RMSNorm on each latent. Their up-projection is the attention's (`_attention`)."""
        a, d = self.model.mla, self.model.d_model
        assert a is not None
        if a.q_lora_rank:
            self._gemm(b, "q_down", t, d, a.q_lora_rank)
            b.add("norm", "q_norm", "bf16", [], rows=t, cols=a.q_lora_rank, attrs={"type": "rms_norm"})
            self._gemm(b, "q_up", t, a.q_lora_rank, self.heads * a.qk_head_dim)
        else:
            self._gemm(b, "q", t, d, self.heads * a.qk_head_dim)
        self._gemm(b, "kv_down", t, d, a.kv_lora_rank + a.qk_rope_head_dim)
        b.add("norm", "kv_norm", "bf16", [], rows=t, cols=a.kv_lora_rank, attrs={"type": "rms_norm"})

    def _moe(self, b: WorkloadBuilder, t: int) -> None:
        """Router and the experts as one grouped GEMM per projection: every expert's width split over the
        tp GPUs (expert tensor parallelism), or with data-parallel attention whole experts split over
        them (expert parallelism), the tokens dispatched and combined by all-to-all."""
        m = self.model
        # tensor parallelism splits every expert's width over the GPUs; with data-parallel attention each
        # GPU holds experts/tp whole experts and receives its share of every GPU's tokens
        ep = self.tp if self.dp_attention else 1
        width = m.expert_ffn // (1 if self.dp_attention else self.tp)
        local, routed = self.local_experts, t * ep  # this GPU's experts, and the tokens routed among them all
        # the experts the tokens route to (each picks `topk` of them, uniformly: the expected number of
        # distinct ones): a decode batch of a few tokens reads only those experts' weights
        active = max(1, min(local, round(local * (1 - (1 - m.topk / m.experts) ** routed))))
        per_expert = max(1, math.ceil(routed * m.topk / ep / active))
        self._gemm(b, "router", t, m.d_model, m.experts, quantized=False)
        if ep > 1:
            self._ep_exchange(b, "moe_dispatch", t, to_experts=True)
        gate_up = 2 * width if m.gated else width
        q = self.quant  # weight-only formats: the experts' weights stay narrow (Marlin-class MoE kernels)
        attrs = {"grouped": True, **q.gemm_attrs}
        b.add("gemm", "experts_gate_up", q.gemm_dtype, [], m=per_expert, n=gate_up, k=m.d_model,
              batch=active, attrs=attrs)
        b.add("elementwise", "experts_act", "bf16", [], numel=t * m.topk * width, attrs={"op": "silu_mul"})
        b.add("gemm", "experts_down", q.gemm_dtype, [], m=per_expert, n=m.d_model, k=width,
              batch=active, attrs=attrs)
        if ep > 1:
            self._ep_exchange(b, "moe_combine", t, to_experts=False)
        if m.shared_experts:
            shared = m.shared_experts * m.expert_ffn // self.attn_tp
            self._gemm(b, "shared_gate_up", t, m.d_model, 2 * shared)
            self._gemm(b, "shared_down", t, shared, m.d_model)

    def _ep_exchange(self, b: WorkloadBuilder, name: str, tokens: int, *, to_experts: bool) -> None:
        """One all-to-all of an expert-parallel MoE layer, as DeepEP runs it (SGLang's and DeepSeek's
        wide EP): each token's copies to its experts' GPUs inside a node; over several nodes a token
        crosses the network once per node holding any of its experts (at most `route_nodes` with
        node-limited routing), to the same local rank there, and is forwarded over NVLink. The
        dispatch moves fp8 values with 1x128 scales into FP8 experts, the combine bf16."""
        m = self.model
        fp8 = to_experts and self.quant.gemm_dtype == "fp8"
        width = m.d_model * ((1 + 4 / BLOCK_SCALE_VALUES) if fp8 else 2.0)
        gpn = self.system.gpus_per_node if self.system is not None else self.tp
        for suffix, nbytes, group, stride in m.ep_legs(tokens, width, self.tp, gpn, to_experts):
            b.add("all_to_all", f"{name}_{suffix}" if suffix else name, "bf16", [], bytes=nbytes, group=group,
                  attrs={} if stride is None else {"stride": stride})

    def _attention(self, batch: int, seq_q: int, seq_kv: int, decode: bool = False) -> list[Part]:
        """`batch` sequences of `seq_q` query tokens each over `seq_kv` keys: a prefill chunk, or a
        decode step (`decode`, or one query token) verifying `seq_q` - 1 drafted tokens."""
        decode = decode or seq_q == 1
        key = (batch, seq_q, seq_kv, decode)
        if key not in self._attn_cache:
            b = WorkloadBuilder("attention")
            backend = {"backend": self.profile.attention_backend}
            a = self.model.mla
            if a is None:
                b.add("attention", "attention", self.kv_dtype, [], batch=batch, heads=self.heads,
                      kv_heads=self.kv_heads, seq_q=seq_q, seq_kv=seq_kv, head_dim=self.model.head_dim,
                      causal=seq_q > 1, attrs=backend)
            elif decode:  # MLA decode, absorbed: every head attends to the cached latent (MQA over it)
                h, rank = self.heads, a.kv_lora_rank
                b.add("gemm", "q_absorb", "bf16", [], m=batch * seq_q, k=a.qk_nope_head_dim, n=rank, batch=h)
                b.add("attention", "attention", self.kv_dtype, [], batch=batch, heads=h, kv_heads=1, seq_q=seq_q,
                      seq_kv=seq_kv, head_dim=rank + a.qk_rope_head_dim, v_head_dim=rank, causal=seq_q > 1,
                      attrs={**backend, "shared_kv": True})
                b.add("gemm", "v_absorb", "bf16", [], m=batch * seq_q, k=rank, n=a.v_head_dim, batch=h)
            else:  # MLA prefill: the chunk's context decompressed to every head's keys and values
                self._gemm(b, "kv_up", batch * seq_kv, a.kv_lora_rank,
                           self.heads * (a.qk_nope_head_dim + a.v_head_dim))
                b.add("attention", "attention", "bf16", [], batch=batch, heads=self.heads, kv_heads=self.heads,
                      seq_q=seq_q, seq_kv=seq_kv, head_dim=a.qk_head_dim, v_head_dim=a.v_head_dim, causal=True,
                      attrs=backend)
            self._attn_cache[key] = self._parts(b)
        return self._attn_cache[key]

    def _head(self, tokens: int, logits: int) -> list[Part]:
        """Embedding lookup of every token, final norm, LM head and sampling for the sequences that emit
        a token (vocabulary-parallel over tp, its logits all-gathered)."""
        key = (tokens, logits)
        if key not in self._head_cache:
            self._head_cache[key] = self._head_parts(tokens, logits)
        return self._head_cache[key]

    def _head_parts(self, tokens: int, logits: int) -> list[Part]:
        m = self.model
        b = WorkloadBuilder("head")
        b.add("elementwise", "embedding", "bf16", [], numel=tokens * m.d_model, attrs={"op": "embedding"})
        if logits:
            vocab = -(-m.vocab // self.attn_tp)
            b.add("norm", "final_norm", "bf16", [], rows=logits, cols=m.d_model, attrs={"type": "rms_norm"})
            self._gemm(b, "lm_head", logits, m.d_model, vocab, quantized=False)
            b.add("softmax", "sampling", "fp32", [], rows=logits, cols=vocab)
        return self._parts(b)

    # ---------------------------------------------------------------- one iteration
    def step(self, prefill: Sequence[tuple[int, int]], decode: int, decode_context: int, logits: int) -> StepCost:
        """An iteration of `prefill` chunks ((query tokens, context after the chunk) each) and `decode`
        decode steps over `decode_context` cached tokens in all, `logits` sequences sampling a token."""
        tokens = sum(q for q, _ in prefill) + decode * self.decode_tokens
        logits += decode * (self.decode_tokens - 1)  # a verifying sequence samples every position
        chunks = tuple(sorted((bucket(q), ctx_bucket(ctx)) for q, ctx in prefill))
        mean_ctx = ctx_bucket(decode_context // decode) if decode else 0
        key = (bucket(tokens), chunks, decode, mean_ctx, logits)
        cached = self._step_cache.get(key)
        if cached is None:
            cached = self._step_cache[key] = self._cost(bucket(tokens), chunks, decode, mean_ctx, logits)
        host = self.profile.iteration_s + self.profile.per_sequence_s * (len(prefill) + decode)
        return StepCost(cached.seconds + host, cached.joules + host * self.chip.power.idle_w, cached.seconds)

    def _model_parts(self, tokens: int, chunks: tuple[tuple[int, int], ...], decode: int, mean_ctx: int,
                     logits: int) -> list[Part]:
        """Every op of one pass of the model over the iteration's tokens."""
        attention: list[Part] = []
        # the prefill chunks run as one variable-length attention kernel: chunks of one shape as its batch
        for (q, ctx), n in Counter(chunks).items():
            attention += self._attention(n, q, max(q, ctx))
        if decode:
            q = self.decode_tokens
            attention += self._attention(decode, q, max(q, mean_ctx), decode=True)
        m = self.model
        moe = m.moe_layers if m.is_moe else 0
        groups = [(self._layer(tokens, kind), n) for kind, n in ((False, m.layers - moe), (True, moe)) if n]
        parts = [(o * n, c * n, ce * n, me * n, h * n) for ops, n in [*groups, (attention, m.layers)]
                 for o, c, ce, me, h in ops]
        return parts + self._head(tokens, logits)

    def _drafting(self, decode: int, mean_ctx: int) -> list[Part]:
        """The drafter's passes before a verifying step: `tokens` in sequence, each over the decoding
        sequences (a draft model's decode step, or one layer of the target's shape and its LM head)."""
        s = self.speculation
        if s is None or not decode:
            return []
        if self.draft is not None:
            one = self.draft._model_parts(bucket(decode), (), decode, mean_ctx, decode)
        else:
            one = (self._layer(bucket(decode), self._draft_block_moe) + self._attention(decode, 1, max(1, mean_ctx))
                   + self._head(bucket(decode), decode))
        k = s.tokens
        return [(o * k, c * k, ce * k, me * k, h * k) for o, c, ce, me, h in one]

    def _cost(self, tokens: int, chunks: tuple[tuple[int, int], ...], decode: int, mean_ctx: int,
              logits: int) -> StepCost:
        parts = self._model_parts(tokens, chunks, decode, mean_ctx, logits) + self._drafting(decode, mean_ctx)
        power = self.chip.power
        scale = sustained_scale(power, min(1.0, power.min_clock_hz / self.chip.clock_hz), [p[:4] for p in parts])
        seconds = sum(max(o, c / scale) for o, c, *_ in parts)
        joules = sum(ce * scale ** (power.dvfs_exponent - 1) + me for _, _, ce, me, _ in parts)
        limit = self.profile.graph_max_batch
        graphs = (self.profile.graphs == "all" or (self.profile.graphs == "decode" and not chunks)) and (
            not limit or decode <= limit)
        if not graphs:  # launched from Python op by op: the host runs ahead of the GPU unless it is slower
            seconds = max(seconds, sum(p[4] for p in parts) + self.model.layers * self.profile.eager_layer_s)
        return StepCost(seconds, joules + power.idle_w * seconds, seconds)
