"""Model zoo: the architecture of each published training model (zoo.yaml) as a :class:`ModelConfig`,
with parameter counts and a training FLOP count per token.

Conventions (docs/models.md has the full list):

* ``params_total()`` counts every trained parameter of the main model: matrices, biases, norms,
  routers, the input embedding, a learned position table and an untied LM head; not the
  multi-token-prediction modules (``params_mtp()``), which DeepSeek also reports separately.
* ``params_active()`` is what one token touches: attention, norms, dense MLPs or the router plus
  ``topk`` routed and all shared experts, the LM head, and (``embeddings=True``, the usual convention
  of Mixtral, DeepSeek and Qwen) the input embedding. OpenAI's gpt-oss card leaves the input
  embedding out (``embeddings=False``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from chipsim.errors import InputError

ACTIVATIONS = ("swiglu", "geglu", "gelu", "relu2")
GATED = ("swiglu", "geglu")
NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rope", "learned")
CUSTOM_ID = "gpt-custom"


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank compressed queries and keys/values."""

    q_lora_rank: int  # 0: queries are projected directly (no compression)
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True)
class ModelConfig:
    """One decoder-only transformer. Sizes are the released model's (vocab unpadded)."""

    model_id: str
    source: str
    layers: int
    d_model: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    activation: str = "swiglu"
    norm: str = "rmsnorm"
    norms_per_layer: int = 2
    tied_embeddings: bool = False
    position: str = "rope"
    max_seq: int = 4096
    bias: bool = False
    qk_norm: bool = False
    dropout: float = 0.0
    experts: int = 0  # routed experts; 0 = dense model
    topk: int = 0
    expert_ffn: int = 0
    shared_experts: int = 0  # always-on experts of expert_ffn each, in every MoE layer
    route_nodes: int = 0  # node-limited routing: a token's experts lie on at most this many nodes (0: any)
    first_dense_layers: int = 0  # leading layers with a dense MLP of `ffn`
    moe_every: int = 1  # after those, every n-th layer is MoE (the others dense)
    mla: MLAConfig | None = None
    mtp_depth: int = 0
    sliding_window: int = 0  # 0 = every layer attends to the whole sequence
    sliding_window_every: int = 1  # layers 0, n, 2n, ... use the window
    published_total_b: float | None = None
    published_active_b: float | None = None
    published_active_counts_input_embedding: bool = True

    def __post_init__(self) -> None:
        for key in ("layers", "d_model", "heads", "kv_heads", "head_dim", "ffn", "vocab", "max_seq",
                    "norms_per_layer", "moe_every", "sliding_window_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"expected a positive integer, got {value!r}", key=key)
        for key in ("experts", "topk", "expert_ffn", "shared_experts", "route_nodes", "first_dense_layers",
                    "mtp_depth", "sliding_window"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"expected a non-negative integer, got {value!r}", key=key)
        if self.heads % self.kv_heads:
            raise InputError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})",
                             key="kv_heads")
        for key, choices in (("activation", ACTIVATIONS), ("norm", NORMS), ("position", POSITIONS)):
            if getattr(self, key) not in choices:
                raise InputError(f"expected one of {', '.join(choices)}, got {getattr(self, key)!r}", key=key)
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"expected a probability in [0, 1), got {self.dropout!r}", key="dropout")
        if self.experts:
            if not 1 <= self.topk <= self.experts:
                raise InputError(f"expected 1 <= topk <= experts ({self.experts}), got {self.topk}", key="topk")
            if self.expert_ffn < 1:
                raise InputError("a MoE model needs expert_ffn >= 1", key="expert_ffn")
            if self.first_dense_layers >= self.layers:
                raise InputError(f"expected fewer than layers ({self.layers}) dense layers, "
                                 f"got {self.first_dense_layers}", key="first_dense_layers")
        elif self.topk or self.shared_experts:
            raise InputError("topk and shared_experts need experts >= 1", key="experts")

    # ---- shape -------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def gated(self) -> bool:
        return self.activation in GATED

    def nodes_reached(self, nodes: int) -> float:
        """Expected nodes a token's `topk` experts lie on when the experts spread over `nodes` (at most
        `route_nodes` with node-limited routing): what a token's copies cost the network under DeepEP."""
        reach = min(nodes, self.route_nodes or nodes)
        return reach * (1 - (1 - 1 / reach) ** self.topk)

    def ep_legs(self, tokens: float, width: float, group: int, gpus_per_node: int,
                to_experts: bool) -> list[tuple[str, float, int, int | None]]:
        """The all-to-alls of one expert-parallel exchange of `tokens` tokens of `width` bytes over `group`
        GPUs, as DeepEP runs it, each (name suffix, bytes, group, stride): inside a node one all-to-all of
        every token's copies to its experts' GPUs ("", stride None); over several nodes a token crosses the
        network once per node holding any of its experts (`nodes_reached`), to the GPU of the same local
        rank there ("rdma", stride gpus_per_node), and is forwarded over NVLink ("nvlink", stride 1) -
        network first towards the experts, last on the way back."""
        copies = tokens * self.topk * width
        if group <= gpus_per_node or group % gpus_per_node:
            return [("", copies, group, None)]
        nodes = group // gpus_per_node
        inter = ("rdma", tokens * self.nodes_reached(nodes) * width, nodes, gpus_per_node)
        intra = ("nvlink", copies, gpus_per_node, 1)
        return [inter, intra] if to_experts else [intra, inter]

    def is_moe_layer(self, layer: int) -> bool:
        if not self.is_moe or layer < self.first_dense_layers:
            return False
        return (layer - self.first_dense_layers) % self.moe_every == 0

    @property
    def moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.layers))

    def is_windowed_layer(self, layer: int) -> bool:
        return self.sliding_window > 0 and layer % self.sliding_window_every == 0

    @property
    def q_width(self) -> int:
        """Width of all query heads (the Q*K^T contraction)."""
        return self.heads * (self.mla.qk_head_dim if self.mla else self.head_dim)

    @property
    def k_width(self) -> int:
        return (self.heads * self.mla.qk_head_dim) if self.mla else self.kv_heads * self.head_dim

    @property
    def v_width(self) -> int:
        """Width of all value heads (the attention output before the output projection)."""
        return (self.heads * self.mla.v_head_dim) if self.mla else self.kv_heads * self.head_dim

    @property
    def attn_out_width(self) -> int:
        return self.heads * (self.mla.v_head_dim if self.mla else self.head_dim)

    @property
    def d_attn(self) -> int:
        """Mean of the query/key and the value widths over all heads (heads*head_dim without MLA)."""
        return (self.q_width + self.attn_out_width) // 2

    # ---- parameter counts --------------------------------------------------------------------
    def _norm(self, width: int) -> int:
        return width * (2 if self.norm == "layernorm" else 1)

    def attn_matmul_params(self) -> int:
        d = self.d_model
        if self.mla is not None:
            m = self.mla
            q = (d * m.q_lora_rank + m.q_lora_rank * self.q_width) if m.q_lora_rank else d * self.q_width
            kv = d * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank * self.heads * (
                m.qk_nope_head_dim + m.v_head_dim)
            return q + kv + self.attn_out_width * d
        return d * (self.q_width + 2 * self.kv_heads * self.head_dim) + self.attn_out_width * d

    def attn_params(self) -> int:
        """One attention block: matrices, biases, q/k norms and MLA's latent norms."""
        n = self.attn_matmul_params()
        if self.bias:
            n += self.q_width + 2 * self.kv_heads * self.head_dim + self.d_model
        if self.qk_norm:
            n += 2 * self.head_dim
        if self.mla is not None:
            n += self.mla.q_lora_rank + self.mla.kv_lora_rank
        return n

    def mlp_matmul_params(self, hidden: int) -> int:
        return (3 if self.gated else 2) * self.d_model * hidden

    def mlp_params(self, hidden: int) -> int:
        n = self.mlp_matmul_params(hidden)
        if self.bias:
            n += (2 * hidden if self.gated else hidden) + self.d_model
        return n

    def router_params(self) -> int:
        return self.d_model * self.experts + (self.experts if self.bias else 0)

    def layer_params(self, layer: int) -> tuple[int, int]:
        """(non-expert, routed-expert) parameters of one layer. Shared experts and the router are
        non-expert: they are replicated like attention, not split over expert-parallel ranks."""
        dense = self.attn_params() + self.norms_per_layer * self._norm(self.d_model)
        if not self.is_moe_layer(layer):
            return dense + self.mlp_params(self.ffn), 0
        dense += self.router_params() + self.shared_experts * self.mlp_params(self.expert_ffn)
        return dense, self.experts * self.mlp_params(self.expert_ffn)

    def embedding_params(self) -> int:
        """Input embedding plus a learned position table."""
        return self.vocab * self.d_model + (self.max_seq * self.d_model if self.position == "learned" else 0)

    def head_params(self) -> int:
        """Final norm plus the LM head (0 for the head when tied to the embedding)."""
        return self._norm(self.d_model) + (0 if self.tied_embeddings else self.vocab * self.d_model)

    def params_total(self, include_mtp: bool = False) -> int:
        n = self.embedding_params() + self.head_params()
        n += sum(sum(self.layer_params(i)) for i in range(self.layers))
        return n + (self.params_mtp() if include_mtp else 0)

    def params_mtp(self) -> int:
        """DeepSeek-V3 multi-token prediction modules: per depth two RMSNorms, the 2d->d projection, one
        transformer layer like the last one, and the output norm; embedding and head are shared with the
        main model and not counted again (DeepSeek's 14B counts its copy of them, ~1.9B)."""
        if not self.mtp_depth:
            return 0
        per_depth = 3 * self._norm(self.d_model) + 2 * self.d_model * self.d_model
        per_depth += sum(self.layer_params(self.layers - 1))
        return self.mtp_depth * per_depth

    def _active_layer_params(self, layer: int) -> int:
        dense, _ = self.layer_params(layer)
        if self.is_moe_layer(layer):
            dense += self.topk * self.mlp_params(self.expert_ffn)
        return dense

    def params_active(self, embeddings: bool = True) -> int:
        """Parameters one token uses: every layer's non-expert part plus topk routed experts, final norm
        and LM head, and with ``embeddings`` the input embedding (and learned positions). For a dense
        model with ``embeddings=True`` this is ``params_total()``."""
        n = sum(self._active_layer_params(i) for i in range(self.layers))
        n += self._norm(self.d_model) + self.vocab * self.d_model  # the head is used even when tied
        if embeddings and not self.tied_embeddings:
            n += self.vocab * self.d_model
        if embeddings and self.position == "learned":
            n += self.max_seq * self.d_model
        return n

    def matmul_params_active(self) -> int:
        """Weights of the matrix multiplies one token goes through: attention, MLP or router plus
        (topk + shared) experts, and the LM head (vocab x d_model, tied or not). No norms, biases or
        embedding lookups."""
        n = self.vocab * self.d_model
        for i in range(self.layers):
            n += self.attn_matmul_params()
            if self.is_moe_layer(i):
                n += self.d_model * self.experts
                n += (self.topk + self.shared_experts) * self.mlp_matmul_params(self.expert_ffn)
            else:
                n += self.mlp_matmul_params(self.ffn)
        return n

    # ---- FLOPs ---------------------------------------------------------------------------------
    def attended_keys(self, layer: int, seq: int, causal: bool = True) -> float:
        """Mean number of keys a query attends to in one layer: seq/2 causal (the s x s score matrix
        halved), seq without a mask; a sliding window w < seq gives w - w^2/(2 seq) causal."""
        if self.is_windowed_layer(layer) and self.sliding_window < seq:
            w = self.sliding_window
            return w - w * w / (2.0 * seq) if causal else float(w)
        return seq / 2.0 if causal else float(seq)

    def flops_per_token(self, seq: int, causal: bool = True) -> float:
        """Training FLOPs (forward + backward) per token at sequence length ``seq``::

            6 * N_active  +  sum over layers of 12 * keys(layer) * d_attn

        with ``N_active = matmul_params_active()`` (non-embedding matrix weights a token uses, router and
        LM head included) and ``d_attn`` = heads * (qk_head_dim + v_head_dim) / 2 (heads * head_dim
        without MLA). Q.K^T and P.V each cost 2 * keys * width per query forward, times 3 for forward and
        backward. ``causal=True`` counts only the unmasked half: keys = seq/2, so a full-attention model
        gets 6 * layers * seq * d_attn. ``causal=False`` (keys = seq) gives 12 * layers * seq * d_attn,
        which is exactly the attention term of Megatron-LM's ``num_floating_point_operations`` and NeMo's
        MFU formulas (Narayanan et al. 2021, appendix): those count the whole s x s score matrix, so their
        FLOPs, and MFU, exceed the causal count by 6 * layers * seq * d_attn per token. Recomputation is
        not counted (model FLOPs, not hardware FLOPs). MTP modules are not counted.
        """
        if seq < 1:
            raise InputError(f"expected a positive sequence length, got {seq}", key="seq")
        attn = sum(12.0 * self.attended_keys(i, seq, causal) * self.d_attn for i in range(self.layers))
        return 6.0 * self.matmul_params_active() + attn


_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
_YAML_ONLY = {"published", "mla"}


def _from_mapping(model_id: str, raw: dict[str, Any]) -> ModelConfig:
    unknown = sorted(set(raw) - _FIELDS - _YAML_ONLY)
    if unknown:
        raise InputError(f"unknown field '{unknown[0]}'; expected one of {', '.join(sorted(_FIELDS - {'model_id'}))}",
                         key=f"{model_id}.{unknown[0]}")
    fields = {k: v for k, v in raw.items() if k not in _YAML_ONLY}
    mla = raw.get("mla")
    if mla is not None:
        try:
            fields["mla"] = MLAConfig(**mla)
        except TypeError as exc:
            raise InputError(f"bad mla block: {exc}", key=f"{model_id}.mla") from None
    published = raw.get("published") or {}
    fields["published_total_b"] = published.get("total")
    fields["published_active_b"] = published.get("active")
    fields["published_active_counts_input_embedding"] = published.get("active_counts_input_embedding", True)
    try:
        return ModelConfig(model_id=model_id, **fields)
    except InputError as exc:
        raise exc.within(key_prefix=model_id) from None


@cache
def _zoo() -> dict[str, ModelConfig]:
    import yaml  # loaded on first use: `chipsim --help` imports no heavy library

    text = (resources.files("chipsim.models") / "zoo.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    return {model_id: _from_mapping(model_id, entry) for model_id, entry in raw.items()}


def known_models() -> list[str]:
    """Every model id load_model accepts (the zoo's, then gpt-custom)."""
    return [*_zoo(), CUSTOM_ID]


def load_model(model_id: str, **dims: Any) -> ModelConfig:
    """The zoo's model; ``gpt-custom`` takes its shape from ``dims`` (see :func:`custom_model`)."""
    if model_id == CUSTOM_ID:
        return custom_model(**dims)
    zoo = _zoo()
    if model_id not in zoo:
        raise InputError(f"unknown model '{model_id}'; expected one of {', '.join(known_models())}", key="model")
    if dims:
        raise InputError(f"a zoo model takes no dimensions (got {', '.join(sorted(dims))}); "
                         f"use '{CUSTOM_ID}' for your own shape", key="model")
    return zoo[model_id]


def custom_model(**dims: Any) -> ModelConfig:
    """A ``gpt-custom`` model from explicit dimensions. ``layers``, ``d_model`` and ``heads`` are needed;
    the rest default to Megatron-LM's GPT: kv_heads = heads, head_dim = d_model/heads, ffn = 4*d_model,
    vocab 50257, GeLU, LayerNorm, learned positions, biases, tied embeddings, max_seq 2048. Any other
    :class:`ModelConfig` field (MoE, activation, ...) may be given too."""
    for key in ("layers", "d_model", "heads"):
        if key not in dims:
            raise InputError(f"{CUSTOM_ID} needs {key}", key=key)
    allowed = _FIELDS - {"model_id", "published_total_b", "published_active_b",
                         "published_active_counts_input_embedding"}
    for key in dims:
        if key not in allowed:
            raise InputError(f"unknown dimension '{key}'; expected one of {', '.join(sorted(allowed))}", key=key)
    d_model, heads = dims["d_model"], dims["heads"]
    if not isinstance(d_model, int) or not isinstance(heads, int) or heads < 1:
        raise InputError(f"expected positive integers, got d_model={d_model!r} heads={heads!r}", key="heads")
    if "head_dim" not in dims and d_model % heads:
        raise InputError(f"d_model ({d_model}) must be a multiple of heads ({heads}) unless head_dim is given",
                         key="heads")
    base: dict[str, Any] = {
        "source": "explicit dimensions", "kv_heads": heads, "head_dim": d_model // heads, "ffn": 4 * d_model,
        "vocab": 50257, "activation": "gelu", "norm": "layernorm", "tied_embeddings": True,
        "position": "learned", "max_seq": 2048, "bias": True,
    }
    base.update(dims)
    if isinstance(base.get("mla"), dict):
        base["mla"] = MLAConfig(**base["mla"])
    return ModelConfig(model_id=CUSTOM_ID, **base)
