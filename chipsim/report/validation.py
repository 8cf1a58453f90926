"""What `chipsim validate` prints: the per-family (and per-chip) error table, the skipped rows with
their reasons and the power phases, as text or as one strict-JSON object."""

from __future__ import annotations

from typing import Any

import pandas as pd


def validation_json(predictions: pd.DataFrame, skipped: pd.DataFrame, summary: pd.DataFrame, chip: str | None,
                    power: pd.DataFrame | None) -> dict[str, Any]:
    chips = sorted({str(c) for c in predictions.loc[predictions["skipped_reason"] == "", "chip"]})
    families = summary.to_dict("records")
    for family in families:  # each family's chip: its group's, or the one chip every row ran on
        family.setdefault("chip", chips[0] if len(chips) == 1 else chip)
    return {
        "rows": int(len(predictions)), "simulated": int(len(predictions) - len(skipped)),
        "skipped_rows": int(len(skipped)), "chip": chip, "chips": chips, "by_chip": "chip" in summary.columns,
        "families": families,
        "skipped": [{"row": int(i), "op": str(r["op"]), "variant": str(r["variant"]),
                     "chip": str(r["chip"]) or None, "reason": r["skipped_reason"]}
                    for i, r in skipped.iterrows()],
        "power": power.to_dict("records") if power is not None else None,
    }


def validation_text(predictions: pd.DataFrame, skipped: pd.DataFrame, summary: pd.DataFrame, chip: str | None,
                    power: pd.DataFrame | None, power_source: str = "") -> str:
    view = pd.DataFrame({
        **({"chip": summary["chip"]} if "chip" in summary.columns else {}),
        "family": summary["family"], "rows": summary["rows"],
        "median APE": [f"{x:.1%}" for x in summary["median_ape"]],
        "p90 APE": [f"{x:.1%}" for x in summary["p90_ape"]],
        "worst": [f"{a:.0%} {w}" for a, w in zip(summary["max_ape"], summary["worst"], strict=True)],
    })
    lines = [f"{len(predictions) - len(skipped)} of {len(predictions)} rows simulated"
             f"{' on ' + chip if chip else ''}" + (f"; {len(skipped)} skipped (reasons below)" if len(skipped) else ""),
             view.to_string(index=False)]
    lines += [f"skipped row {i} ({r['op']}): {r['skipped_reason']}" for i, r in skipped.iterrows()]
    if power is not None:
        lines.append(f"\npower phases ({power_source}):")
        for r in power.to_dict("records"):
            line = (f"  {r['phase']:<16} measured {r['measured_w']:6.1f} W  predicted {r['predicted_w']:6.1f} W  "
                    f"({r['ape']:.1%})")
            if not pd.isna(r.get("predicted_clock_mhz", float("nan"))):
                line += (f"; clock {r['predicted_clock_mhz']:.0f} vs {r['measured_clock_mhz']:.0f} MHz, "
                         f"{r['predicted_tflops']:.0f} vs {r['measured_tflops']:.0f} TFLOP/s")
            lines.append(line)
    return "\n".join(lines)
