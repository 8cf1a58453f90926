"""Speculative decoding in the serving engine: drafted tokens verified per step, accepted in a row."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from chipsim.config.runconfig import parse_run_config
from chipsim.errors import InputError
from chipsim.hardware.registry import load_chip
from chipsim.models import load_model
from chipsim.network.system import system_for
from chipsim.serving.config import resolve_serving
from chipsim.serving.engine import Arrivals, simulate_serving
from chipsim.serving.iteration import IterationModel
from chipsim.serving.metrics import summarize
from chipsim.serving.profiles import engine_profile
from chipsim.serving.quant import quantization
from chipsim.serving.run import run_serving
from chipsim.serving.speculative import Speculation, accepted

EAGLE = Speculation("eagle", 3, 0.8)


def _model(spec: Speculation | None, name: str = "llama3-8b", chip: str = "h100_sxm") -> IterationModel:
    return IterationModel(load_model(name), load_chip(chip), quantization("none"), engine_profile("trtllm"),
                          speculation=spec)


def _closed(model: IterationModel, clients: int, rounds: int = 4) -> dict[str, Any]:
    trace = simulate_serving(model, Arrivals(lambda _: (1024, 256), count=clients * rounds, concurrency=clients))
    return {**summarize(trace, 1), "tokens_per_step": trace.tokens_per_decode_step}


def test_a_step_emits_the_bonus_token_and_the_drafted_ones_accepted_in_a_row() -> None:
    tokens = accepted(np.random.default_rng(0), 200_000, EAGLE)
    assert tokens.min() == 1 and tokens.max() == 4
    assert EAGLE.expected_tokens == pytest.approx(1 + 0.8 + 0.64 + 0.512)
    assert tokens.mean() == pytest.approx(EAGLE.expected_tokens, rel=0.005)
    assert np.mean(tokens == 4) == pytest.approx(0.8 ** 3, rel=0.02)  # all three accepted


def test_speculation_pays_at_one_client_and_less_at_saturation() -> None:
    """One client's step is weight-bound: verifying 4 tokens costs about what 1 does, and ~2.95 come out.
    At 128 clients the step is compute-bound: 4x the GEMM tokens eat most of the gain."""
    base, spec = _model(None), _model(EAGLE)
    one, one_spec = _closed(base, 1), _closed(spec, 1)
    assert one_spec["tokens_per_step"] == pytest.approx(EAGLE.expected_tokens, rel=0.03)
    assert one_spec["tpot_mean_s"] < 0.5 * one["tpot_mean_s"]
    many, many_spec = _closed(base, 128, 2), _closed(spec, 128, 2)
    assert many_spec["tpot_mean_s"] / many["tpot_mean_s"] > 1.5 * one_spec["tpot_mean_s"] / one["tpot_mean_s"]
    assert one_spec["ttft_mean_s"] == pytest.approx(one["ttft_mean_s"], rel=0.01)  # the prompt is not drafted


def test_the_drafter_costs_memory_and_time() -> None:
    """An EAGLE head is one dense layer of the target's shape: its weights and its KV cache; a draft
    model its own weights, KV cache and one decode step per drafted token."""
    base, eagle = _model(None), _model(EAGLE)
    m = base.model
    layer = (m.attn_params() + m.mlp_params(m.ffn)) * 2.0  # bf16
    assert eagle.weight_bytes - base.weight_bytes == pytest.approx(layer)
    assert eagle.kv_bytes_per_token == pytest.approx(base.kv_bytes_per_token * (m.layers + 1) / m.layers)
    draft = _model(Speculation("draft", 4, 0.7, load_model("llama3-8b")), "llama3-70b", "h200_sxm")
    target = _model(None, "llama3-70b", "h200_sxm")
    small = _model(None, "llama3-8b", "h200_sxm")
    assert draft.weight_bytes == pytest.approx(target.weight_bytes + small.weight_bytes)
    step = draft.step([], 1, 2048, 1).gpu_seconds
    assert step > target.step([], 1, 2048, 1).gpu_seconds + 4 * 0.8 * small.step([], 1, 2048, 1).gpu_seconds
    # DeepSeek-V3's MTP module: one more block of its last (MoE) layer's shape, with its own KV cache
    v3, node = load_model("deepseek-v3"), system_for("h200_sxm", 8)

    def v3_model(spec: Speculation | None) -> IterationModel:
        return IterationModel(v3, load_chip("h200_sxm"), quantization("fp8"), engine_profile("sglang"), tp=8,
                              system=node, speculation=spec)

    plain, mtp = v3_model(None), v3_model(Speculation("mtp", 1, 0.85))
    assert mtp.kv_bytes_per_token / plain.kv_bytes_per_token == pytest.approx((v3.layers + 1) / v3.layers)
    dense, expert = v3.layer_params(v3.layers - 1)
    assert mtp.weight_bytes - plain.weight_bytes == pytest.approx((dense + expert) * 1.0 / 8)  # fp8 over tp 8
    assert mtp.step([], 16, 16 * 2048, 16).gpu_seconds > plain.step([], 16, 16 * 2048, 16).gpu_seconds


def test_same_seed_same_tokens() -> None:
    setup = resolve_serving(parse_run_config({"serving": {
        "model": "llama3-8b", "chip": "h100_sxm", "engine": "vllm", "requests": 200, "seed": 3,
        "arrival": {"process": "poisson", "rate": 8}, "lengths": {"input": 512, "output": 200},
        "speculative": {"method": "eagle", "tokens": 2, "acceptance": 0.6}}}))
    a, b = run_serving(setup).summary, run_serving(setup).summary
    assert a == b
    assert a["speculative"] == "eagle, 2 drafted tokens, acceptance 0.6"
    assert a["tokens_per_decode_step"] == pytest.approx(1 + 0.6 + 0.36, rel=0.03)


BASE: dict[str, Any] = {"model": "llama3-8b", "chip": "h100_sxm", "engine": "trtllm", "requests": 50,
                        "arrival": {"process": "poisson", "rate": 10}, "lengths": {"input": 512, "output": 64}}


@pytest.mark.parametrize("spec, key", [
    ({"method": "medusa", "tokens": 2, "acceptance": 0.7}, "serving.speculative.method"),
    ({"method": "mtp"}, "serving.speculative.method"),  # Llama has no MTP module
    ({"method": "eagle", "tokens": 3}, "serving.speculative.acceptance"),
    ({"method": "eagle", "tokens": 3, "acceptance": 1.0}, "serving.speculative.acceptance"),
    ({"method": "eagle", "tokens": 3, "acceptance": -0.5}, "serving.speculative.acceptance"),
    ({"method": "eagle", "tokens": 0, "acceptance": 0.7}, "serving.speculative.tokens"),
    ({"method": "eagle", "tokens": 17, "acceptance": 0.7}, "serving.speculative.tokens"),
    ({"method": "eagle", "acceptance": 0.7}, "serving.speculative.tokens"),
    ({"method": "eagle", "tokens": 3, "acceptance": 0.7, "model": "llama3-8b"}, "serving.speculative.model"),
    ({"method": "draft", "tokens": 3, "acceptance": 0.7}, "serving.speculative.model"),
    ({"method": "draft", "tokens": 3, "acceptance": 0.7, "model": "llama2-7b"}, "serving.speculative.model"),
    ({"method": "draft", "tokens": 3, "acceptance": 0.7, "model": "llama9"}, "serving.speculative.model"),
    ({"method": "eagle", "tokens": 3, "acceptance": 0.7, "depth": 2}, "serving.speculative.depth"),
    ("eagle", "serving.speculative"),
])
def test_bad_speculation_names_its_key(spec: Any, key: str) -> None:
    with pytest.raises(InputError) as info:
        resolve_serving(parse_run_config({"serving": {**BASE, "speculative": spec}}))
    assert info.value.key == key, info.value


def test_mtp_defaults_to_the_models_depth_and_deepseeks_acceptance() -> None:
    setup = resolve_serving(parse_run_config({"serving": {
        "model": "deepseek-v3", "system": "hgx_h200", "tp": 8, "engine": "sglang", "quantization": "fp8",
        "requests": 20, "arrival": {"process": "closed", "concurrency": 4}, "lengths": {"input": 256, "output": 64},
        "speculative": {"method": "mtp"}}}))
    spec = setup.iteration.speculation
    assert spec is not None and (spec.tokens, spec.acceptance) == (1, 0.85)
    assert run_serving(setup).summary["tpot_mean_s"] > 0
