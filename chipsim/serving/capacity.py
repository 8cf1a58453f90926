"""The capacity of a serving setup under latency SLOs: the highest request rate whose run meets every
SLO, found by bisection.

- SLOs are written `name=value[unit]` pairs separated by commas, e.g. `ttft_p99=500ms,tpot_p99=50ms`:
  names `ttft`, `tpot`, `itl`, `e2e` with `_mean`, `_p50`, `_p90` or `_p99`; units `ms` (the default)
  or `s`. A figure the run cannot measure (TPOT when every request emits one token) is no violation.
- The search runs the setup's requests (its count, lengths and seed) as an open stream at a rate:
  Poisson, or gamma with the config's `cv` when its process is gamma. With a fixed seed the arrival
  times at rate r are one pattern scaled by 1/r, so the figures move steadily with the rate.
- Bounds: the engine's saturation rate (the request throughput of a burst, every request at t = 0) and
  a thousandth of it. At saturation the queue grows without bound in a long run, so the capacity is at
  most that rate: when even it meets the SLOs, the answer is the saturation rate itself
  (`throughput_bound`). When the lowest rate misses them, no rate meets them (`rate` is None).
- Between the two, bisection in log space until the bracket is within `tolerance` (2%); the answer is
  the highest rate tried that met every SLO.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chipsim.errors import InputError
from chipsim.serving.config import ServingSetup
from chipsim.serving.run import ServingRun, run_serving

FAMILIES = ("ttft", "tpot", "itl", "e2e")
STATS = ("mean", "p50", "p90", "p99")
SLO_NAMES = tuple(f"{f}_{s}" for f in FAMILIES for s in STATS)
_PAIR = re.compile(r"([a-z0-9_]+)\s*=\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(ms|s)?")
TOLERANCE = 0.02
FLOOR = 1e-3  # the lowest rate tried, as a fraction of the saturation rate


def parse_slo(text: str, key: str = "--slo") -> dict[str, float]:
    """`ttft_p99=500ms,tpot_p99=50ms` -> {'ttft_p99': 0.5, 'tpot_p99': 0.05} (seconds)."""
    out: dict[str, float] = {}
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise InputError(f"expected name=value[ms|s] pairs separated by commas, e.g. ttft_p99=500ms,tpot_p99=50ms; "
                         f"got {text!r}", key=key)
    for item in items:
        match = _PAIR.fullmatch(item.lower())
        if not match:
            raise InputError(f"expected name=value[ms|s] (e.g. ttft_p99=500ms), got {item!r}", key=key)
        name, value, unit = match.group(1), float(match.group(2)), match.group(3) or "ms"
        if name not in SLO_NAMES:
            raise InputError(f"unknown SLO {name!r}; expected {', '.join(f + '_*' for f in FAMILIES)} with "
                             f"{'|'.join(STATS)}", key=key)
        if name in out:
            raise InputError(f"SLO {name!r} given twice", key=key)
        if not 0 < value < math.inf:
            raise InputError(f"{name}: expected a time above zero, got {item!r}", key=key)
        out[name] = value * (1e-3 if unit == "ms" else 1.0)
    return out


def violations(summary: Mapping[str, Any], slo: Mapping[str, float]) -> list[str]:
    """The SLOs `summary` misses, as 'ttft_p99 612 ms > 500 ms'."""
    missed = []
    for name, limit in slo.items():
        value = summary[f"{name}_s"]
        if value is not None and math.isfinite(value) and value > limit:
            missed.append(f"{name} {value * 1e3:.4g} ms > {limit * 1e3:.4g} ms")
    return missed


@dataclass
class Probe:
    rate: float
    meets: bool
    missed: list[str]
    summary: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"rate_per_s": self.rate, "meets": self.meets, "missed": self.missed,
                **{f"{n}_s": self.summary[f"{n}_s"] for n in SLO_NAMES},
                "output_tokens_per_s": self.summary["output_tokens_per_s"]}


@dataclass
class Capacity:
    slo: dict[str, float]
    saturation_rate: float  # requests/s of a burst run
    rate: float | None  # the highest rate found to meet every SLO; None: not even the lowest rate does
    throughput_bound: bool  # the saturation rate itself meets the SLOs
    run: ServingRun | None  # the run at `rate`
    probes: list[Probe] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"rate_per_s": self.rate, "saturation_rate_per_s": self.saturation_rate,
                "throughput_bound": self.throughput_bound, "slo_s": self.slo,
                "probes": [p.to_json() for p in self.probes]}


def find_capacity(setup: ServingSetup, slo: Mapping[str, float], progress: Callable[[str], None] | None = None,
                  tolerance: float = TOLERANCE) -> Capacity:
    """The highest rate of `setup`'s requests that meets every SLO (see the module notes)."""
    if not slo:
        raise InputError("no SLO to meet", key="--slo")
    say = progress or (lambda _: None)
    from dataclasses import replace

    from chipsim.serving.config import ArrivalSpec

    burst = run_serving(replace(setup, arrival=ArrivalSpec("burst")))
    saturation = float(burst.summary["requests_per_s"])
    say(f"saturation: {saturation:.4g} req/s ({burst.summary['output_tokens_per_s']:,.0f} output tok/s in a burst of "
        f"{setup.requests:,} requests)")
    probes: list[Probe] = []
    runs: dict[float, ServingRun] = {}

    def probe(rate: float) -> bool:
        run = run_serving(setup.at_rate(rate))
        missed = violations(run.summary, slo)
        probes.append(Probe(rate, not missed, missed, run.summary))
        runs[rate] = run
        figures = ", ".join(f"{n} {run.summary[f'{n}_s'] * 1e3:.4g} ms" for n in slo)
        say(f"probe {len(probes)}: {rate:.4g} req/s: {figures}: {'meets' if not missed else 'misses'}")
        return not missed

    rate = search_rate(saturation, probe, tolerance)
    return Capacity(dict(slo), saturation, rate, rate == saturation, runs[rate] if rate is not None else None, probes)


def search_rate(saturation: float, meets: Callable[[float], bool], tolerance: float = TOLERANCE) -> float | None:
    """The highest rate up to `saturation` at which `meets` holds: `saturation` itself when it does
    there, None when not even `saturation * FLOOR` does, else the low end of a log-space bisection
    bracket narrowed to within `tolerance` (see the module notes)."""
    if meets(saturation):
        return saturation
    lo, hi = saturation * FLOOR, saturation
    if not meets(lo):
        return None
    while hi / lo > 1 + tolerance:
        mid = math.sqrt(lo * hi)
        if meets(mid):
            lo = mid
        else:
            hi = mid
    return lo
