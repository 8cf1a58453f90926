"""`chipsim serve --sweep`: the spec's grammar, re-resolving a setup on other hardware, the Pareto front,
a small real sweep and the CLI's files. No test pins a calibrated figure: they assert orderings."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from chipsim.config.runconfig import parse_run_config
from chipsim.errors import InputError
from chipsim.serving.config import ServingSetup, resolve_serving
from chipsim.serving.pareto import COLUMNS, pareto_front, parse_sweep, point_requests, sweep, with_hardware

BASE: dict[str, Any] = {"model": "llama3-8b", "chip": "h100_sxm", "engine": "trtllm", "requests": 160,
                        "arrival": {"process": "poisson", "rate": 10}, "lengths": {"input": 512, "output": 64}}


def _setup(**over: Any) -> ServingSetup:
    return resolve_serving(parse_run_config({"serving": {**BASE, **over}}))


def _write(tmp_path: Path, serving: dict[str, Any], name: str = "serve.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "serve_test", "serving": serving}), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the spec


def test_parse_sweep_reads_every_key() -> None:
    axes = parse_sweep(" chip=h100_sxm, h200_sxm ; quantization=none,awq,FP8;tp=1,2;concurrency=1,8,32,128; ")
    assert axes == {"chip": ["h100_sxm", "h200_sxm"], "quantization": ["none", "int4_awq", "fp8"], "tp": [1, 2],
                    "concurrency": [1, 8, 32, 128]}
    assert parse_sweep("concurrency=4") == {"concurrency": [4]}


@pytest.mark.parametrize("text, words", [
    ("", "expected key=value"),
    ("   ;  ", "expected key=value"),
    ("chip", "expected key=value"),
    ("colour=red", "unknown sweep key 'colour'"),
    ("tp=", "expected a list of values"),
    ("tp=1,,2", "expected a list of values"),
    ("concurrency=", "expected a list of values"),
    ("tp=two", "tp: expected whole numbers"),
    ("tp=0", "tp: expected whole numbers"),
    ("tp=65", "tp: expected whole numbers"),
    ("concurrency=1.5", "concurrency: expected whole numbers"),
    ("concurrency=-4", "concurrency: expected whole numbers"),
    ("tp=1;tp=2", "given twice"),
    ("tp=1,1", "given twice"),
    ("quantization=fp8,w8a8_fp8", "given twice"),
    ("quantization=int3", "unknown quantization"),
    ("chip=h9000", "chip:"),
])
def test_bad_sweep_specs_name_the_option(text: str, words: str) -> None:
    with pytest.raises(InputError) as info:
        parse_sweep(text)
    assert info.value.key == "--sweep" and words in info.value.message, info.value.message


# ---------------------------------------------------------------- one combination


def test_with_hardware_rebuilds_the_iteration_and_refuses_impossible_combinations() -> None:
    setup = _setup()
    fp8 = with_hardware(setup, chip="h200_sxm", quantization="fp8", tp=2)
    assert (fp8.chip.name, fp8.quant.name, fp8.tp, fp8.gpus) == ("h200_sxm", "fp8", 2, 2)
    assert fp8.system is not None and fp8.system.chip.name == "h200_sxm"
    assert fp8.iteration.chip is fp8.chip and fp8.iteration.tp == 2 and fp8.iteration.quant is fp8.quant
    assert fp8.iteration.weight_bytes < setup.iteration.weight_bytes / 3  # half the bytes, split over 2 GPUs
    assert with_hardware(setup).iteration.kv_capacity_tokens() == setup.iteration.kv_capacity_tokens()
    for over, key, words in (({"tp": 3}, "tp", "not divisible by tp 3"),
                             ({"tp": 16}, "tp", "inside one node"),
                             ({"chip": "a100_sxm", "quantization": "fp8"}, "quantization", "no fp8"),
                             ({"quantization": "nvfp4"}, "quantization", "no fp4")):
        with pytest.raises(InputError) as info:
            with_hardware(setup, **over)
        assert info.value.key == key and words in info.value.message, info.value.message
    big = _setup(model="llama3-70b", tp=8)
    with pytest.raises(InputError, match="GB of weights per GPU at tp=1"):
        with_hardware(big, tp=1)
    assert with_hardware(big, chip="h200_sxm", quantization="fp8", tp=1).tp == 1  # 70 GB fit in 141
    fp8_kv = _setup(kv_cache_dtype="fp8")
    with pytest.raises(InputError) as info:
        with_hardware(fp8_kv, chip="a100_sxm")
    assert info.value.key == "kv_cache_dtype"


def test_point_requests() -> None:
    assert point_requests(1000, 1) == 10 and point_requests(1000, 16) == 160 and point_requests(1000, 256) == 1000
    assert point_requests(20, 16) == 32  # at least two requests per client


# ---------------------------------------------------------------- the front


def test_pareto_front_on_a_hand_made_frame() -> None:
    rows = [  # (tokens/s per user, output tokens/s per GPU, feasible)
        (200.0, 100.0, True),   # 0: the most interactive: on the front
        (150.0, 1000.0, True),  # 1: on the front
        (150.0, 900.0, True),   # 2: dominated by 1 (same x, lower y)
        (100.0, 1000.0, True),  # 3: dominated by 1 (same y, lower x)
        (50.0, 3000.0, True),   # 4: the most throughput: on the front
        (50.0, 3000.0, True),   # 5: equal to 4: both on the front
        (120.0, 2000.0, True),  # 6: on the front
        (110.0, 1900.0, True),  # 7: dominated by 6
        (500.0, 9000.0, False),  # 8: infeasible: never on the front, dominates nothing
        (math.nan, 5000.0, True),  # 9: no TPOT: not on the front
    ]
    frame = pd.DataFrame(rows, columns=["tokens_per_s_per_user", "output_tokens_per_s_per_gpu", "feasible"])
    marked = pareto_front(frame)
    assert marked["pareto"].tolist() == [True, True, False, False, True, True, True, False, False, False]
    assert "pareto" not in frame  # a copy


# ---------------------------------------------------------------- a real sweep


def test_a_small_sweep_orders_chips_and_quantizations_and_records_infeasible_rows() -> None:
    axes: dict[str, list[Any]] = {"chip": ["h100_sxm", "h200_sxm"], "quantization": ["none", "fp8"], "tp": [1, 3],
                                  "concurrency": [1, 16]}
    seen: list[tuple[int, int]] = []
    frame = sweep(_setup(), axes, lambda done, total: seen.append((done, total)))
    assert list(frame.columns) == COLUMNS and len(frame) == 2 * 2 * 2 * 2
    assert seen[-1] == (16, 16) and [d for d, _ in seen] == list(range(1, 17))
    ok = frame[frame["feasible"]].set_index(["chip", "quantization", "concurrency"])
    assert len(ok) == 8 and (ok["tp"] == 1).all() and (ok["reason"] == "").all()
    assert ok["requests"].to_dict()[("h100_sxm", "none", 16)] == 160
    for column in ("output_tokens_per_s_per_gpu", "tokens_per_s_per_user", "ttft_p99_s", "tpot_mean_s",
                   "energy_per_output_token_j", "avg_power_w"):
        assert (ok[column] > 0).all(), column
    assert ok["tokens_per_s_per_user"].to_numpy() == pytest.approx(1 / ok["tpot_mean_s"].to_numpy())
    tput = ok["output_tokens_per_s_per_gpu"]
    for quant in ("none", "fp8"):
        for c in (1, 16):
            assert tput[("h200_sxm", quant, c)] >= tput[("h100_sxm", quant, c)], (quant, c)
    for chip in ("h100_sxm", "h200_sxm"):
        assert tput[(chip, "fp8", 16)] > tput[(chip, "none", 16)]
        assert tput[(chip, "none", 16)] > tput[(chip, "none", 1)]  # batching
    bad = frame[~frame["feasible"]]
    assert len(bad) == 8 and (bad["tp"] == 3).all() and not bad["pareto"].any()
    assert bad["reason"].str.contains("not divisible by tp 3").all()
    assert bad["output_tokens_per_s_per_gpu"].isna().all()
    front = frame[frame["pareto"]]
    assert len(front) >= 1 and set(front["chip"]) == {"h200_sxm"} and front["feasible"].all()


def test_a_70b_model_in_16_bit_does_not_fit_one_gpu() -> None:
    frame = sweep(_setup(model="llama3-70b", tp=8, requests=8),
                  {"chip": ["h100_sxm"], "quantization": ["none"], "tp": [1], "concurrency": [1, 2]})
    assert not frame["feasible"].any() and (frame["requests"] == 0).all()
    assert frame["reason"].str.contains("weights per GPU at tp=1").all()


# ---------------------------------------------------------------- the CLI


def _strict(text: str) -> Any:
    def refuse(token: str) -> None:
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_serve_sweep_cli_prints_the_table_and_writes_csv_and_png(tmp_path: Path, cli: Callable) -> None:
    path = _write(tmp_path, {**BASE, "requests": 40})
    spec = "chip=h100_sxm,h200_sxm;quantization=fp8;tp=1,3;concurrency=1,4"
    out_dir = tmp_path / "out"
    rc, out, err = cli(["serve", path, "--sweep", spec, "--out", out_dir])
    assert rc == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["pareto.csv", "pareto.png"]
    csv = pd.read_csv(out_dir / "pareto.csv")
    assert list(csv.columns) == COLUMNS and len(csv) == 8
    assert csv[["chip", "tp", "concurrency"]].values.tolist() == [
        ["h100_sxm", 1, 1], ["h100_sxm", 1, 4], ["h100_sxm", 3, 1], ["h100_sxm", 3, 4],
        ["h200_sxm", 1, 1], ["h200_sxm", 1, 4], ["h200_sxm", 3, 1], ["h200_sxm", 3, 4]]
    assert (out_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = out.splitlines()
    points = [line for line in lines if "h100_sxm" in line or "h200_sxm" in line]
    assert sum(line.startswith("*") for line in points) == int(csv["pareto"].sum()) >= 1
    assert "tok/s/GPU" in out and "infeasible: h100_sxm, fp8, tp 3" in out and "wrote 2 files" in err
    # strict JSON: the same rows, figures of infeasible rows null
    rc, out, err = cli(["serve", path, "--sweep", spec, "--json"])
    assert rc == 0 and err == ""
    rows = _strict(out)["sweep"]
    assert len(rows) == 8 and list(rows[0]) == COLUMNS
    assert all(r["tpot_mean_s"] is None for r in rows if not r["feasible"])
    assert [r["pareto"] for r in rows] == csv["pareto"].tolist()
    # bad input: exit 2, one line naming the option, nothing on stdout, no work
    for argv, key in ((["serve", path, "--sweep", "tp=x"], "--sweep"),
                      (["serve", path, "--sweep", "gpu=h100"], "--sweep"),
                      (["serve", path, "--sweep", "tp=1", "--find-capacity", "--slo", "ttft_p99=1s"], "--sweep"),
                      (["serve", tmp_path / "nope.yaml", "--sweep", "tp=1"], "nope.yaml")):
        rc, out, err = cli(argv)
        assert rc == 2 and out == "" and key in err and err.count("\n") == 1, (argv, err)


def test_a_changed_chip_takes_the_engines_defaults_for_it() -> None:
    from chipsim.config.runconfig import parse_run_config
    from chipsim.serving.config import resolve_serving

    base = {"model": "llama3-8b", "chip": "a100_sxm", "engine": "vllm", "requests": 20,
            "arrival": {"process": "closed", "concurrency": 4}, "lengths": {"input": 512, "output": 32}}
    a100 = resolve_serving(parse_run_config({"serving": base}))
    assert (a100.profile.max_batch, a100.profile.max_tokens) == (256, 2048)
    h100 = with_hardware(a100, chip="h100_sxm")
    assert (h100.profile.max_batch, h100.profile.max_tokens) == (1024, 8192)
    tuned = resolve_serving(parse_run_config({"serving": {**base, "engine_settings": {"max_tokens": 4096}}}))
    assert with_hardware(tuned, chip="h100_sxm").profile.max_tokens == 4096  # a setting stays the user's


def test_with_hardware_keeps_data_parallel_attention_and_checks_the_engine_on_the_chip() -> None:
    from chipsim.config.runconfig import parse_run_config
    from chipsim.serving.config import resolve_serving

    base = {"model": "mixtral-8x7b", "chip": "h100_sxm", "tp": 2, "engine": "trtllm", "dp_attention": True,
            "requests": 8, "arrival": {"process": "closed", "concurrency": 2}, "lengths": {"input": 256, "output": 16}}
    setup = resolve_serving(parse_run_config({"serving": base}))
    moved = with_hardware(setup, chip="h200_sxm")
    assert setup.dp_attention and moved.dp_attention and moved.iteration.heads == setup.model.heads
    with pytest.raises(InputError) as info:
        with_hardware(setup, chip="mi300x")  # TensorRT-LLM does not run on AMD chips
    assert info.value.key == "engine"
