"""chipsim: a hardware/software co-design simulator for AI workloads on AI chips."""

from chipsim.api import load_chips, run, workload_from_spec
from chipsim.engine.sim import SimOptions, simulate
from chipsim.errors import InputError
from chipsim.hardware.registry import builtin_chip_names, load_chip
from chipsim.report.result import Result
from chipsim.workload.generators import build_workload
from chipsim.workload.io import load_workload, save_workload

__version__ = "0.1.0"

__all__ = [
    "InputError",
    "Result",
    "SimOptions",
    "build_workload",
    "builtin_chip_names",
    "load_chip",
    "load_chips",
    "load_workload",
    "run",
    "save_workload",
    "simulate",
    "workload_from_spec",
]
