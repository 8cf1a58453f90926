"""Design-space sweeps: a base run config plus parameters to vary, evaluated on a local process pool
or a Dask cluster, into one tidy table (a row per design point, target and workload).

A sweep YAML:

    name: dwb_capacity
    base: ../runs/dynamic_attention_dwb.yaml        # a run config (path relative to this file)
    parameters:                                      # path into the chip / system / workload YAML
      chips.h100_dwb.memory.weight_buffer.capacity: ["16 MiB", "64 MiB", "256 MiB"]
      chips.*.memory.hbm.bandwidth: {low: 2.0e+12, high: 6.0e+12}    # a range (random / lhs)
      workload.params.batch: [4, 8]
      systems.cluster_256x_dgx_h100_ndr.routing: [ecmp, adaptive]
      options.launch: [eager, graph]
    sampling: grid            # grid (lists only) | random | lhs (ranges, or lists sampled by index)
    samples: 20               # random / lhs
    seed: 0

Every design point is identified by a hash of its parameter values *and* of everything the result
depends on besides: the base run config, the contents of every chip, system and trace file it names
(with their `extends:` parents), and chipsim's version. So an interrupted sweep resumes from its output
folder without recomputing finished points, and a changed base never reuses stale rows. A failed point
(any exception) is recorded with its error instead of stopping the sweep. Same inputs, same table,
whatever the executor.

The output folder: `results.csv` and `results.parquet` are written at the end, each atomically (a
temporary file renamed into place); while the sweep runs, each finished point is appended as one
line to `results.partial.jsonl` (a torn last line, from a kill, is ignored and that point
re-evaluated). `.chipsim-sweep.lock` keeps a second sweep from writing into the same folder.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import itertools
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from chipsim.config.loader import load_yaml
from chipsim.config.reader import Section
from chipsim.config.runconfig import check_name, safe_name
from chipsim.errors import InputError

log = logging.getLogger(__name__)

SAMPLINGS = ("grid", "random", "lhs")
METRICS = ("latency_s", "energy_j", "avg_power_w", "peak_power_w", "achieved_flops_per_s",
           "achieved_bandwidth_bytes_per_s", "exposed_comm_s", "fits_in_memory")
ROOTS = ("chips", "systems", "workload", "options")
MAX_POINTS = 100_000  # design points per sweep: a bigger grid or sample count is refused before any work
SCHEDULER_TIMEOUT_S = 10.0  # how long to try to reach a Dask --scheduler
RESULTS, PARQUET = "results.csv", "results.parquet"
PARTIAL = "results.partial.jsonl"  # finished points, one JSON line each, while the sweep runs
LOCK = ".chipsim-sweep.lock"


@dataclass(frozen=True)
class Parameter:
    path: str
    values: tuple[Any, ...] = ()  # a list of values
    low: float | None = None  # or a numeric range
    high: float | None = None
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class Sweep:
    name: str
    base: dict[str, Any]  # the base run config's YAML mapping
    base_file: str
    parameters: tuple[Parameter, ...]
    sampling: str = "grid"
    samples: int = 0
    seed: int = 0
    file: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- reading


def _parameter(sec: Section, path: str) -> Parameter:
    raw = sec.raw(path)
    head = path.split(".")[0]
    if head not in ROOTS or "." not in path:
        raise sec.error(path, f"expected a path starting with one of {', '.join(ROOTS)}, "
                              "e.g. chips.h100_dwb.memory.weight_buffer.capacity")
    if isinstance(raw, list):
        if not raw:
            raise sec.error(path, "expected at least one value")
        return Parameter(path, tuple(raw))
    if isinstance(raw, dict):
        rng = Section(raw, sec.file, sec.key(path))
        low, high = rng.number("low", minimum=None), rng.number("high", minimum=None)
        log_scale = bool(rng.raw("log", False))
        integer = bool(rng.raw("integer", False))
        rng.done()
        if high <= low:
            raise rng.error("high", f"expected high > low ({low})")
        if log_scale and low <= 0:
            raise rng.error("low", "a log range needs low > 0")
        return Parameter(path, (), low, high, log_scale, integer)
    raise sec.error(path, "expected a list of values or a range {low, high[, log, integer]}")


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    data = load_yaml(path)
    top = Section(data, str(path))
    name = check_name(top.raw("name"), str(path)) if top.has("name") else safe_name(path.stem)
    base_raw = top.raw("base")
    if isinstance(base_raw, str):
        base_path = (path.parent / base_raw) if not Path(base_raw).is_absolute() else Path(base_raw)
        base = load_yaml(base_path)
        base_file = str(base_path)
    elif isinstance(base_raw, dict):
        base, base_file = dict(base_raw), str(path)
    else:
        raise top.error("base", "expected a run config: a path, or the run config itself as a mapping")
    params_sec = top.section("parameters")
    if not params_sec.data:
        raise params_sec.error(None, "expected at least one parameter to vary")
    parameters = tuple(_parameter(params_sec, str(p)) for p in params_sec.data)
    params_sec.done()
    sampling = top.string("sampling", "grid", choices=SAMPLINGS)
    samples = top.integer("samples", 0)
    seed = top.integer("seed", 0)
    top.done()
    if sampling == "grid" and any(not p.values for p in parameters):
        raise InputError("a grid needs a list of values for every parameter; use sampling: random or lhs for "
                         "ranges", file=str(path), key="sampling")
    if sampling != "grid" and samples < 1:
        raise InputError(f"sampling: {sampling} needs samples >= 1", file=str(path), key="samples")
    if sampling == "grid" and (size := math.prod(len(p.values) for p in parameters)) > MAX_POINTS:
        raise InputError(f"the grid has {size:,} design points; a sweep has at most {MAX_POINTS:,} (vary fewer "
                         "parameters or values, or sample the space with sampling: lhs)", file=str(path),
                         key="parameters")
    if sampling != "grid" and samples > MAX_POINTS:
        raise InputError(f"expected at most {MAX_POINTS:,} samples, got {samples:,}", file=str(path), key="samples")
    sweep = Sweep(name, base, base_file, parameters, sampling, samples, seed, str(path))
    # fail on a broken base or a parameter path that does not apply, before any work
    try:
        evaluate_point(sweep.base, sweep.base_file, design_points(sweep)[0], check_only=True, sweep_file=str(path))
    except InputError as exc:
        inline = sweep.base_file == str(path)
        raise exc.within(file=sweep.base_file, key_prefix="base" if inline and exc.file is None else None) from None
    return sweep


# ---------------------------------------------------------------- design points


def _sample(p: Parameter, u: float) -> Any:
    """Map u in [0, 1) to the parameter's values (list: by index) or range (linear or log)."""
    if p.values:
        return p.values[min(int(u * len(p.values)), len(p.values) - 1)]
    assert p.low is not None and p.high is not None
    value = float(np.exp(np.log(p.low) + u * (np.log(p.high) - np.log(p.low)))) if p.log else p.low + u * (p.high - p.low)
    return int(round(value)) if p.integer else value


def design_points(sweep: Sweep) -> list[dict[str, Any]]:
    params = sweep.parameters
    if sweep.sampling == "grid":
        return [dict(zip([p.path for p in params], combo, strict=True))
                for combo in itertools.product(*(p.values for p in params))]
    rng = np.random.default_rng(sweep.seed)
    n, d = sweep.samples, len(params)
    if sweep.sampling == "random":
        u = rng.random((n, d))
    else:  # Latin hypercube: one sample in each of n strata per dimension, strata shuffled per dimension
        u = (np.stack([rng.permutation(n) for _ in range(d)], axis=1) + rng.random((n, d))) / n
    return [{p.path: _sample(p, float(u[i, j])) for j, p in enumerate(params)} for i in range(n)]


def point_id(point: dict[str, Any], identity: str = "") -> str:
    """A design point's id: `p` and 12 hex digits (never read back as a number), hashing the point's
    values and the sweep's `identity` (see `sweep_identity`)."""
    text = json.dumps({"base": identity, "point": point}, sort_keys=True, default=str)
    return "p" + hashlib.sha1(text.encode()).hexdigest()[:12]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sweep_identity(sweep: Sweep) -> str:
    """A hash of everything a point's result depends on besides its parameter values: the base run
    config (as written, after YAML parsing), the bytes of every chip, system and trace file it names
    (following `extends:` and a system's `chip:`; chips named by a `systems.*.chip` parameter too),
    and chipsim's version."""
    import chipsim
    from chipsim.config.runconfig import parse_run_config
    from chipsim.hardware.registry import resolve_chip_path
    from chipsim.network.system import resolve_system_path

    files: list[str] = []
    seen: set[Path] = set()

    def add(path: Path) -> dict[str, Any]:
        if path.resolve() in seen:
            return {}
        seen.add(path.resolve())
        files.append(_digest(path.read_bytes()))
        data = load_yaml(path)
        return data

    def chip(name: str, relative_to: Path) -> None:
        path = resolve_chip_path(name, relative_to)
        parent = add(path).get("extends")
        if isinstance(parent, str):
            chip(parent, path)

    def system(name: str, relative_to: Path) -> None:
        path = resolve_system_path(name, relative_to)
        data = add(path)
        if isinstance(data.get("chip"), str):
            chip(data["chip"], path)
        if isinstance(data.get("extends"), str):
            system(data["extends"], path)

    base_file = Path(sweep.base_file)
    try:
        config = parse_run_config(copy.deepcopy(sweep.base), base_file)
        for name in config.chips:
            chip(name, base_file)
        for ref in config.systems:
            system(ref.system, base_file)
            if isinstance(ref.overrides.get("chip"), str):
                chip(ref.overrides["chip"], base_file)
        for p in sweep.parameters:
            if p.path.startswith("systems.") and p.path.endswith(".chip"):
                for value in p.values:
                    if isinstance(value, str):
                        chip(value, base_file)
        for spec in config.workloads:
            if spec.trace is not None:
                files.append(_digest(Path(spec.trace).read_bytes()))
    except (InputError, OSError) as exc:  # load_sweep checked the base; keep the id deterministic anyway
        files.append(f"unreadable: {exc}")
    payload = {"chipsim": getattr(chipsim, "__version__", ""), "base": sweep.base, "files": files}
    return _digest(json.dumps(payload, sort_keys=True, default=str).encode())[:16]


# ---------------------------------------------------------------- evaluating one point


def _nested(path: list[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return out


def _merge_into(target: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = value


def apply_point(base: dict[str, Any], point: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The run config with workload/options/system parameters applied, and chip overrides by name
    ('*': every chip)."""
    config = copy.deepcopy(base)
    chip_overrides: dict[str, dict[str, Any]] = {}
    for path, value in point.items():
        head, *rest = path.split(".")
        if head == "chips":
            name, *keys = rest
            if not keys:
                raise InputError("expected chips.<chip name or *>.<key path>", key=path)
            _merge_into(chip_overrides.setdefault(name, {}), _nested(keys, value))
        elif head == "systems":
            name, *keys = rest
            refs = config.get("systems") or []
            if not isinstance(refs, list):
                refs = [refs]
            hits = [i for i, r in enumerate(refs) if (r if isinstance(r, str) else r.get("name", r.get("system"))) == name
                    or name == "*"]
            if not hits or not keys:
                raise InputError(f"the base run config has no system named '{name}'", key=path)
            for i in hits:
                ref = refs[i] if isinstance(refs[i], dict) else {"system": refs[i]}
                ref = {**ref, "set": copy.deepcopy(ref.get("set", {}))}
                _merge_into(ref["set"], _nested(keys, value))
                refs[i] = ref
            config["systems"] = refs
        elif head == "workload":
            workload = config.get("workload")
            if isinstance(workload, list):
                raise InputError("a sweep varies a run config with one workload", key=path)
            if not isinstance(workload, dict) or rest[:1] != ["params"] or len(rest) < 2:
                raise InputError("expected workload.params.<name>", key=path)
            workload.setdefault("params", {})
            _merge_into(workload["params"], _nested(rest[1:], value))
        else:  # options
            config.setdefault("options", {})
            _merge_into(config["options"], _nested(rest, value))
    return config, chip_overrides


def _blame_parameter(exc: InputError, point: dict[str, Any], sweep_file: str | None) -> InputError:
    """An error about a key the sweep sets is the sweep's: name its file and `parameters.<path>` (with
    the value), not the built-in chip or system YAML the user never wrote."""
    if not exc.key or not sweep_file:
        return exc
    for path, value in point.items():
        head, *rest = path.split(".")
        if exc.file is None and (exc.key == path or exc.key.startswith(path + ".") or path.startswith(exc.key + ".")):
            return InputError(exc.message, file=sweep_file, key=f"parameters.{path}")
        if head in ("chips", "systems") and len(rest) >= 2:
            inner = ".".join(rest[1:])
            names = (inner, f"set.{inner}") if head == "systems" else (inner,)
        elif head == "workload" or head == "options":
            names = (path,)
        else:
            continue
        if any(exc.key == n or exc.key.startswith(n + ".") or exc.key.endswith("." + n) for n in names):
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:80] + "..."
            message = exc.message if repr(value) in exc.message else f"{exc.message} (value {shown})"
            return InputError(message, file=sweep_file, key=f"parameters.{path}")
    return exc


def _one_line(text: str) -> str:
    return " ".join(text.split()) if "\n" in text or "\r" in text else text


def evaluate_point(base: dict[str, Any], base_file: str, point: dict[str, Any],
                   check_only: bool = False, sweep_file: str | None = None,
                   identity: str = "") -> list[dict[str, Any]]:
    """Simulate one design point: a row per (workload, target) with its metrics, or one row with
    the error if the point fails, whatever the exception (a sweep records it and goes on)."""
    from chipsim.api import execute, plan_cases
    from chipsim.config.runconfig import parse_run_config

    pid = point_id(point, identity)
    try:
        data, chip_overrides = apply_point(base, point)
        config = parse_run_config(data, Path(base_file))
        cases = plan_cases(config, chip_overrides=chip_overrides)  # loads, builds and costs: errors first
        if check_only:
            return []
        rows = []
        for case in cases:
            summary = execute(case).summary()
            rows.append({"point": pid, **point, "workload": case.workload.name, "target": case.target,
                         "status": "ok", **{m: summary[m] for m in METRICS}})
        return rows
    except InputError as exc:
        exc = _blame_parameter(exc, point, sweep_file)
        if check_only:
            raise exc from None
        status = f"error: {_one_line(str(exc))}"
    except Exception as exc:  # noqa: BLE001 - any failure of one point is recorded, not fatal
        if check_only:
            raise InputError(f"the first design point fails: {exc.__class__.__name__}: {_one_line(str(exc))}",
                             file=sweep_file, key="parameters") from None
        status = f"error: {exc.__class__.__name__}: {_one_line(str(exc))}"
    return [{"point": pid, **point, "workload": "", "target": "", "status": status,
             **{m: np.nan for m in METRICS}}]


Task = tuple[dict[str, Any], str, dict[str, Any], str, str]  # base, base file, point, sweep file, identity


def _evaluate_task(args: Task) -> list[dict[str, Any]]:
    base, base_file, point, sweep_file, identity = args
    return evaluate_point(base, base_file, point, sweep_file=sweep_file, identity=identity)


# ---------------------------------------------------------------- executors


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        threading.Event().wait(0.5)


def _worker_init(parent: int) -> None:
    """In each pool worker: leave Ctrl-C to the main process (which stops the workers), die with
    SIGTERM's default action, and die when the main process dies, even by SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    linked = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            linked = ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) == 0  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            linked = False
    if os.getppid() != parent:  # the main process died before prctl
        os._exit(1)
    if not linked:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _stop_pool(pool: Any) -> None:
    """Stop a process pool now: pending points cancelled, running ones killed."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=1)
    # let the pool's manager thread see its workers gone and end here, not in the interpreter's exit
    # (a thread still running at exit is joined by threading._shutdown, where a late signal's
    # KeyboardInterrupt is printed as "Exception ignored" after chipsim's own one-line message)
    manager = getattr(pool, "_executor_manager_thread", None)
    if manager is not None:
        manager.join(timeout=5)


def _local(tasks: list[Task], workers: int | None) -> Generator[list[dict[str, Any]], None, None]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = min(workers or os.cpu_count() or 1, len(tasks))
    if workers <= 1:
        yield from (_evaluate_task(t) for t in tasks)
        return
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        futures = [pool.submit(_evaluate_task, t) for t in tasks]
        for future in as_completed(futures):
            yield future.result()
    except BaseException:  # an interrupt, SIGTERM, or the caller stopped early
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def _dask(tasks: list[Task], workers: int | None,
          scheduler: str | None) -> Generator[list[dict[str, Any]], None, None]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise InputError("the dask executor needs dask[distributed]: pip install 'chipsim[dask]'",
                         key="--executor") from None
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            detail = _one_line(str(exc))[:200] or exc.__class__.__name__
            raise InputError(f"cannot reach the Dask scheduler {scheduler!r} within {SCHEDULER_TIMEOUT_S:g} s "
                             f"({detail})", key="--scheduler") from None
    else:
        cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    futures = []
    try:
        futures = client.map(_evaluate_task, tasks, pure=False)
        for future in as_completed(futures):
            yield future.result()
    finally:
        if futures:
            client.cancel(futures)
        client.close()
        if cluster is not None:
            cluster.close()


# ---------------------------------------------------------------- the output folder and the table


class _FolderLock:
    """An exclusive lock on a sweep's output folder (`flock` on `.chipsim-sweep.lock`, holding the
    pid): a second sweep into the same folder fails at once. The kernel drops the lock when its
    process dies, so a killed sweep never leaves a stale lock."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fd: int | None = None

    def __enter__(self) -> _FolderLock:
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock
            return self
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise InputError(f"another chipsim sweep{who} is writing into this folder; wait for it to finish, "
                             "or give another --out", file=str(self.folder), key="--out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _cell(value: Any) -> str:
    """A value as its CSV cell text (what pandas writes; NaN and None: empty)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


Rows = list[dict[str, str]]


class _Found(NamedTuple):
    done: dict[str, Rows]  # point id -> its rows, as cell texts
    foreign: int  # rows of another sweep (other columns), or an unreadable file
    broken: int  # rows cut short or malformed


def _read_table(path: Path, columns: list[str]) -> _Found:
    """Finished points in a results.csv with exactly these columns."""
    try:
        text = path.read_text(encoding="utf-8")
        records = list(csv.reader(io.StringIO(text)))
    except FileNotFoundError:
        return _Found({}, 0, 0)
    except (OSError, UnicodeDecodeError, csv.Error):
        return _Found({}, 1, 0)
    if not records:
        return _Found({}, 0, 0)
    header, body = records[0], records[1:]
    torn = bool(body) and not text.endswith("\n")
    if torn:  # a row cut short by a kill or a full disk: it, and the rows of the point before it, go
        body = body[:-1]
        last = body[-1][0] if body and body[-1] else None
        body = [r for r in body if not r or r[0] != last]
    if header != columns:
        return _Found({}, max(len(body), 1), 0)
    done: dict[str, Rows] = {}
    broken = int(torn)
    for record in body:
        if len(record) != len(columns) or not record[0]:
            broken += 1
            continue
        done.setdefault(record[0], []).append(dict(zip(columns, record, strict=True)))
    return _Found(done, 0, broken)


def _read_partial(path: Path, columns: list[str]) -> _Found:
    """Points finished by an interrupted run (results.partial.jsonl), ignoring a torn last line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _Found({}, 0, 0)
    except (OSError, UnicodeDecodeError):
        return _Found({}, 1, 0)
    lines = text.split("\n")[:-1]  # the piece after the last newline is torn (or empty)
    done: dict[str, Rows] = {}
    foreign, broken = 0, int(bool(text) and not text.endswith("\n"))
    for line in lines:
        try:
            entry = json.loads(line)
            pid, rows = entry["point"], entry["rows"]
            valid = (isinstance(pid, str) and isinstance(rows, list) and bool(rows)
                     and all(isinstance(r, dict) and all(isinstance(v, str) for v in r.values()) for r in rows))
        except (ValueError, TypeError, KeyError):
            valid = False
        if not valid:
            broken += 1
        elif all(list(r) == columns and r["point"] == pid for r in rows):
            done[pid] = rows
        else:
            foreign += 1
    return _Found(done, foreign, broken)


def _frame(done: dict[str, Rows], ids: list[str], columns: list[str]) -> pd.DataFrame:
    """The table in design-point order (then workload, target), parsed from its CSV text: the same
    cells give the same table, whether computed now or read back from a previous run."""
    rows = [row for pid in ids for row in sorted(done[pid], key=lambda r: (r["workload"], r["target"]))]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([row[c] for c in columns] for row in rows)
    buffer.seek(0)
    exact: dict[str, Any] = {"float_precision": "round_trip"} if pd.__version__.startswith(("1.", "2.")) else {}
    return pd.read_csv(buffer, dtype={"point": str}, **exact)  # pandas 3 parses floats exactly by default


def run_sweep(sweep: Sweep, out_dir: Path, executor: str = "local", workers: int | None = None,
              scheduler: str | None = None, progress: Callable[[int, int], None] | None = None,
              note: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Evaluate every design point not already finished in `out_dir`; returns the whole table, sorted by
    design point, and writes results.csv and results.parquet (atomically). `note` hears about
    results in the folder that cannot be reused (default: a logged warning)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _FolderLock(out_dir):
        identity = sweep_identity(sweep)
        points = design_points(sweep)
        ids = [point_id(p, identity) for p in points]
        columns = list(dict.fromkeys(["point", *(p.path for p in sweep.parameters), "workload", "target",
                                      "status", *METRICS]))
        wanted = set(ids)
        previous = _read_table(out_dir / RESULTS, columns)
        partial_found = _read_partial(out_dir / PARTIAL, columns)
        found = {**previous.done, **partial_found.done}
        done = {pid: rows for pid, rows in found.items() if pid in wanted}
        foreign = len(found) - len(done) + previous.foreign + partial_found.foreign
        plan = (f"recomputing all {len(points)} design points" if not done else
                f"reusing {len(done)} finished design points, computing {len(points) - len(done)}")
        if foreign:
            (note or log.warning)(f"{out_dir}: the results there are from another sweep, or from this one before "
                                  f"its base config, chips, systems, workload or chipsim changed; {plan} (the old "
                                  f"{RESULTS} is replaced at the end)")
        elif previous.broken + partial_found.broken:
            (note or log.warning)(f"{out_dir}: ignoring {previous.broken + partial_found.broken} results cut short "
                                  f"by an interrupted run; {plan}")
        partial = out_dir / PARTIAL
        keep = "".join(json.dumps({"point": pid, "rows": done[pid]}) + "\n" for pid in ids
                       if pid in partial_found.done and pid in done)
        if keep or partial.exists():  # drop torn and foreign lines before appending
            from chipsim.atomic import atomic_write

            atomic_write(partial, lambda tmp: tmp.write_text(keep, encoding="utf-8"))
        tasks: list[Task] = [(sweep.base, sweep.base_file, p, sweep.file, identity)
                             for p, pid in zip(points, ids, strict=True) if pid not in done]
        log.info("sweep %s: %d points, %d already done", sweep.name, len(points), len(points) - len(tasks))
        runner = _dask(tasks, workers, scheduler) if executor == "dask" else _local(tasks, workers)
        if progress:
            progress(0, len(tasks))
        try:
            with partial.open("a", encoding="utf-8") as fh:
                for index, rows in enumerate(runner):
                    cells = [{c: _cell(r.get(c)) for c in columns} for r in rows]
                    pid = cells[0]["point"]
                    fh.write(json.dumps({"point": pid, "rows": cells}) + "\n")
                    fh.flush()
                    done[pid] = cells
                    if progress:
                        progress(index + 1, len(tasks))
        finally:
            runner.close()
        table = _frame(done, ids, columns)
        from chipsim.atomic import atomic_write

        atomic_write(out_dir / RESULTS, lambda tmp: table.to_csv(tmp, index=False))
        if parquet_available():
            atomic_write(out_dir / PARQUET, lambda tmp: table.to_parquet(tmp, index=False))
        elif note:
            note("results.parquet not written: Parquet needs pyarrow (pip install 'chipsim[parquet]')")
        partial.unlink(missing_ok=True)
        return table


def parquet_available() -> bool:
    """pyarrow is an optional extra (`chipsim[parquet]`): 170 MB for one file format."""
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def pareto_front(frame: pd.DataFrame, x: str = "latency_s", y: str = "energy_j") -> pd.DataFrame:
    """Rows no other row beats on both x and y (lower is better)."""
    ok = frame.dropna(subset=[x, y]).sort_values([x, y], kind="stable")
    best = np.inf
    keep = []
    for index, value in zip(ok.index, ok[y], strict=True):
        if value < best:
            keep.append(index)
            best = value
    return ok.loc[keep]
