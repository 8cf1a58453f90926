"""Frozen descriptions of chips (SI units inside), built from validated YAML."""

from chipsim.hardware.chip import (
    DTYPES,
    Calibration,
    Chip,
    Link,
    MemoryLevel,
    PowerModel,
)
from chipsim.hardware.registry import builtin_chip_names, load_chip

__all__ = [
    "DTYPES",
    "Calibration",
    "Chip",
    "Link",
    "MemoryLevel",
    "PowerModel",
    "builtin_chip_names",
    "load_chip",
]
