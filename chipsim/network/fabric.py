"""A system's network as the cost layer sees it (`chipsim.cost.Network`): each collective is planned
over its communicator's real ranks and simulated flow by flow (`chipsim.network.collectives`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from chipsim.cost.base import OpCost
from chipsim.cost.collective import collective_cost, no_transfer
from chipsim.hardware.chip import Chip
from chipsim.network.collectives import candidate_algorithms, collective
from chipsim.network.system import System
from chipsim.workload.comm import Communicator, communicator
from chipsim.workload.graph import Op


@dataclass(frozen=True)
class Fabric:
    """A system's network: the chip is one representative rank of it (ranks are symmetric), and
    each collective is planned over the ranks its communicator names."""

    system: System

    @property
    def name(self) -> str:
        return self.system.name

    @property
    def link_capacity_bytes_per_s(self) -> float:
        # flows already share the fabric's links inside each collective's simulation; concurrent
        # collectives of one rank do not yet contend with each other
        return math.inf

    def collective_cost(self, op: Op, chip: Chip) -> OpCost:
        """With `algorithm: auto`, the fastest of the algorithms NCCL/RCCL would consider for this group
        on this fabric (its tuner picks by a cost model too): so NVLink SHARP wins at 8 GPUs and large
        sizes, a ring at 2 GPUs, and the choice moves with size and GPU count."""
        comm = communicator(op.shape, op.attrs)
        algorithm = str(op.attrs.get("algorithm", "auto"))
        choices = candidate_algorithms(op.kind, comm, self.system) if algorithm == "auto" else (algorithm,)
        costs = [self._cost(op, chip, comm, choice) for choice in choices]
        return min(costs, key=lambda cost: cost.seconds)  # ties: the first candidate

    def _cost(self, op: Op, chip: Chip, comm: Communicator, algorithm: str) -> OpCost:
        report = collective(self.system, op.kind, float(op.shape["bytes"]), comm, algorithm,
                            bool(op.attrs.get("bidirectional", False)))
        if report.seconds == 0:
            return no_transfer(chip)
        g = self.system.gpus_per_node
        nodes = len({rank // g for rank in comm.ranks()})
        efficiency = None  # the chip's NCCL efficiency, unless the fabric states its own
        if report.algorithm == "in_switch" and nodes == 1:
            efficiency = self.system.fabric.in_switch_efficiency  # NVLink SHARP inside a node
        elif nodes > 1 and self.system.scale_out is not None:
            efficiency = self.system.scale_out.efficiency  # across nodes the NICs are the bottleneck
        return collective_cost(op, chip, report.bytes_sent / report.ranks, report.seconds - report.latency_s,
                               report.latency_s, f"{op.kind} {report.algorithm} over {comm.describe()} of "
                                                 f"{self.system.name}: {report.method}", efficiency, report.steps)
