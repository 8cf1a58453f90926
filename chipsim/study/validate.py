"""Predict measured cases: each row of a measurements CSV (the schema of
reference/h200/calibration.csv) becomes a workload, is simulated the way it was measured, and is
compared with the measured time.

How rows are measured, and so how they are replayed:
- `eager` rows: back-to-back launches from Python; the median per-iteration time is the steady state
  of a loop, so the workload is repeated and the time between the ends of consecutive iterations is
  taken (host dispatch and device time then overlap as they do on the machine);
- `graph` rows: CUDA-graph replays, device time only;
- training steps ran back to back at the power limit: they start with the power controller there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chipsim.engine.sim import SimOptions, simulate
from chipsim.errors import InputError
from chipsim.hardware.chip import Chip
from chipsim.hardware.registry import chip_for_device_name, load_chip
from chipsim.workload.generators import build_workload
from chipsim.workload.graph import Op, Workload, WorkloadBuilder
from chipsim.workload.kinds import COLLECTIVE_KINDS

GEMM_DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "tf32": "tf32", "fp8_e4m3": "fp8", "int8": "int8"}
STEP_PRECISION = {"bf16_autocast": "bf16", "bf16": "bf16", "fp32": "fp32", "fp8_e4m3_linear": "fp8"}
FAMILIES = {
    "gemm": "gemm", "memory": "memory", "elementwise": "elementwise", "attention": "attention",
    "all_reduce": "collective", "all_gather": "collective", "reduce_scatter": "collective",
    "compressed_all_reduce": "collective", "dynamic_attention": "layer",
    "train_step": "model_step", "prefill_step": "model_step", "decode_step": "model_step",
}
REQUIRED_COLUMNS = ("op", "variant", "dtype", "launch", "measured_us")


class Unsupported(Exception):
    """A row chipsim cannot simulate; reported and skipped, never silently dropped."""


@dataclass(frozen=True)
class Case:
    workload: Workload
    repeats: int
    sustained: bool = False


def _int(row: Mapping[str, Any], key: str) -> int:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise Unsupported(f"missing column '{key}'")
    return int(value)


def _note_int(row: Mapping[str, Any], key: str) -> int | None:
    match = re.search(rf"{key}=(\d+)", str(row.get("note") or ""))
    return int(match.group(1)) if match else None


def _single(kind: str, dtype: str, attrs: Mapping[str, Any] | None = None, **shape: Any) -> Workload:
    b = WorkloadBuilder(f"{kind}")
    b.add(kind, kind, dtype, [], stream="comm" if kind in COLLECTIVE_KINDS else "compute",
          attrs=attrs, **shape)
    return b.build()


def _gemm(row: Mapping[str, Any]) -> Workload:
    m, n, k = _int(row, "m"), _int(row, "n"), _int(row, "k")
    if row["dtype"] == "int4_w_bf16_a":
        return _single("gemm", "bf16", {"weight_dtype": "int4", "group_size": 128}, m=m, n=n, k=k)
    if row["dtype"] not in GEMM_DTYPES:
        raise Unsupported(f"gemm dtype {row['dtype']!r}")
    return _single("gemm", GEMM_DTYPES[row["dtype"]], m=m, n=n, k=k)


def _memory(row: Mapping[str, Any]) -> Workload:
    size = float(row["bytes"])
    variant = row["variant"]
    if variant == "copy":
        return _single("memcpy", "bf16", bytes=size)
    if variant in ("read_sum", "write_fill"):
        return _single("elementwise", "bf16", {"op": "read" if variant == "read_sum" else "write"}, numel=size / 2)
    raise Unsupported(f"memory variant {variant!r}")


def _elementwise(row: Mapping[str, Any]) -> Workload:
    m, n, variant = _int(row, "m"), _int(row, "n"), row["variant"]
    dtype = row["dtype"]
    if variant in ("rms_norm", "layer_norm"):
        return _single("norm", dtype, {"type": variant}, rows=m, cols=n)
    if variant == "softmax":
        return _single("softmax", dtype, rows=m, cols=n)
    if variant in ("add", "gelu", "silu_mul", "mul", "silu"):
        return _single("elementwise", dtype, {"op": variant}, numel=m * n)
    raise Unsupported(f"elementwise variant {variant!r}")


def _attention(row: Mapping[str, Any]) -> Workload:
    shape: dict[str, Any] = {k: _int(row, k) for k in ("batch", "heads", "kv_heads", "seq_q", "seq_kv", "head_dim")}
    shape["causal"] = bool(_int(row, "causal")) if not pd.isna(row.get("causal")) else False
    b = WorkloadBuilder("attention")
    attrs = {"backend": row["variant"]}
    fwd = b.add("attention", "attention", str(row["dtype"]), [], attrs=attrs, shape=shape)
    if row.get("pass") == "fwd_bwd":
        b.add("attention", "attention_bwd", str(row["dtype"]), [fwd], attrs=attrs, shape={**shape, "pass": "bwd"})
    return b.build()


def _collective(row: Mapping[str, Any]) -> Workload:
    return _single(str(row["op"]), str(row["dtype"]), bytes=float(row["bytes"]), group=_int(row, "world"))


def _compressed(row: Mapping[str, Any]) -> Workload:
    scheme = "int8_compressed" if "int8" in str(row["variant"]) else "plain"
    return build_workload("all_reduce", {"chips": _int(row, "world"), "size": int(row["bytes"]),
                                         "dtype": str(row["dtype"]), "scheme": scheme})


def _dynamic_attention(row: Mapping[str, Any]) -> Workload:
    return build_workload("dynamic_attention", {
        "batch": _int(row, "batch"), "seq": _int(row, "seq_q"), "d_model": _int(row, "d_model"),
        "heads": _int(row, "heads"), "kv_heads": _int(row, "kv_heads"), "causal": bool(_int(row, "causal")),
        "weight_gen": str(row["variant"]), "passes": str(row["pass"]), "dtype": str(row["dtype"])})


def _model_dims(row: Mapping[str, Any]) -> dict[str, Any]:
    dims = {"model": None, "layers": _int(row, "layers"), "d_model": _int(row, "d_model"),
            "heads": _int(row, "heads"), "kv_heads": _int(row, "kv_heads"), "ffn": _int(row, "ffn")}
    vocab = _note_int(row, "vocab")
    if vocab:
        dims["vocab"] = vocab
    return dims


def _train_step(row: Mapping[str, Any]) -> Workload:
    precision = STEP_PRECISION.get(str(row["dtype"]))
    if precision is None:
        raise Unsupported(f"train_step dtype {row['dtype']!r}")
    return build_workload("transformer_train_step", {**_model_dims(row), "batch": _int(row, "batch"),
                                                     "seq": _int(row, "seq_q"), "precision": precision})


def _inference_step(row: Mapping[str, Any]) -> Workload:
    weights = {"bf16": "bf16", "int4_weight": "int4", "int8_weight": "int8"}.get(str(row["dtype"]))
    if weights is None:
        raise Unsupported(f"{row['op']} dtype {row['dtype']!r}")
    phase = "prefill" if row["op"] == "prefill_step" else "decode"
    return build_workload("quantized_inference", {**_model_dims(row), "phase": phase, "batch": _int(row, "batch"),
                                                  "prompt": _int(row, "seq_kv"), "weights": weights})


BUILDERS: dict[str, Callable[[Mapping[str, Any]], Workload]] = {
    "gemm": _gemm, "memory": _memory, "elementwise": _elementwise, "attention": _attention,
    "all_reduce": _collective, "all_gather": _collective, "reduce_scatter": _collective,
    "compressed_all_reduce": _compressed, "dynamic_attention": _dynamic_attention,
    "train_step": _train_step, "prefill_step": _inference_step, "decode_step": _inference_step,
}


def case_for_row(row: Mapping[str, Any]) -> Case:
    builder = BUILDERS.get(str(row["op"]))
    if builder is None:
        raise Unsupported(f"op {row['op']!r}")
    workload = builder(row)
    many = len(workload.ops) > 1
    repeats = 2 if many else 4
    return Case(workload, repeats, sustained=row["op"] == "train_step")


def repeat(workload: Workload, times: int) -> tuple[Workload, list[int]]:
    """The workload `times` times in a row (stream order serializes iterations, as a Python loop
    does); returns it and the id of each iteration's last op."""
    ops: list[Op] = []
    ends = []
    n = len(workload.ops)
    for i in range(times):
        for op in workload.ops:
            ops.append(replace(op, id=op.id + i * n, deps=tuple(d + i * n for d in op.deps)))
        ends.append((i + 1) * n - 1)
    return Workload(workload.name, ops, workload.generator, workload.params, workload.memory, workload.meta), ends


def predict(case: Case, chip: Chip, launch: str) -> tuple[float, float]:
    """Steady-state (seconds, joules) of one iteration of the case, as the measurement loop saw it."""
    looped, ends = repeat(case.workload, case.repeats)
    result = simulate(looped, chip, SimOptions(launch=launch, sustained=case.sustained))
    n = len(case.workload.ops)
    end_of = [max(r.end_s for r in result.records[e + 1 - n:e + 1]) for e in ends]
    seconds = (end_of[-1] - end_of[0]) / (len(end_of) - 1)
    last = result.records[ends[-1] + 1 - n:ends[-1] + 1]
    joules = sum(r.energy_j for r in last) + chip.power.idle_w * seconds
    return seconds, joules


def read_measurements(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError("measurements file not found", file=str(path)) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise InputError(f"cannot read measurements as CSV ({exc.__class__.__name__}: {exc})",
                         file=str(path)) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"missing columns {missing}; expected the schema of reference/h200/calibration.csv",
                         file=str(path), key=missing[0])
    return frame


def _chip_for(row: Mapping[str, Any], chip_override: str | None, cache: dict[str, Chip]) -> Chip:
    name = chip_override
    if name is None:
        device = str(row.get("device") or "")
        name = chip_for_device_name(device)
        if name is None:
            raise Unsupported(f"device {device!r} matches no built-in chip (known: H100_SXM, H200, MI300X, GH200)")
    if name not in cache:
        cache[name] = load_chip(name)
    return cache[name]


def validate(frame: pd.DataFrame, chip: str | None = None,
             progress: Callable[[int, int], None] | None = None,
             chip_obj: Chip | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (every input row + predicted_us, ape, family, chip, skipped_reason; the skipped rows).
    `chip` (a name) or `chip_obj` (an already built Chip) overrides each row's device column."""
    chips: dict[str, Chip] = {}
    if chip_obj is not None:
        chip = chip_obj.name
        chips[chip] = chip_obj
    predicted, energies, families, chip_names, reasons = [], [], [], [], []
    records = frame.to_dict("records")
    for index, row in enumerate(records):
        if progress:
            progress(index, len(records))
        families.append(FAMILIES.get(str(row["op"]), "other"))
        try:
            target = _chip_for(row, chip, chips)
            case = case_for_row(row)
            launch = str(row["launch"]) if row.get("launch") in ("eager", "graph") else "eager"
            seconds, joules = predict(case, target, launch)
            predicted.append(seconds * 1e6)
            energies.append(joules)
            chip_names.append(target.name)
            reasons.append("")
        except (Unsupported, InputError) as exc:
            predicted.append(float("nan"))
            energies.append(float("nan"))
            chip_names.append(chip or "")
            reasons.append(str(exc))
    out = frame.copy()
    out["predicted_us"] = predicted
    out["ape"] = (out["predicted_us"] - out["measured_us"]).abs() / out["measured_us"]
    out["predicted_energy_j"] = energies
    out["predicted_power_w"] = out["predicted_energy_j"] / (out["predicted_us"] * 1e-6)
    out["family"] = families
    out["chip"] = chip_names
    out["skipped_reason"] = reasons
    skipped = out[out["skipped_reason"] != ""]
    return out, skipped


def family_summary(predictions: pd.DataFrame) -> pd.DataFrame:
    ok = predictions[predictions["skipped_reason"] == ""]
    rows = []
    for family, group in ok.groupby("family", sort=True):
        ape = group["ape"].to_numpy()
        worst = group.loc[group["ape"].idxmax()]
        rows.append({"family": family, "rows": len(group), "median_ape": float(np.median(ape)),
                     "p90_ape": float(np.percentile(ape, 90)), "max_ape": float(ape.max()),
                     "worst": describe_row(worst)})
    return pd.DataFrame(rows)


def describe_row(row: Mapping[str, Any]) -> str:
    parts = [str(row["op"]), str(row["variant"]), str(row["dtype"]), str(row["launch"])]
    for key in ("m", "n", "k", "batch", "heads", "seq_q", "seq_kv", "bytes", "world", "layers"):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{key}={int(value)}")
    return " ".join(parts)


# ---------------------------------------------------------------- power phases (reference/h200/power.json)

POWER_PHASES: dict[str, Callable[[], Workload]] = {
    # phase name in power.json -> the op the loop ran
    "gemm_bf16_8192": lambda: _single("gemm", "bf16", m=8192, n=8192, k=8192),
    "copy_1GiB": lambda: _single("memcpy", "bf16", bytes=float(1 << 30)),
}


def read_power(path: str | Path) -> list[dict[str, Any]]:
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("power file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read power phases as JSON ({exc.__class__.__name__}: {exc})",
                         file=str(path)) from None
    if not isinstance(data, list) or not all(isinstance(p, dict) and "phase" in p and "avg_power_w" in p
                                              for p in data):
        raise InputError("expected a list of phases with 'phase' and 'avg_power_w'", file=str(path))
    return data


def validate_power(phases: list[dict[str, Any]], chip: Chip) -> pd.DataFrame:
    """Each phase's average power: the static power plus the dynamic energy of the work the loop did
    (`calls` ops at the clock the power controller settles at) over the phase's duration; and, for
    the GEMM phase, the sustained clock and throughput the controller settles at."""
    rows = []
    for phase in phases:
        name = str(phase["phase"])
        measured = float(phase["avg_power_w"])
        row: dict[str, Any] = {"phase": name, "measured_w": measured}
        if name == "idle":
            row["predicted_w"] = chip.power.idle_w
        elif name in POWER_PHASES:
            op_workload = POWER_PHASES[name]()
            looped, _ = repeat(op_workload, 40)
            result = simulate(looped, chip, SimOptions(launch="graph", sustained=True))
            per_call_j = sum(r.energy_j for r in result.records[-10:]) / 10
            row["predicted_w"] = chip.power.idle_w + per_call_j * float(phase["calls"]) / float(phase["seconds"])
            if phase.get("tflops"):
                steady = result.records[-10:]
                seconds = (steady[-1].end_s - steady[0].start_s) / len(steady)
                row["predicted_tflops"] = op_workload.ops[0].flops / seconds / 1e12
                row["measured_tflops"] = float(phase["tflops"])
                row["predicted_clock_mhz"] = min(r.clock_scale for r in steady) * chip.clock_hz / 1e6
                row["measured_clock_mhz"] = float(phase.get("sm_mhz_median", float("nan")))
        else:
            row["predicted_w"] = float("nan")
        row["ape"] = abs(row["predicted_w"] - measured) / measured
        rows.append(row)
    return pd.DataFrame(rows)
