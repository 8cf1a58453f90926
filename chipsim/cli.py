"""`chipsim` command line: argument parsing and wiring only."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chipsim.errors import InputError

log = logging.getLogger("chipsim")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- chipsim run


def cmd_run(args: argparse.Namespace) -> int:
    from chipsim import api
    from chipsim.config.runconfig import RunConfig, WorkloadSpec, load_run_config
    from chipsim.report.files import write_run_outputs
    from chipsim.report.tables import render

    if args.config:
        config = load_run_config(args.config)
        if args.workload:
            config = RunConfig(config.name, config.chips, WorkloadSpec(trace=Path(args.workload)), config.launch,
                               config.sustained, config.report, config.file)
    elif args.workload and args.chip:
        config = RunConfig(Path(args.workload).stem.removesuffix(".json"), tuple(args.chip),
                           WorkloadSpec(trace=Path(args.workload)))
    else:
        raise InputError("give a run config (chipsim run CONFIG.yaml), or --workload FILE with --chip NAME")
    if args.launch:
        config = RunConfig(config.name, config.chips, config.workload, args.launch, config.sustained,
                           config.report, config.file)

    def progress(index: int, total: int, chip: str) -> None:
        if not args.json:
            _stderr(f"[{index + 1}/{total}] simulating {config.name} on {chip} ...")

    results = api.run(config, args.chip or None, progress)
    chips = api.load_chips(args.chip or config.chips, config.file)
    if args.json:
        print(json.dumps({"runs": [r.to_json() for r in results]}))
    else:
        print(render(results, results[0].workload))
    out_dir = Path(args.out) if args.out else Path("results") / config.name
    reports = [r for r in config.report if r != "table"]
    if reports and not args.no_files:
        written = write_run_outputs(results, chips, out_dir, reports)
        if not args.json:
            _stderr(f"wrote {len(written)} files to {out_dir}/")
    return 0


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


def cmd_workloads(args: argparse.Namespace) -> int:
    from chipsim.workload.generators import describe_generators

    for name, info in describe_generators().items():
        print(f"{name}: {info['description']}")
        for pname, p in info["params"].items():
            print(f"    {pname} = {p['default']!r}: {p['doc']}")
    return 0


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chipsim", description="Simulate AI workloads on AI chips.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="simulate a run config (a workload on one or more chips)")
    run.add_argument("config", nargs="?", help="run config YAML (configs/runs/*.yaml)")
    run.add_argument("--chip", action="append", help="chip name or YAML path (repeatable); overrides the config's")
    run.add_argument("--workload", help="a workload JSON (op graph) to replay instead of the config's")
    run.add_argument("--launch", choices=("eager", "graph"), help="host launch mode (overrides the config)")
    run.add_argument("--out", help="output folder (default results/<run name>/)")
    run.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    run.add_argument("--no-files", action="store_true", help="write no files")
    run.set_defaults(func=cmd_run)

    chips = sub.add_parser("chips", help="list built-in chips, or show one resolved in SI units")
    chips.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    chips.add_argument("name", nargs="?")
    chips.set_defaults(func=cmd_chips)

    wls = sub.add_parser("workloads", help="list workload generators and their parameters")
    wls.set_defaults(func=cmd_workloads)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args: Any = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except InputError as exc:
        _stderr(f"chipsim: error: {exc}")
        return 2
    except KeyboardInterrupt:
        _stderr("chipsim: interrupted")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
