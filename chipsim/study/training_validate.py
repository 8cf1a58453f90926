"""`chipsim validate` on published training runs (the schema of reference/published/training_calibration.csv):
each row's model, layout, precision and GPU count simulated as one training step
(`chipsim.training.simulate_training`) on the built-in cluster of its GPU, and its figure predicted
in the row's own metric (`tokens_per_s_per_gpu` or `step_time_s`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from chipsim.errors import InputError
from chipsim.hardware.registry import chip_for_device_name
from chipsim.study.validate import Unsupported

# the columns that identify the training schema
TRAINING_COLUMNS = ("model_id", "gpu", "gpus", "precision", "tp", "pp", "global_batch", "seq_len", "metric_name",
                    "metric_value")
METRICS = ("tokens_per_s_per_gpu", "step_time_s")
LAYOUT_COLUMNS = ("tp", "pp", "cp", "ep", "vp", "dp", "micro_batch")
MODEL_COLUMNS = ("layers", "d_model", "heads", "kv_heads", "ffn", "vocab")


def is_training_schema(frame: pd.DataFrame) -> bool:
    return all(c in frame.columns for c in TRAINING_COLUMNS)


def _present(row: Mapping[str, Any], key: str) -> bool:
    value = row.get(key)
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value).strip() != ""


def precision_of(text: str) -> str:
    """The simulated precision of a row's `precision` text: BF16; FP8 with per-tensor scales (delayed
    or current scaling) or MXFP8 (Transformer Engine's fused casts either way); FP8 with block scales
    (DeepSeek-V3's 1x128 / 128x128 recipe); FP4 (NVFP4)."""
    upper = text.strip().upper()
    if upper.startswith("BF16"):
        return "bf16"
    if upper.startswith("FP8") and any(w in upper for w in ("BLOCK", "128X128", "1X128", "SUBCHANNEL", "DEEPSEEK")):
        return "fp8_block"  # DeepSeek-V3's fine-grained scales
    if upper.startswith(("FP8", "MXFP8")):  # Blackwell's MXFP8 runs at the fp8 rate
        return "fp8"
    if upper.startswith(("NVFP4", "FP4", "MXFP4")):
        return "fp4"
    raise Unsupported(f"precision {text!r} (known: BF16, FP8, FP8-CS, FP8-blockwise, MXFP8, NVFP4)")


def family_of(model_id: str) -> str:
    """A model id's family: its name before the size (llama3-70b -> llama3)."""
    return model_id.split("-")[0]


def _model(row: Mapping[str, Any]) -> Any:
    from chipsim.models import custom_model, known_models, load_model

    model_id = str(row["model_id"])
    if model_id == "gpt-custom":
        dims = {k: int(row[k]) for k in MODEL_COLUMNS if _present(row, k)}
        return custom_model(**dims)
    if model_id not in known_models():
        raise Unsupported(f"model_id {model_id!r} is not in the model zoo (chipsim/models/zoo.yaml)")
    return load_model(model_id)


def predict_row(row: Mapping[str, Any], cache: dict[tuple[Any, ...], Any], chip_override: str | None = None
                ) -> tuple[float, str]:
    """(predicted value in the row's metric, a note on what was assumed); `chip_override` runs the row
    on that chip's cluster instead of its `gpu`'s."""
    from chipsim.models import resolve_layout
    from chipsim.network.system import system_for
    from chipsim.training import simulate_training

    metric = str(row["metric_name"])
    if metric not in METRICS:
        raise Unsupported(f"metric {metric!r} (known: {', '.join(METRICS)})")
    chip = chip_override or chip_for_device_name(str(row["gpu"]))
    if chip is None:
        raise Unsupported(f"no built-in chip for gpu {row['gpu']!r}")
    model = _model(row)
    gpus = int(row["gpus"])
    sizes = {k: int(row[k]) for k in LAYOUT_COLUMNS if _present(row, k)}
    precision = precision_of(str(row["precision"]))
    global_batch, seq = int(row["global_batch"]), int(row["seq_len"])
    try:
        system = system_for(chip, gpus)
        if any(k not in sizes for k in ("tp", "pp")):  # the source left the layout open: plan it
            layout, note = _planned_layout(model, system, gpus, global_batch, seq, precision, sizes, cache)
            notes = [note]
        else:
            notes = [f"{k} = 1 (not stated)" for k in ("cp", "ep", "vp", "micro_batch") if k not in sizes]
            if "dp" not in sizes:
                notes.append("dp = what remains")
            if _present(row, "recompute"):
                sizes["recompute"] = str(row["recompute"])  # type: ignore[assignment]
            # NeMo/Megatron: the distributed optimizer (ZeRO-1)
            layout = resolve_layout(model, gpus, global_batch=global_batch, seq=seq, zero=1, **sizes)
    except InputError as exc:
        raise Unsupported(f"{exc.key}: {exc.message}" if exc.key else exc.message) from None
    key = (model.model_id if model.model_id != "gpt-custom" else str(model), layout, precision, system.name,
           system.world)
    if key not in cache:
        cache[key] = simulate_training(model, layout, system, precision)
    result = cache[key]
    value = result.tokens_per_s_per_gpu if metric == "tokens_per_s_per_gpu" else result.step_s
    return value, "; ".join(notes)


def _planned_layout(model: Any, system: Any, gpus: int, global_batch: int, seq: int, precision: str,
                    given: Mapping[str, int], cache: dict[tuple[Any, ...], Any]) -> tuple[Any, str]:
    """The layout `chipsim plan` ranks first among those that keep the sizes the source gave, and a
    note saying so. Raises InputError when no such layout fits."""
    from chipsim.models import resolve_layout
    from chipsim.training.plan import Candidates, candidate_layouts, plan_layouts

    key = ("plan", model.model_id if model.model_id != "gpt-custom" else str(model), system.name, gpus,
           global_batch, seq, precision, tuple(sorted(given.items())))
    if key not in cache:
        found = candidate_layouts(model, gpus, global_batch, seq, system.gpus_per_node)
        kept = Candidates(layouts=[lay for lay in found.layouts
                                   if all(getattr(lay, k) == v for k, v in given.items())])
        table = plan_layouts(model, system, gpus, global_batch, seq, precision, workers=1, candidates=kept)
        feasible = table[table["fits"]] if len(table) else table
        if not len(feasible):
            stated = ", ".join(f"{k}={v}" for k, v in given.items()) or "nothing"
            raise InputError(f"no layout with {stated} fits {gpus} GPUs of {system.chip.name} "
                             f"({len(kept.layouts)} candidates)", key="tp")
        best = feasible.iloc[0]
        sizes = {k: int(best[k]) for k in ("tp", "pp", "vp", "cp", "ep", "dp", "micro_batch")}
        layout = resolve_layout(model, gpus, global_batch=global_batch, seq=seq, zero=1,
                                recompute=str(best["recompute"]), **sizes)
        picked = ", ".join(f"{k}={v}" for k, v in sizes.items() if k not in given)
        cache[key] = (layout, f"{picked}, recompute={best['recompute']} picked by chipsim plan "
                              f"(best of {len(feasible)} fitting layouts)")
    return cache[key]  # type: ignore[no-any-return]


def predict_rows(frame: pd.DataFrame, predict: Callable[[Mapping[str, Any]], tuple[float, str]],
                 progress: Callable[[int, int], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every input row plus predicted_value, ape, detail (what `predict` said of the row) and
    skipped_reason; and the skipped rows. `predict` raises Unsupported for a row it cannot model."""
    predicted, details, reasons = [], [], []
    records = frame.to_dict("records")
    for index, row in enumerate(records):
        if progress:
            progress(index, len(records))
        try:
            value, detail = predict(row)
            predicted.append(value)
            details.append(detail)
            reasons.append("")
        except Unsupported as exc:
            predicted.append(float("nan"))
            details.append("")
            reasons.append(str(exc))
    out = frame.copy()
    out["predicted_value"] = predicted
    measured = pd.to_numeric(out["metric_value"], errors="coerce")
    out["ape"] = (out["predicted_value"] - measured).abs() / measured
    out["detail"] = details
    out["skipped_reason"] = reasons
    return out, out[out["skipped_reason"] != ""]


def validate_training(frame: pd.DataFrame, chip: str | None = None,
                      progress: Callable[[int, int], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every input row plus predicted_value, ape, family, assumed and skipped_reason; and the skipped rows."""
    cache: dict[tuple[Any, ...], Any] = {}
    out, _ = predict_rows(frame, lambda row: predict_row(row, cache, chip), progress)
    out.insert(len(out.columns) - 1, "family", [family_of(str(m)) for m in out["model_id"]])
    out = out.rename(columns={"detail": "assumed"})
    return out, out[out["skipped_reason"] != ""]


def training_summary(predictions: pd.DataFrame) -> pd.DataFrame:
    """Median and p90 APE per model family and GPU, plus the worst row of each."""
    done = predictions[predictions["skipped_reason"] == ""]
    rows = []
    for (family, gpu), part in done.groupby(["family", "gpu"], sort=True):
        worst = part.loc[part["ape"].idxmax()]
        rows.append({"family": family, "gpu": gpu, "rows": len(part), "median_ape": part["ape"].median(),
                     "p90_ape": part["ape"].quantile(0.9),
                     "worst": f"{worst['ape']:.0%} {worst['model_id']} {worst['precision']} {int(worst['gpus'])} GPUs "
                              f"{worst['metric_name']}"})
    return pd.DataFrame(rows, columns=["family", "gpu", "rows", "median_ape", "p90_ape", "worst"])
