"""Collective algorithms over a system's topology, as phases of concurrent flows.

A collective is a list of phases; each phase is a set of point-to-point transfers that run together,
repeated `repeat` times (a ring's 2(N-1) steps are the same transfers each time: the step is
simulated once and multiplied, exactly, since the flows, their routes and the background are the
same every step). Phase time = slowest flow (max-min fair sharing over the links, plus path
latency); collective time = fixed launch latency + the sum of its phases.

Algorithms: ring, direct (all-to-all exchange, within a node), tree (double binary tree),
hierarchical (intra-node reduce-scatter, inter-node ring per rail, intra-node all-gather),
in_switch (NVLink SHARP within a node; SHARP in the fat tree across nodes).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from chipsim.errors import InputError
from chipsim.network.flows import FlowSet, simulate_flows
from chipsim.network.system import System
from chipsim.network.topology import Topology, build_topology

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "send_recv")
ALGORITHMS = ("auto", "ring", "direct", "tree", "hierarchical", "in_switch")
MAX_DIRECT_RANKS = 16


@dataclass(frozen=True)
class Transfer:
    src: int  # GPU rank, or -1 for "the switch" (in-switch reduction)
    dst: int
    nbytes: float
    path: tuple[int, ...] | None = None  # fixed path (switch transfers); None: routed


@dataclass(frozen=True)
class Phase:
    label: str
    transfers: tuple[Transfer, ...]
    repeat: int = 1
    hops: int = 1  # latency hops in sequence within one repeat (a pipelined tree: its depth)


@dataclass
class CollectiveReport:
    kind: str
    algorithm: str
    ranks: int
    nbytes: float
    seconds: float
    phases: list[tuple[str, int, float, int]] = field(default_factory=list)  # label, repeat, seconds, flows
    bytes_sent: float = 0.0  # over all ranks
    bytes_received: float = 0.0
    latency_s: float = 0.0  # the part of `seconds` that is path latency, not transfer
    method: str = ""

    @property
    def flows_simulated(self) -> int:
        return sum(p[3] for p in self.phases)


def _ring(ranks: list[int], chunk: float, steps: int, label: str) -> Phase:
    n = len(ranks)
    return Phase(label, tuple(Transfer(ranks[i], ranks[(i + 1) % n], chunk) for i in range(n)), steps)


def _ring_phases(kind: str, ranks: list[int], size: float, label: str = "ring") -> list[Phase]:
    n = len(ranks)
    if kind == "reduce_scatter":
        return [_ring(ranks, size / n, n - 1, f"{label} reduce-scatter")]
    if kind == "all_gather":
        return [_ring(ranks, size, n - 1, f"{label} all-gather")]
    if kind == "all_reduce":
        return [_ring(ranks, size / n, 2 * (n - 1), f"{label} reduce-scatter + all-gather")]
    if kind == "broadcast":  # pipelined chain: every hop carries the whole buffer concurrently
        chain = tuple(Transfer(ranks[i], ranks[i + 1], size) for i in range(n - 1))
        return [Phase(f"{label} broadcast (pipelined chain)", chain)]
    raise InputError(f"no ring algorithm for {kind}")


def _direct_phases(kind: str, ranks: list[int], size: float) -> list[Phase]:
    n = len(ranks)
    if n > MAX_DIRECT_RANKS:
        raise InputError(f"the direct algorithm exchanges with every peer: at most {MAX_DIRECT_RANKS} ranks, got {n}",
                         key="algorithm")
    def exchange(chunk: float, label: str) -> Phase:
        return Phase(label, tuple(Transfer(a, b, chunk) for a in ranks for b in ranks if a != b))
    if kind == "reduce_scatter":
        return [exchange(size / n, "direct reduce-scatter")]
    if kind == "all_gather":
        return [exchange(size, "direct all-gather")]
    if kind == "all_reduce":
        return [exchange(size / n, "direct reduce-scatter"), exchange(size / n, "direct all-gather")]
    if kind == "broadcast":
        return [Phase("direct broadcast", tuple(Transfer(ranks[0], b, size) for b in ranks[1:]))]
    raise InputError(f"no direct algorithm for {kind}")


def _tree_edges(ranks: list[int]) -> list[tuple[int, int]]:
    """(child, parent) edges of a binary tree in heap order over `ranks`."""
    return [(ranks[i], ranks[(i - 1) // 2]) for i in range(1, len(ranks))]


def _tree_phases(kind: str, ranks: list[int], size: float) -> list[Phase]:
    """Double binary tree (NCCL): two trees, each carrying half the data, pipelined, so each phase
    is all tree edges at once; a reduce up both trees, then a broadcast down."""
    if kind != "all_reduce":
        raise InputError(f"the tree algorithm is for all_reduce, not {kind}", key="algorithm")
    edges = _tree_edges(ranks) + _tree_edges(list(reversed(ranks)))
    up = tuple(Transfer(c, p, size / 2) for c, p in edges)
    down = tuple(Transfer(p, c, size / 2) for c, p in edges)
    depth = max(1, math.ceil(math.log2(len(ranks) + 1)) - 1)  # levels below the root
    return [Phase("tree reduce", up, hops=depth), Phase("tree broadcast", down, hops=depth)]


def _in_switch_phases(kind: str, ranks: list[int], size: float, topo: Topology) -> list[Phase]:
    if kind != "all_reduce":
        raise InputError(f"in-switch reduction is for all_reduce, not {kind}", key="algorithm")
    system = topo.system
    if len(ranks) <= system.gpus_per_node:
        if not system.fabric.in_switch_reduction:
            raise InputError(f"system '{system.name}' has no in-switch reduction (node_fabric.in_switch_reduction)",
                             key="algorithm")
        up = tuple(Transfer(r, -1, size, topo.to_switch(r)) for r in ranks)
        down = tuple(Transfer(-1, r, size, topo.from_switch(r)) for r in ranks)
        return [Phase("in-switch reduce + multicast", up + down)]
    assert system.scale_out is not None
    if not system.scale_out.in_network_reduction:
        raise InputError(f"system '{system.name}' has no in-network reduction (scale_out.in_network_reduction)",
                         key="algorithm")
    # SHARP: intra-node reduce-scatter, then each rail's slice reduced in the switches, then all-gather
    g = system.gpus_per_node
    if len(ranks) % g:
        raise InputError(f"in-network reduction needs whole nodes: a multiple of {g} ranks", key="group")
    n_nodes = len(ranks) // g
    phases = []
    for node in range(n_nodes):
        phases.extend(_ring_phases("reduce_scatter", ranks[node * g:(node + 1) * g], size, f"node{node}"))
    slice_ = size / g
    up = tuple(Transfer(r, -1, slice_, (topo.nic_up[r],)) for r in ranks)
    down = tuple(Transfer(-1, r, slice_, (topo.nic_down[r],)) for r in ranks)
    return [_merge(phases, "intra-node reduce-scatter"), Phase("SHARP reduce + multicast", up + down),
            _merge([_ring(ranks[n * g:(n + 1) * g], slice_, g - 1, "") for n in range(n_nodes)],
                   "intra-node all-gather")]


def _merge(phases: list[Phase], label: str) -> Phase:
    """Phases that run concurrently on disjoint ranks (one per node), with equal repeat counts."""
    transfers = tuple(t for p in phases for t in p.transfers)
    return Phase(label, transfers, phases[0].repeat)


def _hierarchical_phases(kind: str, ranks: list[int], size: float, topo: Topology) -> list[Phase]:
    g = topo.system.gpus_per_node
    if len(ranks) % g:
        raise InputError(f"the hierarchical algorithm needs whole nodes: a multiple of {g} ranks, got {len(ranks)}",
                         key="group")
    n_nodes = len(ranks) // g
    nodes = [ranks[n * g:(n + 1) * g] for n in range(n_nodes)]
    rails = [[ranks[n * g + r] for n in range(n_nodes)] for r in range(g)]
    if kind == "all_reduce":
        intra_rs = _merge([_ring(node, size / g, g - 1, "") for node in nodes], "intra-node reduce-scatter")
        inter = _merge([_ring(rail, size / g / n_nodes, 2 * (n_nodes - 1), "") for rail in rails],
                       "inter-node ring all-reduce (one ring per rail)")
        intra_ag = _merge([_ring(node, size / g, g - 1, "") for node in nodes], "intra-node all-gather")
        return [p for p in (intra_rs, inter, intra_ag) if p.repeat > 0]
    if kind == "all_gather":
        inter = _merge([_ring(rail, size, n_nodes - 1, "") for rail in rails], "inter-node all-gather per rail")
        intra = _merge([_ring(node, size * n_nodes, g - 1, "") for node in nodes], "intra-node all-gather")
        return [p for p in (inter, intra) if p.repeat > 0]
    if kind == "reduce_scatter":
        intra = _merge([_ring(node, size / g, g - 1, "") for node in nodes], "intra-node reduce-scatter")
        inter = _merge([_ring(rail, size / g / n_nodes, n_nodes - 1, "") for rail in rails],
                       "inter-node reduce-scatter per rail")
        return [p for p in (intra, inter) if p.repeat > 0]
    raise InputError(f"no hierarchical algorithm for {kind}", key="algorithm")


def choose_algorithm(kind: str, ranks: int, system: System) -> str:
    if kind in ("send_recv", "broadcast"):
        return "ring"
    if ranks > system.gpus_per_node and ranks % system.gpus_per_node == 0:
        return "hierarchical"
    if system.fabric.kind == "all_to_all" and ranks <= MAX_DIRECT_RANKS and kind != "broadcast":
        return "direct"
    return "ring"


def plan(kind: str, size: float, ranks: int, algorithm: str, topo: Topology) -> tuple[str, list[Phase]]:
    system = topo.system
    if kind not in KINDS:
        raise InputError(f"unknown collective '{kind}'; expected one of {', '.join(KINDS)}", key="kind")
    if algorithm not in ALGORITHMS:
        raise InputError(f"unknown algorithm '{algorithm}'; expected one of {', '.join(ALGORITHMS)}", key="algorithm")
    if not 1 <= ranks <= system.world:
        raise InputError(f"a collective over {ranks} ranks does not fit system '{system.name}' "
                         f"({system.world} GPUs)", key="group")
    members = list(range(ranks))
    if kind == "send_recv":
        if ranks < 2:
            raise InputError("send_recv needs 2 ranks", key="group")
        return "direct", [Phase("send", (Transfer(0, ranks - 1, size),))]
    if algorithm == "auto":
        algorithm = choose_algorithm(kind, ranks, system)
    builders = {
        "ring": lambda: _ring_phases(kind, members, size),
        "direct": lambda: _direct_phases(kind, members, size),
        "tree": lambda: _tree_phases(kind, members, size),
        "hierarchical": lambda: _hierarchical_phases(kind, members, size, topo),
        "in_switch": lambda: _in_switch_phases(kind, members, size, topo),
    }
    return algorithm, builders[algorithm]()


# ---------------------------------------------------------------- routing and simulation


def _route(topo: Topology, transfers: tuple[Transfer, ...], background: list[tuple[int, int]],
           routing: str) -> list[tuple[int, ...]]:
    """One path per transfer (background first): ECMP hashes (src, dst) onto a candidate path, so
    flows can collide; adaptive places each flow on its least-loaded candidate."""
    load = np.zeros(len(topo.capacity))
    capacity = topo.capacity_array
    paths = []
    for src, dst, fixed in [(s, d, None) for s, d in background] + [(t.src, t.dst, t.path) for t in transfers]:
        if fixed is not None:
            path = fixed
        else:
            candidates = topo.paths(src, dst)
            if len(candidates) == 1:
                path = candidates[0]
            else:
                hashed = zlib.crc32(f"{src}>{dst}".encode()) % len(candidates)
                if routing == "ecmp":
                    path = candidates[hashed]
                else:  # least loaded over the links where the candidates differ; ties as ECMP would
                    path = _least_loaded(candidates, load, capacity, hashed)
        for link in path:
            load[link] += 1
        paths.append(path)
    return paths


def _least_loaded(candidates: list[tuple[int, ...]], load: np.ndarray, capacity: np.ndarray,
                  hashed: int) -> tuple[int, ...]:
    """The candidate whose most-utilized link (among those where candidates differ) is least
    utilized, then the least total; remaining ties go the way ECMP's hash would."""
    common = set(candidates[0]).intersection(*candidates[1:])

    def score(i: int) -> tuple[float, float, int]:
        util = [(load[link] + 1) / capacity[link] for link in candidates[i] if link not in common]
        return (max(util, default=0.0), sum(util), (i - hashed) % len(candidates))

    return candidates[min(range(len(candidates)), key=score)]


def _background(topo: Topology) -> list[tuple[int, int]]:
    """Other jobs' traffic: each NIC sends to a random other node's NIC (seeded), capped at
    `background_load` of the NIC bandwidth."""
    system = topo.system
    if system.background_load <= 0 or system.scale_out is None or system.nodes < 2:
        return []
    rng = np.random.default_rng(system.seed)
    perm = rng.permutation(system.world)
    g = system.gpus_per_node
    pairs = []
    for src, dst in zip(range(system.world), perm, strict=True):
        if src // g == dst // g:
            dst = (dst + g) % system.world
        pairs.append((src, int(dst)))
    return pairs


def simulate_phase(topo: Topology, phase: Phase) -> tuple[float, int, float]:
    """(time of the phase's slowest flow, flows simulated, the longest path latency)."""
    system = topo.system
    background = _background(topo)
    transfers = tuple(t for t in phase.transfers if t.nbytes > 0 and (t.src != t.dst))
    if not transfers:
        return 0.0, 0, 0.0
    paths = _route(topo, transfers, background, system.routing)
    sizes = np.array([np.inf] * len(background) + [t.nbytes for t in transfers])
    caps = np.full(sizes.size, np.inf)
    if background:
        assert system.scale_out is not None
        caps[:len(background)] = system.background_load * system.scale_out.nic_bandwidth_bytes_per_s
    latency = np.array([topo.path_latency(p) for p in paths])
    done = simulate_flows(FlowSet(paths, sizes, caps), topo.capacity_array, latency)
    return float(done[len(background):].max()), len(transfers), float(latency[len(background):].max())


@lru_cache(maxsize=16)
def topology_of(system: System) -> Topology:
    return build_topology(system)


@lru_cache(maxsize=4096)
def collective(system: System, kind: str, size: float, ranks: int, algorithm: str = "auto") -> CollectiveReport:
    """Time of one collective of `size` bytes per rank over the first `ranks` GPUs of `system`."""
    topo = topology_of(system)
    if ranks <= 1 or size <= 0:
        return CollectiveReport(kind, "none", ranks, size, 0.0, method="no transfer")
    chosen, phases = plan(kind, size, ranks, algorithm, topo)
    report = CollectiveReport(kind, chosen, ranks, size, 0.0)
    for phase in phases:
        seconds, flows, latency = simulate_phase(topo, phase)
        seconds += (phase.hops - 1) * latency  # a pipeline's fill: one more hop per level
        report.phases.append((phase.label, phase.repeat, seconds, flows))
        report.seconds += seconds * phase.repeat
        report.latency_s += phase.hops * latency * phase.repeat
        moved = sum(t.nbytes for t in phase.transfers if t.src != t.dst) * phase.repeat
        report.bytes_sent += moved
        report.bytes_received += moved
    repeated = sum(1 for p in phases if p.repeat > 1)
    report.method = (f"symmetric: {repeated} repeated step(s) simulated once each "
                     f"({sum(p.repeat for p in phases)} steps, {report.flows_simulated} flows simulated)"
                     if repeated else f"full: {report.flows_simulated} flows simulated")
    return report
