"""Typed, key-path-aware reading of a YAML mapping.

`Section(data, file, path)` hands out values by key, converting unit strings to SI floats and
raising InputError with the file and full key path on anything wrong; `done()` rejects keys that
were never read (so a typo such as `bandwith:` is an error, not a silently ignored line). Numbers and
quantities are finite (NaN and infinity are refused); `positive=True` refuses zero as well; booleans
are YAML's true/false only (a quoted "false" is an error, not a true value).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from chipsim.config.loader import brief
from chipsim.config.units import KINDS, parse_quantity
from chipsim.errors import InputError

_MISSING = object()


class Section:
    def __init__(self, data: Any, file: str | None, path: str = "") -> None:
        if not isinstance(data, dict):
            raise InputError(f"expected a mapping, got {type(data).__name__}", file=file, key=path or None)
        self.data = data
        self.file = file
        self.path = path
        self._read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str | None, message: str) -> InputError:
        return InputError(message, file=self.file, key=self.key(name) if name else (self.path or None))

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        self._read.add(name)
        if name not in self.data:
            if default is _MISSING:
                raise self.error(name, "required key is missing")
            return default
        return self.data[name]

    def quantity(self, name: str, kind: str, default: Any = _MISSING, *, positive: bool = False) -> float:
        value = self.raw(name, default)
        if value is None:
            raise self.error(name, f"expected {KINDS[kind][1]}")
        return parse_quantity(value, kind, key=self.key(name), file=self.file, positive=positive)

    def number(self, name: str, default: Any = _MISSING, *, minimum: float | None = 0.0,
               maximum: float | None = None, integer: bool = False, positive: bool = False) -> float:
        """A finite number (an integer with `integer`) in [minimum, maximum]; above zero with `positive`."""
        value = self.raw(name, default)
        what = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"expected {what}, got {brief(value)}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond the float range
            finite = False
        if not finite:
            raise self.error(name, f"expected a finite number, got {brief(value)}")
        if integer and int(value) != value:
            raise self.error(name, f"expected an integer, got {brief(value)}")
        if minimum is not None and value < minimum:
            raise self.error(name, f"expected a value >= {minimum}, got {brief(value)}")
        if positive and value <= 0:
            raise self.error(name, f"expected a value above zero, got {brief(value)}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"expected a value <= {maximum}, got {brief(value)}")
        return int(value) if integer else float(value)

    def boolean(self, name: str, default: Any = _MISSING) -> bool:
        """YAML's true or false; a string such as 'false' or 'no' (true to Python) is an error."""
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false (unquoted), got {brief(value)}")
        return value

    def schema_version(self, supported: int, what: str) -> int:
        """The optional `schema_version` key; anything but `supported` is an error."""
        version = self.integer("schema_version", supported)
        if version != supported:
            raise self.error("schema_version", f"this chipsim reads {what} schema version {supported}, got {version}")
        return version

    def integer(self, name: str, default: Any = _MISSING, *, minimum: int | None = 0) -> int:
        return int(self.number(name, default, minimum=minimum, integer=True))

    def string(self, name: str, default: Any = _MISSING, *, choices: Iterable[str] | None = None) -> str:
        value = self.raw(name, default)
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {brief(value)}")
        if choices is not None:
            allowed = list(choices)
            if value not in allowed:
                raise self.error(name, f"expected one of {', '.join(allowed)}, got {brief(value)}")
        return value

    def section(self, name: str, default: Any = _MISSING) -> Section:
        value = self.raw(name, default)
        return Section(value, self.file, self.key(name))

    def mapping(self, name: str, kind: str, default: Any = _MISSING, *, keys: Iterable[str] | None = None,
                what: str = "name", positive: bool = False, maximum: float | None = None) -> dict[str, float]:
        """A mapping of names to quantities of one kind (or plain numbers when kind == 'number').
        `keys`: the names allowed (anything else is an unknown `what`); `positive` and `maximum` bound
        each value."""
        sub = self.section(name, default)
        allowed = list(keys) if keys is not None else None
        out: dict[str, float] = {}
        for item in sub.data:
            if allowed is not None and item not in allowed:
                raise sub.error(str(item), f"unknown {what}; expected one of {', '.join(allowed)}")
            out[str(item)] = (sub.number(item, positive=positive, maximum=maximum) if kind == "number"
                              else sub.quantity(item, kind, positive=positive))
        return out

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self._read]
        if unknown:
            known = sorted(self._read)
            raise self.error(str(unknown[0]), f"unknown key; expected one of: {', '.join(known)}")
