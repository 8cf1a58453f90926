"""Chips x quantization x tensor parallelism for LLM serving: the throughput / interactivity trade-off
of every combination, and its Pareto front (`chipsim serve CONFIG --sweep SPEC`).

- `parse_sweep` reads the option: `key=v1,v2,...` groups separated by `;`, keys `chip`,
  `quantization`, `tp`, `concurrency` (each optional), e.g.
  `chip=h100_sxm,h200_sxm;quantization=none,fp8,int4_awq;tp=1,2;concurrency=1,8,32,128`. Chips and
  quantizations are checked here, before any work.
- `with_hardware` re-resolves a checked `ServingSetup` on another chip, quantization and tensor-parallel
  size: the system (the chip's node when tp > 1), the iteration model and the checks
  `resolve_serving` makes (tp divides the heads and fits a node, the weights fit, the chip has the
  quantization's and the KV cache's formats, the KV cache holds the longest request, the chip runs
  the iteration's kernels). An impossible combination is an InputError.
- `sweep` serves every combination as a closed loop of each concurrency (the setup's lengths, seed and
  engine; `point_requests` requests: 10 per client as a benchmark runs, at most the setup's count,
  at least 2 per client), one row per (combination, concurrency). A combination that cannot run is a
  row with `feasible` False and its `reason`, not an error.
- `pareto_front` marks the feasible points no other point beats on both tokens/s per user
  (1 / mean TPOT: interactivity) and output tokens/s per GPU (throughput); `plot_pareto` draws them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from chipsim.errors import InputError
from chipsim.serving.config import ArrivalSpec, ServingSetup, checked_iteration
from chipsim.serving.engine import BENCHMARK_ROUNDS
from chipsim.serving.profiles import base_profile, for_chip

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from chipsim.hardware.chip import Chip

KEY = "--sweep"
AXES = ("chip", "quantization", "tp", "concurrency")
DEFAULT_CONCURRENCY = (1, 4, 16, 64, 256)
MAX_TP = 64
MAX_CONCURRENCY = 100_000
COLUMNS = ["chip", "quantization", "tp", "gpus", "concurrency", "requests", "output_tokens_per_s_per_gpu",
           "tokens_per_s_per_user", "ttft_p99_s", "tpot_mean_s", "energy_per_output_token_j", "avg_power_w",
           "feasible", "reason", "pareto"]
FIGURES = ("output_tokens_per_s_per_gpu", "tokens_per_s_per_user", "ttft_p99_s", "tpot_mean_s",
           "energy_per_output_token_j", "avg_power_w")
EXAMPLE = "chip=h100_sxm,h200_sxm;quantization=none,fp8,int4_awq;tp=1,2;concurrency=1,8,32,128"
_INTEGER = re.compile(r"[0-9]+")


# ---------------------------------------------------------------- the option


def parse_sweep(text: str, key: str = KEY) -> dict[str, list[Any]]:
    """`chip=h100_sxm,h200_sxm;quantization=none,fp8;tp=1,2;concurrency=1,8` -> {'chip': ['h100_sxm',
    'h200_sxm'], 'quantization': ['none', 'fp8'], 'tp': [1, 2], 'concurrency': [1, 8]}. Quantizations
    are given their canonical names (`awq` -> `int4_awq`); chips (built-in names or YAML paths) must load."""
    from chipsim.hardware.registry import load_chip
    from chipsim.serving.quant import quantization

    grammar = (f"expected key=value,value,... groups separated by ';' with keys {', '.join(AXES)}, "
               f"e.g. {EXAMPLE}")
    groups = [g.strip() for g in text.split(";")]
    if not any(groups):
        raise InputError(f"{grammar}; got {text!r}", key=key)
    out: dict[str, list[Any]] = {}
    for group in groups:
        if not group:
            continue  # a trailing or doubled ';'
        name, sep, values = group.partition("=")
        name = name.strip().lower()
        if not sep:
            raise InputError(f"{grammar}; got {group!r}", key=key)
        if name not in AXES:
            raise InputError(f"unknown sweep key {name!r}; expected one of {', '.join(AXES)}", key=key)
        if name in out:
            raise InputError(f"sweep key {name!r} given twice", key=key)
        items = [v.strip() for v in values.split(",")]
        if any(not v for v in items):
            raise InputError(f"{name}: expected a list of values separated by commas, got {values.strip()!r}",
                             key=key)
        parsed: list[Any] = []
        for item in items:
            if name in ("tp", "concurrency"):
                top = MAX_TP if name == "tp" else MAX_CONCURRENCY
                if not _INTEGER.fullmatch(item) or not 1 <= int(item) <= top:
                    raise InputError(f"{name}: expected whole numbers from 1 to {top:,}, got {item!r}", key=key)
                value: Any = int(item)
            elif name == "quantization":
                try:
                    value = quantization(item).name
                except InputError as exc:
                    raise InputError(f"quantization: {exc.message}", key=key) from None
            else:
                try:
                    load_chip(item)
                except InputError as exc:
                    raise InputError(f"chip: {exc.message}", key=key) from None
                value = item
            if value in parsed:
                raise InputError(f"{name}: {item!r} given twice", key=key)
            parsed.append(value)
        out[name] = parsed
    return out


# ---------------------------------------------------------------- one combination


def with_hardware(setup: ServingSetup, *, chip: Chip | str | None = None, quantization: str | None = None,
                  tp: int | None = None) -> ServingSetup:
    """`setup` on another chip (a Chip, a built-in name or a YAML path), quantization and/or
    tensor-parallel size (None: the setup's own), re-resolved and checked as `resolve_serving` checks a
    config. The system is the setup's when the chip is the same and tp fits its node, else the chip's
    node (`system_for`) when tp > 1. An impossible combination raises InputError (key `chip`,
    `quantization`, `tp` or `kv_cache_dtype`, no file)."""
    from chipsim.hardware.registry import load_chip
    from chipsim.serving.quant import quantization as quant_named

    if chip is None:
        new_chip = setup.chip
    elif isinstance(chip, str):
        try:
            new_chip = load_chip(chip)
        except InputError as exc:
            raise InputError(exc.message, key="chip") from None
    else:
        new_chip = chip
    quant = setup.quant if quantization is None else quant_named(quantization)
    tp = setup.tp if tp is None else int(tp)
    if not 1 <= tp <= MAX_TP:
        raise InputError(f"expected a tensor-parallel size from 1 to {MAX_TP}, got {tp}", key="tp")
    same_chip = new_chip is setup.chip or new_chip.name == setup.chip.name
    system = setup.system if same_chip and setup.system is not None and tp <= setup.system.gpus_per_node else None
    profile = setup.profile
    defaults = base_profile(f"{profile.name} {profile.release}")
    assert defaults is not None  # the profile came from this name
    if profile == for_chip(defaults, setup.chip, setup.tp):  # the release's defaults: the new chip's and tp's
        profile = for_chip(defaults, new_chip, tp)
    iteration = checked_iteration(setup.model, new_chip, system, tp, quant, setup.kv_dtype, profile,
                                  setup.input_lens, setup.output_lens, setup.dp_attention)
    return replace(setup, chip=new_chip, system=iteration.system, tp=tp, quant=quant, profile=profile,
                   iteration=iteration)


def point_requests(requests: int, concurrency: int) -> int:
    """Requests in a closed loop of `concurrency` clients: 10 per client (a benchmark's length), at most
    the setup's count, at least 2 per client."""
    return max(2 * concurrency, min(requests, BENCHMARK_ROUNDS * concurrency))


def closed_loop(setup: ServingSetup, concurrency: int) -> ServingSetup:
    """`setup`'s requests (lengths, seed; a closed config's think time) from `concurrency` clients."""
    think = setup.arrival.think_s if setup.arrival.process == "closed" else 0.0
    return replace(setup, requests=point_requests(setup.requests, concurrency),
                   arrival=ArrivalSpec("closed", concurrency=concurrency, think_s=think))


# ---------------------------------------------------------------- the sweep


def sweep(setup: ServingSetup, axes: Mapping[str, Sequence[Any]],
          progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Every chip x quantization x tp of `axes` (missing axes: the setup's own), served as a closed loop
    at each concurrency (default 1, 4, 16, 64, 256): one row per point, COLUMNS, `pareto` marked.
    `progress(done, total)` after each point."""
    from chipsim.hardware.registry import load_chip
    from chipsim.serving.quant import quantization
    from chipsim.serving.run import run_serving

    unknown = [k for k in axes if k not in AXES]
    if unknown:
        raise InputError(f"unknown sweep key {unknown[0]!r}; expected one of {', '.join(AXES)}", key=KEY)
    chips: list[Chip] = []
    for name in axes.get("chip") or [setup.chip]:
        try:
            found = load_chip(name) if isinstance(name, (str, Path)) else name
        except InputError as exc:
            raise InputError(f"chip: {exc.message}", key=KEY) from None
        if all(c.name != found.name for c in chips):
            chips.append(found)
    quants: list[str] = []
    for q in axes.get("quantization") or [setup.quant.name]:
        try:
            canonical = quantization(str(q)).name
        except InputError as exc:
            raise InputError(f"quantization: {exc.message}", key=KEY) from None
        if canonical not in quants:
            quants.append(canonical)
    tps = list(dict.fromkeys(int(t) for t in axes.get("tp") or [setup.tp]))
    levels = list(dict.fromkeys(int(c) for c in axes.get("concurrency") or DEFAULT_CONCURRENCY))
    for name, values, top in (("tp", tps, MAX_TP), ("concurrency", levels, MAX_CONCURRENCY)):
        if any(not 1 <= v <= top for v in values):
            raise InputError(f"{name}: expected whole numbers from 1 to {top:,}, got {values}", key=KEY)
    total = len(chips) * len(quants) * len(tps) * len(levels)
    rows: list[dict[str, Any]] = []

    def record(chip: Chip, quant: str, tp: int, concurrency: int, requests: int, summary: Mapping[str, Any] | None,
               reason: str = "") -> None:
        row: dict[str, Any] = {"chip": chip.name, "quantization": quant, "tp": tp, "gpus": tp,
                               "concurrency": concurrency, "requests": requests}
        if summary is None:
            row.update({k: math.nan for k in FIGURES})
        else:
            tpot = float(summary["tpot_mean_s"])
            row.update({k: float(summary[k]) for k in FIGURES if k != "tokens_per_s_per_user"})
            row["tokens_per_s_per_user"] = 1.0 / tpot if math.isfinite(tpot) and tpot > 0 else math.nan
        row.update({"feasible": summary is not None, "reason": reason})
        rows.append(row)
        if progress is not None:
            progress(len(rows), total)

    for chip in chips:
        for quant in quants:
            for tp in tps:
                try:
                    variant = with_hardware(setup, chip=chip, quantization=quant, tp=tp)
                except InputError as exc:
                    for c in levels:
                        record(chip, quant, tp, c, 0, None, exc.message)
                    continue
                for c in levels:
                    point = closed_loop(variant, c)
                    try:
                        run = run_serving(point)
                    except InputError as exc:
                        record(chip, quant, tp, c, point.requests, None, exc.message)
                    else:
                        record(chip, quant, tp, c, point.requests, run.summary)
    frame = pd.DataFrame(rows, columns=COLUMNS[:-1])
    return pareto_front(frame)


def pareto_front(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` with `pareto` True on the feasible points that no other feasible point dominates
    in (tokens_per_s_per_user, output_tokens_per_s_per_gpu), both higher-is-better: at least as good
    on both and better on one. Equal points are both on the front; a point without both figures is not."""
    out = frame.copy()
    x = pd.to_numeric(out["tokens_per_s_per_user"], errors="coerce").to_numpy(float)
    y = pd.to_numeric(out["output_tokens_per_s_per_gpu"], errors="coerce").to_numpy(float)
    feasible = out["feasible"].to_numpy(bool) if "feasible" in out else np.ones(len(out), bool)
    ok = feasible & np.isfinite(x) & np.isfinite(y)
    xs, ys = x[ok], y[ok]
    front = np.zeros(len(out), bool)
    for i in np.flatnonzero(ok):
        dominated = (xs >= x[i]) & (ys >= y[i]) & ((xs > x[i]) | (ys > y[i]))
        front[i] = not dominated.any()
    out["pareto"] = front
    return out


# ---------------------------------------------------------------- the table and the plot


def render_sweep(frame: pd.DataFrame) -> str:
    """The feasible points as a table (`*`: on the Pareto front), then each infeasible combination once."""
    feasible = frame[frame["feasible"].astype(bool)]
    lines: list[str] = []
    if len(feasible):
        table = pd.DataFrame({
            "": np.where(feasible["pareto"].astype(bool), "*", ""),
            "chip": feasible["chip"], "quantization": feasible["quantization"], "tp": feasible["tp"],
            "concurrency": feasible["concurrency"],
            "tok/s/GPU": feasible["output_tokens_per_s_per_gpu"].map(lambda v: _fmt(v, 0)),
            "tok/s/user": feasible["tokens_per_s_per_user"].map(lambda v: _fmt(v, 1)),
            "TTFT p99 ms": (feasible["ttft_p99_s"] * 1e3).map(lambda v: _fmt(v, 1)),
            "TPOT ms": (feasible["tpot_mean_s"] * 1e3).map(lambda v: _fmt(v, 2)),
            "J/token": feasible["energy_per_output_token_j"].map(lambda v: _fmt(v, 3)),
            "W/GPU": feasible["avg_power_w"].map(lambda v: _fmt(v, 0)),
        })
        lines.append(table.to_string(index=False))
        lines.append(f"* Pareto front: {int(feasible['pareto'].sum())} of {len(feasible)} points (tok/s/user vs "
                     f"output tok/s/GPU)")
    else:
        lines.append("no feasible point")
    infeasible = frame[~frame["feasible"].astype(bool)].drop_duplicates(["chip", "quantization", "tp", "reason"])
    for r in infeasible.itertuples(index=False):
        lines.append(f"infeasible: {r.chip}, {r.quantization}, tp {r.tp}: {r.reason}")
    return "\n".join(lines)


def _fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def pareto_figure(frame: pd.DataFrame, title: str = "") -> Figure:
    """Output tokens/s per GPU against tokens/s per user: one line per (chip, quantization, tp) over
    its concurrencies (each point labelled with its concurrency), the Pareto front as a thick black step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6.5))  # no pyplot: rendered by Agg whatever the session's backend
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    feasible = frame[frame["feasible"].astype(bool)]
    feasible = feasible[np.isfinite(feasible["tokens_per_s_per_user"].to_numpy(float))
                        & np.isfinite(feasible["output_tokens_per_s_per_gpu"].to_numpy(float))]
    for (chip, quant, tp), group in feasible.groupby(["chip", "quantization", "tp"], sort=False):
        group = group.sort_values("concurrency")
        x, y = group["tokens_per_s_per_user"].to_numpy(float), group["output_tokens_per_s_per_gpu"].to_numpy(float)
        ax.plot(x, y, marker="o", markersize=4, linewidth=1.2, label=f"{chip}, {quant}, tp {tp}")
        for xi, yi, c in zip(x, y, group["concurrency"], strict=True):
            ax.annotate(str(c), (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=6, color="grey")
    front = feasible[feasible["pareto"].astype(bool)].sort_values("tokens_per_s_per_user")
    if len(front):
        ax.step(front["tokens_per_s_per_user"], front["output_tokens_per_s_per_gpu"], where="pre", color="black",
                linewidth=3, alpha=0.6, label="Pareto front", zorder=0)
    if len(feasible):
        x, y = feasible["tokens_per_s_per_user"].to_numpy(float), feasible["output_tokens_per_s_per_gpu"].to_numpy(float)
        for values, scale in ((x, ax.set_xscale), (y, ax.set_yscale)):
            if values.min() > 0 and values.max() / values.min() > 20:
                scale("log")
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no feasible point", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("tokens/s per user (1 / mean TPOT)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or "throughput vs interactivity (points: concurrency)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_pareto(frame: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """`pareto_figure` written as a PNG at `path`, atomically (a temporary file renamed over it)."""
    from chipsim.atomic import atomic_write

    fig = pareto_figure(frame, title)
    return atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"), "the Pareto plot")
