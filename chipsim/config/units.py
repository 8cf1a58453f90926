"""Physical quantities written as strings ("3.35 TB/s", "700 W", "50 MiB", "989.4 TFLOP/s").

Parsing is done by pint, once, at the YAML boundary: everything inside chipsim is SI floats
(seconds, bytes, bytes/s, FLOP/s, watts, joules, hertz). A bare number is accepted only where the
schema says the quantity is dimensionless or where the SI unit is implied by the key's name.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from importlib import resources
from typing import Any

import pint

from chipsim.config.loader import brief
from chipsim.errors import InputError

# kind -> (pint unit the value is converted to, human description)
KINDS: dict[str, tuple[str, str]] = {
    "bytes": ("B", "a size such as '50 MiB' or '80 GB'"),
    "bandwidth": ("B/s", "a bandwidth such as '3.35 TB/s'"),
    "flops": ("FLOP/s", "a rate such as '989.4 TFLOP/s' (or TOP/s for integer ops)"),
    "power": ("W", "a power such as '700 W'"),
    "frequency": ("Hz", "a frequency such as '1.98 GHz'"),
    "time": ("s", "a time such as '300 ns' or '10 us'"),
    "energy_per_flop": ("J/FLOP", "an energy per operation such as '0.5 pJ/FLOP'"),
    "energy_per_byte": ("J/B", "an energy per byte or bit such as '3.9 pJ/bit'"),
    "area": ("mm**2", "an area such as '814 mm^2'"),
}


def _definition_lines(name: str) -> list[str]:
    """pint's default definitions, imports inlined, with `bit = []` given its own dimension: pint makes
    bits dimensionless, which would let '3.35 TB/s' pass as a frequency and '1.98 GHz' as a bandwidth."""
    lines: list[str] = []
    for line in (resources.files("pint") / name).read_text(encoding="utf-8").splitlines():
        if line.startswith("@import"):
            lines += _definition_lines(line.split()[1])
        elif line.split("#")[0].strip() == "bit = []":
            lines.append("bit = [information]")
        else:
            lines.append(line)
    return lines


# "<number> <unit expression>": pint alone would evaluate typos as arithmetic ("3..5 W" is 3. x .5 W,
# "3 4 W" is 12 W, a bare "W" is 1 W), so the text's form is checked before pint sees it.
_UNIT_ATOM = r"[A-Za-zµ_]+(?:(?:\^|\*\*)-?\d+)?"
_QUANTITY_RE = re.compile(
    rf"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*{_UNIT_ATOM}(?:\s*[/*]?\s*{_UNIT_ATOM})*")


_BITS_RE = re.compile(r"(?<![A-Za-z])([kMGTPE]?)(?:b/s|bps)\b")


@lru_cache(maxsize=1)
def _registry() -> pint.UnitRegistry:
    ureg: pint.UnitRegistry = pint.UnitRegistry(_definition_lines("default_en.txt"), cache_folder=None)
    ureg.define("FLOP = [operation] = flop = OP = op")
    return ureg


@lru_cache(maxsize=4096)
def _parse_cached(text: str, kind: str) -> float:
    unit, _ = KINDS[kind]
    if not _QUANTITY_RE.fullmatch(text):
        raise ValueError(f"not a number followed by a unit: {text!r}")
    ureg = _registry()
    # networking writes bits per second as "Gb/s" or "Gbps"; pint would read "b" as a barn
    text = _BITS_RE.sub(r"\1bit/s", text.replace("µ", "u").replace("TOPS", "TOP/s").replace("TFLOPS", "TFLOP/s"))
    quantity: Any = ureg.Quantity(text)
    return float(quantity.to(unit).magnitude)


def parse_quantity(value: Any, kind: str, *, key: str | None = None, file: str | None = None,
                   positive: bool = False) -> float:
    """Convert a unit string (or a number in SI units) of the given kind to an SI float.

    NaN, infinity (including a value that overflows to it, such as '1e308 TB/s') and negative values
    are refused; with `positive`, zero is refused too."""
    if kind not in KINDS:
        raise ValueError(f"unknown quantity kind {kind!r}")
    unit, description = KINDS[kind]
    if isinstance(value, bool):
        raise InputError(f"expected {description}, got {brief(value)}", file=file, key=key)
    if isinstance(value, (int, float)):
        try:
            result = float(value)
        except OverflowError:  # an integer beyond the float range
            result = math.inf
    elif isinstance(value, str):
        try:
            result = _parse_cached(value.strip(), kind)
        except (pint.errors.PintError, ValueError, TypeError, AttributeError, AssertionError, KeyError):
            raise InputError(f"expected {description}, got {brief(value)}", file=file, key=key) from None
        except OverflowError:
            result = math.inf
    else:
        raise InputError(f"expected {description}, got {brief(value)}", file=file, key=key)
    if result != result or result < 0:
        raise InputError(f"expected a non-negative value: {description}, got {brief(value)}", file=file, key=key)
    if math.isinf(result):
        raise InputError(f"expected a finite value: {description}, got {brief(value)}", file=file, key=key)
    if positive and result == 0:
        raise InputError(f"expected a value above zero: {description}, got {brief(value)}", file=file, key=key)
    return result


def format_si(value: float, unit: str) -> str:
    """Render an SI value with an engineering prefix: format_si(3.35e12, 'B/s') == '3.35 TB/s'."""
    if value == 0:
        return f"0 {unit}"
    prefixes = [(1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""),
                (1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p")]
    for scale, prefix in prefixes:
        if abs(value) >= scale:
            return f"{value / scale:.4g} {prefix}{unit}"
    return f"{value:.3g} {unit}"
