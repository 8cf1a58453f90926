"""Shared fixtures: writing input files, running the CLI in-process, and building small workloads.

The chip YAMLs and cost models are being calibrated while these tests are written, so no test pins a
calibrated latency: tests assert physics (bounds derived from the chip's datasheet numbers) and
behaviour (errors, ordering, conservation, determinism).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from chipsim.cli import main
from chipsim.workload.graph import Workload, WorkloadBuilder

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_CONFIGS = REPO_ROOT / "configs" / "runs"
BUILTIN_CHIPS = ("a100_sxm", "b200", "b300", "dojo_int4", "gb200", "gb300", "gh200", "h100_dwb", "h100_pcie",
                 "h100_sxm", "h200_sxm", "h800", "mi300x", "mi325x")


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """write(name, text) -> path of a dedented file under tmp_path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[[str, Any], Path]:
    def _write(name: str, data: Any) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(data), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[[Sequence[str]], tuple[int, str, str]]:
    """cli([...]) -> (exit code, stdout, stderr) of `chipsim ...` run in-process."""

    def _run(argv: Sequence[str]) -> tuple[int, str, str]:
        capsys.readouterr()  # drop anything captured before
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return _run


def build(name: str, *ops: tuple[str, str, str, Sequence[int], dict[str, Any]]) -> Workload:
    """A workload from (kind, name, dtype, deps, shape and keyword args) tuples, in order."""
    b = WorkloadBuilder(name)
    for kind, op_name, dtype, deps, kwargs in ops:
        b.add(kind, op_name, dtype, deps, **kwargs)
    return b.build()


@pytest.fixture
def make_workload() -> Callable[..., Workload]:
    return build


@pytest.fixture
def tiny_gemm_workload() -> Workload:
    """Two dependent 64^3 bf16 GEMMs: runs on every chip in microseconds."""
    return build("tiny", ("gemm", "g0", "bf16", [], {"m": 64, "n": 64, "k": 64}),
                 ("gemm", "g1", "bf16", [0], {"m": 64, "n": 64, "k": 64}))
