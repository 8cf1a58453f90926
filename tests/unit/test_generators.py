"""Workload generators: defaults, parameter checking, model sizes, precisions and schemes."""

from __future__ import annotations

from collections import Counter

import pytest

import chipsim
from chipsim.errors import InputError
from chipsim.workload.generators import GENERATORS, build_workload, describe_generators
from chipsim.workload.generators.transformer import PRESETS, model_shape

SMALL = {"layers": 2, "batch": 1, "seq": 256}


def test_the_four_generators_are_registered() -> None:
    assert {"transformer_train_step", "dynamic_attention", "quantized_inference", "all_reduce"} <= set(GENERATORS)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_every_generator_builds_with_defaults(name: str) -> None:
    wl = build_workload(name, {})
    assert wl.ops
    assert wl.generator == name
    assert wl.total_bytes > 0
    assert wl.footprint_bytes > 0
    assert [op.id for op in wl.ops] == list(range(len(wl.ops)))
    assert all(d < op.id for op in wl.ops for d in op.deps)
    # None and {} mean the same: all defaults
    assert len(build_workload(name, None).ops) == len(wl.ops)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_every_generator_is_documented(name: str) -> None:
    info = describe_generators()[name]
    assert info["description"]
    assert info["params"]
    assert all(p["doc"] for p in info["params"].values())


def test_llama_350m_parameter_count() -> None:
    wl = build_workload("transformer_train_step", {"model": "llama-350m", **SMALL, "layers": None})
    assert wl.meta["params"] == 373_867_520
    assert PRESETS["llama-350m"].params == 373_867_520


def test_llama_2_7b_parameter_count() -> None:
    assert PRESETS["llama-2-7b"].params == pytest.approx(6.74e9, rel=0.002)
    # meta['params'] is the model's, also when layers are overridden for a smaller graph
    wl = build_workload("transformer_train_step", {"model": "llama-2-7b", **SMALL})
    assert wl.meta["params"] == model_shape("llama-2-7b", 2, None, None, None, None, None).params


def test_training_flops_are_about_6_n_d() -> None:
    wl = build_workload("transformer_train_step", {"model": "llama-350m", "layers": 4, "batch": 2, "seq": 512})
    shape = model_shape("llama-350m", 4, None, None, None, None, None)
    tokens = 2 * 512
    assert wl.meta["tokens"] == tokens
    assert wl.meta["model_flops"] == 6.0 * shape.params * tokens
    # GEMM FLOPs = 6 x (GEMM weights) x tokens: the block linears and the LM head, not the embedding lookup
    gemm_params = shape.layers * sum(i * o for _, i, o in shape.linears()) + shape.vocab * shape.d_model
    gemm_flops = sum(op.flops for op in wl.ops if op.kind == "gemm")
    assert gemm_flops == pytest.approx(6.0 * gemm_params * tokens, rel=1e-9)


def test_fp8_adds_quantize_ops_and_fp8_gemms() -> None:
    bf16 = build_workload("transformer_train_step", {**SMALL, "precision": "bf16"})
    fp8 = build_workload("transformer_train_step", {**SMALL, "precision": "fp8"})
    kinds = Counter((op.kind, op.dtype) for op in fp8.ops)
    assert sum(n for (kind, _), n in kinds.items() if kind == "quantize") > 0
    assert not any(op.kind == "quantize" for op in bf16.ops)
    assert kinds[("gemm", "fp8")] > 0
    assert not any(op.dtype == "fp8" for op in bf16.ops if op.kind == "gemm")
    # every block linear (4 per layer) runs fwd, dgrad and wgrad in fp8; the LM head stays bf16
    assert kinds[("gemm", "fp8")] == SMALL["layers"] * 4 * 3
    assert fp8.meta["fp8_overflow_reruns"] == 0
    assert len(fp8.ops) > len(bf16.ops)


def test_fp8_overflow_reruns_every_step_in_bf16() -> None:
    once = build_workload("transformer_train_step", {**SMALL, "precision": "fp8"})
    bf16 = build_workload("transformer_train_step", {**SMALL, "precision": "bf16"})
    rerun = build_workload("transformer_train_step", {**SMALL, "precision": "fp8", "steps": 2,
                                                       "overflow_probability": 1.0})
    assert rerun.meta["fp8_overflow_reruns"] == 2
    # each of the two steps runs in fp8, then again in bf16
    assert len(rerun.ops) == 2 * (len(once.ops) + len(bf16.ops))
    gemms = Counter(op.dtype for op in rerun.ops if op.kind == "gemm")
    assert gemms["fp8"] == 2 * sum(op.dtype == "fp8" for op in once.ops if op.kind == "gemm")
    assert gemms["bf16"] >= 2 * sum(op.kind == "gemm" for op in bf16.ops)
    # the steps are chained: the graph is one long dependency chain through each optimizer step
    optimizers = [op for op in rerun.ops if op.kind == "optimizer"]
    assert len(optimizers) == 4
    never = build_workload("transformer_train_step", {**SMALL, "precision": "fp8", "steps": 2,
                                                       "overflow_probability": 0.0})
    assert never.meta["fp8_overflow_reruns"] == 0
    assert len(never.ops) == 2 * len(once.ops)


def test_quantized_inference_int4_weights() -> None:
    params = {"model": "llama-1.3b", "layers": 2, "batch": 4, "prompt": 512}
    bf16 = build_workload("quantized_inference", {**params, "weights": "bf16"})
    int4 = build_workload("quantized_inference", {**params, "weights": "int4"})
    quant = [op for op in int4.ops if op.kind == "gemm" and op.attrs.get("weight_dtype") == "int4"]
    assert len(quant) == 2 * 4  # the four block linears of each layer; the LM head stays bf16
    assert all(op.attrs.get("group_size") == 128 for op in quant)
    assert not any(op.attrs.get("weight_dtype") for op in bf16.ops)
    # footprint: the linears shrink to 4 bits (+ group scales), everything else is unchanged
    shape = model_shape("llama-1.3b", 2, None, None, None, None, None)
    other = (shape.params - shape.layers * sum(i * o for _, i, o in shape.linears())) * 2.0
    ratio = (int4.memory["weights"] - other) / (bf16.memory["weights"] - other)
    assert 0.24 <= ratio <= 0.30
    assert int4.memory["weights"] < bf16.memory["weights"]
    assert int4.memory["kv_cache"] == bf16.memory["kv_cache"]
    # the GEMMs read about a quarter of the weight bytes
    by_name = {op.name: op for op in bf16.ops}
    for op in quant:
        ref = by_name[op.name]
        assert op.bytes < ref.bytes
        assert op.flops == ref.flops


def test_int4_decode_runs_on_both_int4_modes() -> None:
    wl = build_workload("quantized_inference", {"layers": 2, "weights": "int4"})
    for chip in ("h200_sxm", "dojo_int4"):
        result = chipsim.simulate(wl, chipsim.load_chip(chip))
        assert result.latency_s > 0
        assert any("int4" in note for note in result.notes)


def test_all_reduce_int8_compressed_scheme() -> None:
    size = 2**30
    wl = build_workload("all_reduce", {"scheme": "int8_compressed", "dtype": "fp32", "size": "1 GiB", "chips": 8})
    names = [op.name for op in wl.ops]
    assert any(n.startswith("quant.") for n in names)
    assert any(n.startswith("dequant.") for n in names)
    gathers = [op for op in wl.ops if op.kind == "all_gather"]
    assert gathers and all(op.stream == "comm" for op in gathers)
    data = next(op for op in gathers if op.dtype == "int8")
    assert data.shape["bytes"] == size / 4  # int8 is a quarter of fp32
    assert data.shape["group"] == 8
    assert not any(op.kind == "all_reduce" for op in wl.ops)
    # quantize before gathering, dequantize after
    assert names.index(data.name) > max(i for i, n in enumerate(names) if n.startswith("quant."))
    assert names.index(data.name) < min(i for i, n in enumerate(names) if n.startswith("dequant."))

    plain = build_workload("all_reduce", {"scheme": "plain", "size": size})
    assert [op.kind for op in plain.ops] == ["all_reduce"]
    assert plain.ops[0].shape["bytes"] == size


def test_memory_footprint_of_7b_training_does_not_fit_an_h100() -> None:
    wl = build_workload("transformer_train_step", {"model": "llama-2-7b"})
    # weights + grads + AdamW state alone: 16 bytes per parameter
    assert wl.footprint_bytes > 16 * wl.meta["params"]
    result = chipsim.simulate(wl, chipsim.load_chip("h100_sxm"))
    assert result.fits_in_memory is False
    assert any("does not fit" in note for note in result.notes)
    assert result.summary()["fits_in_memory"] is False


@pytest.mark.parametrize(("generator", "params", "key", "fragment"), [
    ("nope", {}, "workload.generator", "unknown generator"),
    ("all_reduce", {"chipz": 4}, "workload.params.chipz", "unknown parameter"),
    ("transformer_train_step", {"batch": "eight"}, "workload.params.batch", "integer"),
    ("transformer_train_step", {"batch": 2.5}, "workload.params.batch", "integer"),
    ("transformer_train_step", {"batch": True}, "workload.params.batch", "integer"),
    ("transformer_train_step", {"batch": 0}, "workload.params.batch", ">= 1"),
    ("transformer_train_step", {"precision": "fp16"}, "workload.params.precision", "expected one of"),
    ("transformer_train_step", {"model": "gpt-5"}, "workload.params.model", "unknown model preset"),
    ("transformer_train_step", {"d_model": 1000, "heads": 3}, "workload.params.heads", "multiple"),
    ("transformer_train_step", {"heads": 16, "kv_heads": 5}, "workload.params.kv_heads", "multiple"),
    ("transformer_train_step", {"overflow_probability": 1.5}, "workload.params.overflow_probability",
     "probability"),
    ("dynamic_attention", {"d_model": 1000, "heads": 3}, "workload.params.heads", "multiple"),
    ("dynamic_attention", {"causal": "yes"}, "workload.params.causal", "true or false"),
    ("quantized_inference", {"weights": "int2"}, "workload.params.weights", "expected one of"),
    ("all_reduce", {"size": "1 GB/s"}, "workload.params.size", "size"),
    ("all_reduce", {"size": -5}, "workload.params.size", "non-negative"),
])
def test_bad_generator_params_are_located_input_errors(generator, params, key, fragment) -> None:
    with pytest.raises(InputError) as info:
        build_workload(generator, params)
    assert info.value.key == key
    assert fragment in info.value.message
