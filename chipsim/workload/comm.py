"""Communicators: which ranks a collective spans (Calculon's peer sets, NCCL's communicators).

A collective op carries its group size in `shape.group`; its attrs may place the group on the
system's ranks: `stride` and `first` (ranks first, first + stride, ... : a data-parallel group
strided across nodes, a pipeline pair) or an explicit `ranks` list (an expert-parallel group
wherever the layout puts it). Without them the group is ranks 0..group-1.

    {"kind": "all_reduce", "shape": {"bytes": 4e8, "group": 16}, "attrs": {"stride": 8}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chipsim.errors import InputError

COMM_ATTRS = ("ranks", "stride", "first")
MAX_GROUP = 1 << 20  # ranks in one communicator (a million GPUs)


@dataclass(frozen=True)
class Communicator:
    """`size` ranks: `first`, `first + stride`, ... unless `explicit` lists them."""

    size: int
    stride: int = 1
    first: int = 0
    explicit: tuple[int, ...] | None = None

    def ranks(self) -> tuple[int, ...]:
        if self.explicit is not None:
            return self.explicit
        return tuple(range(self.first, self.first + self.size * self.stride, self.stride))

    @property
    def last(self) -> int:
        return self.explicit[-1] if self.explicit is not None else self.first + (self.size - 1) * self.stride

    @property
    def highest(self) -> int:
        return max(self.explicit) if self.explicit is not None else self.last

    def describe(self) -> str:
        if self.explicit is not None:
            shown = ", ".join(map(str, self.explicit[:6])) + (", ..." if self.size > 6 else "")
            return f"{self.size} ranks [{shown}]"
        if self.stride == 1 and self.first == 0:
            return f"{self.size} ranks"
        return f"{self.size} ranks from {self.first} by {self.stride}"


def _int_attr(attrs: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = attrs.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"expected an integer >= {minimum}, got {value!r}", key=f"attrs.{key}")
    return value


def communicator(shape: Mapping[str, Any], attrs: Mapping[str, Any]) -> Communicator:
    """The communicator of a collective op (its validated `shape.group` and comm attrs)."""
    size = shape["group"]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_GROUP:
        raise InputError(f"expected a whole number of ranks in 1..{MAX_GROUP}, got {size!r}", key="shape.group")
    if "ranks" in attrs:
        if "stride" in attrs or "first" in attrs:
            raise InputError("give either an explicit `ranks` list or `stride`/`first`, not both",
                             key="attrs.ranks")
        raw = attrs["ranks"]
        if not isinstance(raw, (list, tuple)) or not all(
                isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in raw):
            raise InputError("expected a list of non-negative rank numbers", key="attrs.ranks")
        if len(raw) != size:
            raise InputError(f"lists {len(raw)} ranks but shape.group is {size}", key="attrs.ranks")
        if len(set(raw)) != len(raw):
            raise InputError("names a rank twice", key="attrs.ranks")
        return Communicator(size, explicit=tuple(raw))
    return Communicator(size, _int_attr(attrs, "stride", 1, 1), _int_attr(attrs, "first", 0, 0))


def comm_attrs(comm: Communicator) -> dict[str, Any]:
    """The op attrs that name `comm` (inverse of `communicator`); {} for ranks 0..size-1."""
    if comm.explicit is not None:
        return {"ranks": list(comm.explicit)}
    out: dict[str, Any] = {}
    if comm.stride != 1:
        out["stride"] = comm.stride
    if comm.first:
        out["first"] = comm.first
    return out
