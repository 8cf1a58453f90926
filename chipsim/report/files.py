"""Writing a run's files (summary.csv, ops.csv, timeline.json, PNG plots) all-or-nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from chipsim.hardware.chip import Chip
from chipsim.report.result import Result
from chipsim.report.trace import chrome_trace


def write_run_outputs(results: Sequence[Result], chips: Mapping[str, Chip], out_dir: Path,
                      reports: Sequence[str]) -> list[Path]:
    """Render everything into a temporary folder, then move the files into `out_dir`: a failure
    half-way leaves `out_dir` as it was."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
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
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in names:
            os.replace(staging / name, out_dir / name)
            written.append(out_dir / name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
