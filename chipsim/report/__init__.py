"""Results: per-op records and summaries as DataFrames, tables, CSV, Chrome traces and plots."""

from chipsim.report.result import OpRecord, Result

__all__ = ["OpRecord", "Result"]
