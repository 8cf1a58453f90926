"""chipsim: a hardware/software co-design simulator for AI workloads on AI chips.

The names below are imported on first use (PEP 562), so `import chipsim` and `chipsim --help` stay
fast: numpy, pandas, simpy and pint load only when a simulation needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "InputError": "chipsim.errors",
    "Result": "chipsim.report.result",
    "SimOptions": "chipsim.engine.sim",
    "simulate": "chipsim.engine.sim",
    "build_workload": "chipsim.workload.generators",
    "builtin_chip_names": "chipsim.hardware.registry",
    "load_chip": "chipsim.hardware.registry",
    "load_chips": "chipsim.api",
    "run": "chipsim.api",
    "workload_from_spec": "chipsim.api",
    "load_workload": "chipsim.workload.io",
    "save_workload": "chipsim.workload.io",
    "load_system": "chipsim.network.system",
    "builtin_system_names": "chipsim.network.system",
    "Fabric": "chipsim.network.fabric",
}

__all__ = [
    "Fabric",
    "InputError",
    "Result",
    "SimOptions",
    "build_workload",
    "builtin_chip_names",
    "builtin_system_names",
    "load_chip",
    "load_chips",
    "load_system",
    "load_workload",
    "run",
    "save_workload",
    "simulate",
    "workload_from_spec",
]

if TYPE_CHECKING:
    from chipsim import examples as examples
    from chipsim.api import load_chips, run, workload_from_spec
    from chipsim.engine.sim import SimOptions, simulate
    from chipsim.errors import InputError
    from chipsim.hardware.registry import builtin_chip_names, load_chip
    from chipsim.network.fabric import Fabric
    from chipsim.network.system import builtin_system_names, load_system
    from chipsim.report.result import Result
    from chipsim.workload.generators import build_workload
    from chipsim.workload.io import load_workload, save_workload


def __getattr__(name: str) -> Any:
    if name == "examples":  # the shipped examples, a subpackage: chipsim.examples.path("runs", ...)
        return importlib.import_module("chipsim.examples")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chipsim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
