"""Generator registry and typed parameter parsing."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from chipsim.errors import InputError
from chipsim.workload.graph import Workload


@dataclass(frozen=True)
class Generator:
    name: str
    params_type: type
    build: Callable[[Any], Workload]
    description: str


GENERATORS: dict[str, Generator] = {}


def register_generator(name: str, params_type: type, description: str) -> Callable[[Callable[[Any], Workload]], Callable[[Any], Workload]]:
    def wrap(fn: Callable[[Any], Workload]) -> Callable[[Any], Workload]:
        GENERATORS[name] = Generator(name, params_type, fn, description)
        return fn

    return wrap


def check_range(params: Any, *keys: str, minimum: int = 1, maximum: int | None = None) -> None:
    """Each named parameter within [minimum, maximum], else an InputError naming that parameter.
    The maxima keep a typo (`layers: 1000000`) from building a graph that fills the memory."""
    for key in keys:
        value = getattr(params, key)
        if value is None:
            continue
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum:,}" if maximum is not None else f">= {minimum}"
            raise InputError(f"expected a value {bound}, got {value!r}", key=key)


def param(default: Any, doc: str) -> Any:
    return dataclasses.field(default=default, metadata={"doc": doc})


def _check(value: Any, annotation: Any, key: str) -> Any:
    origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise InputError(f"expected one of {', '.join(map(str, choices))}, got {value!r}", key=key)
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(value, option, key)
            except InputError as exc:
                errors.append(exc.message)
        raise InputError(" or ".join(errors), key=key)
    if annotation is bool:
        if not isinstance(value, bool):
            raise InputError(f"expected true or false, got {value!r}", key=key)
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"expected a non-negative integer, got {value!r}", key=key)
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise InputError(f"expected a non-negative number, got {value!r}", key=key)
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise InputError(f"expected a string, got {value!r}", key=key)
        return value
    return value


def parse_params(params_type: type, raw: Mapping[str, Any] | None, key: str = "params") -> Any:
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise InputError("expected a mapping of parameters", key=key)
    hints = typing.get_type_hints(params_type)
    fields = {f.name: f for f in dataclasses.fields(params_type)}
    for name in raw:
        if name not in fields:
            raise InputError(f"unknown parameter; expected one of: {', '.join(fields)}", key=f"{key}.{name}")
    values = {name: _check(value, hints[name], f"{key}.{name}") for name, value in raw.items()}
    try:
        return params_type(**values)
    except InputError as exc:
        raise exc.within(key_prefix=key) from None


def build_workload(generator: str, params: Mapping[str, Any] | None = None, key: str = "workload") -> Workload:
    gen = GENERATORS.get(generator)
    if gen is None:
        raise InputError(f"unknown generator '{generator}'; expected one of {', '.join(sorted(GENERATORS))}",
                         key=f"{key}.generator")
    parsed = parse_params(gen.params_type, params, key=f"{key}.params")
    try:
        return gen.build(parsed)
    except InputError as exc:
        raise exc.within(key_prefix=f"{key}.params") from None


def describe_generators() -> dict[str, dict[str, Any]]:
    """Each generator's description and parameters (default, doc), for `chipsim workloads`."""
    out: dict[str, dict[str, Any]] = {}
    for name, gen in sorted(GENERATORS.items()):
        out[name] = {"description": gen.description, "params": {
            f.name: {"default": f.default, "doc": f.metadata.get("doc", "")}
            for f in dataclasses.fields(gen.params_type)}}
    return out
