"""The registries agree: every op kind has a cost path and a doc row, every collective kind runs on a
lone chip's link and on a system's fabric, and communicators place collectives on the ranks they name.

Regression: `broadcast` and `send_recv` were registered, documented and emitted by both trace importers,
but had no cost path anywhere ("no cost model for op kind 'broadcast'" on every target)."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import get_args

import pytest

import chipsim
from chipsim import vocab
from chipsim.cost import COST_MODELS, ChipLink, cost_of
from chipsim.errors import InputError
from chipsim.network import collective, load_system
from chipsim.network.fabric import Fabric
from chipsim.workload.comm import Communicator, communicator
from chipsim.workload.generators.all_reduce import AllReduceParams, CollectiveParams
from chipsim.workload.generators.dynamic_attention import DynamicAttentionParams
from chipsim.workload.generators.quantized_inference import InferenceParams
from chipsim.workload.generators.transformer import DataParallelParams, TrainStepParams
from chipsim.workload.graph import Op, make_op
from chipsim.workload.kinds import COLLECTIVE_KINDS, ELEMENTWISE_OPS, KINDS, kinds_markdown

REPO = Path(__file__).resolve().parents[2]
MiB = 2**20


def test_every_op_kind_is_costed_and_documented() -> None:
    doc = (REPO / "docs" / "workload_format.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- op-kinds:begin -->\n(.*?)\n<!-- op-kinds:end -->", doc, re.S)
    assert block is not None, "docs/workload_format.md lost its generated op-kind block"
    assert block.group(1) == kinds_markdown(), "regenerate with: python3 -m chipsim.workload.kinds"
    for name, kind in KINDS.items():
        assert kind.collective != (name in COST_MODELS), name  # exactly one cost path
        assert f"| `{name}` |" in block.group(1), name


def test_closed_vocabularies_come_from_one_place() -> None:
    """Generators, op kinds and the network read each closed set from chipsim.vocab."""
    for params in (AllReduceParams, CollectiveParams, DataParallelParams):
        assert get_args(typing.get_type_hints(params)["algorithm"]) == vocab.ALGORITHMS
    for params in (TrainStepParams, InferenceParams, DynamicAttentionParams):
        assert get_args(typing.get_type_hints(params)["attention_backend"]) == vocab.ATTENTION_BACKENDS
    assert get_args(typing.get_type_hints(CollectiveParams)["kind"]) == vocab.COLLECTIVE_KINDS
    assert tuple(name for name, kind in KINDS.items() if kind.collective) == vocab.COLLECTIVE_KINDS
    assert tuple(ELEMENTWISE_OPS) == vocab.ELEMENTWISE_OP_NAMES


def _op(kind: str, group: int = 8, size: float = 64 * MiB, **attrs: object) -> Op:
    return make_op(0, kind, kind, "bf16", {"bytes": size, "group": group}, stream="comm", attrs=attrs)


@pytest.mark.parametrize("kind", COLLECTIVE_KINDS)
def test_every_collective_kind_runs_on_a_lone_chip_and_on_a_system(kind: str) -> None:
    h200 = chipsim.load_chip("h200_sxm")
    lone = cost_of(_op(kind), h200)
    system = load_system("hgx_h200")
    fabric = cost_of(_op(kind), h200, Fabric(system))
    for cost in (lone, fabric):
        assert cost.seconds > 0 and cost.link_bytes > 0
    # the lone chip's link carries the closed-form ring traffic of the kind
    per_rank = {"all_reduce": 2 * 7 / 8, "reduce_scatter": 7 / 8, "all_gather": 7.0, "broadcast": 1.0,
                "all_to_all": 7 / 8, "send_recv": 1.0}[kind] * 64 * MiB
    assert lone.link_bytes == pytest.approx(per_rank, rel=1e-12)


def test_broadcast_and_send_recv_simulate_through_the_cli(cli, write, tmp_path: Path) -> None:
    for kind in ("broadcast", "send_recv", "all_to_all"):
        config = write(f"{kind}.yaml", f"""
            systems: [hgx_h200]
            chips: [h200_sxm]
            workload: {{generator: collective, params: {{kind: {kind}, ranks: 8, size: 64 MiB}}}}
            """)
        rc, out, err = cli(["run", config, "--json", "--no-files"])
        assert rc == 0, err
        runs = json.loads(out)["runs"]
        assert len(runs) == 2 and all(r["latency_s"] > 0 for r in runs)


def test_a_tp_group_inside_a_node_never_touches_the_nics() -> None:
    """A tensor-parallel group of 8 on node 3 of the cluster: NVLink only, as fast as on node 0, and
    unaffected by other jobs' traffic on the NICs."""
    idle = load_system("cluster_256x_dgx_h100_ndr")
    busy = load_system("cluster_256x_dgx_h100_ndr", overrides={"background_load": 0.5})
    node0 = collective(idle, "all_reduce", 256 * MiB, Communicator(8))
    node3 = collective(idle, "all_reduce", 256 * MiB, Communicator(8, first=24))
    node3_busy = collective(busy, "all_reduce", 256 * MiB, Communicator(8, first=24))
    assert node3.seconds == pytest.approx(node0.seconds, rel=1e-12)
    assert node3_busy.seconds == pytest.approx(node0.seconds, rel=1e-12)
    assert node0.algorithm == "ring"


def test_a_dp_group_strided_across_nodes_runs_over_the_network() -> None:
    """The data-parallel group of a TP8 layout: one rank per node (ranks 0, 8, 16, ...). Each rank's
    ring crosses the NIC: it takes the NIC's time, not NVLink's, and is slower than a group of 8
    inside one node."""
    system = load_system("cluster_256x_dgx_h100_ndr")
    size = 256 * MiB
    strided = collective(system, "all_reduce", size, Communicator(8, stride=8))
    inside = collective(system, "all_reduce", size, Communicator(8))
    nic = system.scale_out.nic_bandwidth_bytes_per_s  # type: ignore[union-attr]
    assert strided.seconds >= 2 * 7 / 8 * size / nic
    assert strided.seconds > 3 * inside.seconds
    explicit = collective(system, "all_reduce", size, Communicator(8, explicit=tuple(range(0, 64, 8))))
    assert explicit.seconds == pytest.approx(strided.seconds, rel=1e-12)


@pytest.mark.parametrize(("attrs", "key", "fragment"), [
    ({"ranks": [0, 1, 2]}, "attrs.ranks", "lists 3 ranks"),
    ({"ranks": [0, 1, 1, 2]}, "attrs.ranks", "twice"),
    ({"ranks": [0, 1, 2, 3], "stride": 2}, "attrs.ranks", "not both"),
    ({"stride": 0}, "attrs.stride", ">= 1"),
    ({"first": -1}, "attrs.first", ">= 0"),
    ({"algorithm": "rng"}, "attrs.algorithm", "unknown algorithm"),
])
def test_bad_communicators_are_located(attrs: dict, key: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment) as info:
        make_op(0, "ar", "all_reduce", "bf16", {"bytes": 1024, "group": 4}, attrs=attrs)
    assert info.value.key == f"ops[0].{key}"


def test_a_communicator_beyond_the_system_is_refused() -> None:
    system = load_system("hgx_h200")
    with pytest.raises(InputError, match="does not fit system 'hgx_h200'"):
        Fabric(system).collective_cost(_op("all_reduce", group=4, stride=4), system.chip)


def test_an_algorithm_on_a_lone_chip_that_needs_a_topology_is_refused() -> None:
    h200 = chipsim.load_chip("h200_sxm")
    with pytest.raises(InputError, match="needs a system's topology"):
        cost_of(_op("all_reduce", algorithm="tree"), h200, ChipLink(h200))


def test_communicator_round_trips_through_op_attrs() -> None:
    from chipsim.workload.comm import comm_attrs

    for comm in (Communicator(4), Communicator(4, stride=8, first=2), Communicator(3, explicit=(5, 1, 9))):
        assert communicator({"group": comm.size}, comm_attrs(comm)) == comm
