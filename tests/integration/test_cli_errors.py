"""Bad input through the CLI: exit code 2, one clear line on stderr naming the file and key, no
traceback, nothing on stdout and no files written to --out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO_ROOT

TINY_OPS = [
    {"id": 0, "name": "g0", "kind": "gemm", "dtype": "bf16", "shape": {"m": 64, "n": 64, "k": 64}},
    {"id": 1, "name": "g1", "kind": "gemm", "dtype": "bf16", "shape": {"m": 64, "n": 64, "k": 64}, "deps": [0]},
]


def workload_json(ops: list[dict] | None = None) -> str:
    return json.dumps({"format": "chipsim.workload", "version": 1, "name": "tiny", "ops": ops or TINY_OPS},
                      indent=1)


def run_config(chips: str, generator: str = "all_reduce", params: str = "{}") -> str:
    return f"name: bad\nchips: [{chips}]\nworkload:\n  generator: {generator}\n  params: {params}\n"


@dataclass(frozen=True)
class Case:
    """files to write (name -> text), the `chipsim` arguments (OUT is replaced by the out folder), and
    what the one error line must contain: the file's name, the key path (None where the problem has no
    key, e.g. a missing file), and a fragment of the message."""

    files: dict[str, str]
    argv: tuple[str, ...]
    file: str
    key: str | None
    fragment: str


def _tf32_ops() -> list[dict]:
    ops = [dict(op) for op in TINY_OPS]
    ops[1] = {**ops[1], "dtype": "tf32"}
    return ops


def _forward_dep_ops() -> list[dict]:
    ops = [dict(op) for op in TINY_OPS]
    ops[0] = {**ops[0], "deps": [1]}
    return ops


CASES: dict[str, Case] = {
    "broken_yaml_syntax": Case(
        {"run.yaml": "name: broken\nchips: [h200_sxm\nworkload: {generator: all_reduce}\n"},
        ("run", "run.yaml"), "run.yaml", None, "invalid YAML at line"),
    "unknown_chip_name": Case(
        {"run.yaml": run_config("h999_sxm")}, ("run", "run.yaml"), "run.yaml", "chips[0]", "unknown chip 'h999_sxm'"),
    "unknown_chip_on_command_line": Case(
        {"w.json": workload_json()}, ("run", "--workload", "w.json", "--chip", "h999_sxm"), "", "--chip",
        "unknown chip 'h999_sxm'"),
    "unknown_key_in_chip_yaml": Case(
        {"typo.yaml": "extends: h100_sxm\nname: typo\nmemory:\n  hbm:\n    bandwith: 4 TB/s\n",
         "run.yaml": run_config("typo.yaml")},
        ("run", "run.yaml"), "typo.yaml", "memory.hbm.bandwith", "unknown key"),
    "wrong_unit_kind_in_chip_yaml": Case(
        {"watts.yaml": "extends: h100_sxm\nname: watts\nmemory:\n  hbm:\n    bandwidth: 700 W\n",
         "run.yaml": run_config("watts.yaml")},
        ("run", "run.yaml"), "watts.yaml", "memory.hbm.bandwidth", "expected a bandwidth"),
    "unknown_generator": Case(
        {"run.yaml": run_config("h200_sxm", "transformer_inference")}, ("run", "run.yaml"), "run.yaml",
        "workload.generator", "unknown generator 'transformer_inference'"),
    "unknown_generator_param": Case(
        {"run.yaml": run_config("h200_sxm", "all_reduce", "{chipz: 4}")}, ("run", "run.yaml"), "run.yaml",
        "workload.params.chipz", "unknown parameter"),
    "wrong_param_type": Case(
        {"run.yaml": run_config("h200_sxm", "transformer_train_step", '{batch: "eight", layers: 2}')},
        ("run", "run.yaml"), "run.yaml", "workload.params.batch", "'eight'"),
    "d_model_not_a_multiple_of_heads": Case(
        {"run.yaml": run_config("h200_sxm", "transformer_train_step", "{d_model: 1000, heads: 3, layers: 2}")},
        ("run", "run.yaml"), "run.yaml", "workload.params.heads", "multiple of heads"),
    "heads_not_a_multiple_of_kv_heads": Case(
        {"run.yaml": run_config("h200_sxm", "transformer_train_step", "{heads: 16, kv_heads: 5, layers: 2}")},
        ("run", "run.yaml"), "run.yaml", "workload.params.kv_heads", "multiple of kv_heads"),
    "missing_run_config": Case({}, ("run", "absent.yaml"), "absent.yaml", None, "file not found"),
    "truncated_workload_json": Case(
        {"w.json": workload_json()[:120]}, ("run", "--workload", "w.json", "--chip", "h200_sxm"), "w.json", None,
        "invalid JSON"),
    "workload_not_json": Case(
        {"w.json": "ops:\n  - gemm\n"}, ("run", "--workload", "w.json", "--chip", "h200_sxm"), "w.json", None,
        "invalid JSON"),
    "workload_dep_points_forward": Case(
        {"w.json": workload_json(_forward_dep_ops())}, ("run", "--workload", "w.json", "--chip", "h200_sxm"),
        "w.json", "ops[0].deps", "earlier op"),
    "unknown_dtype_in_workload_op": Case(
        {"w.json": workload_json([TINY_OPS[0], {**TINY_OPS[1], "dtype": "bf17"}])},
        ("run", "--workload", "w.json", "--chip", "h200_sxm"), "w.json", "ops[1].dtype", "unknown dtype 'bf17'"),
    "chip_lacks_a_dtype_the_workload_needs": Case(
        {"w.json": workload_json(_tf32_ops()),
         "run.yaml": "name: t\nchips: [h200_sxm, dojo_int4]\nworkload:\n  trace: w.json\n"},
        ("run", "run.yaml"), "w.json", "ops[1].dtype", "dojo_int4 cannot run this workload"),
    "chip_lacks_a_dtype_command_line": Case(
        {"w.json": workload_json(_tf32_ops())}, ("run", "--workload", "w.json", "--chip", "dojo_int4"),
        "w.json", "ops[1].dtype", "no tf32 rate"),
    "extends_a_missing_parent": Case(
        {"orphan.yaml": "extends: parents/missing.yaml\nname: orphan\n", "run.yaml": run_config("orphan.yaml")},
        ("run", "run.yaml"), "orphan.yaml", "extends", "not found"),
    "circular_extends": Case(
        {"a.yaml": "extends: b.yaml\nname: a\n", "b.yaml": "extends: a.yaml\nname: b\n",
         "run.yaml": run_config("a.yaml")},
        ("run", "run.yaml"), "a.yaml", "extends", "circular"),
    "neither_config_nor_workload": Case({}, ("run",), "", None, "give a run config"),
    "unknown_chip_for_chips_show": Case({}, ("chips", "show", "h999"), "", None, "unknown chip 'h999'"),
}


def _materialize(case: Case, root: Path) -> tuple[list[str], Path]:
    for name, text in case.files.items():
        (root / name).write_text(text, encoding="utf-8")
    out = root / "out"
    argv = [str(root / a) if (root / a).suffix in (".yaml", ".json") or a == "absent.yaml" else a for a in case.argv]
    if argv[0] == "run":
        argv += ["--out", str(out)]
    return argv, out


def _check_message(case: Case, rc: int, out: str, err: str) -> None:
    assert rc == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("chipsim: error: ")
    if case.file:
        assert case.file in line
    if case.key:
        assert f"key '{case.key}'" in line
    assert case.fragment in line


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_in_process(name: str, tmp_path: Path, cli: Callable, monkeypatch) -> None:
    case = CASES[name]
    monkeypatch.chdir(tmp_path)  # nothing may land in the current folder either (default out: results/)
    argv, out_dir = _materialize(case, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out, err = cli(argv)
    _check_message(case, rc, out, err)
    assert not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_input_leaves_an_existing_out_folder_unchanged(tmp_path: Path, cli: Callable) -> None:
    case = CASES["chip_lacks_a_dtype_the_workload_needs"]  # fails after the first chip has simulated
    argv, out_dir = _materialize(case, tmp_path)
    out_dir.mkdir()
    (out_dir / "summary.csv").write_text("previous run\n")
    rc, out, err = cli(argv)
    _check_message(case, rc, out, err)
    assert [p.name for p in out_dir.iterdir()] == ["summary.csv"]
    assert (out_dir / "summary.csv").read_text() == "previous run\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left


def test_json_mode_errors_keep_stdout_empty(tmp_path: Path, cli: Callable) -> None:
    case = CASES["unknown_generator"]
    argv, out_dir = _materialize(case, tmp_path)
    rc, out, err = cli([*argv, "--json"])
    _check_message(case, rc, out, err)
    assert not out_dir.exists()


def test_argparse_usage_errors_exit_2(cli: Callable) -> None:
    with pytest.raises(SystemExit) as info:
        cli(["run", "--launch", "lazy"])
    assert info.value.code == 2


def _subprocess(argv: list[str], cwd: Path, entry_point: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    prefix = [shutil.which("chipsim")] if entry_point else [sys.executable, "-m", "chipsim.cli"]
    return subprocess.run([*prefix, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize("name", ["unknown_key_in_chip_yaml", "workload_dep_points_forward", "missing_run_config"])
def test_bad_input_as_a_subprocess(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    argv, out_dir = _materialize(case, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = _subprocess(argv, tmp_path)
    _check_message(case, proc.returncode, proc.stdout, proc.stderr)
    assert not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.skipif(shutil.which("chipsim") is None, reason="the `chipsim` entry point is not installed")
def test_bad_input_through_the_entry_point(tmp_path: Path) -> None:
    case = CASES["wrong_param_type"]
    argv, out_dir = _materialize(case, tmp_path)
    proc = _subprocess([*argv, "--json"], tmp_path, entry_point=True)
    _check_message(case, proc.returncode, proc.stdout, proc.stderr)
    assert not out_dir.exists()
