"""YAML files in, plain dicts out: file-located parse errors and `extends:` inheritance."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from chipsim.errors import InputError


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read one YAML mapping; any failure is an InputError naming the file (and line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read file ({exc.__class__.__name__}: {exc})", file=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"invalid YAML{where}: {problem}", file=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping at the top level, got {type(data).__name__}", file=str(path))
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge: mappings merge key by key, anything else in `override` replaces `base`."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml_with_extends(
    path: str | Path,
    resolve: Callable[[str, Path], Path],
    _seen: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """Load a YAML file and apply `extends: parent` recursively.

    `resolve(name, child_path)` turns the parent's name into a file path (built-in names or paths
    relative to the child). The child's keys win; `extends` itself is dropped from the result.
    """
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise InputError(f"circular 'extends' chain: {chain}", file=str(path), key="extends")
    data = load_yaml(path)
    parent_name = data.pop("extends", None)
    if parent_name is None:
        return data
    if not isinstance(parent_name, str):
        raise InputError("expected the name or path of the parent as a string", file=str(path), key="extends")
    try:
        parent_path = resolve(parent_name, path)
    except InputError as exc:  # the error is in this file's `extends:` line, whatever file it names
        message = f"{exc.message}: {exc.file}" if exc.file else exc.message
        raise InputError(message, file=str(path), key="extends") from None
    parent = load_yaml_with_extends(parent_path, resolve, (*_seen, path))
    return deep_merge(parent, data)


def resolve_yaml(name_or_path: str, builtin_dir: Path, what: str, relative_to: Path | None = None) -> Path:
    """A built-in name (a file `<name>.yaml` in `builtin_dir`) or a path to a YAML file, looked up next
    to `relative_to` first, then as given. Unknown names and missing files are InputErrors that list
    the built-ins."""
    if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        builtin = builtin_dir / f"{name_or_path}.yaml"
        if builtin.is_file():
            return builtin
        names = ", ".join(sorted(p.stem for p in builtin_dir.glob("*.yaml")))
        raise InputError(f"unknown {what} '{name_or_path}'; built-in {what}s: {names} (or give a path to a {what} YAML)")
    candidates = [Path(name_or_path)]
    if relative_to is not None and not Path(name_or_path).is_absolute():
        candidates.insert(0, relative_to.parent / name_or_path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(f"{what} file not found: {' or '.join(str(c) for c in candidates)}")
