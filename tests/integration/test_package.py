"""A package that works anywhere: built-in systems and examples are package data, the examples can be
copied out and run from any folder, `python -m chipsim` and `--version` work, and the size bounds on
generated workloads hold. (CI also installs the wheel non-editably and runs the CLI from another folder.)"""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import chipsim
from chipsim import examples
from chipsim.network.system import builtin_system_names

REPO = Path(__file__).resolve().parents[2]


def test_every_data_file_of_the_package_is_declared_as_package_data() -> None:
    """A YAML, CSV or JSON under chipsim/ that pyproject's package-data globs miss would be absent from
    a wheel: `chipsim systems` printed nothing from a non-editable install before systems moved in."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]
    package = REPO / "chipsim"
    data = [p for p in package.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".csv", ".gz")]
    assert len(data) > 30
    for path in data:
        rel = path.relative_to(package)
        declared = any(fnmatch.fnmatch(str(rel), pattern) for pattern in globs["chipsim"]) or (
            rel.parts[0] == "examples" and any(fnmatch.fnmatch(str(Path(*rel.parts[1:])), pattern)
                                               for pattern in globs["chipsim.examples"]))
        assert declared, f"{rel} is not package data"


def test_builtin_systems_and_examples_come_from_the_package() -> None:
    assert {"hgx_h200", "cluster_256x_dgx_h100_ndr", "cluster_2048x_dgx_h100_ndr"} <= set(builtin_system_names())
    assert "quickstart" in examples.run_names()
    assert examples.path("measurements", "h200", "calibration.csv").is_file()
    for name in builtin_system_names():
        assert chipsim.load_system(name).world >= 8


def test_examples_copy_out_and_run_from_another_folder(cli, tmp_path: Path, monkeypatch) -> None:
    rc, out, err = cli(["examples", "copy", tmp_path / "ex"])
    assert rc == 0, err
    copied = sorted(p.relative_to(tmp_path / "ex") for p in (tmp_path / "ex").rglob("*") if p.is_file())
    assert copied == examples.files()
    monkeypatch.chdir(tmp_path)  # relative paths inside the examples still resolve
    for name in ("example_mlp_trace", "gradient_sync_256_nodes"):
        rc, out, err = cli(["run", f"ex/runs/{name}.yaml", "--json", "--no-files"])
        assert rc == 0, err
        assert all(r["latency_s"] > 0 for r in json.loads(out)["runs"])
    rc, _, err = cli(["examples", "copy", tmp_path / "ex"])  # never overwrites
    assert rc == 2 and "already there" in err


def test_a_shipped_example_runs_by_name(cli) -> None:
    rc, out, err = cli(["run", "allreduce_plain", "--json", "--no-files"])
    assert rc == 0, err
    assert json.loads(out)["runs"][0]["latency_s"] > 0
    rc, _, err = cli(["run", "quickstrat", "--no-files"])
    assert rc == 2 and "unknown example run config 'quickstrat'" in err and "quickstart" in err


def test_python_dash_m_and_version() -> None:
    done = subprocess.run([sys.executable, "-m", "chipsim", "--version"], capture_output=True, text=True,
                          check=False, cwd="/")
    assert done.returncode == 0 and done.stdout.strip() == f"chipsim {chipsim.__version__}"


def test_importing_the_cli_loads_no_heavy_library() -> None:
    """`chipsim --help` must start fast: numpy, pandas, simpy, pint and matplotlib load on first use."""
    code = ("import sys, chipsim.cli; heavy = {'numpy', 'pandas', 'simpy', 'pint', 'matplotlib', 'yaml'}; "
            "print(sorted(heavy & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("params", "key"), [
    ({"layers": 1_000_000}, "layers"),
    ({"steps": 1_000_000}, "steps"),
    ({"batch": 0}, "batch"),
])
def test_training_graphs_are_bounded(cli, write, params: dict, key: str) -> None:
    """RELIABILITY R08, R08B, R30: `layers: 10^6` or `steps: 10^6` grew memory without bound."""
    config = write("r.yaml", f"chips: [h200_sxm]\nworkload: {{generator: transformer_train_step, params: {params}}}\n")
    rc, _, err = cli(["run", config, "--no-files"])
    assert rc == 2 and f"key 'workload.params.{key}'" in err


@pytest.mark.parametrize(("params", "key"), [
    ({"weights": "int4", "group_size": 0}, "group_size"),
    ({"tokens": 0}, "tokens"),
    ({"phase": "decode", "prompt": 0}, "prompt"),
])
def test_inference_errors_name_the_parameter_at_fault(cli, write, params: dict, key: str) -> None:
    """RELIABILITY R37, R38, R57: every one of these blamed `workload.params.batch`."""
    config = write("r.yaml", f"chips: [h200_sxm]\nworkload: {{generator: quantized_inference, params: {params}}}\n")
    rc, _, err = cli(["run", config, "--no-files"])
    assert rc == 2 and f"key 'workload.params.{key}'" in err


def test_a_billion_token_sequence_is_simulated_not_a_traceback(cli, write) -> None:
    """RELIABILITY R28: the power controller's exponent overflowed on a months-long op."""
    config = write("r.yaml", "chips: [h200_sxm]\nworkload: {generator: transformer_train_step, "
                             "params: {seq: 1000000000, batch: 1, layers: 1}}\n")
    rc, out, err = cli(["run", config, "--json", "--no-files"])
    assert rc == 0, err
    run = json.loads(out)["runs"][0]
    assert run["latency_s"] > 1e6 and not run["fits_in_memory"]
