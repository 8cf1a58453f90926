"""Flow-level network simulation: flows share links max-min fairly (progressive filling), rates are
recomputed whenever a flow finishes. Vectorized over flows (numpy), so one step of a collective over
thousands of ranks is a handful of array operations per rate change, not a Python event per flow."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


@dataclass
class FlowSet:
    """Flows over directed links as a CSR incidence: flow `entry_flow[i]` crosses link
    `entry_link[i]`; `sizes[f]` bytes (np.inf: a persistent background flow); `caps[f]` a per-flow
    rate limit (np.inf: none)."""

    entry_flow: np.ndarray
    entry_link: np.ndarray
    sizes: np.ndarray
    caps: np.ndarray

    @classmethod
    def from_paths(cls, paths: list[tuple[int, ...]], sizes: np.ndarray, caps: np.ndarray) -> FlowSet:
        entry_flow = np.repeat(np.arange(len(paths)), [len(p) for p in paths])
        entry_link = np.fromiter((link for p in paths for link in p), dtype=np.int64,
                                 count=int(sum(len(p) for p in paths)))
        return cls(entry_flow, entry_link, np.asarray(sizes, dtype=float), np.asarray(caps, dtype=float))

    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        return self.entry_flow, self.entry_link


def maxmin_rates(entry_flow: np.ndarray, entry_link: np.ndarray, active: np.ndarray, caps: np.ndarray,
                 capacity: np.ndarray) -> np.ndarray:
    """Max-min fair rates of the `active` flows (bool mask) over links of `capacity`, each flow
    also limited by its own cap. Progressive filling: raise all unfrozen flows together until a link
    (or a flow's cap) saturates, freeze the flows it limits, repeat."""
    n_flows = active.size
    rate = np.zeros(n_flows)
    left = capacity.astype(float).copy()
    unfrozen = active.copy()
    level = 0.0
    while unfrozen.any():
        live = unfrozen[entry_flow]
        counts = np.bincount(entry_link[live], minlength=left.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(counts > 0, left / np.maximum(counts, 1), np.inf)
        link_step = share.min()
        cap_step = (caps[unfrozen] - level).min() if np.isfinite(caps[unfrozen]).any() else np.inf
        step = min(link_step, cap_step)
        if not np.isfinite(step):  # flows that cross no link and have no cap: unconstrained
            rate[unfrozen] = np.inf
            break
        level += step
        # every unfrozen flow gains `step` on every link it crosses
        left -= step * counts
        saturated = left <= np.maximum(_EPS, 1e-9 * capacity)
        frozen = np.zeros(n_flows, dtype=bool)
        if link_step <= step * (1 + 1e-9):
            hit = live & saturated[entry_link]
            frozen[entry_flow[hit]] = True
        frozen |= unfrozen & (caps <= level * (1 + 1e-9))
        frozen &= unfrozen
        rate[frozen] = level
        unfrozen &= ~frozen
    return rate


def simulate_flows(flows: FlowSet, capacity: np.ndarray, path_latency: np.ndarray) -> np.ndarray:
    """Completion time of each finite flow, all starting at t = 0 (persistent flows: inf). Returns
    the transfer end plus the path's latency."""
    entry_flow, entry_link = flows.csr()
    remaining = flows.sizes.astype(float).copy()
    finite = np.isfinite(remaining)
    done = np.full(remaining.size, np.inf)
    active = remaining > 0
    done[finite & ~active] = 0.0
    now = 0.0
    while (active & finite).any():
        rate = maxmin_rates(entry_flow, entry_link, active, flows.caps, capacity)
        fin = active & finite
        with np.errstate(divide="ignore", invalid="ignore"):
            ttf = np.where(fin & (rate > 0), remaining / rate, np.inf)
        dt = ttf.min()
        if not np.isfinite(dt):
            raise RuntimeError("flows cannot progress: a link on their path has no capacity")
        now += dt
        remaining[active] -= rate[active] * dt
        finished = fin & (ttf <= dt * (1 + 1e-9))
        done[finished] = now
        active &= ~finished
    return done + path_latency
