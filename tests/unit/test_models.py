"""Model zoo, Megatron-Core layouts and per-GPU training memory (chipsim.models)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from chipsim.errors import InputError
from chipsim.models import (
    MemoryBreakdown,
    check_fits,
    custom_model,
    known_models,
    load_model,
    memory_per_gpu,
    memory_per_stage,
    resolve_layout,
)
from chipsim.models.memory import COMM_CONSTANT_BYTES, inflight_layer_microbatches, layer_activation_bytes

CALIBRATION = Path(__file__).resolve().parents[3] / "shared" / "reference" / "published" / "training_calibration.csv"
ZOO = [m for m in known_models() if m != "gpt-custom"]
GB = 1e9


# ---- zoo ---------------------------------------------------------------------------------------

def test_the_zoo_covers_the_calibration_vocabulary() -> None:
    assert set(known_models()) == {
        "llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b", "llama3.1-405b", "gpt3-175b",
        "nemotron4-15b", "nemotron4-340b", "mixtral-8x7b", "mixtral-8x22b", "grok-1-314b", "deepseek-v3",
        "qwen3-8b", "qwen3-14b", "qwen3-32b", "qwen3-30b-a3b", "qwen3-235b-a22b", "gpt-oss-120b", "gptj-6b",
        "mistral-7b", "llama3.2-1b", "llama3.2-3b", "qwen2.5-7b", "qwen2.5-72b", "gpt-custom"}
    assert all(load_model(m).source for m in ZOO)


@pytest.mark.parametrize("model_id", ZOO)
def test_parameter_counts_match_the_published_totals(model_id: str) -> None:
    m = load_model(model_id)
    assert m.published_total_b is not None
    assert m.params_total() / 1e9 == pytest.approx(m.published_total_b, rel=0.02)
    if m.published_active_b is not None:
        active = m.params_active(embeddings=m.published_active_counts_input_embedding)
        assert active / 1e9 == pytest.approx(m.published_active_b, rel=0.02)
    if not m.is_moe:
        assert m.params_active() == m.params_total()


def test_exact_counts_of_well_known_models() -> None:
    assert load_model("llama2-7b").params_total() == 6_738_415_616
    assert load_model("llama3-8b").params_total() == 8_030_261_248
    assert load_model("llama3-70b").params_total() == 70_553_706_496
    # GPT-3: 96 * (12 h^2 + 13 h) + vocab * h + 2048 * h + 2h (biases and LayerNorms, tied head)
    h = 12288
    assert load_model("gpt3-175b").params_total() == 96 * (12 * h * h + 13 * h) + 50257 * h + 2048 * h + 2 * h


def test_deepseek_v3_shape() -> None:
    m = load_model("deepseek-v3")
    assert m.moe_layers == 58 and [m.is_moe_layer(i) for i in range(4)] == [False, False, False, True]
    assert m.mla is not None and m.q_width == 128 * 192 and m.attn_out_width == 128 * 128
    # MTP: one MoE layer (11.5B) + eh_proj (2 * 7168^2); DeepSeek's 14B adds its embedding and head copy
    assert m.params_mtp() / 1e9 == pytest.approx(11.61, abs=0.01)
    assert (m.params_mtp() + 2 * 129280 * 7168) / 1e9 == pytest.approx(14, rel=0.05)
    assert m.params_total(include_mtp=True) == m.params_total() + m.params_mtp()


def test_gpt_oss_counts_active_without_the_input_embedding() -> None:
    m = load_model("gpt-oss-120b")
    assert m.params_active() - m.params_active(embeddings=False) == 201088 * 2880


@pytest.mark.skipif(not CALIBRATION.exists(), reason="shared/reference/published/training_calibration.csv is not here")
def test_zoo_agrees_with_the_calibration_rows() -> None:
    checked = 0
    with CALIBRATION.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["model_id"] == "gpt-custom":
                continue
            m = load_model(row["model_id"])
            for column, value in (("layers", m.layers), ("d_model", m.d_model), ("heads", m.heads),
                                  ("kv_heads", m.kv_heads), ("vocab", m.vocab), ("moe_experts", m.experts),
                                  ("moe_topk", m.topk)):
                if row[column]:
                    assert float(row[column]) == value, (row["model_id"], column)
            if row["ffn"]:  # the MoE rows give the expert ffn
                assert float(row["ffn"]) == (m.expert_ffn if m.is_moe else m.ffn), row["model_id"]
            checked += 1
    assert checked > 100


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(InputError) as exc:
        load_model("llama5-1t")
    assert exc.value.key == "model"
    assert "llama2-7b" in str(exc.value) and "gpt-custom" in str(exc.value)
    with pytest.raises(InputError, match="takes no dimensions"):
        load_model("llama2-7b", layers=3)


def test_gpt_custom_defaults_to_megatron_gpt() -> None:
    m = load_model("gpt-custom", layers=24, d_model=2048, heads=16)
    assert m == custom_model(layers=24, d_model=2048, heads=16)
    h = 2048
    assert m.params_total() == 24 * (12 * h * h + 13 * h) + 50257 * h + 2048 * h + 2 * h
    moe = custom_model(layers=4, d_model=512, heads=8, experts=8, topk=2, expert_ffn=1024, activation="swiglu")
    assert moe.params_total() > moe.params_active()
    with pytest.raises(InputError) as exc:
        custom_model(layers=2, d_model=512)
    assert exc.value.key == "heads"
    with pytest.raises(InputError) as exc:
        custom_model(layers=2, d_model=512, heads=8, widht=3)
    assert exc.value.key == "widht"
    with pytest.raises(InputError) as exc:
        custom_model(layers=2, d_model=512, heads=8, kv_heads=3)
    assert exc.value.key == "kv_heads"
    with pytest.raises(InputError) as exc:
        custom_model(layers=2, d_model=512, heads=8, activation="tanh")
    assert exc.value.key == "activation"


def test_flops_per_token_matches_megatron_without_the_causal_halving() -> None:
    m = load_model("llama3-70b")
    s, h, L, a, g, f, v = 8192, 8192, 80, 64, 8, 28672, 128256
    # Megatron-LM num_floating_point_operations / (batch * seq), SwiGLU (x 3/2), no causal halving
    megatron = 12 * L * h * h * ((1 + g / a + s / h) + f / h * 1.5 + v / (2 * L * h))
    assert m.flops_per_token(s, causal=False) == pytest.approx(megatron, rel=1e-12)
    assert m.flops_per_token(s, causal=False) - m.flops_per_token(s) == pytest.approx(6 * L * s * h)
    assert m.flops_per_token(s) == pytest.approx(6 * m.matmul_params_active() + 6 * L * s * h)
    # dense: 6 N (N without the embedding and norms, with the head) dominates at short sequences
    assert m.flops_per_token(1) == pytest.approx(6 * (m.params_total() - v * h), rel=1e-4)


def test_flops_of_moe_mla_and_sliding_windows() -> None:
    ds = load_model("deepseek-v3")
    # active matmul params: 37.5B minus the embedding (0.93B) and norms
    assert ds.matmul_params_active() / 1e9 == pytest.approx(36.6, abs=0.1)
    assert ds.d_attn == 128 * (192 + 128) // 2
    oss = load_model("gpt-oss-120b")
    full_attention = 12 * 64 * 64 * (18 * 65536 + 18 * 128 * (1 - 128 / (2 * 131072)))
    assert oss.flops_per_token(131072) == pytest.approx(6 * oss.matmul_params_active() + full_attention)
    with pytest.raises(InputError):
        oss.flops_per_token(0)


# ---- layout ------------------------------------------------------------------------------------

def test_dp_is_what_remains_and_microbatches_follow() -> None:
    m = load_model("llama3-70b")
    lay = resolve_layout(m, 64, tp=4, pp=4, cp=2, vp=5, global_batch=128, seq=8192)
    assert (lay.dp, lay.gpus, lay.num_microbatches, lay.dense_shard) == (2, 64, 64, 4)
    assert lay.stage_layers(80) == [20] * 4
    assert lay.stage_range(80, 1)[:5] == [4, 5, 6, 7, 20]  # vp chunks of 4 layers, round-robin
    one = resolve_layout(load_model("llama2-7b"), 8)
    assert (one.dp, one.global_batch, one.seq, one.recompute, one.zero) == (8, 8, 4096, "none", 0)


@pytest.mark.parametrize(("model_id", "gpus", "sizes", "key", "text"), [
    ("llama3-8b", 16, {"tp": 2, "dp": 4}, "dp", "must equal gpus (16)"),
    ("llama3-8b", 12, {"tp": 8}, "dp", "multiple of tp*pp*cp"),
    ("llama2-13b", 16, {"tp": 16}, "tp", "heads (40)"),
    ("nemotron4-15b", 12, {"tp": 12}, "tp", "kv_heads (8)"),
    ("llama2-7b", 64, {"pp": 64}, "pp", "32 layers cannot fill 64 pipeline chunks"),
    ("llama2-7b", 4, {"vp": 2}, "vp", "pp > 1"),
    ("mixtral-8x7b", 6, {"ep": 3}, "ep", "experts (8) must be divisible by ep (3)"),
    ("qwen3-30b-a3b", 8, {"ep": 16}, "ep", "must divide tp*cp*dp"),
    ("llama2-7b", 2, {"ep": 2}, "ep", "dense"),
    ("llama2-7b", 8, {"global_batch": 12}, "global_batch", "micro_batch*dp = 1*8 = 8"),
    ("llama2-7b", 8, {"cp": 8, "seq": 4100}, "seq", "2*cp"),
    ("llama2-7b", 8, {"zero": 4}, "zero", "ZeRO"),
    ("llama2-7b", 8, {"recompute": "some"}, "recompute", "selective"),
    ("llama2-7b", 8, {"tpp": 2}, "tpp", "unknown layout size"),
    ("mixtral-8x7b", 8, {"tp": 2, "sequence_parallel": False}, "sequence_parallel", "MoE"),
    ("llama3.1-405b", 128, {"tp": 8, "pp": 16, "first_stage_layers": 7}, "first_stage_layers", "15 stages"),
])
def test_bad_layouts_name_the_offending_size(model_id: str, gpus: int, sizes: dict[str, object], key: str,
                                             text: str) -> None:
    with pytest.raises(InputError) as exc:
        resolve_layout(load_model(model_id), gpus, **sizes)
    assert exc.value.key == key
    assert text in str(exc.value)


def test_kv_heads_are_replicated_when_tp_exceeds_them() -> None:
    lay = resolve_layout(load_model("llama3-70b"), 16, tp=16)  # 8 KV heads, each on 2 ranks
    assert lay.tp == 16
    lay = resolve_layout(load_model("qwen3-30b-a3b"), 8, tp=8, ep=8)  # 4 KV heads
    assert lay.expert_dp == 1


def test_uneven_pipeline_stages() -> None:
    m = load_model("llama3.1-405b")  # 126 layers = 15 + 6 * 16 + 15 on 8 stages
    lay = resolve_layout(m, 128, tp=8, pp=8, first_stage_layers=15, last_stage_layers=15)
    assert lay.stage_layers(126) == [15, 16, 16, 16, 16, 16, 16, 15]
    assert sorted(i for s in range(8) for i in lay.stage_range(126, s)) == list(range(126))


def test_expert_parallel_regroups_attention_ranks() -> None:
    m = load_model("deepseek-v3")
    lay = resolve_layout(m, 1024, tp=2, pp=16, ep=64, first_stage_layers=5, last_stage_layers=0)
    assert lay.gpus == 1024 and lay.dp == 32
    assert lay.expert_dp == 2 * 32 // 64  # = 1
    assert lay.stage_layers(61) == [5] + [4] * 14 + [0]
    stages = memory_per_stage(m, lay)
    # the last stage holds no layer but the LM head and the MTP module (one MoE layer)
    assert stages[-1].weights > stages[1].weights / 4
    with pytest.raises(InputError) as exc:
        resolve_layout(m, 1024, tp=2, pp=16, ep=64, first_stage_layers=1, last_stage_layers=0)
    assert "60 layers left" in str(exc.value) and exc.value.key == "first_stage_layers"


@pytest.mark.skipif(not CALIBRATION.exists(), reason="shared/reference/published/training_calibration.csv is not here")
def test_every_published_layout_resolves() -> None:
    def size(row: dict[str, str], key: str) -> int | None:
        return int(float(row[key])) if row[key] else None

    with CALIBRATION.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            m = load_model(row["model_id"])
            sizes = {k: size(row, k) for k in ("tp", "pp", "cp", "ep", "vp", "dp", "micro_batch", "global_batch")}
            lay = resolve_layout(m, int(float(row["gpus"])), seq=int(float(row["seq_len"])), **sizes)
            assert lay.gpus == int(float(row["gpus"]))


# ---- memory ------------------------------------------------------------------------------------

def test_llama2_7b_on_one_gpu_by_hand() -> None:
    m = load_model("llama2-7b")
    mem = memory_per_gpu(m, resolve_layout(m, 1, seq=4096))
    n = 6_738_415_616
    # model states: 2 (bf16 weights) + 4 (fp32 grads) + 12 (fp32 master, m, v) = 18 B/param = 121.29 GB
    assert (mem.weights, mem.gradients, mem.optimizer) == (2 * n, 4 * n, 12 * n)
    # activations per token and layer (h = 4096, f = 11008, a = 32, s = 4096, no dropout, no flash):
    #   norm inputs 4h + QKV/MLP inputs 4h + Q, K, V 6h + attention output 2h = 16h
    #   softmax output 2as = 64h; SwiGLU fc1 output 4f + activation output 2f = 6f = 16.125h
    #   -> 96.125h = 393,728 B (Korthikanti's 34h + 5as = 194h for GPT with dropout and GeLU)
    # x 4096 tokens x 32 layers = 51.607 GB; + final norm input 2h and fp32 logits 4 * 32000 per
    # token = 4096 * 136,192 B = 0.558 GB -> 52.165 GB
    assert mem.activations == 32 * 4096 * 393_728 + 4096 * (2 * 4096 + 4 * 32000)
    assert mem.comm == COMM_CONSTANT_BYTES  # no data parallelism, no pipeline
    assert mem.total / GB == pytest.approx(174.53, abs=0.01)  # well over 80 GB
    with pytest.raises(InputError) as exc:
        memory_per_gpu(m, resolve_layout(m, 1, seq=4096), chip_hbm_bytes=80e9)
    assert exc.value.key == "parallelism"
    assert "94.5 GB over" in str(exc.value) and "largest component: optimizer 80.9 GB" in str(exc.value)


def test_korthikanti_formula_for_gpt3() -> None:
    m = load_model("gpt3-175b")  # MHA, GeLU, ffn = 4h, dropout 0.1: the paper's own setting
    s, b, h, a, t = 2048, 1, 12288, 96, 8
    lay = resolve_layout(m, 8, tp=t, seq=s, micro_batch=b)
    assert layer_activation_bytes(m, lay, 0) == pytest.approx(s * b * h * (34 + 5 * a * s / h) / t)
    no_sp = resolve_layout(m, 8, tp=t, seq=s, sequence_parallel=False)
    assert layer_activation_bytes(m, no_sp, 0) == pytest.approx(s * b * h * (10 + 24 / t + 5 * a * s / (h * t)))
    # selective recompute keeps 34 sbh / t (+ the 4-byte log-sum-exp per head); full keeps 2 sbh / t
    sel = resolve_layout(m, 8, tp=t, seq=s, recompute="selective")
    assert layer_activation_bytes(m, sel, 0, flash_attention=True) == pytest.approx(
        s * b * h * 34 / t + s * b * 4 * a / t)
    full = resolve_layout(m, 8, tp=t, seq=s, recompute="full")
    per_stage = memory_per_gpu(m, full).activations
    logits = s * (2 * h / t + 4 * 50257 / t)
    assert per_stage == pytest.approx(96 * 2 * s * b * h / t + layer_activation_bytes(m, full, 0) + logits)


def test_llama3_70b_tp8_pp4_fits_80gb_with_selective_recompute() -> None:
    m = load_model("llama3-70b")
    lay = resolve_layout(m, 32, tp=8, pp=4, micro_batch=1, global_batch=64, seq=4096, recompute="selective")
    stages = memory_per_stage(m, lay)
    mem = memory_per_gpu(m, lay, chip_hbm_bytes=80e9)  # does not raise
    assert mem.stage == 0 and mem == max(stages, key=lambda x: x.total)
    # stage 0: 20 layers (856.2M each) + embedding 1.05B, / tp 8 -> 2.27B params x 18 B = 40.9 GB
    assert (mem.weights + mem.gradients + mem.optimizer) / GB == pytest.approx(40.9, abs=0.05)
    # activations: 33.5h per token and layer (GQA K/V are h/8 each; SwiGLU 2h + 6f = 23h) / tp 8,
    # x 4096 tokens x 20 layers x 4 micro-batches in flight (1F1B) = 11.25 GB
    assert mem.activations == pytest.approx(4096 * 8192 * (33.5 / 8 + 4 * 64 / 8 / 8192) * 20 * 4)
    assert mem.total / GB == pytest.approx(53.2, abs=0.1)
    no_recompute = resolve_layout(m, 32, tp=8, pp=4, global_batch=64, seq=4096)
    assert memory_per_gpu(m, no_recompute).total > mem.total > memory_per_gpu(
        m, resolve_layout(m, 32, tp=8, pp=4, global_batch=64, seq=4096, recompute="full")).total
    # pp=1 does not fit: 8.8B params per GPU x 18 B
    with pytest.raises(InputError, match="largest component: optimizer"):
        memory_per_gpu(m, resolve_layout(m, 32, tp=8, seq=4096, recompute="selective"), chip_hbm_bytes=80e9)


def test_zero3_over_64_gpus_shrinks_weights_64x() -> None:
    m = load_model("llama2-7b")
    base = memory_per_gpu(m, resolve_layout(m, 64, seq=4096))
    z3 = memory_per_gpu(m, resolve_layout(m, 64, seq=4096, zero=3))
    z1 = memory_per_gpu(m, resolve_layout(m, 64, seq=4096, zero=1))
    assert z3.weights == pytest.approx(base.weights / 64)
    assert z3.gradients == pytest.approx(base.gradients / 64)
    assert z3.optimizer == pytest.approx(base.optimizer / 64)
    assert (z1.weights, z1.gradients, z1.optimizer) == (base.weights, base.gradients, pytest.approx(base.optimizer / 64))
    assert z3.comm > z1.comm  # gathered weights of two layers and one layer's grads


def test_expert_parameters_shard_over_the_expert_data_parallel_group() -> None:
    m = load_model("qwen3-30b-a3b")
    lay = resolve_layout(m, 16, ep=8, global_batch=16, seq=4096, zero=1)
    assert lay.expert_dp == 2 and lay.dense_shard == 16
    mem = memory_per_gpu(m, lay)
    dense = m.params_total() - m.moe_layers * m.experts * m.mlp_params(m.expert_ffn)
    expert = m.params_total() - dense
    assert mem.weights == pytest.approx(2 * (dense + expert / 8))
    assert mem.optimizer == pytest.approx(12 * (dense / 16 + expert / 8 / 2))


def test_interleaving_holds_more_microbatches_on_the_first_stage() -> None:
    m = load_model("llama3-70b")
    flat = resolve_layout(m, 64, tp=4, pp=4, global_batch=64, seq=8192)
    inter = resolve_layout(m, 64, tp=4, pp=4, vp=5, global_batch=64, seq=8192)
    assert inflight_layer_microbatches(flat, 0, 20) == 4 * 20
    assert inflight_layer_microbatches(flat, 3, 20) == 1 * 20
    assert inflight_layer_microbatches(inter, 0, 20) == pytest.approx(4 * 20 * (1 + 3 / (4 * 5)))
    few = resolve_layout(m, 64, tp=4, pp=4, global_batch=8, seq=8192)  # 2 micro-batches per step
    assert inflight_layer_microbatches(few, 0, 20) == 2 * 20


def test_precision_and_fit_checks() -> None:
    m = load_model("llama2-7b")
    lay = resolve_layout(m, 8, seq=2048, zero=1)
    fp32 = memory_per_gpu(m, lay, "fp32")
    assert fp32.weights == 4 * m.params_total() and fp32.optimizer == pytest.approx(8 * m.params_total() / 8)
    bf16_grads = memory_per_gpu(m, lay, grad_accum_fp32=False)
    assert bf16_grads.gradients == 2 * m.params_total()
    with pytest.raises(InputError) as exc:
        memory_per_gpu(m, lay, "int4")
    assert exc.value.key == "precision"
    small = MemoryBreakdown(weights=10e9, gradients=20e9, optimizer=5e9, activations=70e9, comm=1e9, stage=2)
    check_fits(small, 120e9)
    with pytest.raises(InputError) as exc:
        check_fits(small, 80e9)
    assert str(exc.value) == ("key 'parallelism': needs 106.0 GB per GPU (pipeline stage 2), 26.0 GB over the "
                              "chip's 80.0 GB; largest component: activations 70.0 GB (try recompute, a smaller "
                              "micro_batch, or more tp/cp)")
    assert math.isclose(small.total, 106e9)


def test_layers_that_do_not_divide_split_as_megatron_balances_them() -> None:
    # DeepSeek-V3's 61 layers over pp=8, vp=4 (NeMo's H100 recipe): 63 slots (embedding and loss
    # count as a layer each) over 32 chunks: every chunk two slots but the last, one
    layout = resolve_layout(load_model("deepseek-v3"), 1024, tp=2, pp=8, vp=4, ep=64, global_batch=8192, seq=4096)
    chunks = layout.chunk_layers(61)
    assert layout.balanced and sum(chunks) == 61 and len(chunks) == 32
    assert chunks[0] == 1 and chunks[-1] == 0 and set(chunks[1:-1]) == {2}
    assert layout.stage_layers(61) == [7, 8, 8, 8, 8, 8, 8, 6]
    assert sorted(i for s in range(8) for i in layout.stage_range(61, s)) == list(range(61))
    # Llama-3.1-405B's 126 layers over pp=8: 128 slots, 16 per stage, the ends 15
    even = resolve_layout(load_model("llama3.1-405b"), 1024, tp=8, pp=8, cp=2, global_batch=512, seq=8192)
    assert even.stage_layers(126) == [15, 16, 16, 16, 16, 16, 16, 15]
