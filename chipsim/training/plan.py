"""Choosing a Megatron-Core layout for a training run (`chipsim plan`).

Every layout of a model on ``gpus`` GPUs with a given global batch and sequence length is
enumerated, checked as Megatron-Core checks it (:func:`chipsim.models.resolve_layout`), sized in
memory (:func:`chipsim.models.memory_per_gpu`, flash attention, the distributed optimizer) and, when
it fits the chip's HBM, simulated (:func:`chipsim.training.simulate_training`). The table ranks the
feasible layouts by tokens per second per GPU.

Search space (Megatron-Core, ``zero=1``, sequence parallelism on, even pipeline stages):

* tp: divisors of the GPUs per node up to 8 (tensor parallelism stays inside a node);
* pp: divisors of the GPUs up to 64 (and the layer count); vp (interleaving): 1, 2, 4, 8 while every
  chunk keeps a layer, when pp > 1, and only with micro-batches divisible by pp (Megatron's
  interleaved schedule needs it); layers that do not divide over the chunks are split as
  Megatron-Core balances them (`Layout.balanced`);
* cp: 1, or 1, 2, 4 when seq >= 8192; ep (MoE models): divisors of the expert count that divide
  tp*cp*dp; micro_batch: 1, 2, 4; dp: what remains;
* recompute: 'none'; when that does not fit, 'selective', then 'full'. A layout that fits with none
  of them is kept as infeasible, with its overflow under 'full' recompute, and is not simulated.

Each layout's pieces (a layer's kernels forward and backward, embedding, head, optimizer) are simulated
by the event engine and shared with the other layouts of the same shapes; its pipeline schedule is
list-scheduled (`simulate_training(..., screen=True)`: the same ops and dependencies, no contention
between a stage's sends and its data-parallel sync) and the best `ENGINE_TOP` layouts are simulated
again by the engine (column `schedule`: "engine" or "screen"). The layouts are spread over a local
process pool or a Dask cluster.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from chipsim.errors import InputError
from chipsim.models.layout import Layout, resolve_layout
from chipsim.models.memory import GB, MemoryBreakdown, check_fits, memory_per_gpu
from chipsim.models.zoo import ModelConfig
from chipsim.network.system import System

MAX_TP = 8
MAX_PP = 64
MAX_VP = 8
CP_MIN_SEQ = 8192  # context parallelism is tried from this sequence length on
CP_SIZES = (1, 2, 4)
MICRO_BATCHES = (1, 2, 4)
RECOMPUTE_ORDER = ("none", "selective", "full")
BREAKDOWN = ("compute", "exposed_tp", "exposed_cp", "exposed_ep", "pp_bubble", "exposed_dp", "optimizer")
COLUMNS = ["tp", "pp", "vp", "cp", "ep", "dp", "micro_batch", "recompute", "fits", "memory_gb", "overflow",
           "step_s", "tokens_per_s_per_gpu", "mfu", *(f"{k}_s" for k in BREAKDOWN), "schedule"]
# layouts are ranked by their list-scheduled step (`simulate_training(..., screen=True)`, within 0.01% of the
# engine on Llama-3-70B's 1,024-GPU layouts); the best this many are simulated by the engine again
ENGINE_TOP = 10
SERIAL_BELOW = 24  # fewer layouts than this to simulate: no process pool (its start costs more)
BATCH = 4  # layouts per task sent to a worker

Progress = Callable[[int, int], None]


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass
class Candidates:
    """The layouts that pass Megatron-Core's rules (recompute 'none'), and the rejected ones counted
    by reason (the offending layout size, with one example message each)."""

    layouts: list[Layout] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.layouts) + sum(self.rejected.values())

    def reject(self, key: str, message: str) -> None:
        self.rejected[key] += 1
        self.examples.setdefault(key, message)


def candidate_layouts(model: ModelConfig, gpus: int, global_batch: int, seq: int,
                      gpus_per_node: int) -> Candidates:
    """Every Megatron-Core layout of ``model`` on ``gpus`` GPUs (see the module notes), each
    through :func:`resolve_layout`; the ones it refuses (and interleaved layouts whose micro-batches
    do not divide by pp) are counted by reason, not returned."""
    out = Candidates()
    tps = [t for t in divisors(gpus_per_node) if t <= MAX_TP and gpus % t == 0]
    # layers that do not divide over the stages split as Megatron-Core balances them (Layout.balanced)
    pps = [p for p in divisors(gpus) if p <= min(MAX_PP, model.layers)]
    cps = CP_SIZES if seq >= CP_MIN_SEQ else (1,)
    for tp, pp, cp in itertools.product(tps, pps, cps):
        if gpus % (tp * pp * cp):
            continue
        dp = gpus // (tp * pp * cp)
        eps = [e for e in divisors(model.experts) if (tp * cp * dp) % e == 0] if model.is_moe else [1]
        vps = [1] if pp == 1 else [v for v in (1, 2, 4, 8) if v <= MAX_VP and pp * v <= model.layers]
        for ep, vp, mb in itertools.product(eps, vps, MICRO_BATCHES):
            try:
                layout = resolve_layout(model, gpus, tp=tp, pp=pp, vp=vp, cp=cp, ep=ep, dp=dp, micro_batch=mb,
                                        global_batch=global_batch, seq=seq, zero=1, recompute="none")
            except InputError as exc:
                out.reject(exc.key or "layout", exc.message)
                continue
            if vp > 1 and layout.num_microbatches % pp:
                out.reject("vp", f"the interleaved schedule needs micro-batches ({layout.num_microbatches}) "
                                 f"divisible by pp ({pp})")
                continue
            out.layouts.append(layout)
    return out


def _overflow(memory: MemoryBreakdown, hbm_bytes: float) -> str:
    try:
        check_fits(memory, hbm_bytes)
    except InputError as exc:
        return exc.message
    return ""


def fit_memory(model: ModelConfig, layout: Layout, precision: str,
               hbm_bytes: float) -> tuple[Layout, MemoryBreakdown, bool]:
    """The layout with the lightest recomputation that fits ``hbm_bytes`` per GPU (none, selective,
    full), its memory and True; or the 'full' recompute layout, its memory and False."""
    memory: MemoryBreakdown | None = None
    for mode in RECOMPUTE_ORDER:
        layout = replace(layout, recompute=mode)
        memory = memory_per_gpu(model, layout, precision, flash_attention=True)
        if memory.total <= hbm_bytes:
            return layout, memory, True
    assert memory is not None
    return layout, memory, False


def _row(layout: Layout, memory: MemoryBreakdown, fits: bool, overflow: str) -> dict[str, Any]:
    return {"tp": layout.tp, "pp": layout.pp, "vp": layout.vp, "cp": layout.cp, "ep": layout.ep, "dp": layout.dp,
            "micro_batch": layout.micro_batch, "recompute": layout.recompute, "fits": fits,
            "memory_gb": memory.total / GB, "overflow": overflow, "step_s": math.nan,
            "tokens_per_s_per_gpu": math.nan, "mfu": math.nan, **{f"{k}_s": math.nan for k in BREAKDOWN},
            "schedule": "screen" if fits else ""}


# ---------------------------------------------------------------- simulating (in worker processes)


def _schedule_ops(layout: Layout) -> int:
    """What a layout's simulation time follows: its schedule's forward and backward ops."""
    return layout.pp * layout.vp * layout.num_microbatches

Task = tuple[ModelConfig, System, str, list[Layout]]
Outcome = tuple[dict[str, float], str]  # the figures, or an error message


# simulated pieces, per (model, system, precision), kept for the process's next layouts: most layouts of a
# search share their layers' shapes (tp, cp, ep, micro-batch, recompute) and differ in pp, vp and dp
_PIECE_CACHES: dict[tuple[str, str, str], dict[Any, Any]] = {}


def _simulate_batch(task: Task, screen: bool = True) -> list[Outcome]:
    from chipsim.training.step import simulate_training

    model, system, precision, layouts = task
    key = (repr(model), repr(system), precision)
    if key not in _PIECE_CACHES:
        _PIECE_CACHES.clear()  # one search at a time
        _PIECE_CACHES[key] = {}
    out: list[Outcome] = []
    for layout in layouts:
        try:
            r = simulate_training(model, layout, system, precision, screen=screen, piece_cache=_PIECE_CACHES[key])
        except InputError as exc:
            out.append(({}, f"{exc.key or 'layout'}: {exc.message}"))
            continue
        out.append(({"step_s": r.step_s, "tokens_per_s_per_gpu": r.tokens_per_s_per_gpu, "mfu": r.mfu,
                     **{f"{k}_s": r.breakdown[k] for k in BREAKDOWN}}, ""))
    return out


def _local(tasks: list[Task], workers: int | None) -> Generator[tuple[int, list[Outcome]], None, None]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from chipsim.study.sweep import _stop_pool, _worker_init

    workers = min(workers or os.cpu_count() or 1, len(tasks))
    if workers <= 1 or sum(len(t[3]) for t in tasks) < SERIAL_BELOW:
        yield from ((i, _simulate_batch(t)) for i, t in enumerate(tasks))
        return
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(_simulate_batch, t): i for i, t in enumerate(tasks)}
        for future in as_completed(futures):
            yield futures[future], future.result()
    except BaseException:  # an interrupt, SIGTERM, or the caller stopped early
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def _dask(tasks: list[Task], workers: int | None) -> Generator[tuple[int, list[Outcome]], None, None]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise InputError("the dask executor needs dask[distributed]: pip install dask[distributed]",
                         key="--executor") from None
    cluster = LocalCluster(n_workers=workers or min(4, os.cpu_count() or 1), threads_per_worker=1,
                           processes=True, dashboard_address=None)
    client = Client(cluster)
    futures: list[Any] = []
    try:
        futures = client.map(_simulate_batch, tasks, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        for future in as_completed(futures):
            yield index[future.key], future.result()
    finally:
        if futures:
            client.cancel(futures)
        client.close()
        cluster.close()


# ---------------------------------------------------------------- the plan


def plan_layouts(model: ModelConfig, system: System, gpus: int, global_batch: int, seq: int,
                 precision: str = "bf16", *, executor: str = "local", workers: int | None = None,
                 candidates: Candidates | None = None,
                 progress: Progress | None = None) -> pd.DataFrame:
    """One row per valid layout (columns :data:`COLUMNS`): feasible ones simulated and ranked first by
    tokens/s/GPU (best first), then the ones that do not fit the chip's HBM, least memory first, with
    what overflows in ``overflow``. ``system`` must hold ``gpus`` GPUs. The frame's ``attrs`` hold
    the candidate count, the rejected layouts by reason (``rejected``, ``rejected_examples``) and the
    simulations that failed (``failed``). ``progress(done, total)`` hears of each simulated layout."""
    if gpus > system.world:
        raise InputError(f"{gpus:,} GPUs asked; system '{system.name}' has {system.world:,}", key="gpus")
    if executor not in ("local", "dask"):
        raise InputError(f"expected executor local or dask, got {executor!r}", key="executor")
    found = candidates or candidate_layouts(model, gpus, global_batch, seq, system.gpus_per_node)
    hbm = system.chip.hbm.capacity_bytes
    rows: list[dict[str, Any]] = []
    todo: list[tuple[int, Layout]] = []  # (row index, layout) of the layouts that fit
    for base in found.layouts:
        layout, memory, fits = fit_memory(model, base, precision, hbm)
        rows.append(_row(layout, memory, fits, "" if fits else _overflow(memory, hbm)))
        if fits:
            todo.append((len(rows) - 1, layout))
    # the longest first (a simulation's time follows its schedule's ops), so that no worker is left
    # with a long one at the end
    todo.sort(key=lambda item: -_schedule_ops(item[1]))
    batches = [todo[i:i + BATCH] for i in range(0, len(todo), BATCH)]
    tasks: list[Task] = [(model, system, precision, [layout for _, layout in b]) for b in batches]
    failed: Counter[str] = Counter()
    done = 0
    if progress:
        progress(0, len(todo))
    if tasks:
        runner = _dask(tasks, workers) if executor == "dask" else _local(tasks, workers)
        try:
            for index, outcomes in runner:
                for (row, _), (figures, error) in zip(batches[index], outcomes, strict=True):
                    if error:
                        failed[error] += 1
                        rows[row]["overflow"] = error
                        rows[row]["fits"] = False
                    rows[row].update(figures)
                done += len(outcomes)
                if progress:
                    progress(done, len(todo))
        finally:
            runner.close()
    # the best layouts by the screen again, their schedules simulated by the engine (with contention)
    screened = sorted((i for i, _ in todo if rows[i]["fits"]), key=lambda i: -rows[i]["tokens_per_s_per_gpu"])
    top = set(screened[:ENGINE_TOP])
    best = [(i, layout) for i, layout in todo if i in top]
    again = _simulate_batch((model, system, precision, [layout for _, layout in best]), screen=False)
    for (row, _), (figures, error) in zip(best, again, strict=True):
        if not error:
            rows[row].update(figures, schedule="engine")
    table = pd.DataFrame(rows, columns=COLUMNS)
    if len(table):
        table["fits"] = table["fits"].astype(bool)
        ranked = table[table["fits"]].sort_values(["tokens_per_s_per_gpu", "tp", "pp", "vp", "cp", "ep", "micro_batch"],
                                                  ascending=[False, True, True, True, True, True, True], kind="stable")
        rest = table[~table["fits"]].sort_values(["memory_gb", "tp", "pp", "vp", "cp", "ep", "micro_batch"],
                                                 kind="stable")
        table = pd.concat([ranked, rest]).reset_index(drop=True)
    table.attrs.update(candidates=found.total, rejected=dict(found.rejected.most_common()),
                       rejected_examples=dict(found.examples), failed=dict(failed))
    return table


def layout_label(row: Any) -> str:
    """'tp8 pp4 vp2 cp1 ep1 dp32 mb1 recompute none' of a table row."""
    return (f"tp{row['tp']} pp{row['pp']} vp{row['vp']} cp{row['cp']} ep{row['ep']} dp{row['dp']} "
            f"mb{row['micro_batch']} recompute {row['recompute']}")


def format_table(table: pd.DataFrame, top: int) -> str:
    """The first ``top`` feasible rows as text."""
    shown = table[table["fits"]].head(top)
    if shown.empty:
        return ""
    out = pd.DataFrame({
        "tp": shown["tp"], "pp": shown["pp"], "vp": shown["vp"], "cp": shown["cp"], "ep": shown["ep"],
        "dp": shown["dp"], "mb": shown["micro_batch"], "recompute": shown["recompute"],
        "memory": shown["memory_gb"].map("{:.1f} GB".format),
        "tokens/s/GPU": shown["tokens_per_s_per_gpu"].map("{:,.0f}".format),
        "MFU": shown["mfu"].map("{:.1%}".format),
        "step": shown["step_s"].map("{:.3f} s".format),
        **{name: shown[f"{k}_s"].map("{:.3f}".format) for k, name in
           zip(BREAKDOWN, ("compute", "exp.TP", "exp.CP", "exp.EP", "bubble", "exp.DP", "optim"), strict=True)},
    })
    out.index = range(1, len(out) + 1)
    return out.to_string()


def summary_lines(table: pd.DataFrame) -> list[str]:
    """How many layouts were tried, fit, overflowed and were refused (the top reasons)."""
    attrs = table.attrs
    fits = int(table["fits"].sum()) if len(table) else 0
    rejected: dict[str, int] = attrs.get("rejected", {})
    engine = int((table["schedule"] == "engine").sum()) if len(table) else 0
    lines = [f"{attrs.get('candidates', len(table)):,} candidate layouts: {len(table):,} valid, {fits:,} fit in "
             f"memory (simulated: pipeline schedules list-scheduled, the best {engine} again on the event engine), "
             f"{len(table) - fits:,} infeasible by memory, {sum(rejected.values()):,} rejected by layout rules"]
    examples = attrs.get("rejected_examples", {})
    for key, count in list(rejected.items())[:3]:
        lines.append(f"  {count:,} rejected on {key} (e.g. {examples.get(key, '')})")
    for message, count in list(attrs.get("failed", {}).items())[:3]:
        lines.append(f"  {count:,} not simulated: {message}")
    return lines
