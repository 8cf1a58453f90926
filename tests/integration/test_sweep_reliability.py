"""Sweeps you can trust (RELIABILITY.md S02, S11-S13, S21-S25, X07-X13): point identity covers the
whole base, any failing point is recorded, the results are written atomically and locked against a
second writer, a torn or foreign folder never corrupts the table, and signals stop the workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

import chipsim
from chipsim.study import sweep as sweep_module
from chipsim.study.sweep import LOCK, PARTIAL, design_points, load_sweep, point_id, run_sweep, sweep_identity

psutil = pytest.importorskip("psutil")

ROOT = Path(chipsim.__file__).resolve().parent.parent
BASE = """
chips: [h200_sxm, h100_sxm]
workload:
  generator: transformer_train_step
  params: {layers: 4, batch: 1, seq: 512}
"""
BATCHES = "  workload.params.batch: [1, 2, 3, 4]\n"


def write_sweep(tmp_path: Path, parameters: str = BATCHES, extra: str = "", name: str = "s",
                base: str = BASE) -> Path:
    (tmp_path / "base.yaml").write_text(base)
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"base: base.yaml\nparameters:\n{parameters}{extra}")
    return path


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("chipsim:")]
    assert len(lines) == 1 and lines[0].startswith("chipsim: error: "), err
    return lines[0]


# ---------------------------------------------------------------- refused before any work


def test_unbounded_lhs_is_refused_at_once(cli: Callable, tmp_path: Path) -> None:  # S11
    path = write_sweep(tmp_path, "  chips.*.memory.hbm.bandwidth: {low: 1.0e+12, high: 5.0e+12}\n"
                                 "  workload.params.batch: {low: 1, high: 16, integer: true}\n",
                       "sampling: lhs\nsamples: 1000000000\n")
    start = time.monotonic()
    rc, out, err = cli(["sweep", path, "--out", tmp_path / "o"])
    assert rc == 2 and out == "" and time.monotonic() - start < 2
    assert one_error_line(err) == (f"chipsim: error: {path}: key 'samples': expected at most "
                                   f"{sweep_module.MAX_POINTS:,} samples, got 1,000,000,000")
    assert not (tmp_path / "o").exists()


def test_unbounded_grid_is_refused_at_once(cli: Callable, tmp_path: Path) -> None:  # S12
    params = "".join(f"  workload.params.p{i}: [{', '.join(str(v) for v in range(10))}]\n" for i in range(11))
    path = write_sweep(tmp_path, params)
    start = time.monotonic()
    rc, out, err = cli(["sweep", path, "--out", tmp_path / "o"])
    assert rc == 2 and out == "" and time.monotonic() - start < 2
    assert one_error_line(err).startswith(f"chipsim: error: {path}: key 'parameters': the grid has "
                                          "100,000,000,000 design points; a sweep has at most 100,000")


def test_out_is_an_existing_file(cli: Callable, tmp_path: Path) -> None:  # S13
    path = write_sweep(tmp_path)
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    rc, out, err = cli(["sweep", path, "--out", taken])
    assert rc == 2 and out == ""
    assert one_error_line(err) == f"chipsim: error: {taken}: key '--out': expected a folder, but this is a file"
    assert taken.read_text() == "mine\n"


@pytest.mark.parametrize("name", ["x/../../../../sweep_escape", "/tmp/chipsim_sweep_abs", "..", "a\\\\b"])
def test_sweep_name_cannot_leave_results(cli: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         name: str) -> None:  # S24
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    path = write_sweep(work, extra=f"name: {name}\n")
    rc, out, err = cli(["sweep", path])
    assert rc == 2 and out == ""
    assert one_error_line(err).startswith(f"chipsim: error: {path}: key 'name': expected a plain folder name")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "base.yaml", "s.yaml"]
    assert not Path("/tmp/chipsim_sweep_abs").exists()


def test_unreachable_scheduler(cli: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # S25
    pytest.importorskip("distributed")
    monkeypatch.setattr(sweep_module, "SCHEDULER_TIMEOUT_S", 1.0)
    path = write_sweep(tmp_path)
    rc, out, err = cli(["sweep", path, "--out", tmp_path / "o", "--executor", "dask",
                        "--scheduler", "tcp://127.0.0.1:9", "--json"])
    assert rc == 2 and out == ""
    assert one_error_line(err).startswith("chipsim: error: key '--scheduler': cannot reach the Dask scheduler "
                                          "'tcp://127.0.0.1:9' within 1 s")


def test_typo_in_a_parameter_blames_the_sweep(cli: Callable, tmp_path: Path) -> None:  # S21b
    path = write_sweep(tmp_path, "  chips.*.memory.hbm.bandwith: [\"4 TB/s\"]\n")
    rc, out, err = cli(["sweep", path, "--out", tmp_path / "o"])
    assert rc == 2 and out == ""
    assert one_error_line(err).startswith(f"chipsim: error: {path}: key 'parameters.chips.*.memory.hbm.bandwith': "
                                          "unknown key")


# ---------------------------------------------------------------- failing points are recorded


def test_bad_values_are_recorded_against_the_sweep(tmp_path: Path) -> None:  # S21
    path = write_sweep(tmp_path, "  chips.*.memory.hbm.bandwidth: [\"4 TB/s\", \"4 TB\", \"fast\"]\n")
    table = run_sweep(load_sweep(path), tmp_path / "o", workers=1)
    bad = table[table["status"] != "ok"]
    assert list(bad["chips.*.memory.hbm.bandwidth"]) == ["4 TB", "fast"]
    for status in bad["status"]:
        assert status.startswith(f"error: {path}: key 'parameters.chips.*.memory.hbm.bandwidth': ")
        assert "h200_sxm.yaml" not in status
    assert (table[table["chips.*.memory.hbm.bandwidth"] == "4 TB/s"]["status"] == "ok").all()


def test_any_exception_in_a_point_is_recorded(cli: Callable, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # S02, S22
    from chipsim.report.result import Result

    real = Result.summary

    def flaky(self: Result) -> dict:  # what a zero bandwidth or an infinite unit count did in the cost model
        if "_b2_" in self.workload:
            raise ZeroDivisionError("float division by zero")
        if "_b3_" in self.workload:
            raise OverflowError("math range error")
        return real(self)

    monkeypatch.setattr(Result, "summary", flaky)
    path = write_sweep(tmp_path)
    rc, out, err = cli(["sweep", path, "--out", tmp_path / "o", "--workers", "1", "--json"])
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["points"] == 4 and summary["rows"] == 2 + 1 + 1 + 2 and summary["failed"] == 2
    table = pd.read_csv(tmp_path / "o" / "results.csv")
    by_batch = table.groupby("workload.params.batch")["status"].apply(list).to_dict()
    assert by_batch[2] == ["error: ZeroDivisionError: float division by zero"]
    assert by_batch[3] == ["error: OverflowError: math range error"]
    assert by_batch[1] == by_batch[4] == ["ok", "ok"]
    assert (tmp_path / "o" / "metrics.png").is_file() and (tmp_path / "o" / "pareto.png").is_file()


# ---------------------------------------------------------------- identity, resume, foreign folders


def test_one_point_sweep_writes_its_rows(cli: Callable, tmp_path: Path) -> None:  # X13
    path = write_sweep(tmp_path, "  workload.params.batch: [2]\n")
    rc, out, err = cli(["sweep", path, "--out", tmp_path / "o", "--json"])
    assert rc == 0, err
    assert json.loads(out)["rows"] == 2
    first = (tmp_path / "o" / "results.csv").read_bytes()
    table = pd.read_csv(tmp_path / "o" / "results.csv")
    assert len(table) == 2 and (table["status"] == "ok").all()
    assert all(p.startswith("p") and len(p) == 13 for p in table["point"])  # never read back as a number
    rc, out, _ = cli(["sweep", path, "--out", tmp_path / "o", "--json"])  # a rerun reuses it
    assert rc == 0 and json.loads(out)["rows"] == 2
    assert (tmp_path / "o" / "results.csv").read_bytes() == first


def test_changed_base_is_recomputed(cli: Callable, tmp_path: Path) -> None:  # X10
    path = write_sweep(tmp_path, "  workload.params.batch: [1, 2]\n")
    out_dir = tmp_path / "o"
    assert cli(["sweep", path, "--out", out_dir, "--json"])[0] == 0
    assert set(pd.read_csv(out_dir / "results.csv")["target"]) == {"h200_sxm", "h100_sxm"}
    (tmp_path / "base.yaml").write_text(BASE.replace("[h200_sxm, h100_sxm]", "[mi300x]").replace("layers: 4",
                                                                                                  "layers: 6"))
    rc, _, err = cli(["sweep", path, "--out", out_dir, "--json"])
    assert rc == 0
    assert "chipsim: " in err and "recomputing all 2 design points" in err
    fresh_dir = tmp_path / "fresh"
    assert cli(["sweep", path, "--out", fresh_dir, "--json"])[0] == 0
    assert (out_dir / "results.csv").read_bytes() == (fresh_dir / "results.csv").read_bytes()
    assert set(pd.read_csv(out_dir / "results.csv")["target"]) == {"mi300x"}


def test_changed_chip_file_is_recomputed(tmp_path: Path) -> None:  # X10: the contents of a chip YAML it names
    (tmp_path / "mine.yaml").write_text("extends: h200_sxm\nname: mine\nmemory:\n  hbm:\n    bandwidth: 4.8 TB/s\n")
    base = BASE.replace("[h200_sxm, h100_sxm]", "[mine.yaml]")
    sweep = load_sweep(write_sweep(tmp_path, "  workload.params.batch: [1, 8]\n", base=base))
    before = sweep_identity(sweep)
    first = run_sweep(sweep, tmp_path / "o", workers=1)
    (tmp_path / "mine.yaml").write_text("extends: h200_sxm\nname: mine\nmemory:\n  hbm:\n    bandwidth: 1 TB/s\n")
    assert sweep_identity(sweep) != before
    calls: list[tuple[int, int]] = []
    second = run_sweep(sweep, tmp_path / "o", workers=1, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 2)  # both points recomputed
    assert (second["latency_s"] > first["latency_s"]).any()
    assert set(second["point"]).isdisjoint(first["point"])


def test_identity_is_stable_and_covers_the_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = load_sweep(write_sweep(tmp_path))
    identity = sweep_identity(sweep)
    assert identity == sweep_identity(load_sweep(tmp_path / "s.yaml"))
    point = design_points(sweep)[0]
    assert point_id(point, identity) != point_id(point, "")
    monkeypatch.setattr(chipsim, "__version__", "99.0")
    assert sweep_identity(sweep) != identity


def test_another_sweep_into_an_old_folder(cli: Callable, tmp_path: Path) -> None:  # X11
    first = write_sweep(tmp_path, "  workload.params.batch: [1, 2]\n", name="first")
    second = write_sweep(tmp_path, "  workload.params.seq: [256, 512]\n  options.launch: [eager, graph]\n",
                         name="second")
    out_dir = tmp_path / "o"
    assert cli(["sweep", first, "--out", out_dir, "--json"])[0] == 0
    rc, out, err = cli(["sweep", second, "--out", out_dir, "--json"])
    assert rc == 0, err
    assert "from another sweep" in err and "recomputing all 4 design points" in err
    table = pd.read_csv(out_dir / "results.csv")  # readable, with the second sweep's columns only
    assert "workload.params.batch" not in table and {"workload.params.seq", "options.launch"} <= set(table)
    assert len(table) == 8 and (table["status"] == "ok").all()
    pd.testing.assert_frame_equal(pd.read_parquet(out_dir / "results.parquet"), table, check_dtype=False)


def _interrupt_after(n: int) -> Callable[[int, int], None]:
    def progress(done: int, todo: int) -> None:
        if done == n:
            raise KeyboardInterrupt

    return progress


def test_interrupted_then_torn_progress_line_is_ignored(tmp_path: Path) -> None:  # X12
    sweep = load_sweep(write_sweep(tmp_path))
    full = run_sweep(sweep, tmp_path / "full", workers=1)
    out_dir = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out_dir, workers=1, progress=_interrupt_after(2))
    assert not (out_dir / "results.csv").exists()  # written only at the end
    lines = (out_dir / PARTIAL).read_text().splitlines(keepends=True)
    assert len(lines) == 2 and all(line.endswith("\n") for line in lines)
    with (out_dir / PARTIAL).open("a") as fh:  # what a kill in the middle of an append leaves
        fh.write(lines[0][: len(lines[0]) // 2])
    calls: list[tuple[int, int]] = []
    notes: list[str] = []
    resumed = run_sweep(sweep, out_dir, workers=1, progress=lambda d, t: calls.append((d, t)), note=notes.append)
    assert calls[0] == (0, 2) and calls[-1] == (2, 2)
    assert notes == [f"{out_dir}: ignoring 1 results cut short by an interrupted run; reusing 2 finished design "
                     "points, computing 2"]
    pd.testing.assert_frame_equal(resumed, full)
    assert (out_dir / "results.csv").read_bytes() == (tmp_path / "full" / "results.csv").read_bytes()
    assert not (out_dir / PARTIAL).exists()


def test_torn_last_row_of_results_csv_is_recomputed(tmp_path: Path) -> None:  # X12
    sweep = load_sweep(write_sweep(tmp_path))
    out_dir = tmp_path / "o"
    full = run_sweep(sweep, out_dir, workers=1)
    complete = (out_dir / "results.csv").read_bytes()
    (out_dir / "results.csv").write_bytes(complete[: len(complete) - 40])  # last row cut, no newline
    calls: list[tuple[int, int]] = []
    notes: list[str] = []
    resumed = run_sweep(sweep, out_dir, workers=1, progress=lambda d, t: calls.append((d, t)), note=notes.append)
    assert calls[0] == (0, 1)  # the torn row's point only
    assert len(notes) == 1 and "cut short by an interrupted run" in notes[0]
    pd.testing.assert_frame_equal(resumed, full)
    assert (out_dir / "results.csv").read_bytes() == complete


def test_local_workers_give_identical_bytes(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path))
    run_sweep(sweep, tmp_path / "one", workers=1)
    run_sweep(sweep, tmp_path / "two", workers=2)
    for name in ("results.csv", "results.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


# ---------------------------------------------------------------- a second writer, signals

HOLD_LOCK = ("import fcntl, os, sys, time\n"
             "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX)\n"
             "os.write(fd, str(os.getpid()).encode())\n"
             "print('locked', flush=True)\n"
             "time.sleep(60)\n")


def test_second_writer_is_refused_and_a_dead_lock_taken_over(cli: Callable, tmp_path: Path) -> None:  # X09
    pytest.importorskip("fcntl")
    path = write_sweep(tmp_path)
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out_dir / LOCK)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        rc, out, err = cli(["sweep", path, "--out", out_dir, "--json"])
        assert rc == 2 and out == ""
        assert one_error_line(err) == (f"chipsim: error: {out_dir}: key '--out': another chipsim sweep (pid "
                                       f"{holder.pid}) is writing into this folder; wait for it to finish, "
                                       "or give another --out")
        assert sorted(p.name for p in out_dir.iterdir()) == [LOCK]
    finally:
        holder.kill()
        holder.wait()
    rc, out, err = cli(["sweep", path, "--out", out_dir, "--json"])  # the dead holder's lock is gone
    assert rc == 0, err
    assert len(pd.read_csv(out_dir / "results.csv")) == 8


SLOW_SWEEP = ("import sys, time\n"
              "from chipsim.report.result import Result\n"
              "real = Result.summary\n"
              "def slow(self):\n"
              "    time.sleep(0.3)\n"
              "    return real(self)\n"
              "Result.summary = slow\n"
              "from chipsim.cli import main\n"
              "sys.exit(main())\n")


def _start_slow_sweep(path: Path, out_dir: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """A 12-point sweep on 2 workers that takes several seconds; returns once both workers run and a
    point has finished, with the workers' pids."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SWEEP, "sweep", str(path), "--out", str(out_dir),
                             "--workers", "2", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + 30
    workers: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        partial = out_dir / PARTIAL
        if len(workers) >= 2 and partial.is_file() and partial.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(workers) >= 2
    return proc, workers


def _gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_signals_stop_the_workers(cli: Callable, tmp_path: Path, signum: int) -> None:  # X07, X08, X09
    path = write_sweep(tmp_path, "  workload.params.batch: [1, 2, 3, 4, 5, 6]\n  options.launch: [eager, graph]\n")
    out_dir = tmp_path / "o"
    proc, workers = _start_slow_sweep(path, out_dir)
    try:
        rc, _, err = cli(["sweep", path, "--out", out_dir, "--json"])  # X09: a second writer, while it runs
        assert rc == 2 and "another chipsim sweep" in one_error_line(err)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=10)  # returns: no orphan holds the pipes open
        assert _gone(workers), "a pool worker outlived the sweep"
    finally:
        for pid in [proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if signum == signal.SIGTERM:
        assert proc.returncode == 130 and err.strip().splitlines() == ["chipsim: interrupted"]
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (out_dir / "results.csv").exists()
    done = (out_dir / PARTIAL).read_text().count("\n")
    assert 1 <= done < 12
    calls: list[tuple[int, int]] = []
    resumed = run_sweep(load_sweep(path), out_dir, workers=1, progress=lambda d, t: calls.append((d, t)))
    assert calls[0][1] <= 12 - done and len(resumed) == 24 and (resumed["status"] == "ok").all()
    run_sweep(load_sweep(path), tmp_path / "fresh", workers=1)
    assert (out_dir / "results.csv").read_bytes() == (tmp_path / "fresh" / "results.csv").read_bytes()
