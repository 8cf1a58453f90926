"""Workloads as op graphs: the trace format, op kinds, generators and file I/O."""

from chipsim.workload.graph import Op, Workload, WorkloadBuilder
from chipsim.workload.io import load_workload, save_workload

__all__ = ["Op", "Workload", "WorkloadBuilder", "load_workload", "save_workload"]
