"""Regression baselines: the simulated latency and energy of every example run config on every
built-in chip, kept in baselines/latencies.csv so that CI notices any change to the model. A
serving example (`serving:`) is one case on its own chip: `latency_s` is its mean end-to-end request
latency, `energy_j` the energy of the whole run on all its GPUs (so a throughput change shows too)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from chipsim.api import CannotRun, execute, plan_cases
from chipsim.atomic import atomic_write
from chipsim.config.runconfig import RunConfig, load_run_config
from chipsim.errors import InputError
from chipsim.hardware.registry import builtin_chip_names

COLUMNS = ["case", "chip", "latency_s", "energy_j", "status"]
METRICS = ("latency_s", "energy_j")


def _one_run_configs(config: RunConfig) -> Iterator[tuple[str, RunConfig, Sequence[str] | None]]:
    """(target label, the config narrowed to one workload and one system, --chip names) for each
    workload x target of an example: chip examples on every built-in chip, system examples on their
    own systems."""
    for spec in config.workloads:
        one = replace(config, workloads=(spec,))
        if config.systems:
            for ref in config.systems:
                yield ref.name or ref.system, replace(one, chips=(), systems=(ref,)), None
        else:
            for name in builtin_chip_names():
                yield name, one, [name]


def simulate_examples(configs_dir: Path, progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Every config under `configs_dir` on every built-in chip (systems: on their own systems). A
    target that cannot run a config (a dtype it lacks) is recorded as such, not skipped."""
    rows = []
    paths = sorted(configs_dir.glob("*.yaml"))
    if not paths:
        raise InputError("no run configs (*.yaml) found", file=str(configs_dir))
    for path in paths:
        config = load_run_config(path)
        if progress:
            progress(config.name)
        if config.serving is not None:  # a serving run: its mean end-to-end latency and the run's energy
            from chipsim.serving.config import resolve_serving
            from chipsim.serving.run import run_serving

            setup = resolve_serving(config)
            served = run_serving(setup).summary
            label = setup.chip.name if setup.tp == 1 else f"{setup.system.name if setup.system else setup.chip.name}" \
                f" tp{setup.tp}"
            rows.append({"case": path.stem, "chip": label, "latency_s": served["e2e_mean_s"],
                         "energy_j": served["energy_j"], "status": "ok"})
            continue
        if config.parallelism is not None:  # a training step under a layout, on each system
            from chipsim.training.run import run_training

            for trained in run_training(config):
                rows.append({"case": path.stem, "chip": trained.system, "latency_s": trained.step_s,
                             "energy_j": trained.energy_j_per_gpu, "status": "ok"})
            continue
        for label, one, chips in _one_run_configs(config):
            spec = one.workloads[0]
            try:
                cases = plan_cases(one, chips)
            except CannotRun as exc:
                name = spec.name or (spec.generator or "")
                case = path.stem if len(config.workloads) == 1 else f"{path.stem}:{name}"
                rows.append({"case": case, "chip": label, "latency_s": float("nan"), "energy_j": float("nan"),
                             "status": f"unsupported: {exc.reason}"})
                continue
            except InputError as exc:
                raise exc.within(file=str(path)) from None
            for c in cases:
                result = execute(c)
                case = path.stem if len(config.workloads) == 1 else f"{path.stem}:{spec.name or c.workload.name}"
                rows.append({"case": case, "chip": c.target, "latency_s": result.latency_s,
                             "energy_j": result.energy_j, "status": "ok"})
    return pd.DataFrame(rows, columns=COLUMNS)


def read_baselines(path: Path) -> pd.DataFrame:
    """The baselines CSV; a truncated or hand-damaged file (a row without case, chip or status, an 'ok'
    row without finite metrics) is an InputError naming the row, never a table of spurious changes."""
    import math

    from chipsim.study.validate import read_table

    frame = read_table(path, "baselines",
                       "no baselines yet: run `chipsim regress --update` and commit the file")
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"missing columns {missing}", file=str(path), key=missing[0])
    frame["status"] = frame["status"].fillna("")
    for column in METRICS:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = frame[column].notna() & numbers.isna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise InputError(f"row {row}: expected a number, got {frame[column].iloc[row]!r}", file=str(path),
                             key=column)
        frame[column] = numbers.astype(float)
    for row, record in enumerate(frame[COLUMNS].to_dict("records")):
        for column in ("case", "chip", "status"):
            if not isinstance(record[column], str) or not record[column]:
                raise InputError(f"row {row}: missing {column} (a truncated file?)", file=str(path), key=column)
        if record["status"] == "ok":
            for column in METRICS:
                if not 0 < record[column] < math.inf:
                    raise InputError(f"row {row}: an 'ok' case needs a finite {column} above zero, got "
                                     f"{record[column]!r} (a truncated file?)", file=str(path), key=column)
    return frame[COLUMNS]


def compare(baseline: pd.DataFrame, now: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """Rows (case, chip, metric, baseline, now, change) that moved beyond `tolerance` (relative),
    plus cases that appeared, disappeared or changed status."""
    if not 0 <= tolerance < float("inf"):  # NaN would pass every change, a negative one flag every metric
        raise InputError(f"expected a finite relative tolerance >= 0, got {tolerance}", key="--tolerance")
    merged = baseline.merge(now, on=["case", "chip"], how="outer", suffixes=("_base", "_now"), indicator=True)
    diffs = []
    for record in merged.to_dict("records"):
        case, chip = record["case"], record["chip"]
        if record["_merge"] != "both":
            which = "new case (not in baselines)" if record["_merge"] == "right_only" else "case no longer simulated"
            diffs.append({"case": case, "chip": chip, "metric": which, "baseline": float("nan"),
                          "now": float("nan"), "change": float("nan")})
            continue
        if record["status_base"] != record["status_now"]:
            diffs.append({"case": case, "chip": chip, "metric": f"status: {record['status_now']}",
                          "baseline": float("nan"), "now": float("nan"), "change": float("nan")})
            continue
        for metric in METRICS:
            old, new = record[f"{metric}_base"], record[f"{metric}_now"]
            if pd.isna(old) and pd.isna(new):
                continue
            change = (new - old) / old if old else float("inf")
            if not abs(change) <= tolerance:
                diffs.append({"case": case, "chip": chip, "metric": metric, "baseline": old, "now": new,
                              "change": change})
    return pd.DataFrame(diffs, columns=["case", "chip", "metric", "baseline", "now", "change"])


def write_baselines(frame: pd.DataFrame, path: Path) -> None:
    """Staged beside `path`, then moved into place; a failure is an InputError naming `path`."""
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.9e"), "the baselines")
