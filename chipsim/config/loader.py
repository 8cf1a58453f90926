"""YAML files in, plain dicts out: file-located parse errors and `extends:` inheritance.

This is the input boundary, so it is defensive about what it reads (docs/chip_schema.md, "Limits"):
only regular files (not the zero device, a FIFO or a directory) of at most MAX_YAML_BYTES; no key
given twice in one mapping; nesting at most MAX_DEPTH levels deep; aliases (`*name`) that expand to at
most MAX_ALIAS_NODES nodes in all (a "billion laughs" document is refused before anything walks it).
Error messages show user values through `brief()`, which bounds their length.
"""

from __future__ import annotations

import copy
import os
import reprlib
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from chipsim.errors import InputError

MAX_YAML_BYTES = 64 * 2**20  # a chip, system, run or sweep file; the built-in ones are a few kB
MAX_DEPTH = 100  # nesting of mappings and lists
MAX_ALIAS_NODES = 100_000  # nodes that `*alias` references expand to, over the whole document

_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxdict, _BRIEF.maxlist, _BRIEF.maxtuple, _BRIEF.maxset = 2, 4, 4, 4, 4
_BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 60, 60, 40
BRIEF_CHARS = 160


def brief(value: Any) -> str:
    """repr() of a user value, bounded in depth, width and length: an error message must never
    expand an alias tree or echo a huge string."""
    text = _BRIEF.repr(value)
    return text if len(text) <= BRIEF_CHARS else text[:BRIEF_CHARS - 3] + "..."


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_bounded(path: str | Path, limit: int, *, what: str = "file", missing: str = "file not found") -> bytes:
    """The bytes of a regular file of at most `limit` bytes; anything else is an InputError naming it.

    The file is opened without blocking (a FIFO would otherwise wait for a writer) and checked with
    fstat before a byte is read, so the zero device or a FIFO is refused, not read to exhaustion."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise InputError(missing, file=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read {what} ({exc.__class__.__name__}: {exc.strerror or exc})",
                         file=str(path)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"cannot read {what}: it is {_file_kind(info.st_mode)}, not a regular file",
                             file=str(path))
        if info.st_size > limit:
            raise InputError(f"cannot read {what}: it is {info.st_size / 2**20:.1f} MiB, more than the "
                             f"{limit / 2**20:.0f} MiB chipsim reads", file=str(path))
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {what} ({exc.__class__.__name__}: {exc.strerror or exc})",
                         file=str(path)) from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew while being read
        raise InputError(f"cannot read {what}: more than the {limit / 2**20:.0f} MiB chipsim reads", file=str(path))
    return data


class _KeyError(yaml.MarkedYAMLError):
    """A problem with one key of a mapping; `key_path` locates it (e.g. 'memory.hbm.bandwidth')."""

    def __init__(self, problem: str, mark: Any, key_path: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.key_path = key_path


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys, deep nesting, recursive aliases and alias bombs."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._path: list[str] = []  # key path of the node being composed
        self._open_anchors: set[str] = set()  # anchors of the collections being composed
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it expands to
        self._alias_nodes = 0
        self._depth = 0

    def _key_path(self) -> str:
        out = ""
        for part in self._path:
            out += part if part.startswith("[") or not out else f".{part}"
        return out

    def _size(self, node: Node) -> int:
        size = self._sizes.get(id(node))
        if size is None:
            if isinstance(node, SequenceNode):
                size = 1 + sum(self._size(child) for child in node.value)
            elif isinstance(node, MappingNode):
                size = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            else:
                size = 1
            self._sizes[id(node)] = size
        return size

    def compose_node(self, parent: Any, index: Any) -> Any:
        event: Any = self.peek_event()
        start: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise yaml.composer.ComposerError(None, None, f"recursive alias *{event.anchor}: an anchor "
                                                  "cannot refer to itself", start)
            node: Any = super().compose_node(parent, index)
            self._alias_nodes += self._size(node)
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"aliases expand to more than {MAX_ALIAS_NODES} nodes (an alias bomb?)",
                    start)
            return node
        part = (str(index.value) if isinstance(index, ScalarNode)
                else f"[{index}]" if isinstance(index, int) and not isinstance(index, bool) else None)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                              start)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open_anchors.add(anchor)
        if part is not None:
            self._path.append(part)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if part is not None:
                self._path.pop()
            if anchor is not None:
                self._open_anchors.discard(anchor)

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            ident = (key_node.tag, key_node.value)
            if ident in first:
                where = self._key_path()
                raise _KeyError(f"duplicate key (first given on line {first[ident] + 1}); a key may appear "
                                "once in a mapping", key_node.start_mark,
                                f"{where}.{key_node.value}" if where else str(key_node.value))
            first[ident] = key_node.start_mark.line
        return node


def parse_yaml(text: str, file: str | None = None) -> Any:
    """YAML text to Python data with the limits above; problems are InputErrors naming `file`."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a yaml.SafeLoader
    except _KeyError as exc:
        mark: Any = exc.problem_mark
        raise InputError(f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})", file=file,
                         key=exc.key_path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"invalid YAML{where}: {problem}", file=file) from None
    except RecursionError:  # a safety net: MAX_DEPTH stops nesting long before this
        raise InputError("invalid YAML: nested too deeply", file=file) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read one YAML mapping; any failure is an InputError naming the file (and line)."""
    path = Path(path)
    raw = read_bounded(path, MAX_YAML_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read file ({exc.__class__.__name__}: {exc})", file=str(path)) from None
    data = parse_yaml(text, str(path))
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
    return _apply_extends(path, load_yaml(path), resolve, _seen)


def _apply_extends(path: Path, data: dict[str, Any], resolve: Callable[[str, Path], Path],
                   _seen: tuple[Path, ...]) -> dict[str, Any]:
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise InputError(f"circular 'extends' chain: {chain}", file=str(path), key="extends")
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
    parent_path = Path(parent_path).resolve()
    try:  # a parent that is no YAML mapping (e.g. `extends: /etc/passwd`) is this file's `extends:` error
        parent_data = load_yaml(parent_path)
    except InputError as exc:
        inner = f"key '{exc.key}': {exc.message}" if exc.key else exc.message
        raise InputError(f"cannot use {parent_path} as the parent: {inner}", file=str(path), key="extends") from None
    parent = _apply_extends(parent_path, parent_data, resolve, (*_seen, path))
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
        article = "an" if what[0] in "aeiou" else "a"
        raise InputError(f"unknown {what} '{name_or_path}'; built-in {what}s: {names} "
                         f"(or give a path to {article} {what} YAML)")
    candidates = [Path(name_or_path)]
    if relative_to is not None and not Path(name_or_path).is_absolute():
        candidates.insert(0, relative_to.parent / name_or_path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    for candidate in candidates:
        if candidate.exists():  # a directory, a device, a FIFO: never opened
            raise InputError(f"{what} file {candidate} is not a regular file")
    raise InputError(f"{what} file not found: {' or '.join(str(c) for c in candidates)}")
