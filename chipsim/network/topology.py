"""A system's network as directed links (capacity, latency), and the candidate paths between GPUs.

Node fabric: `nvswitch` / `pcie` are one crossbar per node (each GPU has an up and a down link of the
fabric's per-GPU bandwidth); `all_to_all` has a direct link per ordered GPU pair (MI300X's Infinity
Fabric). Scale-out: GPU g of a node reaches the network through NIC g; NICs hang off leaf switches
(rail-optimized: a rail's NICs share leaves), leaves connect to every spine. Paths between leaves
go through any spine: those are the equal-cost candidates routing chooses from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from chipsim.network.system import System


@dataclass
class Topology:
    system: System
    capacity: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    # link ids, by role
    gpu_up: list[int] = field(default_factory=list)  # GPU -> node switch
    gpu_down: list[int] = field(default_factory=list)  # node switch -> GPU
    pair: dict[tuple[int, int], int] = field(default_factory=dict)  # all_to_all direct links
    nic_up: list[int] = field(default_factory=list)  # GPU/NIC -> leaf
    nic_down: list[int] = field(default_factory=list)  # leaf -> NIC/GPU
    nic_leaf: list[int] = field(default_factory=list)
    leaf_spine: dict[tuple[int, int], int] = field(default_factory=dict)
    spine_leaf: dict[tuple[int, int], int] = field(default_factory=dict)
    spines: int = 0
    leaves: int = 0

    def add_link(self, name: str, capacity: float, latency: float) -> int:
        self.capacity.append(capacity)
        self.latency.append(latency)
        self.names.append(name)
        return len(self.capacity) - 1

    @property
    def capacity_array(self) -> np.ndarray:
        return np.asarray(self.capacity, dtype=float)

    def node_of(self, rank: int) -> int:
        return rank // self.system.gpus_per_node

    def paths(self, src: int, dst: int) -> list[tuple[int, ...]]:
        """Candidate (equal-cost) paths from GPU rank `src` to `dst`, as tuples of link ids."""
        if src == dst:
            return [()]
        if self.node_of(src) == self.node_of(dst):
            if self.system.fabric.kind == "all_to_all":
                return [(self.pair[(src, dst)],)]
            return [(self.gpu_up[src], self.gpu_down[dst])]
        a, b = self.nic_leaf[src], self.nic_leaf[dst]
        if a == b:
            return [(self.nic_up[src], self.nic_down[dst])]
        return [(self.nic_up[src], self.leaf_spine[(a, s)], self.spine_leaf[(s, b)], self.nic_down[dst])
                for s in range(self.spines)]

    def to_switch(self, rank: int) -> tuple[int, ...]:
        """GPU -> its node switch (for in-switch reduction)."""
        return (self.gpu_up[rank],)

    def from_switch(self, rank: int) -> tuple[int, ...]:
        return (self.gpu_down[rank],)

    def path_latency(self, path: tuple[int, ...]) -> float:
        return float(sum(self.latency[link] for link in path))


def build_topology(system: System) -> Topology:
    topo = Topology(system)
    fab = system.fabric
    g = system.gpus_per_node
    for node in range(system.nodes):
        ranks = range(node * g, (node + 1) * g)
        if fab.kind == "all_to_all":
            for i in ranks:
                for j in ranks:
                    if i != j:
                        topo.pair[(i, j)] = topo.add_link(f"gpu{i}->gpu{j}", fab.bandwidth_bytes_per_s, fab.latency_s)
        for r in ranks:  # crossbar links (also used by all_to_all for in-switch-free paths to the NIC side)
            topo.gpu_up.append(topo.add_link(f"gpu{r}->node{node}", fab.bandwidth_bytes_per_s, fab.latency_s / 2))
            topo.gpu_down.append(topo.add_link(f"node{node}->gpu{r}", fab.bandwidth_bytes_per_s, fab.latency_s / 2))
    so = system.scale_out
    if so is None:
        return topo
    down_ports = max(1, int(so.switch_radix / (1 + 1 / so.oversubscription)))  # split radix: down : up = o : 1
    up_ports = max(1, so.switch_radix - down_ports)
    endpoints = system.world
    if so.rail_optimized:
        per_rail = math.ceil(system.nodes / down_ports)
        topo.leaves = per_rail * g
        leaf_of = [(r % g) * per_rail + (r // g) // down_ports for r in range(endpoints)]
    else:
        topo.leaves = math.ceil(endpoints / down_ports)
        leaf_of = [r // down_ports for r in range(endpoints)]
    topo.spines = max(1, math.ceil(topo.leaves * up_ports / so.switch_radix)) if topo.leaves > 1 else 0
    nic_lat = so.nic_latency_s + so.switch_latency_s
    for r in range(endpoints):
        topo.nic_leaf.append(leaf_of[r])
        topo.nic_up.append(topo.add_link(f"nic{r}->leaf{leaf_of[r]}", so.nic_bandwidth_bytes_per_s, nic_lat))
        topo.nic_down.append(topo.add_link(f"leaf{leaf_of[r]}->nic{r}", so.nic_bandwidth_bytes_per_s, so.nic_latency_s))
    if topo.spines:
        per_pair = max(1, up_ports // topo.spines) if up_ports >= topo.spines else 1
        bandwidth = so.port_bandwidth_bytes_per_s * per_pair * min(1.0, up_ports / topo.spines)
        for leaf in range(topo.leaves):
            for s in range(topo.spines):
                topo.leaf_spine[(leaf, s)] = topo.add_link(f"leaf{leaf}->spine{s}", bandwidth, so.switch_latency_s)
                topo.spine_leaf[(s, leaf)] = topo.add_link(f"spine{s}->leaf{leaf}", bandwidth, so.switch_latency_s)
    return topo
