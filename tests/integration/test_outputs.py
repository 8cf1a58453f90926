"""`chipsim run` output folders you can trust (RELIABILITY.md O01-O04, X03, X04, R20, R21): a bad
`--out` fails with one line and exit 2 before any work, a run's files replace the previous run's,
nothing is half-written, and a run `name:` cannot leave `results/`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import chipsim
from chipsim.errors import InputError
from chipsim.report.files import STAGING_TAG, check_out_dir, remove_stale_staging

RUN = """
chips: [h200_sxm, gh200]
workload: {generator: all_reduce, params: {size: 16 MiB}}
report: [csv, plots]
"""
ROOT = Path(chipsim.__file__).resolve().parent.parent


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chipsim: error: "), err
    return lines[0]


def _staging(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- O01, O02, O02b, O04


def test_out_is_an_existing_file(cli: Callable, write, tmp_path: Path) -> None:  # O01
    config = write("r.yaml", RUN)
    target = write("taken.txt", "mine\n")
    rc, out, err = cli(["run", config, "--out", target])
    assert rc == 2 and out == ""  # before any work: no table printed
    assert _one_error_line(err) == f"chipsim: error: {target}: key '--out': expected a folder, but this is a file"
    assert target.read_text() == "mine\n"


def test_out_below_an_existing_file(cli: Callable, write, tmp_path: Path) -> None:  # O04
    config = write("r.yaml", RUN)
    target = write("taken.txt", "mine\n")
    rc, out, err = cli(["run", config, "--out", target / "sub"])
    assert rc == 2 and out == ""
    assert f"key '--out': cannot create the folder: {target} is a file" in _one_error_line(err)


def test_out_on_an_unwritable_place(cli: Callable, write) -> None:  # O02: a read-only file system
    if not Path("/sys/kernel").is_dir():
        pytest.skip("needs /sys (Linux)")
    config = write("r.yaml", RUN)
    rc, out, err = cli(["run", config, "--out", "/sys/chipsim_out"])
    assert rc == 2 and out == ""
    assert "/sys/chipsim_out: key '--out': cannot create the folder" in _one_error_line(err)


def test_out_an_existing_folder_without_write_permission(cli: Callable, write, tmp_path: Path) -> None:  # O02b
    config = write("r.yaml", RUN)
    if os.geteuid() == 0:  # root writes anywhere chmod allows: use a folder of a read-only file system
        if not Path("/sys/kernel").is_dir():
            pytest.skip("needs /sys (Linux) when run as root")
        locked = Path("/sys/kernel")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
    try:
        rc, out, err = cli(["run", config, "--out", locked])
    finally:
        if locked.is_relative_to(tmp_path):
            locked.chmod(0o755)
    assert rc == 2 and out == ""
    assert f"{locked}: key '--out': cannot write files into" in _one_error_line(err)


def test_check_out_dir_leaves_no_trace(tmp_path: Path) -> None:
    check_out_dir(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new" / "deeper").exists()  # the probe's folder is not left behind
    assert [p.name for p in (tmp_path / "new").iterdir()] == []
    with pytest.raises(InputError, match="expected a folder"):
        check_out_dir(Path(__file__))


# ---------------------------------------------------------------- O03: reusing a folder


def test_rerun_into_a_folder_replaces_the_previous_run(cli: Callable, write, tmp_path: Path) -> None:  # O03
    config = write("r.yaml", RUN)
    out_dir = tmp_path / "D"
    rc, _, err = cli(["run", config, "--out", out_dir])
    assert rc == 0, err
    assert {"roofline_h200_sxm.png", "roofline_gh200.png"} <= {p.name for p in out_dir.iterdir()}
    rc, _, err = cli(["run", config, "--chip", "h200_sxm", "--out", out_dir])
    assert rc == 0, err
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["breakdown.png", "ops.csv", "power.png", "roofline_h200_sxm.png", "summary.csv"]
    assert "wrote 5 files" in err
    assert _staging(tmp_path) == []


def test_rerun_keeps_the_users_own_files(cli: Callable, write, tmp_path: Path) -> None:  # O03
    config = write("r.yaml", RUN)
    out_dir = tmp_path / "D"
    assert cli(["run", config, "--out", out_dir])[0] == 0
    (out_dir / "notes.txt").write_text("my notes\n")
    (out_dir / "extra").mkdir()
    assert cli(["run", config, "--chip", "gh200", "--out", out_dir])[0] == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["breakdown.png", "extra", "notes.txt", "ops.csv", "power.png", "roofline_gh200.png",
                     "summary.csv"]
    assert (out_dir / "notes.txt").read_text() == "my notes\n"
    assert "gh200" in (out_dir / "summary.csv").read_text() and "h200_sxm" not in (out_dir / "summary.csv").read_text()
    assert _staging(tmp_path) == []


def test_failure_while_writing_leaves_the_folder_as_it_was(cli: Callable, write, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = write("r.yaml", RUN)
    out_dir = tmp_path / "D"
    assert cli(["run", config, "--out", out_dir])[0] == 0
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    from chipsim.report import plots

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_power", interrupted)
    rc, _, err = cli(["run", config, "--chip", "h200_sxm", "--out", out_dir])
    assert rc == 130 and err.strip().splitlines()[-1] == "chipsim: interrupted"
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before
    assert _staging(tmp_path) == []


# ---------------------------------------------------------------- X03, X04: signals while writing

SLOW_RENDER = (
    "import sys, time\n"
    "from chipsim.report import plots\n"
    "real = plots.plot_power\n"
    "def slow(*a, **k):\n"
    "    print('RENDERING', file=sys.stderr, flush=True)\n"
    "    time.sleep(30)\n"
    "    return real(*a, **k)\n"
    "plots.plot_power = slow\n"
    "from chipsim.cli import main\n"
    "sys.exit(main())\n"
)


def _start_slow_run(config: Path, out_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RENDER, "run", str(config), "--chip", "h200_sxm",
                             "--out", str(out_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=config.parent)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    for line in proc.stderr:  # wait until the outputs are being rendered into the staging folder
        if "RENDERING" in line or time.monotonic() > deadline:
            break
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_signal_while_writing(cli: Callable, write, tmp_path: Path, signum: int) -> None:  # X03, X04
    config = write("r.yaml", RUN)
    out_dir = tmp_path / "D"
    assert cli(["run", config, "--out", out_dir])[0] == 0  # a previous complete run
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    proc = _start_slow_run(config, out_dir)
    assert any(p.name.startswith(f".D.{STAGING_TAG}-") for p in tmp_path.iterdir())
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=20)
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before  # D intact
    if signum == signal.SIGTERM:  # cleaned up like Ctrl-C
        assert proc.returncode == 130 and err.strip().splitlines() == ["chipsim: interrupted"]
        assert _staging(tmp_path) == []
    else:  # a killed run cannot clean up: the next run into D does
        assert proc.returncode == -signal.SIGKILL
        assert _staging(tmp_path) != []
        rc, _, err = cli(["run", config, "--chip", "h200_sxm", "--out", out_dir])
        assert rc == 0, err
        assert _staging(tmp_path) == []
        assert "roofline_gh200.png" not in {p.name for p in out_dir.iterdir()}


def test_stale_staging_rules(tmp_path: Path) -> None:
    out_dir = tmp_path / "D"
    dead = tmp_path / f".D.{STAGING_TAG}-999999999-abc"  # no such pid
    live = tmp_path / f".D.{STAGING_TAG}-{os.getppid()}-abc"  # a running process: maybe staging now
    old = tmp_path / ".D.k2j4_x9z"  # chipsim <= 0.1.0, outputs only
    users = tmp_path / ".D.backup12"  # someone's own folder
    for folder, files in ((dead, ["summary.csv"]), (live, ["ops.csv"]), (old, ["summary.csv", "power.png"]),
                          (users, ["summary.csv", "thesis.tex"])):
        folder.mkdir()
        for name in files:
            (folder / name).write_text("x")
    assert sorted(p.name for p in remove_stale_staging(out_dir)) == sorted([dead.name, old.name])
    assert live.is_dir() and users.is_dir()


# ---------------------------------------------------------------- R20, R21: the run name


@pytest.mark.parametrize("name", ["../../escape_dotdot", "/tmp/chipsim_abs_escape", "a/b", "a\\\\b", "..",
                                  "\"x\\u0007y\"", ".hidden", "\"\""])
def test_run_name_cannot_leave_results(cli: Callable, write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       name: str) -> None:  # R20, R21
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    config = write("a/b/c/r.yaml", f"name: {name}\n{RUN}")
    rc, out, err = cli(["run", config])
    assert rc == 2 and out == ""
    line = _one_error_line(err)
    assert line.startswith(f"chipsim: error: {config}: key 'name': expected a plain folder name")
    assert sorted(p.name for p in work.iterdir()) == ["r.yaml"]
    assert not Path("/tmp/chipsim_abs_escape").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_run_name_with_spaces_and_symbols_is_fine(cli: Callable, write, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = write("r.yaml", f"name: llama 3.1+fp8=x@y_v-2\n{RUN}")
    rc, _, err = cli(["run", config])
    assert rc == 0, err
    assert (tmp_path / "results" / "llama 3.1+fp8=x@y_v-2" / "summary.csv").is_file()
