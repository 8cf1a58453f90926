"""Hostile input through the CLI (the cases of the reliability review, by id): each ends in exit 2 and
one line `chipsim: error: FILE: key 'KEY': message` before any work, or, where the input is legal,
in the correct answer. Resource bombs run against lowered limits so that each test stays fast."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import REPO_ROOT

import chipsim.workload.io as wio
from chipsim import examples

EXAMPLE_MLP = REPO_ROOT / "workloads" / "example_mlp.json"
CALIBRATION = examples.path("measurements", "h200", "calibration.csv")
TRAIN_TRACE = REPO_ROOT / "tests" / "data" / "trace_train_llama-350m_b8_s2048.json.gz"
BOMB = ('a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
        + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)))


def assert_error(result: tuple[int, str, str], file: str | Path | None, key: str | None,
                 fragment: str | None = None) -> str:
    """Exit 2, nothing on stdout, one stderr line naming the file (if any), the key (a prefix of it)
    and holding `fragment`."""
    rc, out, err = result
    assert rc == 2, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("chipsim: error: ") and "Traceback" not in err
    if file is not None:
        assert str(file) in line or str(Path(file).resolve()) in line, line
    if key is not None:
        assert f"key '{key}" in line, line
    if fragment is not None:
        assert fragment in line, line
    return line


# ---------------------------------------------------------------- chip YAML

CHIP_CASES: dict[str, tuple[str, str | None, str]] = {
    # id: (YAML after `extends: h200_sxm` + `name: x`, key, message fragment)
    "C05": ("memory: {hbm: {bandwidth: 0 TB/s}}\n", "memory.hbm.bandwidth", "above zero"),
    "C07": ("memory: {hbm: {bandwidth: .inf}}\n", "memory.hbm.bandwidth", "finite"),
    "C08": ("memory: {hbm: {bandwidth: 1e308 TB/s}}\n", "memory.hbm.bandwidth", "finite"),
    "C10": ("memory:\n  hbm:\n    bandwidth: 4.8 TB/s\n    bandwidth: 0.001 TB/s\n", "memory.hbm.bandwidth",
            "duplicate key"),
    "C17": (BOMB + "description: *a9\n", None, "alias"),
    "C24": ("compute: {units: .inf}\n", "compute.units", "finite"),
    "C25": ("compute: {units: .nan}\n", "compute.units", "finite"),
    "C26": ("calibration: {memory: {efficiency: .nan}}\n", "calibration.memory.efficiency", "finite"),
    "C27": ("calibration: {memory: {efficiency: 0}}\n", "calibration.memory.efficiency", "above zero"),
    "C28": ("calibration: {memory: {kernels: {silu_mull: 0.582}}}\n", "calibration.memory.kernels.silu_mull",
            "unknown kernel class"),
    "C29": ("calibration: {host: {dispatch: {gemmm: 18.8 us}}}\n", "calibration.host.dispatch.gemmm",
            "unknown host dispatch class"),
    "C30": ("power: {window: 0 ms}\n", "power.window", "above zero"),
    "C31": ("power: {min_clock: 5 GHz}\n", "power.min_clock", "above the chip's clock"),
    "C33": ("compute: {clock: 0 GHz}\n", "compute.clock", "above zero"),
    "C41": ('calibration: {attention: {split_kv: {flash: "false", cudnn: "false", efficient: "false"}}}\n',
            "calibration.attention.split_kv.flash", "true or false"),
    "C43": ("calibration: {gemm: {efficiency: {bf16: 50}}}\n", "calibration.gemm.efficiency.bf16", "<= 1"),
    "C44": ("calibration: {gemm: {efficiency: {bf61: 0.1}}}\n", "calibration.gemm.efficiency.bf61",
            "unknown dtype"),
    "C49": ("compute: {peak: {bf16: .inf}}\n", "compute.peak.bf16", "finite"),
    "C52": ("link: {bandwidth: 0 GB/s}\n", "link.bandwidth", "above zero"),
    "C55": ("description: " + "[" * 5000 + "]" * 5000 + "\n", None, "nested more than"),
    "C56": ("memory: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", None, "nested more than"),
    "bf16_peak_zero": ("compute: {peak: {bf16: 0 TFLOP/s}}\n", "compute.peak.bf16", "above zero"),
    "attention_backend_typo": ("calibration: {attention: {fwd: {flsh: 0.3}}}\n",
                               "calibration.attention.fwd.flsh", "unknown attention backend"),
    "collective_kind_typo": ("calibration: {collective: {efficiency: {allreduce: 0.7}}}\n",
                             "calibration.collective.efficiency.allreduce", "unknown collective kind"),
}


@pytest.mark.parametrize("case", sorted(CHIP_CASES))
def test_chip_yaml_is_refused_with_file_and_key(write, cli, case: str) -> None:
    body, key, fragment = CHIP_CASES[case]
    path = write("x.yaml", "extends: h200_sxm\nname: x\n" + body)
    assert_error(cli(["chips", "show", path]), path, key, fragment)


@pytest.mark.parametrize("case", ["C05", "C27", "C30", "C33", "C52", "C07", "C49", "C26"])
def test_chip_that_once_crashed_the_simulation_is_refused_before_running(write, cli, case: str) -> None:
    body, key, fragment = CHIP_CASES[case]
    path = write("x.yaml", "extends: h200_sxm\nname: x\n" + body)
    assert_error(cli(["run", "--workload", EXAMPLE_MLP, "--chip", path, "--no-files"]), path, key, fragment)


def test_c15_extends_an_outside_file_names_the_chip_and_its_extends_key(write, cli) -> None:
    write("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n")
    path = write("chips/x.yaml", "extends: ../etc/passwd\nname: x\n")
    line = assert_error(cli(["chips", "show", path]), path, "extends", "as the parent")
    assert line.index("x.yaml") < line.index("passwd")  # the child's file and key come first
    if Path("/etc/passwd").is_file():
        deep = write("chips/y.yaml", "extends: " + "../" * 40 + "etc/passwd\nname: y\n")
        assert_error(cli(["chips", "show", deep]), deep, "extends", "as the parent")


def test_c22_bom_in_a_chip_file_is_still_accepted(write, cli) -> None:
    path = write("x.yaml", "extends: h200_sxm\nname: x\n")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    rc, out, _ = cli(["chips", "show", path])
    assert rc == 0 and json.loads(out)["name"] == "x"


def test_legal_extremes_and_zero_peaks_still_load(write, cli) -> None:
    """A 0 peak marks a dtype the chip does not run (dojo_int4's tf32); C34's huge unit count is legal."""
    path = write("x.yaml", "extends: h200_sxm\nname: x\ncompute: {units: 1000000000000000000000, "
                           "peak: {tf32: 0 TFLOP/s}}\npower: {dvfs_exponent: 1.0e+300}\n")
    rc, out, _ = cli(["chips", "show", path])
    assert rc == 0 and json.loads(out)["peak_flops_per_s"]["tf32"] == 0


# ---------------------------------------------------------------- run configs and systems


def test_r41_duplicate_key_in_a_run_config(write, cli) -> None:
    path = write("r.yaml", "chips: [h200_sxm]\nchips: [mi300x]\nworkload: {generator: all_reduce}\n")
    assert_error(cli(["run", path, "--no-files"]), path, "chips", "duplicate key (first given on line 1)")


def test_r46_alias_bomb_in_a_run_config_is_refused_quickly(write, cli) -> None:
    path = write("r.yaml", BOMB + "name: *a9\nchips: [h200_sxm]\nworkload: {generator: all_reduce}\n")
    assert_error(cli(["run", path, "--no-files"]), path, None, "alias")


@pytest.mark.parametrize(("case", "body", "key"), [
    ("Y05", "scale_out: {oversubscription: .nan}\n", "scale_out.oversubscription"),
    ("Y06", "nodes: .inf\n", "nodes"),
    ("R15", "background_load: .nan\n", "background_load"),
])
def test_nan_and_inf_in_a_system_yaml(write, cli, case: str, body: str, key: str) -> None:
    path = write("y.yaml", "extends: cluster_256x_dgx_h100_ndr\nname: y\n" + body)
    assert_error(cli(["systems", "show", path]), path, key, "finite")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no zero device")
@pytest.mark.parametrize(("case", "argv"), [
    ("M13", ["run", "/dev/zero", "--no-files"]),
    ("C53", ["chips", "show", "/dev/zero"]),
    ("W40", ["run", "--workload", "/dev/zero", "--chip", "h200_sxm", "--no-files"]),
    ("T22", ["trace", "import", "/dev/zero", "-o", "OUT/w.json"]),
])
def test_the_zero_device_is_refused_without_reading_it(cli, tmp_path: Path, case: str, argv: list[str]) -> None:
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    assert_error(cli(argv), "/dev/zero", None, "not a regular file")


def test_a_fifo_is_refused_without_blocking(cli, tmp_path: Path) -> None:
    fifo = tmp_path / "r.yaml"
    os.mkfifo(fifo)
    assert_error(cli(["run", fifo, "--no-files"]), fifo, None, "FIFO")


def test_a_yaml_file_over_the_limit_is_refused(write, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import chipsim.config.loader as loader

    monkeypatch.setattr(loader, "MAX_YAML_BYTES", 4096)
    path = write("x.yaml", "extends: h200_sxm\nname: x\n" + "# padding\n" * 1000)
    assert_error(cli(["chips", "show", path]), path, None, "MiB chipsim reads")


# ---------------------------------------------------------------- op-graph JSON


def _mlp(change: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    data = json.loads(EXAMPLE_MLP.read_text())
    if change:
        change(data)
    return data


def _run_workload(cli, path: Path) -> tuple[int, str, str]:
    return cli(["run", "--workload", path, "--chip", "h200_sxm", "--no-files"])


WORKLOAD_CASES: dict[str, tuple[Callable[[Path], Path], str | None, str | None]] = {
    # id: (writes the file into the folder, returns it; key (prefix); fragment)
    "W08": (lambda d: _text(d / "w.json", json.dumps(_mlp())[:-1] + ', "x": ' + "[" * 100000 + "]" * 100000 + "}"),
            None, "nested too deeply"),
    "W09": (lambda d: _dump(d / "w.json", _mlp(lambda w: w["ops"][2]["shape"].update(m=1e308, n=1e308))),
            "ops[2].shape", None),
    "W09_int": (lambda d: _dump(d / "w.json", _mlp(lambda w: w["ops"][2]["shape"].update(m=10**300, n=10**300))),
                "ops[2].shape", None),
    "W12": (lambda d: _dump(d / "w.json", _mlp(lambda w: w["memory"].update(weights=math.inf))),
            "memory.weights", "finite"),
    "W13": (lambda d: _bytes(d / "w.json.gz", _xor(gzip.compress(EXAMPLE_MLP.read_bytes()), 0x5A)),
            None, "decompress"),
    "W23": (lambda d: _dump(d / "w.json", _mlp(lambda w: w["ops"][2].update(deps=[True]))), "ops[2].deps", "op ids"),
    "W24": (lambda d: _dump(d / "w.json", _mlp(lambda w: w["ops"][2].update(id=2.0))), "ops[2].id", "integer"),
    "W36": (lambda d: _text(d / "w.json", json.dumps(_mlp()).replace('"m": 2048', '"m": ' + "9" * 5000, 1)),
            None, "invalid JSON"),
    "directory": (lambda d: (d / "w.json").mkdir() or d / "w.json", None, "directory"),
}


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _dump(path: Path, data: Any) -> Path:
    return _text(path, json.dumps(data))  # NaN and Infinity as Python's json writes them


def _xor(data: bytes, mask: int, keep: int = 10) -> bytes:
    return data[:keep] + bytes(b ^ mask for b in data[keep:])


@pytest.mark.parametrize("case", sorted(WORKLOAD_CASES))
def test_bad_workload_json(cli, tmp_path: Path, case: str) -> None:
    make, key, fragment = WORKLOAD_CASES[case]
    path = make(tmp_path)
    assert_error(_run_workload(cli, path), path, key, fragment)


def test_w15_gzip_bomb_is_refused_while_inflating(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wio, "MAX_JSON_BYTES", 2**20)
    path = _bytes(tmp_path / "w.json.gz", gzip.compress(b" " * (8 * 2**20)))  # 8 MiB of spaces in ~8 kB
    assert_error(_run_workload(cli, path), path, None, "inflates to more than 1 MiB")


def test_w25_json_with_a_bom_is_read_like_yaml(cli, tmp_path: Path) -> None:
    path = _bytes(tmp_path / "w.json", b"\xef\xbb\xbf" + EXAMPLE_MLP.read_bytes())
    rc, out, err = _run_workload(cli, path)
    assert rc == 0, err


# ---------------------------------------------------------------- trace import


@pytest.fixture(scope="module")
def excerpt() -> dict[str, Any]:
    """The first 300 kernels of the reference training trace with every CPU-side event."""
    data = json.loads(gzip.decompress(TRAIN_TRACE.read_bytes()))
    kept, kernels = [], 0
    for e in data["traceEvents"]:
        if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy"):
            kernels += 1
            if kernels > 300:
                continue
        kept.append(e)
    return {**data, "traceEvents": kept}


def _trace(excerpt: dict[str, Any], change: Callable[[list[dict[str, Any]]], Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(excerpt))
    change(data["traceEvents"])
    return data


def _first(events: list[dict[str, Any]], cat: str) -> int:
    return next(i for i, e in enumerate(events) if e.get("cat") == cat)


def _set_kernel(field: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
    return lambda events: events[_first(events, "kernel")].update({field: value})


def _negative_mm(events: list[dict[str, Any]]) -> None:
    kernel_ids = {e["args"].get("External id") for e in events if e.get("cat") == "kernel"}
    mm = next(e for e in events if e.get("cat") == "cpu_op" and e.get("name") == "aten::mm"
              and e["args"].get("External id") in kernel_ids)
    mm["args"]["Input Dims"] = [[-16384, 1024], [1024, 1024]]


TRACE_CASES: dict[str, tuple[Callable[[dict[str, Any]], Any], str | None, str]] = {
    # id: (the trace (a JSON value, or bytes) from the excerpt, key (prefix), fragment)
    "T06": (lambda x: _xor(TRAIN_TRACE.read_bytes()[:50000], 0x33), None, "cannot decompress"),
    "T08": (lambda x: {"traceEvents": [1, 2, 3]}, "traceEvents[0]", "expected a trace event"),
    "T09": (lambda x: _trace(x, _set_kernel("args", "oops")), "traceEvents[", "event arguments"),
    "T14": (lambda x: _trace(x, _set_kernel("dur", -500)), "traceEvents[", "between 0 and one day"),
    "T15": (lambda x: _trace(x, _set_kernel("dur", math.nan)), "traceEvents[", "between 0 and one day"),
    "T16": (lambda x: _trace(x, _set_kernel("dur", 1e308)), "traceEvents[", "between 0 and one day"),
    "T17": (lambda x: ('{"traceEvents": ' + "[" * 50000 + "]" * 50000 + "}").encode(), None, "nested too deeply"),
    "T19": (lambda x: _trace(x, lambda events: events.append("junk")), "traceEvents[", "expected a trace event"),
    "T20": (lambda x: _trace(x, _negative_mm), "traceEvents[", "aten::mm"),
}


def _write_trace(path: Path, trace: Any) -> Path:
    return _bytes(path, trace if isinstance(trace, bytes) else json.dumps(trace).encode())


@pytest.mark.parametrize("case", sorted(TRACE_CASES))
def test_bad_trace_names_the_trace_and_the_event(cli, tmp_path: Path, excerpt, case: str) -> None:
    make, key, fragment = TRACE_CASES[case]
    path = _write_trace(tmp_path / "t.json", make(excerpt))
    out = tmp_path / "w.json"
    assert_error(cli(["trace", "import", path, "-o", out]), path, key, fragment)
    assert not out.exists()


def test_t00_the_excerpt_itself_imports(cli, tmp_path: Path, excerpt) -> None:
    path = _write_trace(tmp_path / "t.json", excerpt)
    rc, out, err = cli(["trace", "import", path, "-o", tmp_path / "w.json"])
    assert rc == 0, err
    assert "nan" not in out and "wrote" in out


def test_t05_gzip_bomb_trace(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wio, "MAX_JSON_BYTES", 2**20)
    path = _bytes(tmp_path / "t.json.gz", gzip.compress(b" " * (8 * 2**20)))
    assert_error(cli(["trace", "import", path, "-o", tmp_path / "w.json"]), path, None, "inflates to more than")


def test_t25_steps_without_profiler_steps(cli, tmp_path: Path, excerpt) -> None:
    path = _write_trace(tmp_path / "t.json", excerpt)
    out = tmp_path / "w.json"
    assert_error(cli(["trace", "import", path, "-o", out, "--steps", "5"]), path, "--steps", "ProfilerStep")
    assert not out.exists()


@pytest.mark.parametrize("case", ["T11", "T23"])
def test_trace_output_that_cannot_be_written(cli, tmp_path: Path, excerpt, case: str) -> None:
    path = _write_trace(tmp_path / "t.json", excerpt)
    if case == "T11":
        out = tmp_path / "existing"
        out.mkdir()
        fragment = "existing directory"
    else:
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "sub.json"
        fragment = "is a file"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_error(cli(["trace", "import", path, "-o", out]), out, None, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left behind


# ---------------------------------------------------------------- chipsim validate


def _gemm_rows(tmp_path: Path, change: Callable[[pd.DataFrame], Any] | None = None, name: str = "m.csv") -> Path:
    rows = pd.read_csv(CALIBRATION)
    rows = rows[rows["op"] == "gemm"].head(5).reset_index(drop=True)
    if change:
        changed = change(rows)
        rows = changed if isinstance(changed, pd.DataFrame) else rows
    path = tmp_path / name
    rows.to_csv(path, index=False)
    return path


def _strict_json(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def _set(column: str, value: Any, row: int = 0) -> Callable[[pd.DataFrame], None]:
    def change(frame: pd.DataFrame) -> None:
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
    return change


SKIPPED_ROWS: dict[str, tuple[Callable[[pd.DataFrame], None], str]] = {
    # id: (change to the 5 gemm rows: row 0 goes bad, reason fragment)
    "V02": (_set("m", "abc"), "column 'm'"),
    "V04": (_set("measured_us", 0), "measured_us must be > 0"),
    "V05": (_set("measured_us", -5), "measured_us must be > 0"),
    "V08": (_set("measured_us", "fast"), "measured_us must be > 0"),
    "V15": (_set("m", 1e30), "column 'm'"),
    "V17": (_set("launch", "egaer"), "launch must be one of eager, graph"),
    "V19": (_set("measured_us", None), "measured_us must be > 0"),
}


@pytest.mark.parametrize("case", sorted(SKIPPED_ROWS))
def test_validate_skips_a_bad_row_with_its_reason(cli, tmp_path: Path, case: str) -> None:
    change, reason = SKIPPED_ROWS[case]
    path = _gemm_rows(tmp_path, change)
    rc, out, err = cli(["validate", path, "--json"])
    assert rc == 0, err
    report = _strict_json(out)  # V24: no NaN or Infinity tokens
    assert report["rows"] == 5 and report["simulated"] == 4
    assert [s["row"] for s in report["skipped"]] == [0] and reason in report["skipped"][0]["reason"]
    gemm = report["families"][0]
    assert gemm["rows"] == 4 and 0 <= gemm["median_ape"] <= gemm["p90_ape"] <= gemm["max_ape"] < math.inf
    rc, out, err = cli(["validate", path])  # the table says so too
    assert rc == 0 and "4 of 5 rows simulated" in out and "skipped row 0" in out and "nan%" not in out


def test_v04_v05_a_bad_measurement_does_not_move_the_statistics(cli, tmp_path: Path) -> None:
    good = _gemm_rows(tmp_path, lambda f: f.drop(index=0).reset_index(drop=True))
    good = _strict_json(cli(["validate", good, "--json"])[1])
    bad = _strict_json(cli(["validate", _gemm_rows(tmp_path, _set("measured_us", -5), "bad.csv"), "--json"])[1])
    assert bad["families"] == good["families"]


@pytest.mark.parametrize("case", ["V06", "V07", "V13"])
def test_validate_with_no_simulable_row_reports_zero_rows(cli, tmp_path: Path, case: str) -> None:
    change = {"V06": lambda f: f.__setitem__("device", "TPUv9"), "V13": lambda f: f.__setitem__("op", "conv2d"),
              "V07": lambda f: f.iloc[0:0]}[case]
    path = _gemm_rows(tmp_path, change)
    rc, out, err = cli(["validate", path])
    assert rc == 0, err
    rows = 0 if case == "V07" else 5
    assert f"0 of {rows} rows simulated" in out
    assert out.count("skipped row") == rows
    rc, out, _ = cli(["validate", path, "--json"])
    assert rc == 0 and _strict_json(out)["simulated"] == 0


def test_v10_unknown_chip_names_the_option(cli, tmp_path: Path) -> None:
    assert_error(cli(["validate", _gemm_rows(tmp_path), "--chip", "h300"]), None, "--chip", "unknown chip 'h300'")


@pytest.mark.parametrize(("case", "phases", "key"), [
    ("V11", [{"phase": "gemm_bf16_8192", "avg_power_w": 600}], "[0].calls"),
    ("V11b", [{"phase": "idle", "avg_power_w": 0}], "[0].avg_power_w"),
    ("nan_power", [{"phase": "idle", "avg_power_w": math.nan}], "[0].avg_power_w"),
])
def test_v11_power_json_fields_are_checked(cli, tmp_path: Path, case: str, phases: list, key: str) -> None:
    path = _gemm_rows(tmp_path)
    power = _text(tmp_path / "power.json", json.dumps(phases))
    assert_error(cli(["validate", path]), power, key, "expected a finite number")


@pytest.mark.parametrize(("case", "option"), [("V12", "--out"), ("V21", "--plot"), ("out_under_file", "--out")])
def test_validate_unwritable_output_fails_before_any_work(cli, tmp_path: Path, case: str, option: str) -> None:
    path = _gemm_rows(tmp_path)
    if case == "V12":
        dest = tmp_path / "existing"
        dest.mkdir()
    else:
        (tmp_path / "file").write_text("x")
        dest = tmp_path / "file" / ("p.png" if option == "--plot" else "pred.csv")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_error(cli(["validate", path, option, dest]), dest, option, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no stray staging file


def test_validate_writes_outputs_staged(cli, tmp_path: Path) -> None:
    path = _gemm_rows(tmp_path)
    out, plot = tmp_path / "sub" / "pred.csv", tmp_path / "sub" / "val.png"
    rc, _, err = cli(["validate", path, "--out", out, "--plot", plot])
    assert rc == 0, err
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.csv", "val.png"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(out)) == 5


def test_v25_truncated_last_row(cli, tmp_path: Path) -> None:
    path = _gemm_rows(tmp_path)
    text = path.read_bytes()
    path.write_bytes(text[: text.rstrip(b"\n").rfind(b"\n") + 40])  # cut 40 bytes into the last row
    assert_error(cli(["validate", path]), path, None, "truncated")


def test_v18_ragged_row_message_is_one_line(cli, tmp_path: Path) -> None:
    path = _gemm_rows(tmp_path)
    lines = path.read_text().splitlines()
    lines[2] += ",x,y,z"
    path.write_text("\n".join(lines) + "\n")
    assert_error(cli(["validate", path]), path, None, "cannot read measurements")


# ---------------------------------------------------------------- chipsim regress


@pytest.fixture
def one_config(tmp_path: Path) -> Path:
    configs = tmp_path / "configs"
    configs.mkdir()
    shutil.copy(REPO_ROOT / "configs" / "runs" / "allreduce_plain.yaml", configs)
    return configs


def test_m04_truncated_baselines(cli, tmp_path: Path, one_config: Path) -> None:
    baselines = _bytes(tmp_path / "latencies.csv", (REPO_ROOT / "baselines" / "latencies.csv").read_bytes()[:100])
    assert_error(cli(["regress", "--configs", one_config, "--baselines", baselines]), baselines, None, "truncated")


@pytest.mark.parametrize(("case", "value"), [("M05", "nan"), ("M14", "-1"), ("inf", "inf")])
def test_m05_m14_bad_tolerance(cli, one_config: Path, case: str, value: str) -> None:
    assert_error(cli(["regress", "--configs", one_config, f"--tolerance={value}"]), None, "--tolerance", value)


def test_m15_unwritable_baselines_on_update(cli, tmp_path: Path, one_config: Path) -> None:
    (tmp_path / "file").write_text("x")
    dest = tmp_path / "file" / "latencies.csv"
    assert_error(cli(["regress", "--update", "--configs", one_config, "--baselines", dest]), dest, "--baselines",
                 "is a file")


def test_regress_update_then_compare_round_trips(cli, tmp_path: Path, one_config: Path) -> None:
    baselines = tmp_path / "out" / "latencies.csv"
    rc, _, err = cli(["regress", "--update", "--configs", one_config, "--baselines", baselines])
    assert rc == 0, err
    assert [p.name for p in baselines.parent.iterdir()] == ["latencies.csv"]
    rc, out, err = cli(["regress", "--configs", one_config, "--baselines", baselines])
    assert rc == 0 and "within" in out, err
