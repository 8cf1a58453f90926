"""`Result`: what one simulation produced, as dataclasses and pandas DataFrames (SI units)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from chipsim.engine.sim import SimOptions
    from chipsim.hardware.chip import Chip
    from chipsim.workload.graph import Workload


@dataclass(frozen=True)
class OpRecord:
    id: int
    name: str
    kind: str
    dtype: str
    stream: str
    device: int
    issue_s: float
    start_s: float
    end_s: float
    flops: float
    bytes: float
    energy_j: float
    clock_scale: float
    bound: str
    level: str
    mode: str
    alone_s: float
    deps: tuple[int, ...] = ()  # ids of the ops this one waited for (the workload's data dependencies)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        elif end > start:
            merged.append((start, end))
    return merged


def exposed_time(records: list[OpRecord]) -> float:
    """Seconds during which a comm-stream op runs and no other op does."""
    comm = _union([(r.start_s, r.end_s) for r in records if r.stream == "comm"])
    busy = _union([(r.start_s, r.end_s) for r in records if r.stream != "comm"])
    exposed, j = 0.0, 0
    for start, end in comm:
        covered = 0.0
        while j < len(busy) and busy[j][1] <= start:
            j += 1
        k = j
        while k < len(busy) and busy[k][0] < end:
            covered += min(end, busy[k][1]) - max(start, busy[k][0])
            k += 1
        exposed += (end - start) - covered
    return exposed


@dataclass
class Result:
    chip: str
    workload: str
    launch: str
    latency_s: float
    energy_j: float
    avg_power_w: float
    peak_power_w: float
    total_flops: float
    total_bytes: float
    throttled_time_s: float
    min_clock_scale: float
    footprint_bytes: float
    capacity_bytes: float
    memory_breakdown: dict[str, float]
    records: list[OpRecord]
    power_timeline: list[tuple[float, float]]  # (time s, board power W) steps
    limit_w: float = 0.0
    exposed_comm_s: float = 0.0  # time the comm stream is busy while no compute op runs
    system: str = ""
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ derived figures
    @property
    def target(self) -> str:
        """The system this ran on (one representative rank of it), else the chip."""
        return self.system or self.chip

    @property
    def achieved_flops_per_s(self) -> float:
        return self.total_flops / self.latency_s if self.latency_s > 0 else 0.0

    @property
    def achieved_bandwidth_bytes_per_s(self) -> float:
        return self.total_bytes / self.latency_s if self.latency_s > 0 else 0.0

    @property
    def fits_in_memory(self) -> bool:
        return self.footprint_bytes <= self.capacity_bytes

    @classmethod
    def build(cls, workload: Workload, chip: Chip, options: SimOptions, records: list[OpRecord],
              deltas: list[tuple[float, float]], system: str = "") -> Result:
        latency = max((r.end_s for r in records), default=0.0)
        dynamic = sum(r.energy_j for r in records)
        energy = dynamic + chip.power.idle_w * latency
        # board power as steps: sort the +/- deltas in time (starts before ends at the same instant
        # would overstate the peak, so ends first)
        timeline: list[tuple[float, float]] = []
        level = 0.0
        for t, delta in sorted(deltas[1:], key=lambda x: (x[0], x[1])):
            level += delta
            if timeline and timeline[-1][0] == t:
                timeline[-1] = (t, chip.power.idle_w + level)
            else:
                timeline.append((t, chip.power.idle_w + level))
        peak = max((p for _, p in timeline), default=chip.power.idle_w)
        throttled = sum(r.duration_s for r in records if r.clock_scale < 0.995)  # 10 MHz below boost
        notes = []
        footprint = workload.footprint_bytes
        if footprint > chip.hbm.capacity_bytes:
            notes.append(f"does not fit: needs {footprint / 1e9:.1f} GB, {chip.name} has "
                         f"{chip.hbm.capacity_bytes / 1e9:.1f} GB of HBM")
        if chip.weight_buffer is not None:
            wb = chip.weight_buffer
            served = sum(r.bytes for r in records if r.level == "weight_buffer")
            notes.append(f"dynamic weight buffer: {wb.capacity_bytes / 2**20:.0f} MiB at {wb.latency_s * 1e9:.0f} ns, "
                         f"+{wb.area_fraction:.1%} transistors; {served / 1e6:.1f} MB of ops' data touched it")
        opaque = sum(r.duration_s for r in records if r.kind == "opaque")
        if opaque:
            busy = sum(r.duration_s for r in records) or 1.0
            notes.append(f"opaque ops: {opaque * 1e3:.3f} ms of {busy * 1e3:.3f} ms busy time ({opaque / busy:.1%}) "
                         "replayed from measured durations; the rest re-costed by the model")
        modes = sorted({r.mode for r in records if r.mode and not r.mode.startswith("opaque")})
        exposed = exposed_time(records)
        if any(r.stream == "comm" for r in records):
            comm = sum(r.duration_s for r in records if r.stream == "comm")
            notes.append(f"communication: {comm * 1e3:.3f} ms busy, {exposed * 1e3:.3f} ms exposed "
                         "(not overlapped with compute)")
        notes.extend(f"ran: {m}" for m in modes)
        if throttled > 0:
            notes.append(f"power-capped: {throttled * 1e3:.2f} ms of ops ran below the boost clock "
                         f"(lowest {min(r.clock_scale for r in records) * chip.clock_hz / 1e6:.0f} MHz)")
        return cls(
            chip=chip.name, workload=workload.name, launch=options.launch, latency_s=latency, energy_j=energy,
            avg_power_w=energy / latency if latency > 0 else chip.power.idle_w, peak_power_w=peak,
            total_flops=sum(r.flops for r in records), total_bytes=sum(r.bytes for r in records),
            throttled_time_s=throttled, min_clock_scale=min((r.clock_scale for r in records), default=1.0),
            footprint_bytes=footprint, capacity_bytes=chip.hbm.capacity_bytes,
            memory_breakdown=dict(workload.memory), records=records, power_timeline=timeline,
            limit_w=chip.power.limit_w, exposed_comm_s=exposed, system=system, notes=notes,
        )

    # ------------------------------------------------------------ tables
    def ops_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame([asdict(r) for r in self.records])
        if frame.empty:
            return frame
        frame["duration_s"] = frame["end_s"] - frame["start_s"]
        frame["achieved_flops_per_s"] = frame["flops"] / frame["duration_s"].where(frame["duration_s"] > 0)
        frame["achieved_bandwidth_bytes_per_s"] = frame["bytes"] / frame["duration_s"].where(frame["duration_s"] > 0)
        return frame

    def summary(self) -> dict[str, Any]:
        return {
            "chip": self.chip, "workload": self.workload, "launch": self.launch,
            "latency_s": self.latency_s, "energy_j": self.energy_j, "avg_power_w": self.avg_power_w,
            "peak_power_w": self.peak_power_w, "achieved_flops_per_s": self.achieved_flops_per_s,
            "achieved_bandwidth_bytes_per_s": self.achieved_bandwidth_bytes_per_s,
            "total_flops": self.total_flops, "total_bytes": self.total_bytes, "op_count": len(self.records),
            "throttled_time_s": self.throttled_time_s,
            "footprint_bytes": self.footprint_bytes, "capacity_bytes": self.capacity_bytes,
            "fits_in_memory": self.fits_in_memory, "exposed_comm_s": self.exposed_comm_s, "system": self.system,
        }

    def summary_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.summary()])

    def top_ops(self, n: int = 8) -> pd.DataFrame:
        """Time by op name pattern (layer indices folded), largest first."""
        frame = self.ops_frame()
        if frame.empty:
            return frame
        frame["group"] = frame["name"].str.replace(r"\d+", "#", regex=True)
        grouped = frame.groupby(["group", "kind"], sort=False).agg(
            count=("id", "size"), time_s=("duration_s", "sum"), flops=("flops", "sum"), bytes=("bytes", "sum"),
            bound=("bound", lambda s: s.mode().iat[0]))
        total = frame["duration_s"].sum()
        grouped["share"] = grouped["time_s"] / total if total > 0 else 0.0
        return grouped.sort_values("time_s", ascending=False, kind="stable").head(n).reset_index()

    def to_json(self, top: int = 5) -> dict[str, Any]:
        """The summary plus every op (name, kind, start, duration, work, bound) and the top op groups."""
        out = self.summary()
        out["ops"] = [
            {"id": r.id, "name": r.name, "kind": r.kind, "stream": r.stream, "start_s": r.start_s,
             "duration_s": r.duration_s, "flops": r.flops, "bytes": r.bytes, "energy_j": r.energy_j,
             "bound": r.bound, "clock_scale": r.clock_scale}
            for r in self.records
        ]
        out["top_ops"] = [
            {"name": row.group, "kind": row.kind, "count": int(row.count), "time_s": float(row.time_s),
             "share": float(row.share), "bound": row.bound}
            for row in self.top_ops(top).itertuples()
        ]
        out["notes"] = list(self.notes)
        return out
