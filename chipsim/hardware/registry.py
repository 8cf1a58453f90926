"""Built-in chips (package data under chipsim/chips/) and loading a chip by name or path."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from chipsim.config.loader import deep_merge, load_yaml_with_extends, resolve_yaml
from chipsim.errors import InputError
from chipsim.hardware.chip import Chip, build_chip


def _chips_dir() -> Path:
    return Path(str(resources.files("chipsim") / "chips"))


def builtin_chip_names() -> list[str]:
    return sorted(p.stem for p in _chips_dir().glob("*.yaml"))


def resolve_chip_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A built-in name (`h100_sxm`) or a path to a YAML file (relative to `relative_to`'s folder)."""
    return resolve_yaml(name_or_path, _chips_dir(), "chip", relative_to)


@lru_cache(maxsize=64)
def _load_data(path: str, mtime_ns: int) -> dict[str, Any]:
    return load_yaml_with_extends(path, lambda name, child: resolve_chip_path(name, child))


@lru_cache(maxsize=64)
def _load_cached(path: str, mtime_ns: int) -> Chip:
    return build_chip(_load_data(path, mtime_ns), file=path)


def overridden(overrides: dict[str, Any], key: str | None) -> bool:
    """Whether an error's key path (a.b.c) was set by `overrides` rather than by the YAML file."""
    node: Any = overrides
    for part in (key or "").split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return bool(key)


def load_chip(name_or_path: str | Path, relative_to: Path | None = None,
              overrides: dict[str, Any] | None = None) -> Chip:
    """Load a chip: a built-in name or a YAML path; `extends:` resolved, validated, SI units.
    `overrides` (a nested mapping, as in the YAML) are merged over the file: a what-if variant. An
    error in an overridden key is raised with that key and no file, for the caller to locate."""
    path = resolve_chip_path(str(name_or_path), relative_to)
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if not overrides:
        return _load_cached(*key)
    try:
        return build_chip(deep_merge(_load_data(*key), overrides), file=str(path))
    except InputError as exc:
        if overridden(overrides, exc.key):
            raise InputError(exc.message, key=exc.key) from None
        raise


# the products a device name (from a trace or a table: "H100 SXM5 80GB", "NVIDIA H200-141GB",
# "A100-SXM4-80GB", "h100_sxm") may hold, and their built-in chips; checked in this order, longest
# first (GB200 before B200)
DEVICE_ALIASES = {"GB300": "gb300", "GB200": "gb200", "GH200": "gh200", "B300": "b300", "B200": "b200",
                  "H800": "h800", "H200": "h200_sxm", "H100": "h100_sxm", "A100": "a100_sxm",
                  "MI325X": "mi325x", "MI300X": "mi300x"}


def chip_for_device_name(device: str) -> str | None:
    """The built-in chip a device name (from a trace or a CSV's device column) refers to: a built-in
    chip's own name, else the first product of `DEVICE_ALIASES` it names ("H100 SXM5 80GB" -> h100_sxm), an H100 in PCIe form ->
    h100_pcie; None for none, or for a variant no built-in chip models (A100 40 GB or PCIe, H100 NVL)."""
    if device.strip().lower() in builtin_chip_names():  # a chip's own name ("h100_dwb")
        return device.strip().lower()
    text = device.upper()
    for product, chip in DEVICE_ALIASES.items():
        if re.search(rf"(?<![A-Z0-9]){product}(?![0-9])", text):
            pcie = "PCIE" in text
            if product == "H100" and pcie:
                return "h100_pcie"
            if (product == "H100" and re.search(r"\bNVL\b", text)) or (
                    product == "A100" and (pcie or re.search(r"\b40 ?GB\b", text))):
                return None
            return chip
    return None
