"""Design-space sweeps: a base run config plus parameters to vary, evaluated on a local process pool
or a Dask cluster, into one tidy table (a row per design point, target and workload).

A sweep YAML:

    name: dwb_capacity
    base: ../runs/dynamic_attention_dwb.yaml        # a run config (path relative to this file)
    parameters:                                      # path into the chip / system / workload YAML
      chips.h100_dwb.memory.weight_buffer.capacity: ["16 MiB", "64 MiB", "256 MiB"]
      chips.*.memory.hbm.bandwidth: {low: 2.0e+12, high: 6.0e+12}    # a range (random / lhs)
      workload.params.batch: [4, 8]
      systems.cluster_256x_dgx_h100_ndr.routing: [ecmp, adaptive]
      options.launch: [eager, graph]
    sampling: grid            # grid (lists only) | random | lhs (ranges, or lists sampled by index)
    samples: 20               # random / lhs
    seed: 0

Every design point is identified by a hash of its parameter values, so an interrupted sweep resumes
from its output folder without recomputing finished points, and a failed point is recorded with its
error instead of stopping the sweep. Same inputs, same table, whatever the executor.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chipsim.config.loader import load_yaml
from chipsim.config.reader import Section
from chipsim.errors import InputError

log = logging.getLogger(__name__)

SAMPLINGS = ("grid", "random", "lhs")
METRICS = ("latency_s", "energy_j", "avg_power_w", "peak_power_w", "achieved_flops_per_s",
           "achieved_bandwidth_bytes_per_s", "exposed_comm_s", "fits_in_memory")
ROOTS = ("chips", "systems", "workload", "options")


@dataclass(frozen=True)
class Parameter:
    path: str
    values: tuple[Any, ...] = ()  # a list of values
    low: float | None = None  # or a numeric range
    high: float | None = None
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class Sweep:
    name: str
    base: dict[str, Any]  # the base run config's YAML mapping
    base_file: str
    parameters: tuple[Parameter, ...]
    sampling: str = "grid"
    samples: int = 0
    seed: int = 0
    file: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- reading


def _parameter(sec: Section, path: str) -> Parameter:
    raw = sec.raw(path)
    head = path.split(".")[0]
    if head not in ROOTS or "." not in path:
        raise sec.error(path, f"expected a path starting with one of {', '.join(ROOTS)}, "
                              "e.g. chips.h100_dwb.memory.weight_buffer.capacity")
    if isinstance(raw, list):
        if not raw:
            raise sec.error(path, "expected at least one value")
        return Parameter(path, tuple(raw))
    if isinstance(raw, dict):
        rng = Section(raw, sec.file, sec.key(path))
        low, high = rng.number("low", minimum=None), rng.number("high", minimum=None)
        log_scale = bool(rng.raw("log", False))
        integer = bool(rng.raw("integer", False))
        rng.done()
        if high <= low:
            raise rng.error("high", f"expected high > low ({low})")
        if log_scale and low <= 0:
            raise rng.error("low", "a log range needs low > 0")
        return Parameter(path, (), low, high, log_scale, integer)
    raise sec.error(path, "expected a list of values or a range {low, high[, log, integer]}")


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    data = load_yaml(path)
    top = Section(data, str(path))
    name = top.string("name", path.stem)
    base_raw = top.raw("base")
    if isinstance(base_raw, str):
        base_path = (path.parent / base_raw) if not Path(base_raw).is_absolute() else Path(base_raw)
        base = load_yaml(base_path)
        base_file = str(base_path)
    elif isinstance(base_raw, dict):
        base, base_file = dict(base_raw), str(path)
    else:
        raise top.error("base", "expected a run config: a path, or the run config itself as a mapping")
    params_sec = top.section("parameters")
    if not params_sec.data:
        raise params_sec.error(None, "expected at least one parameter to vary")
    parameters = tuple(_parameter(params_sec, str(p)) for p in params_sec.data)
    params_sec.done()
    sampling = top.string("sampling", "grid", choices=SAMPLINGS)
    samples = top.integer("samples", 0)
    seed = top.integer("seed", 0)
    top.done()
    if sampling == "grid" and any(not p.values for p in parameters):
        raise InputError("a grid needs a list of values for every parameter; use sampling: random or lhs for "
                         "ranges", file=str(path), key="sampling")
    if sampling != "grid" and samples < 1:
        raise InputError(f"sampling: {sampling} needs samples >= 1", file=str(path), key="samples")
    sweep = Sweep(name, base, base_file, parameters, sampling, samples, seed, str(path))
    # fail on a broken base or a parameter path that does not apply, before any work
    try:
        evaluate_point(sweep.base, sweep.base_file, design_points(sweep)[0], check_only=True)
    except InputError as exc:
        inline = sweep.base_file == str(path)
        raise exc.within(file=sweep.base_file, key_prefix="base" if inline and exc.file is None else None) from None
    return sweep


# ---------------------------------------------------------------- design points


def _sample(p: Parameter, u: float) -> Any:
    """Map u in [0, 1) to the parameter's values (list: by index) or range (linear or log)."""
    if p.values:
        return p.values[min(int(u * len(p.values)), len(p.values) - 1)]
    assert p.low is not None and p.high is not None
    value = float(np.exp(np.log(p.low) + u * (np.log(p.high) - np.log(p.low)))) if p.log else p.low + u * (p.high - p.low)
    return int(round(value)) if p.integer else value


def design_points(sweep: Sweep) -> list[dict[str, Any]]:
    params = sweep.parameters
    if sweep.sampling == "grid":
        return [dict(zip([p.path for p in params], combo, strict=True))
                for combo in itertools.product(*(p.values for p in params))]
    rng = np.random.default_rng(sweep.seed)
    n, d = sweep.samples, len(params)
    if sweep.sampling == "random":
        u = rng.random((n, d))
    else:  # Latin hypercube: one sample in each of n strata per dimension, strata shuffled per dimension
        u = (np.stack([rng.permutation(n) for _ in range(d)], axis=1) + rng.random((n, d))) / n
    return [{p.path: _sample(p, float(u[i, j])) for j, p in enumerate(params)} for i in range(n)]


def point_id(point: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(point, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- evaluating one point


def _nested(path: list[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return out


def _merge_into(target: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = value


def apply_point(base: dict[str, Any], point: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The run config with workload/options/system parameters applied, and chip overrides by name
    ('*': every chip)."""
    config = copy.deepcopy(base)
    chip_overrides: dict[str, dict[str, Any]] = {}
    for path, value in point.items():
        head, *rest = path.split(".")
        if head == "chips":
            name, *keys = rest
            if not keys:
                raise InputError("expected chips.<chip name or *>.<key path>", key=path)
            _merge_into(chip_overrides.setdefault(name, {}), _nested(keys, value))
        elif head == "systems":
            name, *keys = rest
            refs = config.get("systems") or []
            if not isinstance(refs, list):
                refs = [refs]
            hits = [i for i, r in enumerate(refs) if (r if isinstance(r, str) else r.get("name", r.get("system"))) == name
                    or name == "*"]
            if not hits or not keys:
                raise InputError(f"the base run config has no system named '{name}'", key=path)
            for i in hits:
                ref = refs[i] if isinstance(refs[i], dict) else {"system": refs[i]}
                ref = {**ref, "set": copy.deepcopy(ref.get("set", {}))}
                _merge_into(ref["set"], _nested(keys, value))
                refs[i] = ref
            config["systems"] = refs
        elif head == "workload":
            workload = config.get("workload")
            if isinstance(workload, list):
                raise InputError("a sweep varies a run config with one workload", key=path)
            if not isinstance(workload, dict) or rest[:1] != ["params"] or len(rest) < 2:
                raise InputError("expected workload.params.<name>", key=path)
            workload.setdefault("params", {})
            _merge_into(workload["params"], _nested(rest[1:], value))
        else:  # options
            config.setdefault("options", {})
            _merge_into(config["options"], _nested(rest, value))
    return config, chip_overrides


def evaluate_point(base: dict[str, Any], base_file: str, point: dict[str, Any],
                   check_only: bool = False) -> list[dict[str, Any]]:
    """Simulate one design point: a row per (workload, target) with its metrics, or one row with
    the error if the point fails (a sweep records it and goes on)."""
    from chipsim.api import Target, load_targets, workload_from_spec
    from chipsim.config.runconfig import parse_run_config
    from chipsim.engine.sim import SimOptions, simulate
    from chipsim.hardware.registry import load_chip

    pid = point_id(point)
    try:
        data, chip_overrides = apply_point(base, point)
        config = parse_run_config(data, Path(base_file))
        targets = load_targets(config)
        if chip_overrides:
            known = {t.chip.name for t in targets}
            unknown = [n for n in chip_overrides if n != "*" and n not in known]
            if unknown:
                raise InputError(f"no chip named '{unknown[0]}' in the base run config (it has: "
                                 f"{', '.join(sorted(known))})", key=f"chips.{unknown[0]}")
            targets = [Target(t.label, load_chip(config.chips[i] if i < len(config.chips) else t.chip.source_file,
                                                 config.file, _chip_override(chip_overrides, t.chip.name)), t.system)
                       if t.system is None and (t.chip.name in chip_overrides or "*" in chip_overrides) else t
                       for i, t in enumerate(targets)]
        workloads = [workload_from_spec(spec) for spec in config.workloads]
        if check_only:
            return []
        options = SimOptions(launch=config.launch, sustained=config.sustained)
        rows = []
        for workload in workloads:
            for target in targets:
                result = simulate(workload, target.chip, options, target.system)
                summary = result.summary()
                rows.append({"point": pid, **point, "workload": workload.name, "target": target.label,
                             "status": "ok", **{m: summary[m] for m in METRICS}})
        return rows
    except InputError as exc:
        if check_only:
            raise
        return [{"point": pid, **point, "workload": "", "target": "", "status": f"error: {exc}",
                 **{m: np.nan for m in METRICS}}]


def _chip_override(overrides: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    _merge_into(merged, copy.deepcopy(overrides.get("*", {})))
    _merge_into(merged, copy.deepcopy(overrides.get(name, {})))
    return merged


def _evaluate_task(args: tuple[dict[str, Any], str, dict[str, Any]]) -> list[dict[str, Any]]:
    return evaluate_point(*args)


# ---------------------------------------------------------------- executors and the table


def _local(tasks: list[tuple[dict[str, Any], str, dict[str, Any]]], workers: int | None) -> Iterable[list[dict[str, Any]]]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = workers or os.cpu_count() or 1
    if workers == 1:
        yield from (_evaluate_task(t) for t in tasks)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_evaluate_task, t) for t in tasks]
        for future in as_completed(futures):
            yield future.result()


def _dask(tasks: list[tuple[dict[str, Any], str, dict[str, Any]]], workers: int | None,
          scheduler: str | None) -> Iterable[list[dict[str, Any]]]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise InputError("the dask executor needs dask[distributed]: pip install 'chipsim[dask]'",
                         key="--executor") from None
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        futures = client.map(_evaluate_task, tasks, pure=False)
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_sweep(sweep: Sweep, out_dir: Path, executor: str = "local", workers: int | None = None,
              scheduler: str | None = None, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Evaluate every design point not already in `out_dir/results.csv`; returns the whole table,
    sorted by design point, and writes results.csv and results.parquet."""
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / "results.csv"
    done = pd.read_csv(partial) if partial.is_file() and partial.stat().st_size else pd.DataFrame()
    finished = set(done["point"]) if "point" in done else set()
    points = design_points(sweep)
    tasks = [(sweep.base, sweep.base_file, p) for p in points if point_id(p) not in finished]
    log.info("sweep %s: %d points, %d already done", sweep.name, len(points), len(points) - len(tasks))
    runner = _dask(tasks, workers, scheduler) if executor == "dask" else _local(tasks, workers)
    header = not (partial.is_file() and partial.stat().st_size)
    if progress:
        progress(0, len(tasks))
    with partial.open("a", encoding="utf-8") as fh:
        for index, rows in enumerate(runner):
            pd.DataFrame(rows).to_csv(fh, header=header, index=False)
            fh.flush()
            header = False
            if progress:
                progress(index + 1, len(tasks))
    table = pd.read_csv(partial)
    order = {point_id(p): i for i, p in enumerate(points)}
    table = table[table["point"].isin(order)]
    table = table.assign(_order=table["point"].map(order)).sort_values(
        ["_order", "workload", "target"], kind="stable").drop(columns="_order").reset_index(drop=True)
    table.to_csv(partial, index=False)
    table.to_parquet(out_dir / "results.parquet", index=False)
    return table


def pareto_front(frame: pd.DataFrame, x: str = "latency_s", y: str = "energy_j") -> pd.DataFrame:
    """Rows no other row beats on both x and y (lower is better)."""
    ok = frame.dropna(subset=[x, y]).sort_values([x, y], kind="stable")
    best = np.inf
    keep = []
    for index, value in zip(ok.index, ok[y], strict=True):
        if value < best:
            keep.append(index)
            best = value
    return ok.loc[keep]
