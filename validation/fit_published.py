"""Fit the chips we cannot measure to the published microbenchmarks of reference/published/calibration.csv.

    python3 validation/fit_published.py [--csv PATH] [--write] [--chip NAME ...]

As fit_h200.py does for the H200: per chip, a few physical parameters, each on the rows that measure
it (robust least squares on log(predicted / measured), so a handful of software outliers cannot drag
the fit). Stages, in order:
  power        energy per FLOP of the tensor pipes (per dtype), so that the power controller settles at
               the engine clock a vendor's sustained max-achievable-FLOPS run reports (AMD's MAF table),
               alternated with the GEMM efficiency at that clock until both hold
  gemm         tensor-pipe efficiency per dtype (the fraction of the per-unit peak a full wave sustains)
  memory       streaming efficiency (BabelStream)
  elementwise  per-kernel bandwidth efficiency (norms, SiLU-mul, add) and the per-kernel latency
  attention    prefill and decode efficiency, decode per-block time, eager attention dispatch
  collective   the chip's NCCL/RCCL fixed latency (8-GPU rows run on the chip's node fabric)
The H200 is not fitted here (fit_h200.py owns it, on our own measurements). A chip inherits what its
rows do not measure from the chip it `extends:`. With --write, each fitted value goes into the chip's
YAML (chipsim/chips/<chip>.yaml, under `calibration:`, comments preserved) with a comment naming the
rows it was fitted to; then run `chipsim regress --update`.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_h200 import fit_stage, get  # noqa: E402  (the same robust fit, one place)

from chipsim.hardware.chip import Chip  # noqa: E402
from chipsim.hardware.registry import load_chip  # noqa: E402
from chipsim.study.validate import (  # noqa: E402
    NODES_NOTE,
    family_summary,
    read_measurements,
    single_op,
    sustained_loop,
    validate,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT.parent / "shared" / "reference" / "published" / "calibration.csv"
CHIPS = {"a100_sxm": "A100_SXM", "h100_sxm": "H100_SXM", "b200": "B200", "mi300x": "MI300X", "mi325x": "MI325X"}
DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp8_e4m3": "fp8", "fp8_e4m3fnuz": "fp8", "tf32": "tf32", "fp32": "fp32"}

# stage -> (row filter on the 'op' column, parameter paths with bounds); dtype-specific GEMM
# parameters are added per chip from the dtypes its rows have
STAGES: dict[str, tuple[tuple[str, ...], list[tuple[str, float, float]]]] = {
    "memory": (("memory",), [("memory_efficiency", 0.5, 1.0)]),
    "elementwise": (("elementwise",), [
        ("kernel_bw_efficiency.rms_norm", 0.1, 1.2), ("kernel_bw_efficiency.layer_norm", 0.1, 1.2),
        ("kernel_bw_efficiency.silu_mul", 0.1, 1.2), ("kernel_bw_efficiency.add", 0.1, 1.2),
        ("kernel_latency_s", 0.2e-6, 8e-6)]),
    "attention": (("attention",), [
        ("attention_fwd_efficiency.cudnn", 0.05, 1.0), ("attention_fwd_efficiency.flash", 0.05, 1.0),
        ("attention_decode_efficiency.flash", 0.1, 1.0), ("attention_decode_efficiency.cudnn", 0.1, 1.0),
        ("attention_decode_block_s.flash", 0.05e-6, 20e-6), ("attention_decode_block_s.cudnn", 0.05e-6, 20e-6),
        ("attention_decode_fixed_s.flash", 0.0, 40e-6),
        ("host_dispatch_s.attention", 1e-6, 120e-6)]),
    "collective": (("all_reduce",), [("collective_latency_s", 5e-6, 100e-6)]),
}
CLOCK_NOTE = re.compile(r"(\d+) TFLOPs at (?:median engine clock )?(\d+) MHz")
# the MI325X is the MI300X's CDNA3 silicon and ROCm kernels with more HBM and a 1000 W limit: it inherits
# the MI300X's energy per FLOP and GEMM efficiencies, and its own rows check them (the clock its power
# limit allows, and the TFLOP/s that implies)
INHERIT_POWER = ("mi325x",)


def rows_of(frame: pd.DataFrame, device: str) -> pd.DataFrame:
    return frame[frame["device"] == device].reset_index(drop=True)


def useful(chip: Chip, rows: pd.DataFrame, params: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The parameters the rows can move: a backend or kernel class they do not use stays inherited."""
    kept = []
    variants = " ".join(rows["variant"].astype(str).unique())
    for path, lo, hi in params:
        key = path.partition(".")[2]
        if key and key not in variants and not (key == "flash" and ("paged" in variants or "prefill_chunk" in variants)) \
                and not path.startswith("host_dispatch"):
            continue
        if path.startswith("host_dispatch") and not (rows["launch"] == "eager").any():
            continue
        kept.append((path, lo, hi))
    return kept


def sustained_clock_mhz(chip: Chip, dtype: str, m: int, n: int, k: int) -> float:
    """The clock a loop of this GEMM settles at under the power limit (the controller of engine/power.py)."""
    return sustained_loop(single_op("gemm", dtype, m=m, n=n, k=k), chip).clock_hz / 1e6


def with_energy(chip: Chip, dtype: str, joules: float) -> Chip:
    return replace(chip, power=replace(chip.power, energy_j_per_flop={**chip.power.energy_j_per_flop, dtype: joules}))


def fit_power(chip: Chip, rows: pd.DataFrame, log: Callable[[str], None]) -> tuple[Chip, dict[str, str]]:
    """Energy per FLOP and GEMM efficiency per dtype from sustained runs that state their clock."""
    notes: dict[str, str] = {}
    for _, row in rows.iterrows():
        found = CLOCK_NOTE.search(str(row["note"]))
        if row["op"] != "gemm" or row["variant"] != "maf" or not found:
            continue
        dtype = DTYPES[str(row["dtype"])]
        clock = float(found.group(2))
        shape = (int(row["m"]), int(row["n"]), int(row["k"]))
        one = rows.iloc[[_]]
        for _round in range(4):  # the clock depends on energy x efficiency, the rate on efficiency x clock
            lo, hi = 0.1e-12, 20e-12
            for _step in range(40):
                mid = math.sqrt(lo * hi)
                settled = sustained_clock_mhz(with_energy(chip, dtype, mid), dtype, *shape)
                lo, hi = (mid, hi) if settled > clock else (lo, mid)
            chip = with_energy(chip, dtype, math.sqrt(lo * hi))
            chip = fit_stage(chip, one, ("gemm",), [(f"gemm_efficiency.{dtype}", 0.2, 1.0)])
        notes[f"energy_per_flop.{dtype}"] = (f"fitted: the {clock:.0f} MHz median engine clock of AMD's sustained "
                                             f"{row['dtype']} MAF run (published/calibration.csv)")
        notes[f"gemm_efficiency.{dtype}"] = (f"fitted: the same run's {found.group(1)} TFLOP/s at that clock "
                                             "(published/calibration.csv)")
        log(f"  power {dtype}: {chip.power.energy_j_per_flop[dtype] * 1e12:.3f} pJ/FLOP -> "
            f"{sustained_clock_mhz(chip, dtype, *shape):.0f} MHz (published {clock:.0f}), "
            f"efficiency {chip.calibration.gemm_efficiency[dtype]:.3f}")
    return chip, notes


def check_power(chip: Chip, rows: pd.DataFrame, log: Callable[[str], None]) -> None:
    for _, row in rows.iterrows():
        found = CLOCK_NOTE.search(str(row["note"]))
        if row["op"] == "gemm" and row["variant"] == "maf" and found:
            dtype = DTYPES[str(row["dtype"])]
            settled = sustained_clock_mhz(chip, dtype, int(row["m"]), int(row["n"]), int(row["k"]))
            log(f"  power check {dtype}: settles at {settled:.0f} MHz, published {found.group(2)} MHz "
                f"({settled / float(found.group(2)) - 1:+.1%})")


def fit_chip(name: str, frame: pd.DataFrame, log: Callable[[str], None]) -> tuple[Chip, dict[str, str]]:
    chip = load_chip(name)
    rows = rows_of(frame, CHIPS[name])
    predicted, _ = validate(rows, chip_obj=chip)
    rows = rows[(predicted["skipped_reason"] == "").to_numpy()].reset_index(drop=True)  # what chipsim can run
    notes: dict[str, str] = {}
    if name in INHERIT_POWER:
        check_power(chip, rows, log)
    else:
        chip, power_notes = fit_power(chip, rows, log)
        notes.update(power_notes)
    gemm_rows = rows[(rows["op"] == "gemm") & (name not in INHERIT_POWER)]
    for dtype_name in sorted(gemm_rows["dtype"].astype(str).unique()):
        dtype = DTYPES.get(dtype_name)
        if dtype is None or f"gemm_efficiency.{dtype}" in notes:
            continue
        these = gemm_rows[gemm_rows["dtype"] == dtype_name].reset_index(drop=True)
        chip = fit_stage(chip, these, ("gemm",), [(f"gemm_efficiency.{dtype}", 0.2, 1.0)])
        best = " best-shape (BEST_SHAPE_SPEEDUP)" if (these["variant"].astype(str) == "mamf_best").all() else ""
        notes[f"gemm_efficiency.{dtype}"] = f"fitted: {len(these)} published {CHIPS[name]} {dtype_name}{best} GEMM rows"
    for stage, (ops, params) in STAGES.items():
        these = rows[rows["op"].isin(ops)].reset_index(drop=True)
        if stage == "collective":  # the chip's floor is a node property: across nodes the network adds its own
            across = these["variant"].astype(str).str.endswith("_internode") | these["note"].astype(str).map(
                lambda note: bool((m := NODES_NOTE.search(note)) and int(m.group(1)) > 1))
            these = these[~across].reset_index(drop=True)
        if not len(these):
            continue
        kept = useful(chip, these, params)
        if not kept:
            continue
        chip = fit_stage(chip, these, ops, kept)
        for path, _, _ in kept:
            notes[path] = f"fitted: {len(these)} published {CHIPS[name]} {stage} rows"
    return chip, notes


# ---------------------------------------------------------------- writing the chip YAML

YAML_PATHS = {  # calibration attribute -> (YAML section path, unit formatter)
    "gemm_efficiency": (("calibration", "gemm", "efficiency"), None),
    "memory_efficiency": (("calibration", "memory", "efficiency"), None),
    "kernel_bw_efficiency": (("calibration", "memory", "kernels"), None),
    "kernel_latency_s": (("calibration", "latency", "kernel"), "us"),
    "attention_fwd_efficiency": (("calibration", "attention", "fwd"), None),
    "attention_decode_efficiency": (("calibration", "attention", "decode"), None),
    "attention_decode_block_s": (("calibration", "attention", "decode_block"), "us"),
    "attention_decode_fixed_s": (("calibration", "attention", "decode_fixed"), "us"),
    "host_dispatch_s": (("calibration", "host", "dispatch"), "us"),
    "collective_latency_s": (("calibration", "collective", "latency"), "us"),
    "energy_per_flop": (("power", "energy_per_flop"), "pJ"),
}


def value_of(chip: Chip, path: str) -> float:
    if path.startswith("energy_per_flop."):
        return chip.power.energy_j_per_flop[path.partition(".")[2]]
    return get(chip, path)


def write_yaml(name: str, chip: Chip, notes: dict[str, str]) -> None:
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    path = ROOT / "chipsim" / "chips" / f"{name}.yaml"
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    data = yaml.load(path.read_text(encoding="utf-8"))
    for fitted, note in sorted(notes.items()):
        head, _, key = fitted.partition(".")
        sections, unit = YAML_PATHS[head]
        node = data
        for section in sections[:-1] if not key else sections:
            if section not in node:
                node[section] = CommentedMap()
            node = node[section]
        value = value_of(chip, fitted)
        text: object = (f"{value * 1e6:.4g} us" if unit == "us" else f"{value * 1e12:.4g} pJ/FLOP" if unit == "pJ"
                        else round(value, 4))
        leaf = key or sections[-1]
        node[leaf] = text
        node.yaml_add_eol_comment(note, leaf, column=32)
    if "calibration" in data:
        data["calibration"]["source"] = ("fitted by validation/fit_published.py to reference/published/calibration.csv; "
                                         "what its rows do not measure is inherited")
    with path.open("w", encoding="utf-8") as fh:
        yaml.dump(data, fh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default=str(DEFAULT_CSV))
    parser.add_argument("--write", action="store_true", help="write the fitted values into the chip YAMLs")
    parser.add_argument("--chip", action="append", choices=sorted(CHIPS), help="fit only these chips")
    args = parser.parse_args()
    frame = read_measurements(args.csv)
    for name in args.chip or list(CHIPS):
        print(f"{name}:", flush=True)
        chip, notes = fit_chip(name, frame, print)
        for fitted in sorted(notes):
            print(f"  {fitted} = {value_of(chip, fitted):.4g}  ({notes[fitted]})")
        predictions, _ = validate(rows_of(frame, CHIPS[name]), chip_obj=chip)
        print(family_summary(predictions)[["family", "rows", "median_ape", "p90_ape"]].to_string(index=False))
        if args.write:
            write_yaml(name, chip, notes)
            print(f"  wrote chipsim/chips/{name}.yaml")


if __name__ == "__main__":
    main()
