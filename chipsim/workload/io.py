"""Reading and writing the workload (op-graph) JSON format, version 1. See docs/workload_format.md."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from chipsim.errors import InputError
from chipsim.workload.graph import FORMAT, FORMAT_VERSION, Workload, make_op


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
        if not isinstance(raw_ops, list) or not raw_ops:
            raise InputError("expected a non-empty list of ops", key="ops")
        for section in ("params", "memory", "meta"):
            if not isinstance(data.get(section, {}), dict):
                raise InputError("expected an object", key=section)
        for category, value in data.get("memory", {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise InputError(f"expected a size in bytes, got {value!r}", key=f"memory.{category}")
        ops = []
        for index, raw in enumerate(raw_ops):
            where = f"ops[{index}]"
            if not isinstance(raw, dict):
                raise InputError("expected an object", key=where)
            unknown = set(raw) - {"id", "name", "kind", "dtype", "shape", "deps", "stream", "device", "attrs"}
            if unknown:
                raise InputError("unknown key", key=f"{where}.{sorted(unknown)[0]}")
            deps = raw.get("deps", [])
            if not isinstance(deps, list) or not all(isinstance(d, int) for d in deps):
                raise InputError("expected a list of op ids", key=f"{where}.deps")
            ops.append(make_op(raw.get("id", index), str(raw.get("name", f"op{index}")), raw.get("kind", ""),
                               raw.get("dtype", "bf16"), raw.get("shape", {}), deps=deps,
                               stream=raw.get("stream", "compute"), device=raw.get("device", 0),
                               attrs=raw.get("attrs"), where=where))
        return Workload(str(data.get("name", "workload")), ops, str(data.get("generator", "")),
                        dict(data.get("params", {})), dict(data.get("memory", {})), dict(data.get("meta", {})))
    except InputError as exc:
        raise exc.within(file=file) from None


def load_workload(path: str | Path) -> Workload:
    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise InputError("workload file not found", file=str(path)) from None
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read workload ({exc.__class__.__name__}: {exc})", file=str(path)) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", file=str(path)) from None
    return workload_from_dict(data, file=str(path))


def save_workload(workload: Workload, path: str | Path) -> None:
    """Write atomically: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(workload.to_dict(), fh, indent=1, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
