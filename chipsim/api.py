"""The Python API notebooks use; the CLI is a thin layer over it.

    import chipsim
    chip = chipsim.load_chip("h200_sxm")
    wl = chipsim.build_workload("transformer_train_step", {"model": "llama-350m"})
    result = chipsim.simulate(wl, chip)
    result.summary(); result.ops_frame(); chipsim.report.plots.plot_breakdown([result])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from chipsim.config.runconfig import RunConfig, WorkloadSpec
from chipsim.cost.model import cost_of
from chipsim.engine.sim import SimOptions, simulate
from chipsim.errors import InputError
from chipsim.hardware.chip import Chip
from chipsim.hardware.registry import load_chip
from chipsim.report.result import Result
from chipsim.workload.generators import build_workload
from chipsim.workload.graph import Workload
from chipsim.workload.io import load_workload

log = logging.getLogger(__name__)


def workload_from_spec(spec: WorkloadSpec) -> Workload:
    if spec.trace is not None:
        return load_workload(spec.trace)
    assert spec.generator is not None
    return build_workload(spec.generator, spec.params)


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


def run(config: RunConfig, chips: Sequence[str] | None = None,
        progress: Callable[[int, int, str], None] | None = None) -> list[Result]:
    """Simulate the config's workload on each chip (or on `chips`, when given). Everything is loaded
    and checked before the first simulation starts."""
    chip_objs = load_chips(chips, config.file, key="--chip") if chips else load_chips(config.chips, config.file)
    try:
        workload = workload_from_spec(config.workload)
    except InputError as exc:
        raise exc.within(file=str(config.file) if config.file else None) from None
    options = SimOptions(launch=config.launch, sustained=config.sustained)

    def cannot_run(chip: Chip, exc: InputError) -> InputError:
        source = config.workload.trace or config.file  # name the file the workload came from
        return InputError(f"{chip.name} cannot run this workload: {exc.message}",
                          file=exc.file or (str(source) if source else None), key=exc.key)

    for chip in chip_objs:  # every chip must run every op (dtypes, memory levels) before any simulation
        try:
            for op in workload.ops:
                cost_of(op, chip)
        except InputError as exc:
            raise cannot_run(chip, exc) from None
    results = []
    for index, chip in enumerate(chip_objs):
        if progress:
            progress(index, len(chip_objs), chip.name)
        try:
            results.append(simulate(workload, chip, options))
        except InputError as exc:
            raise cannot_run(chip, exc) from None
    return results
