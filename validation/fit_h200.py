"""Fit the H200's calibration block to reference/h200/calibration.csv.

    python3 validation/fit_h200.py [--csv PATH] [--out validation/fit_h200_result.json]

Stages, each fitting a few physical parameters on the rows that measure them (robust least squares
on log(predicted / measured), so a handful of software outliers cannot drag the fit):
  memory      streaming efficiency, per-kernel bandwidth efficiencies, kernel latency, host dispatch
  gemm        tensor-pipe efficiency per dtype, int4 weight-only efficiency, GEMM dispatch
  attention   fwd / bwd efficiency per backend, decode bandwidth and per-block time, dispatch
  collective  NCCL achieved link efficiency per kind, collective dispatch (the fixed latency is
              fitted on the published 8-GPU rows: validation/fit_published.py)
Model steps (train / prefill / decode) and the dynamic-attention layer are NOT fitted: they are
predicted from the op-level parameters, which is the check that the parameters transfer. The
exceptions are kernels no op-level row measures, each fitted to the one step row that does (fp32
attention; the FP8 steps' transposes, compiled transposing casts and rowwise GEMM: STEP_FITS).
Prints the fitted values (paste them into chipsim/chips/h200_sxm.yaml) and the per-family APE.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from chipsim.hardware.chip import Chip
from chipsim.hardware.registry import load_chip
from chipsim.study.validate import family_summary, read_measurements, validate

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT.parent / "shared" / "reference" / "h200" / "calibration.csv"
HOLDOUT = ROOT / "validation" / "h200_holdout.csv"
TRAIN_TRACE = ROOT.parent / "shared" / "reference" / "h200" / "traces" / "trace_train_llama-350m_b8_s2048.json.gz"
# kernel classes no calibration row measures, fitted to the kernels of the reference training trace
TRACE_CLASSES = ("silu", "silu_bwd", "mul", "cast", "copy", "rms_norm_bwd")
# FP8 training-step kernels no kernel row measures, each fitted to the one step row that measures it
# most directly: the 350M model's (d_model 1024: its FP8 casts weigh the most against its GEMMs, and
# its GEMMs have the shortest k loops); the 7B-shaped rows of fp8_fused_calibration.csv are the check.
# - transpose: eager `.t().contiguous()` of FP8 tensors (1-byte elements read with a row stride), the
#   unfused FP8 step of calibration.csv;
# - cast_transpose: torch.compile's casts that also write a column-major FP8 copy (torchao tensorwise);
# - rowwise setup: the per-tile fixed cost of the rowwise-scaled GEMM (torchao rowwise).
FP8_FUSED_CSV = DEFAULT_CSV.with_name("fp8_fused_calibration.csv")
STEP_FITS = (  # (parameter, file, the row's variant and dtype, bounds), fitted in this order
    ("kernel_bw_efficiency.transpose", DEFAULT_CSV.name, "llama-350m", "fp8_e4m3_linear", 0.005, 1.0),
    ("kernel_bw_efficiency.cast_transpose", FP8_FUSED_CSV.name, "llama-350m", "fp8_tensorwise_compiled", 0.05, 1.0),
    ("gemm_rowwise_setup_k", FP8_FUSED_CSV.name, "llama-350m", "fp8_rowwise_compiled", 0.0, 8192.0),
)

# stage -> (row filter on the 'op' column, [(parameter path, lower, upper)])
STAGES = {
    "memory": (("memory", "elementwise"), [
        ("memory_efficiency", 0.6, 1.0), ("kernel_bw_efficiency.write", 0.3, 1.2),
        ("kernel_bw_efficiency.read", 0.3, 1.2), ("kernel_bw_efficiency.add", 0.3, 1.2),
        ("kernel_bw_efficiency.gelu", 0.2, 1.2), ("kernel_bw_efficiency.silu_mul", 0.2, 1.2),
        ("kernel_bw_efficiency.softmax", 0.1, 1.2), ("kernel_bw_efficiency.rms_norm", 0.2, 1.2),
        ("kernel_bw_efficiency.layer_norm", 0.2, 1.2), ("kernel_latency_s", 0.2e-6, 5e-6),
        ("host_dispatch_s.elementwise", 2e-6, 40e-6), ("host_dispatch_s.reduction", 2e-6, 40e-6),
        ("host_dispatch_s.other", 2e-6, 40e-6)]),
    "gemm": (("gemm",), [
        ("gemm_efficiency.bf16", 0.3, 1.0), ("gemm_efficiency.fp16", 0.3, 1.0),
        ("gemm_efficiency.fp8", 0.3, 1.0), ("gemm_efficiency.tf32", 0.3, 1.0),
        ("gemm_efficiency.fp32", 0.3, 1.0), ("gemm_efficiency.int8", 0.01, 1.0),
        ("int4_weight_only_efficiency", 0.005, 1.0), ("kernel_bw_efficiency.int4_gemv", 0.05, 1.0),
        ("host_dispatch_s.gemm", 2e-6, 40e-6)]),
    "attention": (("attention",), [
        ("attention_fwd_efficiency.flash", 0.05, 1.0), ("attention_fwd_efficiency.cudnn", 0.05, 1.0),
        ("attention_fwd_efficiency.efficient", 0.05, 1.0), ("attention_bwd_efficiency.flash", 0.05, 1.0),
        ("attention_bwd_efficiency.cudnn", 0.05, 1.0), ("attention_setup_keys.fwd", 0.0, 4096.0), ("attention_setup_keys.bwd", 0.0, 8192.0),
        ("attention_decode_efficiency.flash", 0.2, 1.0), ("attention_decode_efficiency.cudnn", 0.2, 1.0),
        ("attention_decode_efficiency.efficient", 0.2, 1.0),
        ("attention_decode_block_s.flash", 0.1e-6, 20e-6), ("attention_decode_block_s.cudnn", 0.1e-6, 20e-6),
        ("attention_decode_block_s.efficient", 0.1e-6, 20e-6), ("host_dispatch_s.attention", 2e-6, 120e-6)]),
    "host_calls": (("decode_step",), [("host_dispatch_s.call", 0.1e-6, 60e-6)]),
    # no fp32 attention row exists: the fp32 training step is the one measurement of it
    "fp32_attention": (("train_step",), [("attention_fp32_efficiency", 0.05, 1.0)]),
    # no reference row has an unaligned leading dimension: fitted to the rows of our own
    # measurements (validation/h200_holdout.csv) whose n or k is not a multiple of 8
    "unaligned": (("gemm",), [("gemm_unaligned_efficiency", 0.02, 1.0)]),
    "collective": (("all_reduce", "all_gather", "reduce_scatter"), [
        # the fixed latency is not fitted here: 2-GPU eager rows hide it behind host dispatch, while the
        # published 8-GPU graph rows at 4-64 KiB measure it directly (31.1 us, published/calibration.csv)
        ("collective_efficiency.all_reduce", 0.3, 1.0),
        ("collective_efficiency.all_gather", 0.3, 1.0), ("collective_efficiency.reduce_scatter", 0.3, 1.0),
        ("host_dispatch_s.collective", 1e-6, 60e-6)]),
}


def get(chip: Chip, path: str) -> float:
    cal = chip.calibration
    head, _, key = path.partition(".")
    value = getattr(cal, head)
    return float(value.get(key, 0.0) if key else value)  # a per-name table entry not set yet: 0


def put(chip: Chip, path: str, value: float) -> Chip:
    cal = chip.calibration
    head, _, key = path.partition(".")
    new = {**getattr(cal, head), key: value} if key else value
    return replace(chip, calibration=replace(cal, **{head: new}))


def unaligned_rows(frame):
    dims = frame[["n", "k"]].fillna(8).astype(int)
    return frame[(frame["op"] == "gemm") & ((dims["n"] % 8 != 0) | (dims["k"] % 8 != 0))]


def fit_stage(chip: Chip, frame, ops, params):
    rows = frame[frame["op"].isin(ops)].reset_index(drop=True)
    if ops == ("train_step",):
        rows = rows[rows["dtype"] == "fp32"].reset_index(drop=True)
    if not len(rows):
        return chip
    x0 = np.array([min(max(get(chip, p), lo), hi) for p, lo, hi in params])
    scale = np.array([hi for _, _, hi in params])

    def with_x(x):
        c = chip
        for (path, _, _), v in zip(params, x * scale, strict=True):
            c = put(c, path, float(v))
        return c

    def residuals(x):
        pred, _ = validate(rows, chip=None, chip_obj=with_x(x))
        return np.log(pred["predicted_us"].to_numpy() / pred["measured_us"].to_numpy())

    lower = np.array([lo for _, lo, _ in params]) / scale
    upper = np.array([hi for _, _, hi in params]) / scale
    sol = least_squares(residuals, x0 / scale, bounds=(lower, upper), loss="soft_l1", f_scale=0.05,
                        diff_step=1e-3, max_nfev=60)
    return with_x(sol.x)


def _us(value: float) -> str:
    return f"{value * 1e6:.3g} us"


def render_calibration(chip: Chip) -> str:
    """The `calibration:` block of h200_sxm.yaml, with the fitted values (see --write)."""
    c = chip.calibration
    ge, kb, af, ab, ad, ak, hd = (c.gemm_efficiency, c.kernel_bw_efficiency, c.attention_fwd_efficiency,
                                  c.attention_bwd_efficiency, c.attention_decode_efficiency,
                                  c.attention_decode_block_s, c.host_dispatch_s)
    fitted = {p for _, (_, params) in STAGES.items() for p, _, _ in params}
    fitted |= {f"kernel_bw_efficiency.{c}" for c in TRACE_CLASSES}
    by_row = {p: f"  # fitted to {file} {variant} {dtype}" for p, file, variant, dtype, *_ in STEP_FITS}
    notes = {"fused": "  # assumption: Inductor's Triton kernels stream like the copy (torchao's roofline: 92% of peak)"}

    def kernel_note(name: str) -> str:
        path = f"kernel_bw_efficiency.{name}"
        if path in by_row:
            return by_row[path]
        if path in fitted:
            return "  # fitted to the reference training trace's kernels" if name in TRACE_CLASSES else ""
        return notes.get(name, "  # assumption: no measurement of this kernel class")

    kernels = "\n".join(f"      {name}: {value:{'.4g' if f'kernel_bw_efficiency.{name}' in by_row else '.3g'}}"
                         + kernel_note(name) for name, value in sorted(kb.items()))
    rowwise = ""
    if c.gemm_rowwise_menu is not None or c.gemm_rowwise_setup_k or c.gemm_rowwise_efficiency != 1.0:
        rowwise = "\n    rowwise:                    # fp8 with fp32 scales per row of A / column of B (torchao's rowwise recipe)"
        if c.gemm_rowwise_efficiency != 1.0:
            rowwise += f"\n      efficiency: {c.gemm_rowwise_efficiency:.4g}  # of the fp8 efficiency"
        if c.gemm_rowwise_menu is not None:
            rowwise += (f"\n      tiles: {[list(t) for t in c.gemm_rowwise_menu.tiles]}  # PyTorch's rowwise kernel "
                        "on sm90, no split-k (aten/src/ATen/native/cuda/RowwiseScaledMM.cu)"
                        f"\n      max_split_k: {c.gemm_rowwise_menu.max_split_k}")
        fit = by_row.get("gemm_rowwise_setup_k", "").replace("  # ", "; ", 1)
        rowwise += f"\n      setup_k: {c.gemm_rowwise_setup_k:.0f}  # per-tile fixed cost in k steps{fit}"
    menus = "\n".join(f"      {d}: {{tiles: {[list(t) for t in m.tiles]}, max_split_k: {m.max_split_k}}}"
                       for d, m in c.gemm_menus.items())
    def trio(table: dict[str, float], fmt=lambda v: f"{v:.3g}") -> str:
        return "{" + ", ".join(f"{b}: {fmt(table[b])}" for b in ("flash", "cudnn", "efficient")) + "}"
    return f"""calibration:
  # GENERATED by `python3 validation/fit_h200.py --write` from reference/h200/calibration.csv
  # (torch 2.11 / CUDA 13.0 on H200 SXM). Edit the fit, not these numbers.
  source: validation/fit_h200.py on reference/h200/calibration.csv
  gemm:
    efficiency:                 # fraction of per-SM peak a CTA tile sustains in a full wave
{chr(10).join(f"      {d}: {v:.4g}" for d, v in ge.items())}
    kernels:                    # the library's CTA tiles and split-k, per dtype (torch._int_mm: no split-k)
{menus}
    int4_weight_only_efficiency: {c.int4_weight_only_efficiency:.4g}  # tinygemm (dequantize + bf16 MMA), of bf16 peak
    unaligned_efficiency: {c.gemm_unaligned_efficiency:.4g}  # n or k not 16-byte aligned; fitted to validation/h200_holdout.csv{rowwise}
  memory:
    efficiency: {c.memory_efficiency:.4g}             # streaming copy, of HBM bandwidth
    kernels:                    # achieved / streaming bandwidth of each kernel class
{kernels}
  attention:
    fwd: {trio(af)}        # of peak
    bwd: {trio(ab)}        # efficient: no fwd_bwd row; kept at flash's bwd/fwd ratio
    decode: {trio(ad)}     # of HBM bandwidth
    decode_block: {trio(ak, _us)}  # per 128 keys per CTA (head_dim 128)
    split_kv: {{{", ".join(f"{b}: {str(v).lower()}" for b, v in c.attention_split_kv.items())}}}
    setup_keys: {{{", ".join(f"{p}: {v:.4g}" for p, v in c.attention_setup_keys.items())}}}  # per-CTA fixed work, in keys
    fp32: {c.attention_fp32_efficiency:.4g}  # fp32 (tf32 off) attention, of fp32 peak; fitted to the fp32 train step
  latency:
    kernel: {_us(c.kernel_latency_s)}            # device-side fixed cost per kernel, besides DRAM latency
    graph_launch: {_us(c.graph_launch_s)}       # per kernel under CUDA-graph replay [§8, 47]
  host:
    dispatch:                   # host time to issue one op eagerly from Python
{chr(10).join(f"      {k}: {_us(v)}" for k, v in hd.items())}
  collective:
    latency: {_us(c.collective_latency_s)}           # device-side fixed cost of one NCCL collective
    efficiency:                 # achieved fraction of link bandwidth (bus bandwidth)
{chr(10).join(f"      {k}: {v:.4g}" for k, v in c.collective_efficiency.items())}
"""


def fit_power(power_json: Path, chip: Chip) -> dict[str, float]:
    """Closed-form energy coefficients from reference/h200/power.json:
    - HBM (all-in: DRAM + L2 + SM data movement): (P_copy - P_idle) / bytes moved per second;
    - bf16 at the boost clock: the GEMM phase's dynamic power, less its memory traffic, per FLOP/s,
      scaled from the measured clock f to the boost clock as f^(alpha - 1) (dynamic energy per
      operation ~ V^2 ~ f^2 with alpha = 3)."""
    phases = {p["phase"]: p for p in json.loads(power_json.read_text())}
    idle = phases["idle"]["avg_power_w"]
    copy, gemm = phases["copy_1GiB"], phases["gemm_bf16_8192"]
    e_byte = (copy["avg_power_w"] - idle) / (copy["gbps"] * 1e9)
    scale = gemm["sm_mhz_median"] * 1e6 / chip.clock_hz
    compute_w = gemm["avg_power_w"] - idle - e_byte * gemm["gbps"] * 1e9
    e_flop = compute_w / (gemm["tflops"] * 1e12) / scale ** (chip.power.dvfs_exponent - 1)
    return {"idle_w": idle, "hbm_pj_per_bit": e_byte * 1e12 / 8, "bf16_pj_per_flop": e_flop * 1e12}


def write_yaml(chip: Chip, power: dict[str, float], path: Path) -> None:
    text = path.read_text()
    head = text[: text.index("\ncalibration:") + 1]
    head = re.sub(r"(\n    energy: )[0-9.]+( pJ/bit +# fitted)", rf"\g<1>{power['hbm_pj_per_bit']:.3g}\2", head, count=1)
    head = re.sub(r"(\n    bf16: )[0-9.]+( pJ/FLOP +# fitted)", rf"\g<1>{power['bf16_pj_per_flop']:.3g}\2", head, count=1)
    head = re.sub(r"(\n    fp8: )[0-9.]+( pJ/FLOP +# bf16 x 0.55)",
                  rf"\g<1>{power['bf16_pj_per_flop'] * 0.55:.3g}\2", head, count=1)
    head = re.sub(r"(\n  idle: )[0-9.]+( W +# power.json)", rf"\g<1>{power['idle_w']:.4g}\2", head, count=1)
    path.write_text(head + render_calibration(chip))


def fit_trace_kernels(chip: Chip, trace: Path) -> Chip:
    """Per kernel class: the efficiency that makes the median predicted device time of the trace's
    kernels of that class equal to their median measured time (each kernel alone, boost clock)."""
    from chipsim.cost import cost_of
    from chipsim.workload.importers.kineto import import_kineto

    workload, _ = import_kineto(trace)
    for cls in TRACE_CLASSES:
        chip = put(chip, f"kernel_bw_efficiency.{cls}", 1.0)
        ratios = []
        for op in workload.ops:
            name = op.attrs.get("op") if op.kind == "elementwise" else (
                f"{op.attrs.get('type')}_bwd" if op.kind == "norm" and op.attrs.get("pass") == "bwd" else None)
            if name != cls:
                continue
            cost = cost_of(op, chip)
            if cost.mem_s > 10 * cost.fixed_s:  # bandwidth-bound kernels only
                ratios.append(cost.mem_s / (op.attrs["measured_s"] - cost.fixed_s))
        if ratios:
            chip = put(chip, f"kernel_bw_efficiency.{cls}", float(np.median(ratios)))
    return chip


def fit_step_rows(chip: Chip, folder: Path) -> Chip:
    """Each STEP_FITS parameter solved so that its row's predicted step time equals the measured one
    (rows of files in `folder`; a parameter whose file is absent keeps its value)."""
    from scipy.optimize import brentq

    for param, file, variant, dtype, lo, hi in STEP_FITS:
        if not (folder / file).is_file():
            continue
        frame = read_measurements(folder / file)
        row = frame[(frame["op"] == "train_step") & (frame["variant"] == variant)
                    & (frame["dtype"] == dtype)].reset_index(drop=True)

        def error(x: float, row=row, param=param, base=chip) -> float:
            pred, _ = validate(row, chip=None, chip_obj=put(base, param, x))
            return float(np.log(pred["predicted_us"].iloc[0] / pred["measured_us"].iloc[0]))

        chip = put(chip, param, float(brentq(error, lo, hi, xtol=1e-4 * hi)))
    return chip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=str(DEFAULT_CSV))
    parser.add_argument("--out", default=str(ROOT / "validation" / "fit_h200_result.json"))
    parser.add_argument("--write", action="store_true", help="rewrite the calibration block of h200_sxm.yaml")
    args = parser.parse_args()
    frame = read_measurements(args.csv)
    own = unaligned_rows(read_measurements(HOLDOUT)) if HOLDOUT.is_file() else frame.iloc[:0]
    chip = load_chip("h200_sxm")
    for name, (ops, params) in STAGES.items():
        chip = fit_stage(chip, own if name == "unaligned" else frame, ops, params)
        if name == "attention":  # no efficient fwd_bwd row: its backward keeps flash's bwd/fwd ratio
            c = chip.calibration
            ratio = c.attention_bwd_efficiency["flash"] / c.attention_fwd_efficiency["flash"]
            chip = put(chip, "attention_bwd_efficiency.efficient", c.attention_fwd_efficiency["efficient"] * ratio)
        print(f"[{name}]")
        for path, _, _ in params:
            value = get(chip, path)
            shown = f"{value * 1e6:.3f} us" if path.partition(".")[0].endswith("_s") else f"{value:.4f}"
            print(f"  {path:40s} {shown}")
    if TRAIN_TRACE.is_file():
        chip = fit_trace_kernels(chip, TRAIN_TRACE)
        print("[trace kernels]", ", ".join(f"{c} {chip.calibration.kernel_bw_efficiency[c]:.3g}" for c in TRACE_CLASSES))
    chip = fit_step_rows(chip, Path(args.csv).parent)
    print("[fp8 steps]", ", ".join(f"{p} {get(chip, p):.4g}" for p, *_ in STEP_FITS))
    pred, _ = validate(frame, chip=None, chip_obj=chip)
    summary = family_summary(pred)
    print(summary.to_string(index=False))
    fitted_paths = [p for _, (_, params) in STAGES.items() for p, _, _ in params]
    fitted_paths += [f"kernel_bw_efficiency.{c}" for c in TRACE_CLASSES if c in chip.calibration.kernel_bw_efficiency]
    fitted_paths += [p for p, *_ in STEP_FITS]
    result = {"fitted": {p: get(chip, p) for p in fitted_paths},
              "families": summary.to_dict("records")}
    Path(args.out).write_text(json.dumps(result, indent=1, default=lambda v: None if math.isnan(v) else v))
    print(f"wrote {args.out}")
    power = fit_power(Path(args.csv).with_name("power.json"), chip)
    print("[power]", ", ".join(f"{k} {v:.4g}" for k, v in power.items()))
    result["power"] = power
    Path(args.out).write_text(json.dumps(result, indent=1, default=lambda v: None if math.isnan(v) else v))
    if args.write:
        target = ROOT / "chipsim" / "chips" / "h200_sxm.yaml"
        write_yaml(chip, power, target)
        print(f"rewrote the calibration block of {target}")


if __name__ == "__main__":
    main()
