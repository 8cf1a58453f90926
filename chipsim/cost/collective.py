"""The cost of a collective on one rank, from what the network says it takes: the bytes this rank
sends, their transfer time at line rate and the path latency. Both networks (`ChipLink` here,
`chipsim.network.fabric.Fabric` for systems) end in `collective_cost`, so a collective's energy,
HBM traffic and NCCL efficiency are counted one way.

`ChipLink` is a lone chip's own scale-up link (NVLink, Infinity Fabric), the chip being one rank of
`group` identical chips: closed-form ring costs, the one place the ring formulas live."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chipsim.cost.base import OpCost, vector_energy
from chipsim.errors import InputError
from chipsim.hardware.chip import Chip
from chipsim.workload.comm import communicator
from chipsim.workload.graph import Op
from chipsim.workload.kinds import DTYPE_BYTES

REDUCING = ("all_reduce", "reduce_scatter")
# a reduction step reads the local and the received chunk and writes the sum: 1.5 HBM bytes per
# byte received, against 1 for a plain copy into the receive buffer
REDUCE_HBM_BYTES_PER_BYTE = 1.5


def no_transfer(chip: Chip) -> OpCost:
    """A collective over one rank or of zero bytes: a kernel launch and nothing else."""
    return OpCost(chip.calibration.kernel_latency_s, 0.0, 0.0, 0.0, mode="no transfer")


def collective_cost(op: Op, chip: Chip, sent_bytes: float, transfer_s: float, latency_s: float,
                    mode: str, efficiency: float | None = None, steps: int = 1) -> OpCost:
    """`sent_bytes` this rank sends; `transfer_s` their time at the network's line rate (contention
    included); `latency_s` the paths' latency; `steps` the algorithm's sequential steps (a ring's
    2(N-1)). NCCL's achieved efficiency for the kind (calibrated per chip), or the `efficiency` the
    network gives for its algorithm, stretches the transfer, not the latency.

    The protocol is NCCL's choice (its tuner weighs the same two costs): the bulk protocol (Simple)
    at full efficiency plus a synchronization per step, or the low-latency one (LL128) with no step
    cost but a fraction of the bandwidth. So mid-size collectives run below their large-size bus
    bandwidth, and more so on long rings (8 GPUs) than short ones (2)."""
    cal = chip.calibration
    if efficiency is None:
        efficiency = cal.collective_efficiency.get(op.kind, max(cal.collective_efficiency.values(), default=1.0))
    bulk = transfer_s / efficiency + steps * cal.collective_step_latency_s
    low_latency = transfer_s / (efficiency * cal.collective_low_latency_bandwidth)
    if low_latency < bulk:
        link_s, mode = low_latency, f"{mode}; LL128"
    else:
        link_s, mode = bulk, f"{mode}; Simple"
    reduces = op.kind in REDUCING
    hbm_bytes = sent_bytes * (REDUCE_HBM_BYTES_PER_BYTE if reduces else 1.0)
    mem_s = hbm_bytes / (chip.hbm.bandwidth_bytes_per_s * cal.memory_efficiency)
    reduce_flops = sent_bytes / DTYPE_BYTES[op.dtype] if reduces else 0.0
    return OpCost(cal.collective_latency_s + latency_s, 0.0, hbm_bytes, mem_s, link_bytes=sent_bytes,
                  link_s=link_s, compute_energy_j=vector_energy(chip, reduce_flops),
                  memory_energy_j=hbm_bytes * chip.hbm.energy_j_per_byte + sent_bytes * chip.link.energy_j_per_byte,
                  mode=mode)


# kind -> (bytes each rank sends over its link, as a multiple of `bytes`; latency steps), for n ranks
RING: dict[str, tuple[Callable[[int], float], Callable[[int], int]]] = {
    "all_reduce": (lambda n: 2.0 * (n - 1) / n, lambda n: 2 * (n - 1)),  # reduce-scatter + all-gather
    "reduce_scatter": (lambda n: (n - 1) / n, lambda n: n - 1),
    "all_gather": (lambda n: float(n - 1), lambda n: n - 1),  # `bytes` is each rank's contribution
    "broadcast": (lambda n: 1.0, lambda n: n - 1),  # a pipelined chain: the buffer once, n - 1 hops
    "all_to_all": (lambda n: (n - 1) / n, lambda n: 1),  # every pair at once
    "send_recv": (lambda n: 1.0, lambda n: 1),
}
LONE_CHIP_ALGORITHMS = ("auto", "ring")


@dataclass(frozen=True)
class ChipLink:
    """A lone chip, one rank of a group of identical chips joined by their own links."""

    chip: Chip

    @property
    def name(self) -> str:
        return ""

    @property
    def link_capacity_bytes_per_s(self) -> float:
        return self.chip.link.bandwidth_bytes_per_s

    def collective_cost(self, op: Op, chip: Chip) -> OpCost:
        comm = communicator(op.shape, op.attrs)
        algorithm = str(op.attrs.get("algorithm", "auto"))
        if algorithm not in LONE_CHIP_ALGORITHMS:
            raise InputError(f"the {algorithm} algorithm needs a system's topology (`systems:` in a run config); "
                             "on a lone chip's own link collectives run as a ring", key="attrs.algorithm")
        n, size = comm.size, float(op.shape["bytes"])
        if n <= 1 or size == 0:
            return no_transfer(chip)
        traffic, steps = RING[op.kind]
        sent = traffic(n) * size
        return collective_cost(op, chip, sent, sent / chip.link.bandwidth_bytes_per_s,
                               steps(n) * chip.link.latency_s, f"{op.kind} ring over {n} x {chip.link.name}",
                               steps=steps(n))
