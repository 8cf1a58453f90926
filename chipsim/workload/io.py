"""Reading and writing the workload (op-graph) JSON format, version 1. See docs/workload_format.md.

JSON inputs (workloads and traces) are read defensively: a regular file of at most MAX_JSON_BYTES,
gzip inflated as a stream up to MAX_JSON_BYTES (a gzip bomb is refused, not inflated), an optional
UTF-8 byte order mark, and nesting, huge integers, corrupt compressed data are InputErrors.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any

from chipsim.atomic import atomic_write
from chipsim.config.loader import brief, read_bounded
from chipsim.errors import InputError
from chipsim.workload.graph import FORMAT, FORMAT_VERSION, MAX_OPS, Workload, make_op

MAX_JSON_BYTES = 2**30  # a workload or trace, after decompression


class JSONReadError(Exception):
    """Raised by read_json for data that cannot be decoded; `decode` says whether decompression or
    decoding failed (the callers word their messages differently)."""

    def __init__(self, message: str, *, decode: bool) -> None:
        super().__init__(message)
        self.decode = decode


def gunzip_bounded(raw: bytes, limit: int) -> bytes:
    """Inflate gzip data as a stream, refusing more than `limit` bytes of output."""
    with gzip.GzipFile(fileobj=BytesIO(raw)) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise OverflowError(f"inflates to more than {limit / 2**20:.0f} MiB (the most chipsim reads)")
    return data


def parse_json_bytes(raw: bytes, *, gz: bool) -> Any:
    """Decode (gzip-compressed if `gz`) JSON bytes; any failure is a JSONReadError.
    A UTF-8 byte order mark is accepted, as in YAML files."""
    try:
        if gz:
            raw = gunzip_bounded(raw, MAX_JSON_BYTES)
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, OverflowError) as exc:
        raise JSONReadError(f"{exc.__class__.__name__}: {exc}", decode=False) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONReadError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                            decode=True) from None
    except RecursionError:
        raise JSONReadError("invalid JSON: nested too deeply", decode=True) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts (int_max_str_digits)
        raise JSONReadError(f"invalid JSON: {exc}", decode=True) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def workload_from_dict(data: Any, file: str | None = None) -> Workload:
    try:
        if not isinstance(data, dict):
            raise InputError("expected a JSON object at the top level")
        if data.get("format") != FORMAT:
            raise InputError(f"not a chipsim workload: expected \"format\": \"{FORMAT}\"", key="format")
        if data.get("version") != FORMAT_VERSION:
            raise InputError(f"unsupported version {data.get('version')!r}; this chipsim reads {FORMAT_VERSION}",
                             key="version")
        raw_ops = data.get("ops")
        if isinstance(raw_ops, list) and len(raw_ops) > MAX_OPS:
            raise InputError(f"{len(raw_ops):,} ops is more than the {MAX_OPS:,} chipsim simulates", key="ops")
        if not isinstance(raw_ops, list) or not raw_ops:
            raise InputError("expected a non-empty list of ops", key="ops")
        for section in ("params", "memory", "meta"):
            if not isinstance(data.get(section, {}), dict):
                raise InputError("expected an object", key=section)
        for category, value in data.get("memory", {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise InputError(f"expected a finite size in bytes, got {brief(value)}", key=f"memory.{category}")
        ops = []
        for index, raw in enumerate(raw_ops):
            where = f"ops[{index}]"
            if not isinstance(raw, dict):
                raise InputError("expected an object", key=where)
            unknown = set(raw) - {"id", "name", "kind", "dtype", "shape", "deps", "stream", "device", "attrs"}
            if unknown:
                raise InputError("unknown key", key=f"{where}.{sorted(unknown)[0]}")
            op_id = raw.get("id", index)
            if not _is_int(op_id):
                raise InputError(f"expected an integer op id, got {brief(op_id)}", key=f"{where}.id")
            deps = raw.get("deps", [])
            if not isinstance(deps, list) or not all(_is_int(d) for d in deps):
                raise InputError(f"expected a list of op ids (integers), got {brief(deps)}", key=f"{where}.deps")
            try:
                op = make_op(op_id, str(raw.get("name", f"op{index}")), raw.get("kind", ""),
                             raw.get("dtype", "bf16"), raw.get("shape", {}), deps=deps,
                             stream=raw.get("stream", "compute"), device=raw.get("device", 0),
                             attrs=raw.get("attrs"), where=where)
                finite = math.isfinite(op.flops) and math.isfinite(op.bytes)
            except OverflowError:  # integer work beyond the float range
                finite = False
            if not finite:
                raise InputError("the op's work (FLOPs or bytes) overflows: its shape is too large to simulate",
                                 key=f"{where}.shape")
            ops.append(op)
        return Workload(str(data.get("name", "workload")), ops, str(data.get("generator", "")),
                        dict(data.get("params", {})), dict(data.get("memory", {})), dict(data.get("meta", {})))
    except InputError as exc:
        raise exc.within(file=file) from None


def load_workload(path: str | Path) -> Workload:
    path = Path(path)
    raw = read_bounded(path, MAX_JSON_BYTES, what="workload", missing="workload file not found")
    try:
        data = parse_json_bytes(raw, gz=path.suffix == ".gz")
    except JSONReadError as exc:
        message = str(exc) if exc.decode else f"cannot read workload ({exc})"
        raise InputError(message, file=str(path)) from None
    return workload_from_dict(data, file=str(path))


def save_workload(workload: Workload, path: str | Path) -> None:
    """Write atomically: a reader never sees a half-written file."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(workload.to_dict(), indent=1), encoding="utf-8"))
