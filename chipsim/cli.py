"""`chipsim` command line: argument parsing and wiring only."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chipsim import __version__, vocab
from chipsim.errors import InputError

log = logging.getLogger("chipsim")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- chipsim run


def resolve_run_config(name_or_path: str) -> Path:
    """A run config path, or the name of an example shipped with chipsim (`chipsim run quickstart`)."""
    from chipsim import examples
    from chipsim.config.loader import resolve_yaml

    path = Path(name_or_path)
    if path.exists() or "/" in name_or_path or path.suffix in (".yaml", ".yml"):
        return path  # a file (load_run_config says what is wrong with it)
    try:
        return resolve_yaml(name_or_path, examples.path("runs"), "example run config")
    except InputError as exc:
        raise InputError(exc.message, key="CONFIG") from None


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from chipsim import api
    from chipsim.config.runconfig import RunConfig, WorkloadSpec, load_run_config
    from chipsim.report import strict_json
    from chipsim.report.files import write_run_outputs
    from chipsim.report.tables import render

    if args.config:
        config = load_run_config(resolve_run_config(args.config))
        if args.workload:
            config = replace(config, workloads=(WorkloadSpec(trace=Path(args.workload)),))
    elif args.workload and args.chip:
        config = RunConfig(Path(args.workload).stem.removesuffix(".json"), tuple(args.chip),
                           (WorkloadSpec(trace=Path(args.workload)),))
    else:
        raise InputError("give a run config (chipsim run CONFIG.yaml), or --workload FILE with --chip NAME")
    if args.launch:
        config = replace(config, launch=args.launch)
    if args.sustained:
        config = replace(config, sustained=True)
    from chipsim.config.runconfig import safe_name
    from chipsim.report.files import check_out_dir, interrupt_on_sigterm, restore_sigterm

    out_dir = Path(args.out) if args.out else Path("results") / safe_name(config.name)
    reports = [r for r in config.report if r != "table"]
    if reports and not args.no_files:
        check_out_dir(out_dir, "--out")  # before any work: a folder we can create and write into
    previous_sigterm = interrupt_on_sigterm()  # SIGTERM cleans up like Ctrl-C

    def progress(index: int, total: int, what: str) -> None:
        if not args.json:
            _stderr(f"[{index + 1}/{total}] simulating {what} ...")

    if config.parallelism is not None:
        code = _run_training(args, config, out_dir, reports, progress)
        restore_sigterm(previous_sigterm)
        return code
    if config.serving is not None:
        for option, given in (("--chip", args.chip), ("--workload", args.workload), ("--launch", args.launch),
                              ("--sustained", args.sustained)):
            if given:
                raise InputError(f"{option} does not apply to a serving run: the `serving:` section says what runs",
                                 key=option)
        from chipsim.serving.config import resolve_serving

        setup = resolve_serving(config)
        code = _serve(setup, out_dir if reports and not args.no_files else None, reports, args.json)
        restore_sigterm(previous_sigterm)
        return code
    targets = api.load_targets(config, args.chip or None)
    results = api.run(config, args.chip or None, progress)
    if args.json:
        print(strict_json.dumps({"runs": [r.to_json() for r in results]}))
    else:
        print(render(results))
    if reports and not args.no_files:
        written = write_run_outputs(results, {t.chip.name: t.chip for t in targets}, out_dir, reports)
        if not args.json:
            _stderr(f"wrote {len(written)} files to {out_dir}/")
    restore_sigterm(previous_sigterm)
    return 0


def _run_training(args: argparse.Namespace, config: Any, out_dir: Path, reports: list[str], progress: Any) -> int:
    """`chipsim run` on a config with `parallelism:`: a training step on each system."""
    import pandas as pd

    from chipsim.report import strict_json
    from chipsim.report.files import write_training_outputs
    from chipsim.training.run import run_training

    if args.chip:
        raise InputError("--chip does not apply to a training run: the layout runs on the config's systems",
                         key="--chip")
    results = run_training(config, progress)
    if args.json:
        print(strict_json.dumps({"training": [r.summary() for r in results]}))
    else:
        table = pd.DataFrame([r.summary() for r in results]).drop(columns=["model"])
        print(f"{results[0].model}, {results[0].precision}:")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        for r in results:
            print(f"  {r.system}: {r.folded}")
    if reports and not args.no_files:
        written = write_training_outputs(results, out_dir, reports)
        if not args.json:
            _stderr(f"wrote {len(written)} files to {out_dir}/")
    return 0


# ---------------------------------------------------------------- chipsim serve


def cmd_serve(args: argparse.Namespace) -> int:
    from chipsim.config.runconfig import load_run_config
    from chipsim.report.files import check_out_dir, sigterm_as_interrupt
    from chipsim.serving.capacity import parse_slo
    from chipsim.serving.config import resolve_serving

    slo = parse_slo(args.slo) if args.slo is not None else None  # everything checked before any work
    axes = None
    if args.sweep is not None:
        from chipsim.serving.pareto import parse_sweep

        if args.find_capacity or slo is not None:
            raise InputError(f"--sweep cannot be combined with {'--find-capacity' if args.find_capacity else '--slo'}",
                             key="--sweep")
        axes = parse_sweep(args.sweep)
    if args.find_capacity and slo is None:
        raise InputError("--find-capacity needs the SLOs to meet, e.g. --slo ttft_p99=500ms,tpot_p99=50ms",
                         key="--slo")
    path = resolve_run_config(args.config)
    config = load_run_config(path)
    if config.serving is None:
        raise InputError("this run config has no `serving:` section (chipsim run runs it)", file=str(path),
                         key="serving")
    setup = resolve_serving(config)
    if axes is not None and setup.disagg is not None:
        raise InputError("--sweep varies one engine instance's chip, quantization and tp (closed loops); this "
                         "config's `serving.disaggregation` splits prefill and decode: leave one of them out",
                         file=str(path), key="--sweep")
    out_dir = Path(args.out) if args.out else None
    reports = ["csv", "plots"] + (["timeline"] if "timeline" in config.report else [])
    if out_dir is not None:
        check_out_dir(out_dir, "--out")
    with sigterm_as_interrupt():
        if axes is not None:
            return _serve_sweep(setup, axes, out_dir, args.json)
        return _serve(setup, out_dir, reports, args.json, slo, args.find_capacity)


def _serve_sweep(setup: Any, axes: dict[str, list[Any]], out_dir: Path | None, as_json: bool) -> int:
    """`chipsim serve --sweep`: every chip x quantization x tp at each concurrency; the table (`*`: the
    Pareto front) or `{"sweep": [rows]}`, and pareto.csv / pareto.png into `out_dir`."""
    from tqdm import tqdm

    from chipsim.report import strict_json
    from chipsim.report.files import write_staged
    from chipsim.serving.pareto import plot_pareto, render_sweep, sweep

    bar = tqdm(desc="sweep", unit="point", file=sys.stderr, disable=not (sys.stderr.isatty() and not as_json),
               leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        frame = sweep(setup, axes, progress)
    finally:
        bar.close()
    frame = frame.sort_values(["chip", "quantization", "tp", "concurrency"], kind="stable").reset_index(drop=True)
    if as_json:
        print(strict_json.dumps({"sweep": frame.to_dict("records")}))
    else:
        print(f"{setup.model.model_id}, {setup.profile.name}, KV cache {setup.kv_dtype}: closed loops, lengths "
              f"{setup.lengths_label}\n")
        print(render_sweep(frame))
    if out_dir is not None:
        title = f"{setup.model.model_id}, {setup.profile.name}: output tok/s per GPU vs tok/s per user"
        written = write_staged(out_dir, {"pareto.csv": lambda p: frame.to_csv(p, index=False),
                                         "pareto.png": lambda p: plot_pareto(frame, p, title)})
        if not as_json:
            _stderr(f"wrote {len(written)} files to {out_dir}/")
    return 0


def _serve(setup: Any, out_dir: Path | None, reports: Sequence[str], as_json: bool,
           slo: dict[str, float] | None = None, find: bool = False) -> int:
    """Run a resolved serving setup (or find its capacity under `slo`), print the table or the JSON
    object, and write `reports` into `out_dir` (none when None)."""
    from chipsim.report import strict_json
    from chipsim.report.files import write_staged
    from chipsim.serving.capacity import find_capacity, violations
    from chipsim.serving.report import output_writers, render_summary
    from chipsim.serving.run import run_serving

    tty = sys.stderr.isatty() and not as_json
    payload: dict[str, Any] = {}
    lines: list[str] = []
    code = 0
    if find:
        assert slo is not None
        capacity = find_capacity(setup, slo, _stderr if tty else None)
        payload["capacity"] = capacity.to_json()
        slo_text = ", ".join(f"{k} <= {v * 1e3:.4g} ms" for k, v in slo.items())
        if capacity.run is None:
            lines.append(f"capacity: no rate meets {slo_text}: even {capacity.probes[-1].rate:.4g} req/s misses "
                         f"({'; '.join(capacity.probes[-1].missed)})")
            code = 1
        else:
            bound = " (the engine's saturation rate: throughput-bound)" if capacity.throughput_bound else ""
            lines.append(f"capacity: {capacity.rate:.4g} req/s{bound} meets {slo_text} "
                         f"({len(capacity.probes)} runs; saturation {capacity.saturation_rate:.4g} req/s)")
        run = capacity.run
    else:
        from tqdm import tqdm

        bar = tqdm(total=setup.requests, desc=f"serving {setup.requests:,} requests", unit="req", file=sys.stderr,
                   disable=not tty, leave=False)

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        try:
            run = run_serving(setup, progress, log=out_dir is not None and "timeline" in reports)
        finally:
            bar.close()
        if slo:
            missed = violations(run.summary, slo)
            payload["slo"] = {"slo_s": slo, "meets": not missed, "missed": missed}
            lines.append("SLO: " + ("met" if not missed else "missed: " + "; ".join(missed)))
            code = 0 if not missed else 1
    if run is not None:
        payload["serving"] = run.summary
    if as_json:
        print(strict_json.dumps(payload))
    else:
        if run is not None:
            print(render_summary(run.summary))
        if lines:
            print("\n".join(lines))
    if out_dir is not None and run is not None:
        writers = output_writers(run, reports, slo)
        if writers:
            written = write_staged(out_dir, writers)
            if not as_json:
                _stderr(f"wrote {len(written)} files to {out_dir}/")
    return code


# ---------------------------------------------------------------- chipsim chips / workloads


def cmd_chips(args: argparse.Namespace) -> int:
    from chipsim.config.units import format_si
    from chipsim.hardware.registry import builtin_chip_names, load_chip

    if args.action == "show":
        if not args.name:
            raise InputError("usage: chipsim chips show NAME")
        chip = load_chip(args.name)
        print(json.dumps(chip.to_dict(), indent=2, default=str))
        return 0
    rows = []
    for name in builtin_chip_names():
        chip = load_chip(name)
        rows.append(f"{name:<11} {format_si(chip.peak('bf16'), 'FLOP/s'):>14} bf16  "
                    f"{format_si(chip.hbm.bandwidth_bytes_per_s, 'B/s'):>11}  "
                    f"{chip.hbm.capacity_bytes / 1e9:>4.0f} GB  {chip.power.limit_w:>5.0f} W  {chip.description}")
    print("\n".join(rows))
    return 0


def cmd_systems(args: argparse.Namespace) -> int:
    from chipsim.config.units import format_si
    from chipsim.network.system import builtin_system_names, load_system

    if args.action == "show":
        if not args.name:
            raise InputError("usage: chipsim systems show NAME")
        system = load_system(args.name)
        from dataclasses import asdict

        data = asdict(system)
        data["chip"] = system.chip.name
        print(json.dumps(data, indent=2, default=str))
        return 0
    for name in builtin_system_names():
        s = load_system(name)
        fabric = f"{s.fabric.kind} {format_si(s.fabric.bandwidth_bytes_per_s, 'B/s')}"
        net = (f", {s.scale_out.nics_per_node} x {format_si(s.scale_out.nic_bandwidth_bytes_per_s, 'B/s')} NICs, "
               f"fat tree ({s.routing})") if s.scale_out else ""
        print(f"{name:<27} {s.world:>5} x {s.chip.name:<9} {fabric}{net}")
    return 0


def cmd_workloads(args: argparse.Namespace) -> int:
    from chipsim.workload.generators import describe_generators

    for name, info in describe_generators().items():
        print(f"{name}: {info['description']}")
        for pname, p in info["params"].items():
            print(f"    {pname} = {p['default']!r}: {p['doc']}")
    return 0


def cmd_examples(args: argparse.Namespace) -> int:
    from chipsim import examples

    if args.action == "copy":
        if not args.dest:
            raise InputError("usage: chipsim examples copy DIR")
        written = examples.copy(Path(args.dest))
        print(f"copied {len(written)} example files to {args.dest}/ (runs/, sweeps/, workloads/, whatif/, "
              f"measurements/); try: chipsim run {Path(args.dest) / 'runs' / 'quickstart.yaml'}")
        return 0
    for name in examples.run_names():
        text = examples.path("runs", f"{name}.yaml").read_text(encoding="utf-8")
        question = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
        print(f"{name:<28} {question}")
    return 0


# ---------------------------------------------------------------- chipsim trace import


def cmd_trace(args: argparse.Namespace) -> int:
    from chipsim.workload.importers import import_trace
    from chipsim.workload.io import save_workload

    if args.steps is not None and args.steps < 1:
        raise InputError(f"expected a positive number of steps, got {args.steps}", key="--steps")
    from chipsim.atomic import check_destination

    check_destination(Path(args.output))  # an unwritable output is an error before the import
    workload, lines = import_trace(Path(args.trace), args.steps, world=args.world)
    save_workload(workload, Path(args.output))
    for line in lines:
        print(line)
    print(f"wrote {len(workload.ops)} ops to {args.output}")
    return 0


def cmd_trace_export(args: argparse.Namespace) -> int:
    from chipsim.workload.exporters import export_chakra
    from chipsim.workload.io import load_workload

    if args.ranks is not None and args.ranks < 1:
        raise InputError(f"expected a positive number of ranks, got {args.ranks}", key="--ranks")
    workload = load_workload(Path(args.workload))
    durations = None
    if args.chip:
        from chipsim.api import load_chips
        from chipsim.engine.sim import simulate

        result = simulate(workload, load_chips([args.chip], key="--chip")[0])
        durations = {r.id: r.end_s - r.start_s for r in result.records}
    written = export_chakra(workload, Path(args.output), args.ranks, durations)
    traces = [p for p in written if p.suffix == ".et"]
    prefix = str(traces[0])[: -len(".0.et")]
    print(f"wrote {len(traces)} Chakra traces: {prefix}.{{0..{len(traces) - 1}}}.et"
          + (f" (durations simulated on {args.chip})" if args.chip else ""))
    for path in written:
        if path.suffix == ".json":
            print(f"communicators: {path} (ASTRA-sim --comm-group-configuration)")
    print(f"ASTRA-sim: --workload-configuration={prefix}")
    return 0


# ---------------------------------------------------------------- chipsim sweep


def cmd_sweep(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from tqdm import tqdm

    from chipsim.atomic import atomic_write
    from chipsim.report import strict_json
    from chipsim.report.files import check_out_dir, sigterm_as_interrupt
    from chipsim.report.plots import plot_pareto, plot_sweep_metrics
    from chipsim.study.sweep import design_points, load_sweep, pareto_front, run_sweep

    if args.workers is not None and args.workers < 1:
        raise InputError(f"expected at least 1 worker, got {args.workers}", key="--workers")
    sweep = load_sweep(args.sweep)  # bad input, a bad parameter or too many design points: exit 2 here
    out_dir = Path(args.out) if args.out else Path("results") / f"sweep_{sweep.name}"
    check_out_dir(out_dir, "--out")
    total = len(design_points(sweep))
    with sigterm_as_interrupt():  # SIGTERM stops the workers and exits like Ctrl-C
        bar = tqdm(total=total, desc=f"sweep {sweep.name}", unit="point", file=sys.stderr, disable=args.json)

        def progress(done: int, todo: int) -> None:
            bar.update(total - todo if done == 0 else 1)  # first call: the points already done (resumed)

        def note(message: str) -> None:
            tqdm.write(f"chipsim: {message}", file=sys.stderr)

        try:
            table = run_sweep(sweep, out_dir, args.executor, args.workers, args.scheduler, progress, note)
        finally:
            bar.close()
        params = [p.path for p in sweep.parameters]
        metrics = ["latency_s", "energy_j", "avg_power_w"]
        front = pareto_front(table)
        for name, fig in (("metrics.png", plot_sweep_metrics(table, params, metrics)),
                          ("pareto.png", plot_pareto(table, front))):
            def save(tmp: Path, fig: Figure = fig) -> None:
                fig.savefig(tmp, dpi=100, format="png")

            atomic_write(out_dir / name, save)
            plt.close(fig)
    failed = int((table["status"] != "ok").sum())
    if args.json:
        print(strict_json.dumps({"points": total, "rows": len(table), "failed": failed, "out": str(out_dir),
                          "pareto": front[["point", *params, "workload", "target", "latency_s", "energy_j"]]
                          .to_dict("records")}, default=str))
        return 0
    from chipsim.study.sweep import parquet_available

    tables = "results.csv and .parquet" if parquet_available() else "results.csv"
    print(f"{total} design points, {len(table)} rows ({failed} failed) in {out_dir}/{tables}")
    print("Pareto front (latency vs energy):")
    print(front[[*params, "workload", "target", "latency_s", "energy_j"]].to_string(index=False))
    return 0


# ---------------------------------------------------------------- chipsim validate


def cmd_validate(args: argparse.Namespace) -> int:
    from chipsim.report import strict_json
    from chipsim.study import serving_validate as sv
    from chipsim.study import training_validate as tv
    from chipsim.study import validate as v

    table = v.read_table(args.measurements, "measurements", "measurements file not found")
    training = tv.is_training_schema(table)
    serving = not training and sv.is_serving_schema(table)
    if (training or serving) and args.plot:  # before any work
        raise InputError(f"--plot is for the kernel schema; the {'training' if training else 'serving'} schema prints "
                         "its table", key="--plot")
    frame = table if training or serving else v.read_measurements(args.measurements)
    chip = args.chip
    if chip is not None:
        from chipsim.hardware.registry import load_chip

        try:
            load_chip(chip)  # an unknown chip is an error before any work
        except InputError as exc:
            raise (exc if exc.file else InputError(exc.message, key="--chip")) from None
    power_path = Path(args.power) if args.power else Path(args.measurements).with_name("power.json")
    power = v.read_power(power_path) if (args.power or power_path.is_file()) else None
    from chipsim.atomic import check_destination

    for option, dest in (("--out", args.out), ("--plot", args.plot)):  # before any work
        if dest:
            try:
                check_destination(dest)
            except InputError as exc:
                raise InputError(exc.message, file=exc.file, key=option) from None

    def progress(index: int, total: int) -> None:
        if not args.json and sys.stderr.isatty() and index % 100 == 0:
            _stderr(f"validating row {index + 1}/{total} ...")

    if training:
        return _validate_training(args, frame, chip, progress)
    if serving:
        return _validate_serving(args, frame, chip, progress)
    predictions, skipped = v.validate(frame, chip, progress)
    summary = v.family_summary(predictions)
    power_frame = None
    if power is not None:
        from chipsim.hardware.registry import load_chip

        power_frame = v.validate_power(power, load_chip(chip or "h200_sxm"))
    if args.out:
        v.write_predictions(predictions, args.out)  # staged, then moved into place
    if args.plot:
        from chipsim.report.plots import plot_validation

        v.save_figure(plot_validation(predictions), args.plot, dpi=110)
    from chipsim.report.validation import validation_json, validation_text

    if args.json:
        print(strict_json.dumps(validation_json(predictions, skipped, summary, chip, power_frame)))
    else:
        print(validation_text(predictions, skipped, summary, chip, power_frame, str(power_path)))
    return 0


def _validate_serving(args: argparse.Namespace, frame: Any, chip: str | None, progress: Any) -> int:
    """`chipsim validate` on the serving schema: each row one simulated serving run."""
    from chipsim.study import serving_validate as sv

    predictions, skipped = sv.validate_serving(frame, chip, progress)
    return _report_schema(args, "serving", "published/serving_calibration.csv", predictions, skipped,
                          sv.serving_summary(predictions))


def _validate_training(args: argparse.Namespace, frame: Any, chip: str | None, progress: Any) -> int:
    """`chipsim validate` on the training schema: each row one simulated training step."""
    from chipsim.study import training_validate as tv

    predictions, skipped = tv.validate_training(frame, chip, progress)
    return _report_schema(args, "training", "published/training_calibration.csv", predictions, skipped,
                          tv.training_summary(predictions))


def _report_schema(args: argparse.Namespace, schema: str, example: str, predictions: Any, skipped: Any,
                   summary: Any) -> int:
    """Write `--out`, then print the per-family table (or `--json`) of a training or serving validation."""
    from chipsim.report import strict_json
    from chipsim.study import validate as v

    if args.out:
        v.write_predictions(predictions, args.out)
    done = predictions[predictions["skipped_reason"] == ""]
    overall = {"rows": len(predictions), "simulated": len(done), "median_ape": float(done["ape"].median()),
               "p90_ape": float(done["ape"].quantile(0.9))} if len(done) else {"rows": len(predictions), "simulated": 0}
    if args.json:
        print(strict_json.dumps({**overall, "schema": schema, "families": summary.to_dict("records"),
                                 "skipped": [{"row": int(i), "reason": r} for i, r in skipped["skipped_reason"].items()]}))
        return 0
    print(f"{len(done)} of {len(predictions)} {schema} rows simulated (schema of {example})")
    table = summary.assign(median_ape=summary["median_ape"].map("{:.1%}".format),
                           p90_ape=summary["p90_ape"].map("{:.1%}".format))
    print(table.rename(columns={"median_ape": "median APE", "p90_ape": "p90 APE"}).to_string(index=False))
    if len(done):
        print(f"all rows: median APE {overall['median_ape']:.1%}, p90 {overall['p90_ape']:.1%}")
    assumed = done[done["assumed"] != ""] if "assumed" in done else done.iloc[:0]
    if len(assumed):
        print(f"{len(assumed)} rows left layout sizes empty; assumed: {', '.join(sorted(set('; '.join(assumed['assumed']).split('; '))))}")
    for index, reason in skipped["skipped_reason"].items():
        print(f"  row {index} not simulated: {reason}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """`chipsim plan`: every Megatron-Core layout of a model on N GPUs, ranked by simulated throughput."""
    from chipsim.models.zoo import load_model
    from chipsim.network.system import load_system
    from chipsim.report import strict_json
    from chipsim.training import plan as planner

    for option, value in (("--gpus", args.gpus), ("--global-batch", args.global_batch), ("--seq", args.seq),
                          ("--top", args.top), ("--workers", args.workers)):
        if value is not None and value < 1:
            raise InputError(f"expected a positive integer, got {value}", key=option)
    try:
        model = load_model(args.model)
    except InputError as exc:
        raise InputError(exc.message, key="MODEL") from None
    try:
        system = load_system(args.system)
    except InputError as exc:
        raise (exc if exc.file else InputError(exc.message, key="--system")) from None
    per_node = system.gpus_per_node
    if (args.gpus > per_node and args.gpus % per_node) or (args.gpus < per_node and per_node % args.gpus):
        raise InputError(f"expected whole nodes of {per_node} GPUs (or a divisor of one node), got {args.gpus}",
                         key="--gpus")
    if args.gpus > system.world:
        if system.scale_out is None:
            raise InputError(f"system '{system.name}' has {system.world} GPUs and no scale-out network to grow",
                             key="--gpus")
        try:
            system = load_system(args.system, overrides={"nodes": -(-args.gpus // per_node)})
        except InputError as exc:
            raise InputError(f"cannot grow '{system.name}' to {args.gpus:,} GPUs: {exc.message}", key="--gpus") from None
    if args.executor == "dask":
        import importlib.util

        if importlib.util.find_spec("distributed") is None:
            raise InputError("the dask executor needs dask[distributed]: pip install dask[distributed]",
                             key="--executor")
    if args.out:
        from chipsim.atomic import check_destination

        try:
            check_destination(args.out)
        except InputError as exc:
            raise InputError(exc.message, file=exc.file, key="--out") from None
    found = planner.candidate_layouts(model, args.gpus, args.global_batch, args.seq, per_node)
    if not found.layouts:  # before any simulation
        key, count = found.rejected.most_common(1)[0] if found.rejected else ("layout", 0)
        if "global_batch" in found.rejected:
            key = "global_batch"
        option = {"global_batch": "--global-batch", "seq": "--seq"}.get(key, "--gpus")
        raise InputError(f"no layout of {model.model_id} on {args.gpus} GPUs passes Megatron-Core's rules "
                         f"({found.rejected[key]} of {found.total} rejected on {key}, e.g. {found.examples.get(key, '')})",
                         key=option)
    shown = [0]  # simulations done when progress was last shown

    def progress(done: int, total: int) -> None:  # about every tenth (at most every 100 layouts)
        if args.json or not total:
            return
        if done == 0:
            _stderr(f"simulating the {total} layouts that fit in memory ...")
        elif done == total or done - shown[0] >= max(1, min(100, total // 10)):
            shown[0] = done
            _stderr(f"simulated {done}/{total} layouts ...")

    from chipsim.report.files import sigterm_as_interrupt

    with sigterm_as_interrupt():  # SIGTERM stops the workers and exits like Ctrl-C
        table = planner.plan_layouts(model, system, args.gpus, args.global_batch, args.seq, args.precision,
                                     executor=args.executor, workers=args.workers, candidates=found,
                                     progress=progress)
    if args.out:
        from chipsim.atomic import atomic_write

        atomic_write(args.out, lambda tmp: table.to_csv(tmp, index=False))
    feasible = table[table["fits"]]
    best = feasible.iloc[0] if len(feasible) else None
    if args.json:
        print(strict_json.dumps({
            "model": model.model_id, "system": system.name, "gpus": args.gpus, "global_batch": args.global_batch,
            "seq": args.seq, "precision": args.precision, "candidates": table.attrs["candidates"],
            "valid": len(table), "feasible": len(feasible), "infeasible": len(table) - len(feasible),
            "rejected": table.attrs["rejected"], "failed": table.attrs["failed"],
            "top": feasible.head(args.top).to_dict("records"),
            "best": None if best is None else best.to_dict(), "out": args.out}))
        return 0 if best is not None else 1
    print(f"{model.model_id} on {args.gpus:,} GPUs of {system.name} ({system.chip.name}, "
          f"{system.chip.hbm.capacity_bytes / 1e9:.0f} GB), global batch {args.global_batch}, seq {args.seq}, "
          f"{args.precision}")
    print("\n".join(planner.summary_lines(table)))
    if best is None:
        closest = table.iloc[0]
        print(f"best: none fits in memory; closest: {planner.layout_label(closest)}: {closest['overflow']}")
        return 1
    print(f"top {min(args.top, len(feasible))} of {len(feasible)} feasible layouts, by tokens/s per GPU "
          "(breakdown in seconds on the busiest stage):")
    print(planner.format_table(table, args.top))
    print(f"best: {planner.layout_label(best)}: {best['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU, "
          f"MFU {best['mfu']:.1%}, step {best['step_s']:.3f} s, {best['memory_gb']:.1f} GB per GPU")
    if args.out:
        _stderr(f"wrote {len(table)} layouts to {args.out}")
    return 0


# ---------------------------------------------------------------- chipsim regress


def cmd_regress(args: argparse.Namespace) -> int:
    from chipsim.study import regress

    baselines = Path(args.baselines)
    if not 0 <= args.tolerance < float("inf"):  # before any work
        raise InputError(f"expected a finite relative change >= 0, got {args.tolerance}", key="--tolerance")
    if args.update:
        from chipsim.atomic import check_destination

        try:
            check_destination(baselines)
        except InputError as exc:
            raise InputError(exc.message, file=exc.file, key="--baselines") from None
    base = None if args.update else regress.read_baselines(baselines)  # a bad file fails before any work
    from chipsim import examples

    configs = Path(args.configs) if args.configs else examples.path("runs")
    now = regress.simulate_examples(configs, lambda name: _stderr(f"simulating {name} ..."))
    if args.update:
        regress.write_baselines(now, baselines)
        print(f"wrote {len(now)} baselines to {baselines}")
        return 0
    assert base is not None
    diffs = regress.compare(base, now, args.tolerance)
    if diffs.empty:
        print(f"{len(now)} cases within {args.tolerance:.1%} of {baselines}")
        return 0
    shown = diffs.copy()
    shown["change"] = [f"{c:+.2%}" if c == c else "" for c in shown["change"]]
    print(f"{len(diffs)} changes beyond {args.tolerance:.1%} of {baselines}:")
    print(shown.to_string(index=False))
    print("if the change is intended, run `chipsim regress --update` and commit the baselines with it")
    return 1


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chipsim", description="Simulate AI workloads on AI chips.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and debug details")
    parser.add_argument("--version", action="version", version=f"chipsim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="simulate a run config (a workload on one or more chips)")
    run.add_argument("config", nargs="?", help="run config YAML, or the name of a shipped example (chipsim examples)")
    run.add_argument("--chip", action="append", help="chip name or YAML path (repeatable); overrides the config's")
    run.add_argument("--workload", help="a workload JSON (op graph), or a PyTorch profiler / Chakra trace, to replay")
    run.add_argument("--launch", choices=vocab.LAUNCH_MODES, help="host launch mode (overrides the config)")
    run.add_argument("--sustained", action="store_true",
                     help="start at the power limit, as in back-to-back steps (overrides the config)")
    run.add_argument("--out", help="output folder (default results/<run name>/)")
    run.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    run.add_argument("--no-files", action="store_true", help="write no files")
    run.set_defaults(func=cmd_run)

    srv = sub.add_parser("serve", help="simulate LLM serving: a run config's `serving:` section (requests, engine, "
                                       "model, chip), or the highest request rate that meets latency SLOs")
    srv.add_argument("config", help="run config YAML with a `serving:` section, or the name of a shipped example")
    srv.add_argument("--out", help="write summary.csv, requests.csv, latency.png (and timeline.json when the "
                                   "config's report lists it) into this folder")
    srv.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    srv.add_argument("--find-capacity", action="store_true",
                     help="bisect for the highest Poisson request rate whose run meets every --slo")
    srv.add_argument("--slo", help="latency SLOs, name=value[ms|s] separated by commas, e.g. "
                                   "ttft_p99=500ms,tpot_p99=50ms (names ttft/tpot/itl/e2e _mean/_p50/_p90/_p99); "
                                   "without --find-capacity: exit 1 when the run misses one")
    srv.add_argument("--sweep", metavar="SPEC",
                     help="serve every chip x quantization x tp as closed loops and mark the Pareto front of "
                          "tok/s/user vs output tok/s/GPU, e.g. chip=h100_sxm,h200_sxm;quantization=none,fp8;"
                          "tp=1,2;concurrency=1,16,64 (--out: pareto.csv, pareto.png)")
    srv.set_defaults(func=cmd_serve)

    chips = sub.add_parser("chips", help="list built-in chips, or show one resolved in SI units")
    chips.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    chips.add_argument("name", nargs="?")
    chips.set_defaults(func=cmd_chips)

    systems = sub.add_parser("systems", help="list built-in systems (chipsim/systems/), or show one resolved")
    systems.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    systems.add_argument("name", nargs="?")
    systems.set_defaults(func=cmd_systems)

    exs = sub.add_parser("examples", help="list the example run configs shipped with chipsim, or copy them all to DIR")
    exs.add_argument("action", nargs="?", choices=("list", "copy"), default="list")
    exs.add_argument("dest", nargs="?", help="folder to copy the examples into (copy)")
    exs.set_defaults(func=cmd_examples)

    wls = sub.add_parser("workloads", help="list workload generators and their parameters")
    wls.set_defaults(func=cmd_workloads)

    trace = sub.add_parser("trace", help="import a PyTorch profiler (Kineto) or Chakra trace as a workload, "
                                         "or export a workload as Chakra traces")
    trace_sub = trace.add_subparsers(dest="action", required=True)
    imp = trace_sub.add_parser("import", help="read TRACE.json[.gz] or TRACE.et and write an op-graph WORKLOAD.json")
    imp.add_argument("trace", help="PyTorch profiler trace (export_chrome_trace) or Chakra execution trace "
                                   "(JSON, or protobuf .et)")
    imp.add_argument("-o", "--output", required=True, help="the workload JSON to write")
    imp.add_argument("--steps", type=int, help="keep the first N profiler steps (ProfilerStep# annotations)")
    imp.add_argument("--world", type=int, help="Chakra: the group size of collectives whose node names none")
    imp.set_defaults(func=cmd_trace)
    exp = trace_sub.add_parser("export", help="write a workload as Chakra execution traces, one per rank "
                                              "(OUTDIR/<name>.<rank>.et), for ASTRA-sim")
    exp.add_argument("workload", help="op-graph WORKLOAD.json")
    exp.add_argument("-o", "--output", required=True, help="the folder to write the traces into")
    exp.add_argument("--ranks", type=int, help="ranks to write (default: one per device, else the widest "
                                               "communicator)")
    exp.add_argument("--chip", help="simulate on this chip and write each op's time as duration_micros")
    exp.set_defaults(func=cmd_trace_export)

    swp = sub.add_parser("sweep", help="evaluate a design-space sweep (local process pool or Dask)")
    swp.add_argument("sweep", help="sweep YAML: a base run config and parameters to vary")
    swp.add_argument("--executor", choices=("local", "dask"), default="local")
    swp.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786); default: a LocalCluster")
    swp.add_argument("--workers", type=int, help="processes (local) or LocalCluster workers (dask)")
    swp.add_argument("--out", help="output folder (default results/sweep_<name>/); reruns resume from it")
    swp.add_argument("--json", action="store_true", help="print one JSON summary and nothing else on stdout")
    swp.set_defaults(func=cmd_sweep)

    val = sub.add_parser("validate", help="predict measured cases (calibration.csv or training schema) and report "
                                          "the error")
    val.add_argument("measurements", help="CSV of measurements: the schema of reference/h200/calibration.csv, of "
                                          "published/training_calibration.csv or of published/serving_calibration.csv "
                                          "(detected by its columns)")
    val.add_argument("--chip", help="simulate every row on this chip (default: the row's device column)")
    val.add_argument("--out", help="write every input column plus predicted_us and ape to this CSV")
    val.add_argument("--plot", help="write predicted vs measured (log-log) to this PNG")
    val.add_argument("--power", help="power phases JSON (default: power.json beside the CSV, if present)")
    val.add_argument("--json", action="store_true", help="print one JSON summary and nothing else on stdout")
    val.set_defaults(func=cmd_validate)

    pln = sub.add_parser("plan", help="rank the Megatron-Core layouts of a model on N GPUs by simulated training "
                                      "throughput")
    pln.add_argument("model", help="a model of the zoo (chipsim.models.known_models())")
    pln.add_argument("--system", required=True, help="system name or YAML; grown to --gpus when it has a scale-out "
                                                     "network")
    pln.add_argument("--gpus", type=int, required=True, help="GPUs of the run (whole nodes)")
    pln.add_argument("--global-batch", type=int, required=True, help="sequences per optimizer step")
    pln.add_argument("--seq", type=int, required=True, help="sequence length in tokens")
    pln.add_argument("--precision", choices=vocab.TRAINING_PRECISIONS, default="bf16")
    pln.add_argument("--top", type=int, default=10, help="feasible layouts to print (default 10)")
    pln.add_argument("--out", help="write every layout (feasible or not) to this CSV")
    pln.add_argument("--executor", choices=("local", "dask"), default="local",
                     help="simulate in a local process pool or a Dask LocalCluster")
    pln.add_argument("--workers", type=int, help="processes (local) or LocalCluster workers (dask)")
    pln.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    pln.set_defaults(func=cmd_plan)

    reg = sub.add_parser("regress", help="re-simulate every example config on every chip against the baselines")
    reg.add_argument("--update", action="store_true", help="rewrite the baselines")
    reg.add_argument("--tolerance", type=float, default=0.01, help="relative change allowed (default 0.01)")
    reg.add_argument("--configs", help="folder of run configs (default: the examples shipped with chipsim)")
    reg.add_argument("--baselines", default="baselines/latencies.csv", help="baseline CSV")
    reg.set_defaults(func=cmd_regress)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # the CLI only writes PNG files (notebooks keep their own backend): Agg, chosen through the
    # environment so that matplotlib is imported only when a command plots (`chipsim --help` stays
    # fast); restored on the way out for the processes a library caller starts later
    backend = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "Agg"
    try:
        parser = build_parser()
        args: Any = parser.parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        return int(args.func(args))
    except InputError as exc:
        _stderr(f"chipsim: error: {exc}")
        return 2
    except KeyboardInterrupt:
        _stderr("chipsim: interrupted")
        return 130
    except BrokenPipeError:
        return 0
    finally:
        if backend is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = backend


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
