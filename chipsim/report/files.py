"""Writing a run's files (summary.csv, ops.csv, timeline.json, PNG plots) all-or-nothing, and the
checks and helpers every output folder goes through.

- `check_out_dir` refuses an output folder chipsim cannot create or write into *before* any work.
- A run's files are rendered into a staging folder beside the output folder
  (`.<name>.chipsim-staging-<pid>-<random>/`) and swapped in with renames at the end, so the folder
  holds the previous run or the new one, never a mix.
- chipsim owns the files a run writes, and only those: `summary.csv`, `ops.csv`, `timeline.json`,
  `breakdown.png`, `power.png` and `roofline_*.png` (and a serving run's `requests.csv` and `latency.png`). A run into a folder replaces every such file of
  the previous run (a roofline of a chip no longer simulated is removed); other files are left alone.
- Staging folders left by a killed run (SIGKILL, a power cut) are removed by the next run into the
  same folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chipsim.atomic import umask
from chipsim.errors import InputError

if TYPE_CHECKING:
    from chipsim.hardware.chip import Chip
    from chipsim.report.result import Result

STAGING_TAG = "chipsim-staging"
RUN_OUTPUTS = re.compile(r"summary\.csv|pareto\.csv|pareto\.png|ops\.csv|timeline\.json|breakdown\.png|power\.png|roofline_[\w.-]*\.png|"
                         r"requests\.csv|latency\.png")


# ---------------------------------------------------------------- output folders


def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def check_out_dir(out_dir: Path, option: str = "--out") -> Path:
    """Fail before any work, with an InputError naming `out_dir` and `option`, unless `out_dir` is (or
    can be created as) a folder chipsim can write files into, with a parent folder it can write a
    staging folder into. A folder this check had to create is removed again."""
    out_dir = Path(out_dir)
    where = str(out_dir)
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        message = ("expected a folder, but this is a file" if existing == out_dir
                   else f"cannot create the folder: {existing} is a file, not a folder")
        raise InputError(message, file=where, key=option)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder ({_reason(exc)})", file=where, key=option) from None
    try:
        for folder in (out_dir, out_dir.parent):  # files are moved into it; staging goes beside it
            try:
                fd, probe = tempfile.mkstemp(prefix=".chipsim-probe-", dir=folder)
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                raise InputError(f"cannot write files into {folder}/ ({_reason(exc)})", file=where,
                                 key=option) from None
    finally:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
    return out_dir


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, and belongs to someone else
        return True
    return True


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Remove the staging folders a killed run into `out_dir` left beside it: those whose process is
    gone, and those of chipsim <= 0.1.0 (`.<name>.<8 characters>/` holding only output files)."""
    out_dir = Path(out_dir)
    removed: list[Path] = []
    pattern = re.compile(re.escape(f".{out_dir.name}.") + rf"(?:{STAGING_TAG}-(\d+)-.*|[a-z0-9_]{{8}})")
    try:
        siblings = list(out_dir.parent.iterdir())
    except OSError:
        return removed
    for sibling in siblings:
        match = pattern.fullmatch(sibling.name)
        if not match or sibling.is_symlink() or not sibling.is_dir():
            continue
        if match.group(1) is not None:
            if _pid_alive(int(match.group(1))):
                continue  # another run into the same folder is staging right now
        elif not all(RUN_OUTPUTS.fullmatch(p.name) and p.is_file() for p in sibling.iterdir()):
            continue  # not an old staging folder: someone's own files
        shutil.rmtree(sibling, ignore_errors=True)
        removed.append(sibling)
    return removed


def _install(staging: Path, out_dir: Path, names: list[str]) -> None:
    """Put the staged files in place of the previous run's: one rename when the folder is new or holds
    only run outputs; else file by file, then the previous run's outputs not rewritten are removed."""
    os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes it private; the folder is the user's
    if not out_dir.exists() and not out_dir.is_symlink():
        try:
            os.rename(staging, out_dir)
            return
        except OSError:  # created meanwhile: fall through
            pass
    entries = list(out_dir.iterdir())
    if not out_dir.is_symlink() and all(RUN_OUTPUTS.fullmatch(p.name) and p.is_file() for p in entries):
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{STAGING_TAG}-{os.getpid()}-old-", dir=out_dir.parent))
        os.rename(out_dir, old / "previous")
        try:
            os.rename(staging, out_dir)
        except OSError:
            os.rename(old / "previous", out_dir)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    for name in names:
        os.replace(staging / name, out_dir / name)
    for entry in entries:
        if RUN_OUTPUTS.fullmatch(entry.name) and entry.name not in names and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def write_run_outputs(results: Sequence[Result], chips: Mapping[str, Chip], out_dir: Path,
                      reports: Sequence[str]) -> list[Path]:
    """Render everything into a staging folder, then swap it in: a failure or an interrupt half-way
    leaves `out_dir` as it was, and a run's files replace the previous run's entirely."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from chipsim.report.trace import chrome_trace

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{STAGING_TAG}-{os.getpid()}-", dir=out_dir.parent))
    try:
        names: list[str] = []
        if "csv" in reports:
            pd.DataFrame([r.summary() for r in results]).to_csv(staging / "summary.csv", index=False)
            ops = pd.concat([r.ops_frame().assign(workload=r.workload, target=r.target, chip=r.chip)
                             for r in results], ignore_index=True)
            ops.to_csv(staging / "ops.csv", index=False)
            names += ["summary.csv", "ops.csv"]
        if "timeline" in reports:
            (staging / "timeline.json").write_text(json.dumps(chrome_trace(results)))
            names.append("timeline.json")
        if "plots" in reports:
            from chipsim.report import plots

            figures = {"breakdown.png": plots.plot_breakdown(results), "power.png": plots.plot_power(results)}
            several = len({r.workload for r in results}) > 1
            for r in results:
                slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{r.workload}_{r.target}" if several else r.target)
                figures[f"roofline_{slug}.png"] = plots.plot_roofline(r, chips[r.chip])
            for name, fig in figures.items():
                fig.savefig(staging / name, dpi=110)
                plt.close(fig)
                names.append(name)
        _install(staging, out_dir, names)
        return [out_dir / name for name in names]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_training_outputs(results: Sequence[Any], out_dir: Path, reports: Sequence[str]) -> list[Path]:
    """A training run's files (chipsim.training.TrainingResult), staged and swapped in as
    `write_run_outputs` does: `summary.csv` (one row per system) and `timeline.json` (the pipeline
    schedule, one track per simulated rank: a stage's compute, sends and data-parallel streams)."""
    import pandas as pd

    from chipsim.report.trace import chrome_trace

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{STAGING_TAG}-{os.getpid()}-", dir=out_dir.parent))
    try:
        names: list[str] = []
        if "csv" in reports:
            pd.DataFrame([r.summary() for r in results]).to_csv(staging / "summary.csv", index=False)
            names.append("summary.csv")
        if "timeline" in reports:
            (staging / "timeline.json").write_text(json.dumps(chrome_trace([r.schedule for r in results])))
            names.append("timeline.json")
        _install(staging, out_dir, names)
        return [out_dir / name for name in names]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_staged(out_dir: Path, writers: Mapping[str, Callable[[Path], Any]]) -> list[Path]:
    """Each `writers[name](path)` writes one file into a staging folder; then they are swapped in as
    `write_run_outputs` does (all or nothing, the previous run's outputs replaced)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{STAGING_TAG}-{os.getpid()}-", dir=out_dir.parent))
    try:
        for name, write in writers.items():
            write(staging / name)
        _install(staging, out_dir, list(writers))
        return [out_dir / name for name in writers]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- single files and signals


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # cleaned up like Ctrl-C: staging folders removed, workers stopped


def interrupt_on_sigterm() -> Any:
    """From now on SIGTERM (as sent by `timeout`, Slurm, systemd, `kill`) raises KeyboardInterrupt, so
    it is cleaned up like Ctrl-C (staging folders removed, workers stopped). Returns the previous
    handler, for `restore_sigterm`. Only in the main thread; elsewhere it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminated)


def restore_sigterm(previous: Any) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """`interrupt_on_sigterm` while inside."""
    previous = interrupt_on_sigterm()
    try:
        yield
    finally:
        restore_sigterm(previous)
