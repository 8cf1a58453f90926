"""The Python API notebooks use; the CLI is a thin layer over it.

    import chipsim
    chip = chipsim.load_chip("h200_sxm")
    wl = chipsim.build_workload("transformer_train_step", {"model": "llama-350m"})
    result = chipsim.simulate(wl, chip)
    result.summary(); result.ops_frame(); chipsim.report.plots.plot_breakdown([result])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chipsim.config.loader import deep_merge
from chipsim.config.runconfig import RunConfig, WorkloadSpec
from chipsim.cost import ChipLink, Network
from chipsim.engine.sim import Prepared, SimOptions, prepare
from chipsim.errors import InputError
from chipsim.hardware.chip import Chip
from chipsim.hardware.registry import load_chip
from chipsim.network.fabric import Fabric
from chipsim.network.system import load_system
from chipsim.report.result import Result
from chipsim.workload.generators import build_workload
from chipsim.workload.graph import Workload

log = logging.getLogger(__name__)


def workload_from_spec(spec: WorkloadSpec, key: str = "workload") -> Workload:
    """Build (generator) or load a workload; generator errors are located under `key`. A `trace` is
    a chipsim op-graph JSON, or a PyTorch profiler / Chakra trace, imported on the fly."""
    if spec.trace is not None:
        from chipsim.workload.importers import import_trace
        from chipsim.workload.importers.kineto import read_trace_json
        from chipsim.workload.io import workload_from_dict

        data = read_trace_json(spec.trace)
        if isinstance(data, dict) and "format" in data:
            return workload_from_dict(data, file=str(spec.trace))
        return import_trace(spec.trace, world=spec.world)[0]
    assert spec.generator is not None
    return build_workload(spec.generator, spec.params, key=key)


def load_chips(names: Sequence[str], relative_to: Path | None = None, key: str = "chips") -> list[Chip]:
    """Load chips by name or path. An unknown name or missing file is located at `key[i]` in
    `relative_to` (the run config); errors inside a chip's own YAML name that YAML."""
    chips = []
    for index, name in enumerate(names):
        try:
            chips.append(load_chip(name, relative_to))
        except InputError as exc:
            if exc.file is None:
                where = str(relative_to) if relative_to and key == "chips" else None
                raise exc.within(file=where, key_prefix=f"{key}[{index}]" if key == "chips" else key) from None
            raise
    return chips


@dataclass(frozen=True)
class Target:
    """What a workload runs on: a chip on its own link, or a chip as one rank of a system."""

    label: str
    chip: Chip
    network: Network


def _chip_override(overrides: Mapping[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return deep_merge(overrides.get("*", {}), overrides.get(name, {}))


def load_targets(config: RunConfig, chips: Sequence[str] | None = None,
                 chip_overrides: Mapping[str, dict[str, Any]] | None = None) -> list[Target]:
    """The `--chip`s given, else the config's chips and systems (systems' what-if overrides applied).
    `chip_overrides` maps a chip name ('*': every chip) to a nested mapping merged over its YAML."""
    names = list(chips) if chips else list(config.chips)
    overrides = dict(chip_overrides or {})
    loaded = load_chips(names, config.file, key="--chip" if chips else "chips")
    unknown = [n for n in overrides if n != "*" and n not in {c.name for c in loaded}]
    if unknown:
        raise InputError(f"no chip named '{unknown[0]}' in the run config (it has: "
                         f"{', '.join(sorted(c.name for c in loaded))})", key=f"chips.{unknown[0]}")
    targets = []
    for name, chip in zip(names, loaded, strict=True):
        if overrides and (chip.name in overrides or "*" in overrides):
            chip = load_chip(name, config.file, _chip_override(overrides, chip.name))
        targets.append(Target(chip.name, chip, ChipLink(chip)))
    if chips:
        return targets
    for index, ref in enumerate(config.systems):
        try:
            system = load_system(ref.system, config.file, ref.overrides, ref.name)
        except InputError as exc:
            where = str(config.file) if config.file else None
            raise (exc.within(file=where, key_prefix=f"systems[{index}]") if exc.file is None else exc) from None
        targets.append(Target(system.name, system.chip, Fabric(system)))
    return targets


class CannotRun(InputError):
    """A target lacks what a workload needs (a dtype, a memory level, enough GPUs): `reason` says what."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None, reason: str = "") -> None:
        super().__init__(message, file=file, key=key)
        self.reason = reason


@dataclass(frozen=True)
class Case:
    """One simulation of a run: a workload on a target, costed and ready to run."""

    target: str
    workload: Workload
    prepared: Prepared


def plan_cases(config: RunConfig, chips: Sequence[str] | None = None,
               chip_overrides: Mapping[str, dict[str, Any]] | None = None) -> list[Case]:
    """Every (workload, target) of the config, loaded, built and costed: any input error is raised
    here, before the first simulation starts. The CLI, sweeps and regressions all run through this."""
    targets = load_targets(config, chips, chip_overrides)
    workloads = []
    for index, spec in enumerate(config.workloads):
        try:
            workload = workload_from_spec(spec, "workload" if len(config.workloads) == 1 else f"workload[{index}]")
        except InputError as exc:
            raise exc.within(file=str(config.file) if config.file else None) from None
        if spec.name:
            workload.name = spec.name
        workloads.append((spec, workload))
    options = SimOptions(launch=config.launch, sustained=config.sustained)
    cases = []
    for spec, workload in workloads:
        for target in targets:
            try:
                prepared = prepare(workload, target.chip, options, target.network)
            except InputError as exc:
                source = spec.trace or config.file  # name the file the workload came from
                raise CannotRun(f"{target.label} cannot run this workload: {exc.message}",
                                file=exc.file or (str(source) if source else None), key=exc.key,
                                reason=exc.message) from None
            cases.append(Case(target.label, workload, prepared))
    return cases


def execute(case: Case) -> Result:
    return case.prepared.run()


def run(config: RunConfig, chips: Sequence[str] | None = None,
        progress: Callable[[int, int, str], None] | None = None) -> list[Result]:
    """Simulate each of the config's workloads on each target (chips, systems, or the `chips` given).
    Everything is loaded and checked before the first simulation starts."""
    cases = plan_cases(config, chips)
    results: list[Result] = []
    for case in cases:
        if progress:
            progress(len(results), len(cases), f"{case.workload.name} on {case.target}")
        results.append(execute(case))
    return results
