"""Importers of real traces into chipsim's op graph: PyTorch profiler (Kineto) and Chakra."""

from __future__ import annotations

from pathlib import Path

from chipsim.errors import InputError
from chipsim.workload.graph import Workload
from chipsim.workload.importers.chakra import import_chakra, is_chakra
from chipsim.workload.importers.kineto import import_kineto, read_trace_json


def import_trace(path: Path, steps: int | None = None) -> tuple[Workload, list[str]]:
    """Import by content: a Kineto trace has `traceEvents`, a Chakra trace `nodes` (or is protobuf)."""
    if path.suffix in (".et", ".pb"):
        workload = import_chakra(path)
        return workload, [f"chakra nodes: {len(workload.ops)}"]
    data = read_trace_json(path)
    if isinstance(data, dict) and "traceEvents" in data:
        workload, report = import_kineto(path, steps)
        return workload, report.lines()
    if is_chakra(data):
        workload = import_chakra(path, data)
        return workload, [f"chakra nodes: {len(workload.ops)} ops ({workload.meta.get('opaque', 0)} opaque)"]
    raise InputError("not a trace chipsim reads: expected a PyTorch profiler trace ('traceEvents') or a Chakra "
                     "execution trace ('nodes')", file=str(path))


__all__ = ["import_chakra", "import_kineto", "import_trace"]
