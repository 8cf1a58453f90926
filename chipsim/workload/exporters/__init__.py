"""Exporters of chipsim op graphs to other tools' formats: Chakra execution traces (ASTRA-sim)."""

from __future__ import annotations

from chipsim.workload.exporters.chakra import chakra_traces, export_chakra

__all__ = ["chakra_traces", "export_chakra"]
