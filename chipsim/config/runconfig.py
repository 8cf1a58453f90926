"""Run configs: which chips, which workload, which options. Parsed and checked, not executed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipsim.config.loader import load_yaml
from chipsim.config.reader import Section
from chipsim.errors import InputError

REPORTS = ("table", "csv", "timeline", "plots")


@dataclass(frozen=True)
class WorkloadSpec:
    generator: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    trace: Path | None = None


@dataclass(frozen=True)
class RunConfig:
    name: str
    chips: tuple[str, ...]
    workload: WorkloadSpec
    launch: str = "eager"
    sustained: bool = False
    report: tuple[str, ...] = REPORTS
    file: Path | None = None


def parse_run_config(data: dict[str, Any], file: Path | None = None) -> RunConfig:
    fname = str(file) if file else None
    top = Section(data, fname)
    name = top.string("name", file.stem if file else "run")
    chips_raw = top.raw("chips")
    if isinstance(chips_raw, str):
        chips_raw = [chips_raw]
    if not isinstance(chips_raw, list) or not chips_raw or not all(isinstance(c, str) for c in chips_raw):
        raise top.error("chips", "expected a list of chip names or YAML paths, e.g. [h200_sxm, h100_sxm]")
    wl = top.section("workload")
    generator = wl.raw("generator", None)
    trace = wl.raw("trace", None)
    params = wl.raw("params", {}) or {}
    if (generator is None) == (trace is None):
        raise wl.error(None, "expected exactly one of 'generator' (with optional 'params') or 'trace'")
    if generator is not None and not isinstance(generator, str):
        raise wl.error("generator", "expected a generator name")
    if not isinstance(params, dict):
        raise wl.error("params", "expected a mapping of generator parameters")
    trace_path = None
    if trace is not None:
        if not isinstance(trace, str):
            raise wl.error("trace", "expected a path to a workload JSON file")
        trace_path = Path(trace)
        if not trace_path.is_absolute() and file is not None:
            trace_path = file.parent / trace_path
    wl.done()
    opts = top.section("options", {})
    launch = opts.string("launch", "eager", choices=("eager", "graph"))
    sustained_raw = opts.raw("sustained", False)
    if not isinstance(sustained_raw, bool):
        raise opts.error("sustained", f"expected true or false, got {sustained_raw!r}")
    opts.done()
    report_raw = top.raw("report", list(REPORTS))
    if not isinstance(report_raw, list) or any(r not in REPORTS for r in report_raw):
        raise top.error("report", f"expected a list drawn from {', '.join(REPORTS)}")
    top.done()
    return RunConfig(name, tuple(chips_raw), WorkloadSpec(generator, dict(params), trace_path), launch,
                     sustained_raw, tuple(report_raw), file)


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    data = load_yaml(path)
    try:
        return parse_run_config(data, path)
    except InputError as exc:
        raise exc.within(file=str(path)) from None
