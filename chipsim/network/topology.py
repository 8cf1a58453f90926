"""A system's network as directed links (capacity, latency) in numpy arrays, and vectorized routing.

Node fabric: `nvswitch` / `pcie` are one crossbar per node (each GPU has an up and a down link of the
fabric's per-GPU bandwidth); `all_to_all` adds a direct link per ordered GPU pair (MI300X's Infinity
Fabric). Scale-out: GPU g of a node reaches the network through NIC g; NICs hang off leaf switches
(rail-optimized: NIC g of consecutive nodes share rail g's leaves), which form a folded Clos:
- two tiers: every leaf connects to every spine; it holds at most `radix` leaves;
- three tiers: pods of `radix / 2` leaves and as many aggregation switches as a leaf has up-ports
  (each leaf to each of its pod's aggregations); aggregation switch j of every pod connects to the
  cores of plane j. It holds at most `radix` pods.
A topology that cannot hold its endpoints is refused. A smaller tree than the maximum uses fewer
spines (cores) with parallel links, so it stays non-blocking at the leaves' oversubscription.

Link ids are arithmetic (blocks of arrays, no per-link Python objects), and a batch of flows is
routed at once: ECMP hashes each (src, dst) onto its equal-cost candidates (flows can collide),
adaptive routing puts each flow on its least-loaded candidate given the flows placed before it.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from chipsim.errors import InputError
from chipsim.network.system import System


@dataclass
class Routed:
    """Flows as a CSR incidence: flow `entry_flow[i]` crosses link `entry_link[i]`."""

    entry_flow: np.ndarray
    entry_link: np.ndarray
    latency_s: np.ndarray  # per flow: the sum of its links' latencies
    flows: int

    @staticmethod
    def empty() -> Routed:
        return Routed(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), 0)

    def shifted(self, by: int) -> Routed:
        return Routed(self.entry_flow + by, self.entry_link, self.latency_s, self.flows)

    @staticmethod
    def concat(parts: list[Routed]) -> Routed:
        out, offset = [], 0
        for part in parts:
            out.append(part.shifted(offset))
            offset += part.flows
        if not out:
            return Routed.empty()
        return Routed(np.concatenate([p.entry_flow for p in out]), np.concatenate([p.entry_link for p in out]),
                      np.concatenate([p.latency_s for p in out]), offset)


@dataclass
class _Builder:
    capacity: list[np.ndarray] = field(default_factory=list)
    latency: list[np.ndarray] = field(default_factory=list)
    size: int = 0

    def block(self, count: int, capacity: float, latency: float) -> int:
        """`count` links of one kind; returns the first id."""
        first = self.size
        self.capacity.append(np.full(count, capacity, dtype=float))
        self.latency.append(np.full(count, latency, dtype=float))
        self.size += count
        return first


@dataclass(frozen=True)
class Tree:
    """The folded Clos above the NICs (sizes; link-id offsets are in Topology)."""

    tiers: int
    leaves: int
    down_ports: int  # NICs per leaf
    up_ports: int  # links from a leaf upward
    rail_leaves: int  # leaf slots per rail (rail-optimized), else 0
    spines: int = 0  # two tiers
    links_per_pair: int = 1  # leaf-spine (two tiers) or aggregation-core (three tiers) parallel links
    pods: int = 0  # three tiers
    leaves_per_pod: int = 0
    cores_per_plane: int = 0


def plan_tree(system: System) -> Tree:
    """The switch counts of the system's fat tree, or an InputError if it cannot hold the endpoints."""
    so = system.scale_out
    assert so is not None
    radix = so.switch_radix
    down = max(1, int(radix / (1 + 1 / so.oversubscription)))  # split radix: down : up = o : 1
    up = max(1, radix - down)
    g = system.gpus_per_node
    per_rail = math.ceil(system.nodes / down) if so.rail_optimized else 0
    leaves = per_rail * g if so.rail_optimized else math.ceil(system.world / down)
    if so.tiers == 2:
        if leaves > radix:
            raise InputError(
                f"a two-tier fat tree of radix-{radix} switches connects at most {radix} leaves ({radix * down:,} "
                f"NICs at {down} per leaf); this system needs {leaves}: use `tiers: 3` or a larger radix",
                key="scale_out.tiers")
        spines = max(1, math.ceil(leaves * up / radix)) if leaves > 1 else 0
        return Tree(2, leaves, down, up, per_rail, spines=spines,
                    links_per_pair=max(1, up // spines) if spines else 1)
    per_pod = max(1, radix // 2)  # an aggregation switch: half its ports down to its pod's leaves
    if so.rail_optimized:  # a pod holds one rail's leaves (rails meet only at the cores)
        per_rail = math.ceil(per_rail / per_pod) * per_pod
        leaves = per_rail * g
    pods = math.ceil(leaves / per_pod)
    if pods > radix:
        capacity = radix * per_pod * down
        raise InputError(f"a three-tier fat tree of radix-{radix} switches holds at most {radix} pods "
                         f"({capacity:,} NICs); this system needs {pods} pods for {system.world:,} GPUs",
                         key="scale_out.switch_radix")
    agg_up = radix - per_pod
    cores = max(1, math.ceil(pods * agg_up / radix)) if pods > 1 else 0
    return Tree(3, leaves, down, up, per_rail, pods=pods, leaves_per_pod=per_pod, cores_per_plane=cores,
                links_per_pair=max(1, agg_up // cores) if cores else 1)


def _least_loaded(util: np.ndarray, hashed: int) -> int:
    """The candidate (row of `util`: per-link utilization if this flow joined) whose busiest link is
    least utilized, then the least total; remaining ties go the way ECMP's hash would."""
    peak = util.max(1)
    best = np.flatnonzero(peak == peak.min())
    if best.size > 1:
        total = util[best].sum(1)
        best = best[total == total.min()]
    if best.size > 1:
        return int(best[np.argmin((best - hashed) % util.shape[0])])
    return int(best[0])


class Topology:
    def __init__(self, system: System) -> None:
        self.system = system
        self.world = system.world
        g = self.gpus_per_node = system.gpus_per_node
        fab = system.fabric
        b = _Builder()
        ranks = np.arange(self.world)
        self.gpu_up = b.block(self.world, fab.bandwidth_bytes_per_s, fab.latency_s / 2)
        self.gpu_down = b.block(self.world, fab.bandwidth_bytes_per_s, fab.latency_s / 2)
        self.pair = b.block(system.nodes * g * (g - 1), fab.bandwidth_bytes_per_s, fab.latency_s) \
            if fab.kind == "all_to_all" else -1
        self.tree: Tree | None = None
        so = system.scale_out
        if so is not None:
            tree = self.tree = plan_tree(system)
            nic_latency = so.nic_latency_s + so.switch_latency_s
            self.nic_up = b.block(self.world, so.nic_bandwidth_bytes_per_s, nic_latency)
            self.nic_down = b.block(self.world, so.nic_bandwidth_bytes_per_s, so.nic_latency_s)
            if so.rail_optimized:
                self.leaf_of = (ranks % g) * tree.rail_leaves + (ranks // g) // tree.down_ports
            else:
                self.leaf_of = ranks // tree.down_ports
            port, lat = so.port_bandwidth_bytes_per_s, so.switch_latency_s
            if tree.tiers == 2 and tree.spines:
                bw = port * tree.links_per_pair
                self.leaf_spine = b.block(tree.leaves * tree.spines, bw, lat)  # + leaf * S + s
                self.spine_leaf = b.block(tree.leaves * tree.spines, bw, lat)  # + s * L + leaf
            elif tree.tiers == 3:
                aggs = tree.up_ports  # one per leaf uplink
                self.leaf_agg = b.block(tree.leaves * aggs, port, lat)  # + leaf * A + a
                self.agg_leaf = b.block(tree.pods * tree.leaves_per_pod * aggs, port, lat)  # + (pod*A + a)*Lp + l
                if tree.cores_per_plane:
                    bw = port * tree.links_per_pair
                    count = tree.pods * aggs * tree.cores_per_plane
                    self.agg_core = b.block(count, bw, lat)  # + (pod*A + a)*C + c
                    self.core_agg = b.block(count, bw, lat)  # + (a*C + c)*P + pod
        self.capacity = np.concatenate(b.capacity) if b.capacity else np.zeros(0)
        self.latency = np.concatenate(b.latency) if b.latency else np.zeros(0)
        self._background: tuple[Routed, np.ndarray] | None = None

    @property
    def links(self) -> int:
        return int(self.capacity.size)

    def node_of(self, rank: np.ndarray) -> np.ndarray:
        return rank // self.gpus_per_node

    # ------------------------------------------------------------ paths

    def _pair_link(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        g = self.gpus_per_node
        i, j = src % g, dst % g
        return self.pair + (src // g) * g * (g - 1) + i * (g - 1) + np.where(j < i, j, j - 1)

    def _candidates(self, a: int, b: int) -> int:
        """How many equal-cost paths over the switch tiers join leaf `a` to leaf `b` (a != b)."""
        tree = self.tree
        assert tree is not None
        if tree.tiers == 2:
            return tree.spines
        same_pod = a // tree.leaves_per_pod == b // tree.leaves_per_pod
        return tree.up_ports if same_pod else tree.up_ports * tree.cores_per_plane

    def _path(self, a: int, b: int, index: int) -> list[int]:
        """The switch-tier links of candidate `index` from leaf `a` to leaf `b`."""
        tree = self.tree
        assert tree is not None
        if tree.tiers == 2:
            return [self.leaf_spine + a * tree.spines + index, self.spine_leaf + index * tree.leaves + b]
        aggs, lp, cores = tree.up_ports, tree.leaves_per_pod, tree.cores_per_plane
        pa, pb = a // lp, b // lp
        if pa == pb:
            return [self.leaf_agg + a * aggs + index, self.agg_leaf + (pb * aggs + index) * lp + b % lp]
        j, c = divmod(index, cores)
        return [self.leaf_agg + a * aggs + j, self.agg_core + (pa * aggs + j) * cores + c,
                self.core_agg + (j * cores + c) * tree.pods + pb, self.agg_leaf + (pb * aggs + j) * lp + b % lp]

    def _utilization(self, load: np.ndarray, a: int, b: int) -> np.ndarray:
        """Per candidate path (rows) and switch-tier link (columns): the link's utilization if one
        more flow joined it. Slices of the load vector, not gathers: candidate i is `_path(a, b, i)`."""
        tree = self.tree
        assert tree is not None
        cap = self.capacity

        def util(first: int, step: int, count: int) -> np.ndarray:
            return (load[first:first + step * count:step] + 1.0) / cap[first]

        if tree.tiers == 2:
            s, leaves = tree.spines, tree.leaves
            return np.stack([util(self.leaf_spine + a * s, 1, s), util(self.spine_leaf + b, leaves, s)], 1)
        aggs, lp, cores, pods = tree.up_ports, tree.leaves_per_pod, tree.cores_per_plane, tree.pods
        pa, pb = a // lp, b // lp
        up = util(self.leaf_agg + a * aggs, 1, aggs)
        down = util(self.agg_leaf + pb * aggs * lp + b % lp, lp, aggs)
        if pa == pb:
            return np.stack([up, down], 1)
        to_core = util(self.agg_core + pa * aggs * cores, 1, aggs * cores)
        from_core = util(self.core_agg + pb, pods, aggs * cores)
        return np.stack([np.repeat(up, cores), to_core, from_core, np.repeat(down, cores)], 1)

    def route(self, src: np.ndarray, dst: np.ndarray, routing: str, load: np.ndarray | None = None) -> Routed:
        """Paths of flows src[i] -> dst[i] (GPU ranks). `load` (flows per link) steers adaptive
        routing and is updated in place with the new flows; ECMP ignores it."""
        src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
        flows_of: list[np.ndarray] = []
        links_of: list[np.ndarray] = []
        same_node = self.node_of(src) == self.node_of(dst)
        local = np.flatnonzero(same_node)
        if local.size:
            flows_of.append(local)
            links_of.append(self._pair_link(src[local], dst[local])[:, None] if self.pair >= 0 else
                            np.stack([self.gpu_up + src[local], self.gpu_down + dst[local]], 1))
        remote = np.flatnonzero(~same_node)
        if remote.size:
            if self.tree is None:
                raise InputError(f"system '{self.system.name}' has no scale-out network between its nodes",
                                 key="scale_out")
            flows_of.append(remote)
            links_of.append(np.stack([self.nic_up + src[remote], self.nic_down + dst[remote]], 1))
            far = remote[self.leaf_of[src[remote]] != self.leaf_of[dst[remote]]]
            if far.size:
                for ids, middle in self._route_far(far, src, dst, routing, load):
                    flows_of.append(ids)
                    links_of.append(middle)
        entry_flow = np.concatenate([np.repeat(f, links.shape[1]) for f, links in zip(flows_of, links_of, strict=True)])
        entry_link = np.concatenate([links.ravel() for links in links_of])
        if load is not None:  # the switch tiers of far flows were counted as they were placed
            counted = np.concatenate([links.ravel() for links in links_of[:2 if remote.size else 1]])
            np.add.at(load, counted, 1.0)
        latency = np.bincount(entry_flow, weights=self.latency[entry_link], minlength=src.size)
        return Routed(entry_flow, entry_link, latency, int(src.size))

    def _route_far(self, far: np.ndarray, src: np.ndarray, dst: np.ndarray, routing: str,
                   load: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Flows between leaves: one of the equal-cost paths over the switch tiers each, in flow order.
        ECMP hashes (src, dst) onto the candidates, so flows can collide; adaptive routing takes the
        least-loaded candidate given every flow placed before (`load`, updated as flows are placed).
        Returns (flow ids, their switch-tier links) per path length."""
        hashed = np.fromiter((zlib.crc32(b"%d>%d" % (a, b)) for a, b in zip(src[far].tolist(), dst[far].tolist(), strict=True)),
                             dtype=np.int64, count=far.size)
        leaf_a, leaf_b = self.leaf_of[src[far]].tolist(), self.leaf_of[dst[far]].tolist()
        adaptive = routing == "adaptive" and load is not None
        picks: list[list[int]] = []
        for i, (a, b) in enumerate(zip(leaf_a, leaf_b, strict=True)):
            count = self._candidates(a, b)
            index = int(hashed[i] % count)
            if adaptive and count > 1:
                assert load is not None
                index = _least_loaded(self._utilization(load, a, b), index)
            path = self._path(a, b, index)
            if load is not None:
                load[path] += 1.0  # later flows see this one
            picks.append(path)
        widths = np.fromiter((len(p) for p in picks), dtype=np.int64, count=len(picks))
        out = []
        for width in np.unique(widths).tolist():
            rows = np.flatnonzero(widths == width)
            out.append((far[rows], np.array([picks[r] for r in rows.tolist()], dtype=np.int64)))
        return out

    def switch_paths(self, ranks: np.ndarray, switch: str, up: bool) -> Routed:
        """One-link paths to (`up`) or from a switch: the node's NVSwitch (`node`) or the leaf through
        the NIC (`network`), for in-switch reductions."""
        ranks = np.asarray(ranks, np.int64)
        if switch == "node":
            base = self.gpu_up if up else self.gpu_down
        else:
            base = self.nic_up if up else self.nic_down
        links = base + ranks
        return Routed(np.arange(ranks.size), links, self.latency[links], int(ranks.size))

    def background(self) -> tuple[Routed, np.ndarray]:
        """Other jobs' traffic, routed once per system: each NIC sends to a random other node's NIC
        (seeded), capped at `background_load` of the NIC bandwidth. Returns the flows and the load
        (flows per link) they put on the links."""
        if self._background is None:
            system = self.system
            load = np.zeros(self.links)
            if system.background_load <= 0 or system.scale_out is None or system.nodes < 2:
                self._background = (Routed.empty(), load)
            else:
                rng = np.random.default_rng(system.seed)
                dst = rng.permutation(system.world)
                src = np.arange(system.world)
                g = system.gpus_per_node
                dst = np.where(src // g == dst // g, (dst + g) % system.world, dst)
                self._background = (self.route(src, dst, system.routing, load), load)
        routed, load = self._background
        return routed, load.copy()


def build_topology(system: System) -> Topology:
    return Topology(system)
