"""Workload generators: parameters in, op graph out. One module per generator, one registry.

Each generator declares its parameters as a frozen dataclass (field defaults are the documented
defaults, `metadata['doc']` the documentation), so `workload: {generator: NAME}` alone runs and an
unknown or mistyped parameter is a clear error.
"""

# importing the modules registers them
from chipsim.workload.generators import all_reduce, dynamic_attention, quantized_inference, transformer  # noqa: E402,F401,I001
from chipsim.workload.generators import moe, parallel  # noqa: E402,F401,I001
from chipsim.workload.generators.registry import GENERATORS, build_workload, describe_generators

__all__ = ["GENERATORS", "build_workload", "describe_generators"]
