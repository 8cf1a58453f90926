"""Importers of real traces into chipsim's op graph: PyTorch profiler (Kineto) and Chakra."""

from __future__ import annotations

from pathlib import Path

from chipsim.errors import InputError
from chipsim.workload.graph import Workload
from chipsim.workload.importers.chakra import chakra_summary, import_chakra, is_chakra
from chipsim.workload.importers.kineto import import_kineto, read_trace_json


def import_trace(path: Path, steps: int | None = None, world: int | None = None) -> tuple[Workload, list[str]]:
    """Import by content: a Kineto trace has `traceEvents`, a Chakra trace `nodes` (or is protobuf:
    `.et`, `.pb`). `world`: the group size of Chakra collectives that name none (else they are an error).
    Returns the workload and the import summary's lines."""
    if path.suffix in (".et", ".pb") or path.name.endswith((".et.gz", ".pb.gz")):
        workload = import_chakra(path, world=world)
        return workload, chakra_summary(workload)
    data = read_trace_json(path)
    if isinstance(data, dict) and "traceEvents" in data:
        workload, report = import_kineto(path, steps)
        return workload, report.lines()
    if is_chakra(data):
        workload = import_chakra(path, data, world=world)
        return workload, chakra_summary(workload)
    raise InputError("not a trace chipsim reads: expected a PyTorch profiler trace ('traceEvents') or a Chakra "
                     "execution trace ('nodes')", file=str(path))


__all__ = ["chakra_summary", "import_chakra", "import_kineto", "import_trace"]
