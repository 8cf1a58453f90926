"""Collective algorithms over a system's topology, as phases of concurrent flows.

A collective spans the ranks of its communicator. It is a list of phases; each phase is a set of
point-to-point transfers that run together, repeated `repeat` times (a ring's 2(N-1) steps are the
same transfers each time: the step is simulated once and multiplied, exactly, since the flows, their
routes and the background are the same every step). A phase made of identical rings inside each
node (whose links no other node shares) is simulated for one node only, again exactly. Phase time =
slowest flow (max-min fair sharing over the links, plus path latency); collective time = the sum of
its phases.

Algorithms: ring, direct (every pair at once: all-to-all, or small groups), tree (double binary
tree), hierarchical (intra-node reduce-scatter, inter-node ring per rail, intra-node all-gather),
in_switch (NVLink SHARP within a node; SHARP in the fat tree across nodes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from chipsim.errors import InputError
from chipsim.network.flows import FlowSet, simulate_flows
from chipsim.network.system import System
from chipsim.network.topology import Routed, Topology, build_topology
from chipsim.vocab import ALGORITHMS, COLLECTIVE_KINDS
from chipsim.workload.comm import Communicator

MAX_DIRECT_RANKS = 16  # reductions by direct exchange (every pair) beyond this are not what NCCL runs
MAX_ALL_TO_ALL_RANKS = 512  # every pair is a flow: 512 ranks are 261,632 flows


@dataclass(frozen=True)
class Phase:
    """Transfers src[i] -> dst[i] of nbytes[i] that run together, `repeat` times in a row.
    `switch`: the transfers go to (src -1) or from (dst -1) a switch that reduces or multicasts:
    'node' (NVSwitch) or 'network' (the leaf, through the NIC); '' for GPU-to-GPU transfers.
    `copies`: identical, disjoint copies of these transfers that also run (other nodes)."""

    label: str
    src: np.ndarray
    dst: np.ndarray
    nbytes: np.ndarray
    repeat: int = 1
    hops: int = 1  # latency hops in sequence within one repeat (a pipelined tree: its depth)
    switch: str = ""
    copies: int = 1


def _phase(label: str, src: np.ndarray | list[int], dst: np.ndarray | list[int], nbytes: float, repeat: int = 1,
           **kw: object) -> Phase:
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    return Phase(label, src, dst, np.full(src.size, float(nbytes)), repeat, **kw)  # type: ignore[arg-type]


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
    def steps(self) -> int:
        """Sequential steps, each a synchronization between neighbours (a ring's 2(N-1))."""
        return sum(p[1] for p in self.phases)

    @property
    def flows_simulated(self) -> int:
        return sum(p[3] for p in self.phases)


def _ring(ranks: np.ndarray, chunk: float, steps: int, label: str) -> Phase:
    return _phase(label, ranks, np.roll(ranks, -1), chunk, steps)


def _rail_rings(lay: Layout, chunk: float, steps: int, label: str, all_to_all: bool = False) -> Phase:
    """NCCL's rings across nodes: one channel per member of a node (per NIC rail), each a ring over
    every rank carrying 1/p of the data. Channel c goes through each node's members in turn, starting
    where the previous node left off, so it leaves node j and enters node j+1 on the same rail, and
    the channels leave each node on p different rails: every NIC carries one channel. On a switch
    every channel steps to the next member; on point-to-point links (`all_to_all`: MI300X's xGMI) the
    channels step by different strides coprime with p, as RCCL's rings do, so they spread over
    different links instead of all crossing the same p - 1."""
    n, p = lay.nodes, lay.per_node
    strides = [s for s in range(1, p) if math.gcd(s, p) == 1] if all_to_all and p > 2 else [1]
    stride = np.array([strides[c % len(strides)] for c in range(p)])[None, :, None]
    node = np.arange(n)[:, None, None]
    position = (np.arange(p)[None, :, None] + (node * (p - 1) + np.arange(p)[None, None, :]) * stride) % p
    rings = lay.by_node[node, position].transpose(1, 0, 2).reshape(p, n * p)  # channel -> ranks in ring order
    return _phase(f"{label}, {p} channel(s) across {n} nodes", rings.ravel(), np.roll(rings, -1, axis=1).ravel(),
                  chunk / p, steps)


def _ring_phases(kind: str, ranks: np.ndarray, size: float, topo: Topology) -> list[Phase]:
    n = ranks.size
    traffic = {"reduce_scatter": (size / n, n - 1, "ring reduce-scatter"),
               "all_gather": (size, n - 1, "ring all-gather"),
               "all_reduce": (size / n, 2 * (n - 1), "ring reduce-scatter + all-gather")}
    if kind in traffic:
        chunk, steps, label = traffic[kind]
        lay = layout(ranks, topo)
        if lay is not None and lay.nodes > 1:
            return [_rail_rings(lay, chunk, steps, label, topo.system.fabric.kind == "all_to_all")]
        return [_ring(ranks, chunk, steps, label)]
    if kind == "broadcast":  # pipelined chain: every hop carries the whole buffer concurrently
        return [_phase("ring broadcast (pipelined chain)", ranks[:-1], ranks[1:], size, hops=n - 1)]
    raise InputError(f"no ring algorithm for {kind}", key="attrs.algorithm")


def _all_pairs(ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = ranks.size
    src, dst = np.repeat(ranks, n), np.tile(ranks, n)
    keep = src != dst
    return src[keep], dst[keep]


def _direct_phases(kind: str, ranks: np.ndarray, size: float) -> list[Phase]:
    n = ranks.size
    limit = MAX_ALL_TO_ALL_RANKS if kind == "all_to_all" else MAX_DIRECT_RANKS
    if n > limit:
        raise InputError(f"the direct algorithm exchanges with every peer: at most {limit} ranks for {kind}, got {n}",
                         key="attrs.algorithm")
    src, dst = _all_pairs(ranks)
    if kind in ("reduce_scatter", "all_to_all"):
        return [_phase(f"direct {kind.replace('_', '-')}", src, dst, size / n)]
    if kind == "all_gather":
        return [_phase("direct all-gather", src, dst, size)]
    if kind == "all_reduce":
        return [_phase("direct reduce-scatter", src, dst, size / n), _phase("direct all-gather", src, dst, size / n)]
    if kind == "broadcast":
        return [_phase("direct broadcast", np.full(n - 1, ranks[0]), ranks[1:], size)]
    raise InputError(f"no direct algorithm for {kind}", key="attrs.algorithm")


def _tree_phases(kind: str, ranks: np.ndarray, size: float) -> list[Phase]:
    """Double binary tree (NCCL): two trees, each carrying half the data, pipelined, so each phase
    is all tree edges at once; a reduce up both trees, then a broadcast down."""
    if kind != "all_reduce":
        raise InputError(f"the tree algorithm is for all_reduce, not {kind}", key="attrs.algorithm")
    child = np.arange(1, ranks.size)
    parent = (child - 1) // 2
    rev = ranks[::-1]
    children = np.concatenate([ranks[child], rev[child]])
    parents = np.concatenate([ranks[parent], rev[parent]])
    depth = max(1, math.ceil(math.log2(ranks.size + 1)) - 1)  # levels below the root
    return [_phase("tree reduce", children, parents, size / 2, hops=depth),
            _phase("tree broadcast", parents, children, size / 2, hops=depth)]


@dataclass(frozen=True)
class Layout:
    """A communicator's ranks by node: `by_node[i]` are node i's members, in communicator order."""

    by_node: np.ndarray  # nodes x members per node

    @property
    def nodes(self) -> int:
        return int(self.by_node.shape[0])

    @property
    def per_node(self) -> int:
        return int(self.by_node.shape[1])


def layout(ranks: np.ndarray, topo: Topology) -> Layout | None:
    """The members grouped by node, if every node holds the same number of them (else None)."""
    nodes = topo.node_of(ranks)
    order = np.argsort(nodes, kind="stable")
    _, counts = np.unique(nodes, return_counts=True)
    if counts.min() != counts.max():
        return None
    return Layout(ranks[order].reshape(counts.size, int(counts[0])))


def _per_node(by_node: np.ndarray, chunk: float, steps: int, label: str) -> Phase:
    """The same ring inside each node: one node's transfers, the others as identical copies."""
    node = by_node[0]
    return Phase(label, node, np.roll(node, -1), np.full(node.size, float(chunk)), steps, copies=by_node.shape[0])


def _rails(by_node: np.ndarray, chunk: float, steps: int, label: str) -> Phase:
    """One ring per rail (members at the same position in every node), all rails at once."""
    src = by_node.T.ravel()
    dst = np.roll(by_node, -1, axis=0).T.ravel()
    return _phase(label, src, dst, chunk, steps)


def _need_layout(ranks: np.ndarray, topo: Topology, what: str) -> Layout:
    lay = layout(ranks, topo)
    if lay is None:
        raise InputError(f"the {what} algorithm needs the same number of the communicator's ranks on every node "
                         f"({topo.gpus_per_node} GPUs per node)", key="attrs.algorithm")
    return lay


def _hierarchical_phases(kind: str, ranks: np.ndarray, size: float, topo: Topology) -> list[Phase]:
    lay = _need_layout(ranks, topo, "hierarchical")
    g, n = lay.per_node, lay.nodes
    if kind == "all_reduce":
        phases = [_per_node(lay.by_node, size / g, g - 1, "intra-node reduce-scatter"),
                  _rails(lay.by_node, size / g / n, 2 * (n - 1), "inter-node ring all-reduce (one ring per rail)"),
                  _per_node(lay.by_node, size / g, g - 1, "intra-node all-gather")]
    elif kind == "all_gather":
        phases = [_rails(lay.by_node, size, n - 1, "inter-node all-gather per rail"),
                  _per_node(lay.by_node, size * n, g - 1, "intra-node all-gather")]
    elif kind == "reduce_scatter":
        phases = [_per_node(lay.by_node, size / g, g - 1, "intra-node reduce-scatter"),
                  _rails(lay.by_node, size / g / n, n - 1, "inter-node reduce-scatter per rail")]
    else:
        raise InputError(f"no hierarchical algorithm for {kind}", key="attrs.algorithm")
    return [p for p in phases if p.repeat > 0]


def _through_switch(label: str, ranks: np.ndarray, nbytes: float, switch: str) -> Phase:
    """Every rank sends its data up to the switch, which reduces it, and receives the result back,
    both directions at once."""
    none = np.full(ranks.size, -1)
    return _phase(label, np.concatenate([ranks, none]), np.concatenate([none, ranks]), nbytes, switch=switch)


def _in_switch_phases(kind: str, ranks: np.ndarray, size: float, topo: Topology) -> list[Phase]:
    if kind != "all_reduce":
        raise InputError(f"in-switch reduction is for all_reduce, not {kind}", key="attrs.algorithm")
    system = topo.system
    lay = _need_layout(ranks, topo, "in_switch")
    if lay.nodes == 1:
        if not system.fabric.in_switch_reduction:
            raise InputError(f"system '{system.name}' has no in-switch reduction (node_fabric.in_switch_reduction)",
                             key="attrs.algorithm")
        return [_through_switch("in-switch reduce + multicast", ranks, size, "node")]
    assert system.scale_out is not None
    if not system.scale_out.in_network_reduction:
        raise InputError(f"system '{system.name}' has no in-network reduction (scale_out.in_network_reduction)",
                         key="attrs.algorithm")
    # SHARP: intra-node reduce-scatter, then each rail's slice reduced in the switches, then all-gather
    g = lay.per_node
    phases = [_per_node(lay.by_node, size / g, g - 1, "intra-node reduce-scatter"),
              _through_switch("SHARP reduce + multicast", ranks, size / g, "network"),
              _per_node(lay.by_node, size / g, g - 1, "intra-node all-gather")]
    return [p for p in phases if p.repeat > 0]


def choose_algorithm(kind: str, ranks: np.ndarray, topo: Topology) -> str:
    """The algorithm `auto` runs when nothing weighs costs: across nodes what NCCL/RCCL run, inside a node
    the ring (direct exchange on all-to-all links). `Fabric` weighs `candidate_algorithms` with the
    chip's efficiencies instead, which is how NVLink SHARP gets chosen inside a node."""
    if kind == "broadcast":
        return "ring"
    if kind == "all_to_all":
        return "direct"
    lay = layout(ranks, topo)
    if topo.system.fabric.kind == "all_to_all" and ranks.size <= MAX_DIRECT_RANKS and lay is not None \
            and lay.nodes == 1:
        return "direct"
    return "ring"


def candidate_algorithms(kind: str, comm: Communicator, system: System) -> tuple[str, ...]:
    """The algorithms `auto` weighs for a group: inside one node the ring, NVLink SHARP where the switch
    reduces, and the direct exchange on all-to-all links; across nodes NCCL's rings and the
    hierarchical algorithm (one ring per level); otherwise what choose_algorithm picks."""
    topo = topology_of(system)
    ranks = np.asarray(comm.ranks(), np.int64)
    if kind in ("send_recv", "broadcast", "all_to_all") or comm.highest >= system.world:
        return ("auto",)
    lay = layout(ranks, topo)
    if lay is None:
        return ("auto",)
    if lay.nodes > 1:
        # NCCL's rings pay a step latency per rank (2(N-1) steps): at hundreds of nodes its tuner takes a
        # two-level algorithm instead (the tree, NVLS-tree), which the hierarchical one stands for here
        return ("ring", "hierarchical") if lay.per_node > 1 else ("auto",)
    choices = ["ring"]
    if kind == "all_reduce" and system.fabric.in_switch_reduction and ranks.size > 2:
        # at two ranks a ring already moves each byte once each way, as the switch would: NCCL's tuner
        # gains nothing from NVLink SHARP there, and its multicast set-up costs more than a ring step
        choices.append("in_switch")
    if system.fabric.kind == "all_to_all" and ranks.size <= MAX_DIRECT_RANKS:
        choices.append("direct")
    return tuple(choices)


def plan(kind: str, size: float, comm: Communicator, algorithm: str, topo: Topology,
         bidirectional: bool = False) -> tuple[str, list[Phase]]:
    system = topo.system
    if kind not in COLLECTIVE_KINDS:
        raise InputError(f"unknown collective '{kind}'; expected one of {', '.join(COLLECTIVE_KINDS)}", key="kind")
    if algorithm not in ALGORITHMS:
        raise InputError(f"unknown algorithm '{algorithm}'; expected one of {', '.join(ALGORITHMS)}",
                         key="attrs.algorithm")
    if comm.highest >= system.world:
        raise InputError(f"a collective over {comm.describe()} does not fit system '{system.name}' "
                         f"({system.world} GPUs)", key="shape.group")
    ranks = np.asarray(comm.ranks(), np.int64)
    if kind == "send_recv":
        pairs = [(ranks[0], ranks[-1])] + ([(ranks[-1], ranks[0])] if bidirectional else [])
        return "direct", [_phase("send both ways" if bidirectional else "send", [p[0] for p in pairs],
                                 [p[1] for p in pairs], size)]
    if algorithm == "auto":
        algorithm = choose_algorithm(kind, ranks, topo)
    if kind == "all_to_all" and algorithm != "direct":
        raise InputError("all_to_all runs as a direct exchange (algorithm: auto or direct)", key="attrs.algorithm")
    builders = {
        "ring": lambda: _ring_phases(kind, ranks, size, topo),
        "direct": lambda: _direct_phases(kind, ranks, size),
        "tree": lambda: _tree_phases(kind, ranks, size),
        "hierarchical": lambda: _hierarchical_phases(kind, ranks, size, topo),
        "in_switch": lambda: _in_switch_phases(kind, ranks, size, topo),
    }
    return algorithm, builders[algorithm]()


# ---------------------------------------------------------------- simulation


def route_phase(topo: Topology, phase: Phase, load: np.ndarray) -> Routed:
    if phase.switch:
        up = phase.dst < 0
        parts = [topo.switch_paths(phase.src[up], phase.switch, up=True),
                 topo.switch_paths(phase.dst[~up], phase.switch, up=False)]
        return Routed.concat(parts)
    return topo.route(phase.src, phase.dst, topo.system.routing, load)


def simulate_phase(topo: Topology, phase: Phase) -> tuple[float, int, float]:
    """(time of the phase's slowest flow, flows simulated, the longest path latency)."""
    system = topo.system
    keep = (phase.nbytes > 0) & (phase.src != phase.dst)
    if not keep.any():
        return 0.0, 0, 0.0
    phase = Phase(phase.label, phase.src[keep], phase.dst[keep], phase.nbytes[keep], phase.repeat, phase.hops,
                  phase.switch, phase.copies)
    background, load = topo.background()
    routed = route_phase(topo, phase, load)
    both = Routed.concat([background, routed])
    sizes = np.concatenate([np.full(background.flows, np.inf), phase.nbytes])
    caps = np.full(sizes.size, np.inf)
    if background.flows:
        assert system.scale_out is not None
        caps[:background.flows] = system.background_load * system.scale_out.nic_bandwidth_bytes_per_s
    done = simulate_flows(FlowSet(both.entry_flow, both.entry_link, sizes, caps), topo.capacity, both.latency_s)
    mine = done[background.flows:]
    return float(mine.max()), int(phase.src.size), float(routed.latency_s.max())


@lru_cache(maxsize=16)
def topology_of(system: System) -> Topology:
    return build_topology(system)


def _as_comm(ranks: Communicator | int) -> Communicator:
    return ranks if isinstance(ranks, Communicator) else Communicator(int(ranks))


@lru_cache(maxsize=4096)
def collective(system: System, kind: str, size: float, ranks: Communicator | int, algorithm: str = "auto",
               bidirectional: bool = False) -> CollectiveReport:
    """Time of one collective of `size` bytes per rank over the communicator's ranks of `system`
    (an int n: ranks 0..n-1)."""
    comm = _as_comm(ranks)
    if comm.size <= 1 or size <= 0:
        return CollectiveReport(kind, "none", comm.size, size, 0.0, method="no transfer")
    topo = topology_of(system)
    chosen, phases = plan(kind, size, comm, algorithm, topo, bidirectional)
    report = CollectiveReport(kind, chosen, comm.size, size, 0.0)
    for phase in phases:
        seconds, flows, latency = simulate_phase(topo, phase)
        seconds += (phase.hops - 1) * latency  # a pipeline's fill: one more hop per level
        report.phases.append((phase.label, phase.repeat, seconds, flows))
        report.seconds += seconds * phase.repeat
        report.latency_s += phase.hops * latency * phase.repeat
        moved = float(phase.nbytes[phase.src != phase.dst].sum()) * phase.repeat * phase.copies
        report.bytes_sent += moved
        report.bytes_received += moved
    repeated = sum(1 for p in phases if p.repeat > 1)
    folded = sum(1 for p in phases if p.copies > 1)
    steps = sum(p.repeat for p in phases)
    if repeated or folded:
        report.method = (f"symmetric: {steps} steps, {report.flows_simulated} flows simulated"
                         + (f"; {folded} intra-node phase(s) simulated on one node" if folded else ""))
    else:
        report.method = f"full: {report.flows_simulated} flows simulated"
    return report
