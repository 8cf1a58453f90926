"""Systems: chips joined by a node fabric and, optionally, a scale-out network. YAML in, frozen
dataclasses out (SI units), with the same `extends:` and error rules as chips."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from chipsim.config.loader import deep_merge, load_yaml_with_extends, resolve_yaml
from chipsim.config.reader import Section
from chipsim.errors import InputError
from chipsim.hardware.chip import Chip
from chipsim.hardware.registry import load_chip, overridden

FABRICS = ("nvswitch", "all_to_all", "pcie")
ROUTING = ("ecmp", "adaptive")
MAX_GPUS = 1 << 20  # a million GPUs: the largest system chipsim builds (its links are arrays of this size)


@dataclass(frozen=True)
class NodeFabric:
    """How the GPUs of one node are joined. `bandwidth` is per GPU per direction (`nvswitch`,
    `pcie`) or per GPU-pair link per direction (`all_to_all`)."""

    kind: str
    bandwidth_bytes_per_s: float
    latency_s: float
    in_switch_reduction: bool = False  # NVLink SHARP (NVLS): the switch reduces and multicasts
    host_link_bytes_per_s: float = 0.0  # NVLink-C2C to the CPU's memory (GH200), per GPU per direction
    in_switch_efficiency: float | None = None  # achieved fraction of the link rate under NVLS (else the chip's)


@dataclass(frozen=True)
class ScaleOut:
    """NICs per node into a two- or three-tier fat tree of switches (see topology.py)."""

    nics_per_node: int
    nic_bandwidth_bytes_per_s: float
    nic_latency_s: float
    switch_radix: int
    port_bandwidth_bytes_per_s: float
    switch_latency_s: float
    oversubscription: float  # leaf down-ports / up-ports
    rail_optimized: bool
    in_network_reduction: bool  # SHARP
    tiers: int = 2  # switch tiers of the fat tree: 2 (leaf, spine) or 3 (leaf, aggregation, core)
    efficiency: float | None = None  # achieved fraction of NIC line rate by collectives across nodes (else the chip's)


@dataclass(frozen=True, eq=False)  # identity equality: usable as a cache key (it holds a Chip of dicts)
class System:
    name: str
    description: str
    chip: Chip
    nodes: int
    gpus_per_node: int
    fabric: NodeFabric
    scale_out: ScaleOut | None
    routing: str
    background_load: float  # fraction of each NIC's bandwidth used by other jobs' traffic
    seed: int
    source_file: str = ""

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


def build_system(data: dict[str, Any], file: str | None = None) -> System:
    top = Section(data, file)
    top.schema_version(1, "system")
    name = top.string("name")
    chip_name = top.string("chip")
    try:
        chip = load_chip(chip_name, Path(file) if file else None)
    except InputError as exc:
        raise exc.within(file=file, key_prefix="chip") if exc.file is None else exc from None
    nodes = top.integer("nodes", 1, minimum=1)
    gpus = top.integer("gpus_per_node", minimum=1)
    if nodes * gpus > MAX_GPUS:
        raise top.error("nodes", f"{nodes:,} nodes of {gpus} GPUs exceed the {MAX_GPUS:,} GPUs chipsim models")
    fab = top.section("node_fabric")
    fabric = NodeFabric(
        kind=fab.string("type", choices=FABRICS),
        bandwidth_bytes_per_s=fab.quantity("bandwidth", "bandwidth", positive=True),
        latency_s=fab.quantity("latency", "time", "1 us"),
        in_switch_reduction=fab.boolean("in_switch_reduction", False),
        host_link_bytes_per_s=fab.quantity("host_link", "bandwidth", 0.0),
        in_switch_efficiency=fab.number("in_switch_efficiency", 1.0, positive=True, maximum=1.0)
        if fab.has("in_switch_efficiency") else None,
    )
    fab.done()
    if fabric.in_switch_reduction and fabric.kind != "nvswitch":
        raise fab.error("in_switch_reduction", "in-switch reduction needs a switch (type: nvswitch)")
    scale_out = None
    if top.has("scale_out"):
        so = top.section("scale_out")
        scale_out = ScaleOut(
            nics_per_node=so.integer("nics_per_node", minimum=1),
            nic_bandwidth_bytes_per_s=so.quantity("nic_bandwidth", "bandwidth", positive=True),
            nic_latency_s=so.quantity("nic_latency", "time", "1 us"),
            switch_radix=so.integer("switch_radix", minimum=2),
            port_bandwidth_bytes_per_s=so.quantity("port_bandwidth", "bandwidth", positive=True),
            switch_latency_s=so.quantity("switch_latency", "time"),
            oversubscription=so.number("oversubscription", 1.0, minimum=1.0),
            rail_optimized=so.boolean("rail_optimized", True),
            in_network_reduction=so.boolean("in_network_reduction", False),
            tiers=int(so.number("tiers", 2, minimum=2, maximum=3, integer=True)),
            efficiency=so.number("efficiency", 1.0, positive=True, maximum=1.0) if so.has("efficiency") else None,
        )
        so.done()
        if scale_out.nics_per_node != gpus:
            raise so.error("nics_per_node", f"expected one NIC per GPU ({gpus}); chipsim routes GPU g through NIC g")
    else:
        top.raw("scale_out", None)
    if nodes > 1 and scale_out is None:
        raise top.error("scale_out", f"{nodes} nodes are not connected: a multi-node system needs a scale_out network")
    routing = top.string("routing", "ecmp", choices=ROUTING)
    background = top.number("background_load", 0.0, maximum=0.95)
    seed = top.integer("seed", 0)
    description = top.string("description", "")
    top.done()
    system = System(name, description, chip, nodes, gpus, fabric, scale_out, routing, background, seed, file or "")
    if scale_out is not None:
        from chipsim.network.topology import plan_tree

        try:
            plan_tree(system)  # refuses a fat tree that cannot hold the endpoints, before any work
        except InputError as exc:
            raise exc.within(file=file) from None
    return system


def _systems_dir() -> Path:
    return Path(str(resources.files("chipsim") / "systems"))


def builtin_system_names() -> list[str]:
    return sorted(p.stem for p in _systems_dir().glob("*.yaml"))


def resolve_system_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    return resolve_yaml(name_or_path, _systems_dir(), "system", relative_to)


@lru_cache(maxsize=32)
def _load_cached(path: str, mtime_ns: int) -> dict[str, Any]:
    return load_yaml_with_extends(path, lambda name, child: resolve_system_path(name, child))


def load_system(name_or_path: str | Path, relative_to: Path | None = None,
                overrides: dict[str, Any] | None = None, rename: str | None = None) -> System:
    """A built-in system name (chipsim/systems/) or a YAML path; `overrides` are merged over the
    file (what-ifs from a run config) and `rename` names the variant. An error in an overridden key
    is located as `set.<key>` with no file, for the caller to place in its own file."""
    path = resolve_system_path(str(name_or_path), relative_to)
    data = _load_cached(str(path.resolve()), path.stat().st_mtime_ns)
    if overrides:
        data = deep_merge(data, overrides)
    if rename:
        data = {**data, "name": rename}
    try:
        return build_system(data, file=str(path))
    except InputError as exc:
        if overrides and overridden(overrides, exc.key):
            raise InputError(exc.message, key=f"set.{exc.key}") from None
        sizing = [key for key in ("nodes", "gpus_per_node", "scale_out") if key in overrides] if overrides else []
        if sizing and (exc.key or "").startswith("scale_out"):  # the tree no longer holds the resized system
            raise InputError(exc.message, key=f"set.{sizing[0]}") from None
        raise


@lru_cache(maxsize=64)
def system_for(chip: str, gpus: int, across_nodes: bool = False) -> System:
    """The built-in system a `gpus`-GPU collective on `chip` (a built-in chip name) runs on, as
    measurement rows describe one: the chip's node when the GPUs fit in one (the collective spans its
    first `gpus` ranks), else its cluster resized to just enough nodes. `across_nodes`: the GPUs are
    spread over nodes (`*_internode` rows), one node's worth per node."""
    def chip_of(name: str) -> object:
        path = resolve_system_path(name)
        return _load_cached(str(path.resolve()), path.stat().st_mtime_ns).get("chip")

    systems = [load_system(name) for name in builtin_system_names() if chip_of(name) == chip]
    mine = sorted(systems, key=lambda s: (s.nodes, s.gpus_per_node, s.name))
    nodes = [s for s in mine if s.nodes == 1 and s.gpus_per_node >= gpus]
    if nodes and not across_nodes:
        return nodes[0]
    clusters = [s for s in mine if s.scale_out is not None]
    if not clusters:
        where = "a node of" if not across_nodes else "a cluster of"
        raise InputError(f"no built-in system is {where} {gpus} {chip} GPUs (chipsim/systems/)")
    cluster = clusters[0]
    count = max(-(-gpus // cluster.gpus_per_node), 2 if across_nodes else 1)
    try:
        return load_system(cluster.name, overrides={"nodes": count})
    except InputError:  # beyond what its two-tier tree holds: the same switches in three tiers
        return load_system(cluster.name, overrides={"nodes": count, "scale_out": {"tiers": 3}})
