"""Run configs: which chips or systems, which workloads, which options. Parsed and checked, not executed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipsim.config.loader import load_yaml
from chipsim.config.reader import Section
from chipsim.errors import InputError
from chipsim.vocab import LAUNCH_MODES

REPORTS = ("table", "csv", "timeline", "plots")
NAME_MAX = 100
_NAME = re.compile(r"[^\W_][\w.+=@ -]*")  # a letter or digit first, then letters, digits, `_.+=@-` and spaces


def check_name(value: Any, file: str | None, key: str = "name") -> str:
    """A run or sweep `name:` becomes a folder name (`results/<name>/`), so it must be one plain path
    component: a letter or digit, then letters, digits, spaces and `_ . + = @ -`, at most 100
    characters, no `..`, not ending in a space or a dot. So no `/`, `\\`, absolute paths or control characters."""
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {type(value).__name__}", file=file, key=key)
    shown = value if len(value) <= NAME_MAX else value[:NAME_MAX] + "..."
    if len(value) > NAME_MAX or not _NAME.fullmatch(value) or ".." in value or value.endswith((" ", ".")):
        raise InputError(f"expected a plain folder name (a letter or digit, then letters, digits, spaces and "
                         f"_ . + = @ -; no '..'; at most {NAME_MAX} characters), got {shown!r}", file=file, key=key)
    return value


def safe_name(value: str) -> str:
    """`value` made into a valid name (for names taken from file names, which the user did not write
    as a name): every other character becomes `_`."""
    cleaned = re.sub(r"[^\w.+=@ -]", "_", value)[:NAME_MAX].rstrip(" .")
    cleaned = re.sub(r"^[\W_]+", "", cleaned)
    return cleaned or "run"


@dataclass(frozen=True)
class WorkloadSpec:
    generator: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    trace: Path | None = None
    name: str | None = None  # a label, when a config lists several workloads
    world: int | None = None  # a trace's collectives that name no group span this many ranks (Chakra)


@dataclass(frozen=True)
class SystemRef:
    """A system by name or path, optionally varied: `set` is merged over its YAML (a what-if)."""

    system: str
    name: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    name: str
    chips: tuple[str, ...]
    workloads: tuple[WorkloadSpec, ...]
    launch: str = "eager"
    sustained: bool = False
    report: tuple[str, ...] = REPORTS
    file: Path | None = None
    systems: tuple[SystemRef, ...] = ()
    parallelism: dict[str, Any] | None = None  # a training step under a layout (chipsim.training.run)
    serving: dict[str, Any] | None = None  # an LLM serving run (chipsim.serving.config)

    @property
    def workload(self) -> WorkloadSpec:
        return self.workloads[0]


def _workload_spec(wl: Section, file: Path | None) -> WorkloadSpec:
    generator = wl.raw("generator", None)
    trace = wl.raw("trace", None)
    params = wl.raw("params", {}) or {}
    label = wl.raw("name", None)
    world = int(wl.number("world", 1, minimum=1, integer=True)) if wl.has("world") else None
    if world is not None and trace is None:
        raise wl.error("world", "only a trace takes `world` (the group size of its collectives that name none)")
    if (generator is None) == (trace is None):
        raise wl.error(None, "expected exactly one of 'generator' (with optional 'params') or 'trace'")
    if generator is not None and not isinstance(generator, str):
        raise wl.error("generator", "expected a generator name")
    if not isinstance(params, dict):
        raise wl.error("params", "expected a mapping of generator parameters")
    if label is not None and not isinstance(label, str):
        raise wl.error("name", "expected a string")
    trace_path = None
    if trace is not None:
        if not isinstance(trace, str):
            raise wl.error("trace", "expected a path to a workload JSON file")
        trace_path = Path(trace)
        if not trace_path.is_absolute() and file is not None:
            trace_path = file.parent / trace_path
    wl.done()
    return WorkloadSpec(generator, dict(params), trace_path, label, world)


def _system_refs(top: Section) -> tuple[SystemRef, ...]:
    raw = top.raw("systems", None)
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise top.error("systems", "expected a list of system names, paths or {system, name, set} entries")
    refs = []
    for index, item in enumerate(raw):
        if isinstance(item, str):
            refs.append(SystemRef(item))
            continue
        sec = Section(item, top.file, f"systems[{index}]")
        system = sec.string("system")
        label = sec.raw("name", None)
        overrides = sec.raw("set", {}) or {}
        if label is not None and not isinstance(label, str):
            raise sec.error("name", "expected a string")
        if not isinstance(overrides, dict):
            raise sec.error("set", "expected a mapping of system keys to override")
        sec.done()
        refs.append(SystemRef(system, label, dict(overrides)))
    return tuple(refs)


def parse_run_config(data: dict[str, Any], file: Path | None = None) -> RunConfig:
    fname = str(file) if file else None
    top = Section(data, fname)
    name = check_name(top.raw("name"), fname) if top.has("name") else safe_name(file.stem if file else "run")
    serving = top.raw("serving", None)
    if serving is not None:  # the chip, model and engine are the section's own: nothing else applies
        if not isinstance(serving, dict):
            raise top.error("serving", "expected a mapping: model, chip or system, engine, arrival, lengths, ...")
        for other in ("chips", "systems", "workload", "parallelism", "options"):
            if top.has(other):
                raise top.error(other, "a serving run takes its chip or system, model and engine from `serving:`; "
                                       f"leave `{other}` out")
        report_raw = top.raw("report", list(REPORTS))
        if not isinstance(report_raw, list) or any(r not in REPORTS for r in report_raw):
            raise top.error("report", f"expected a list drawn from {', '.join(REPORTS)}")
        top.done()
        return RunConfig(name, (), (), report=tuple(report_raw), file=file, serving=dict(serving))
    systems = _system_refs(top)
    chips_raw = top.raw("chips", None if not systems else [])
    if isinstance(chips_raw, str):
        chips_raw = [chips_raw]
    if chips_raw is None:
        raise top.error("chips", "required key is missing: give `chips` (names or paths) or `systems`")
    if not isinstance(chips_raw, list) or not all(isinstance(c, str) for c in chips_raw) or not (chips_raw or systems):
        raise top.error("chips", "expected a list of chip names or YAML paths, e.g. [h200_sxm, h100_sxm]")
    parallelism = top.raw("parallelism", None)
    if parallelism is not None:
        if not isinstance(parallelism, dict):
            raise top.error("parallelism", "expected a mapping: model, gpus, layout sizes, global_batch, seq, precision")
        if top.has("workload"):
            raise top.error("workload", "give either `workload` or `parallelism` (a training step under a layout)")
        if not systems:
            raise top.error("parallelism", "a layout runs on a system: give `systems`")
        workloads: tuple[WorkloadSpec, ...] = ()
    else:
        raw_workload = top.raw("workload")
        items = raw_workload if isinstance(raw_workload, list) else [raw_workload]
        if not items:
            raise top.error("workload", "expected a workload or a non-empty list of workloads")
        key = "workload" if not isinstance(raw_workload, list) else None
        workloads = tuple(_workload_spec(Section(item, fname, key or f"workload[{i}]"), file)
                          for i, item in enumerate(items))
    opts = top.section("options", {})
    launch = opts.string("launch", "eager", choices=LAUNCH_MODES)
    sustained_raw = opts.raw("sustained", False)
    if not isinstance(sustained_raw, bool):
        raise opts.error("sustained", f"expected true or false, got {sustained_raw!r}")
    opts.done()
    report_raw = top.raw("report", list(REPORTS))
    if not isinstance(report_raw, list) or any(r not in REPORTS for r in report_raw):
        raise top.error("report", f"expected a list drawn from {', '.join(REPORTS)}")
    top.done()
    return RunConfig(name, tuple(chips_raw), workloads, launch, sustained_raw, tuple(report_raw), file, systems,
                     dict(parallelism) if parallelism is not None else None)


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    data = load_yaml(path)
    try:
        return parse_run_config(data, path)
    except InputError as exc:
        raise exc.within(file=str(path)) from None
