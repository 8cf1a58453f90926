"""Replay a workload on one chip: host dispatch, per-stream ordering, dependencies, shared HBM and
link bandwidth, and power capping. Returns a `Result`; prints nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import simpy

from chipsim.cost import ChipLink, Network, OpCost, cost_of
from chipsim.engine.fluid import FluidShare
from chipsim.engine.power import PowerController, sustained_scale
from chipsim.errors import InputError
from chipsim.hardware.chip import Chip
from chipsim.report.result import OpRecord, Result
from chipsim.vocab import LAUNCH_MODES
from chipsim.workload.graph import Op, Workload
from chipsim.workload.kinds import host_class

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class SimOptions:
    """`launch`: eager (each op dispatched from Python) or graph (CUDA-graph replay).
    `sustained`: start with the power controller at the limit, as in back-to-back steps."""

    launch: str = "eager"
    sustained: bool = False
    power_capping: bool = True

    def __post_init__(self) -> None:
        if self.launch not in LAUNCH_MODES:
            raise InputError(f"expected one of {', '.join(LAUNCH_MODES)}, got {self.launch!r}", key="launch")


def _dispatch_seconds(op: Op, chip: Chip) -> float:
    """Host time to issue the op eagerly: its class's dispatch cost, plus any framework calls that
    launch no kernel (views, splits, module calls) attributed to it in `attrs.host_calls`."""
    if "host_s" in op.attrs:  # measured in a trace: the host's own cadence is kept
        return float(op.attrs["host_s"])
    table = chip.calibration.host_dispatch_s
    seconds = table.get(host_class(op.kind, op.attrs), table.get("other", 0.0))
    calls = op.attrs.get("host_calls", 0)
    return seconds + calls * table.get("call", 0.0) if calls else seconds


@dataclass(frozen=True)
class Prepared:
    """A simulation ready to run: every op already costed, so an op the target cannot run is an
    InputError before any simulation starts (`prepare`), and nothing is costed twice."""

    workload: Workload
    chip: Chip
    options: SimOptions
    network: Network
    costs: tuple[OpCost, ...]

    def run(self) -> Result:
        return _Replay(self).run()


def prepare(workload: Workload, chip: Chip, options: SimOptions | None = None,
            network: Network | None = None) -> Prepared:
    """Cost every op of `workload` on `chip` (collectives on `network`: a system's `Fabric`, or by
    default the chip's own link, `ChipLink`)."""
    network = network if network is not None else ChipLink(chip)
    return Prepared(workload, chip, options or SimOptions(), network,
                    tuple(cost_of(op, chip, network) for op in workload.ops))


class _Replay:
    def __init__(self, prepared: Prepared) -> None:
        self.workload = workload = prepared.workload
        self.chip = chip = prepared.chip
        self.options = options = prepared.options
        self.network = prepared.network
        self.env = simpy.Environment()
        self.costs = prepared.costs
        # each device (a GPU of a multi-device workload, e.g. a pipeline stage) has its own HBM port,
        # link ports, power controller and host thread; the port itself runs at peak, each op's own
        # cap carries its achieved efficiency
        self.devices = sorted({op.device for op in workload.ops}) or [0]
        self.hbm = {d: FluidShare(self.env, chip.hbm.bandwidth_bytes_per_s, "hbm") for d in self.devices}
        self.link = {d: FluidShare(self.env, self.network.link_capacity_bytes_per_s, "link") for d in self.devices}
        self.power = {d: PowerController(chip.power, chip.clock_hz, self._initial_scale(d), options.sustained)
                      for d in self.devices}
        self.records: list[OpRecord | None] = [None] * len(workload.ops)
        self.power_steps: list[tuple[float, float]] = [(0.0, chip.power.idle_w)]
        self.done: list[simpy.Event] = [self.env.event() for _ in workload.ops]
        self._last_on_stream: dict[tuple[int, str], simpy.Event] = {}

    def _initial_scale(self, device: int) -> float:
        """The clock a device starts at: boost, or (sustained) where its ops' loop settles."""
        chip, options = self.chip, self.options
        if not (options.sustained and options.power_capping):
            return 1.0
        # an op on a side stream (communication, copies) runs beside the compute stream: its
        # energy falls within the compute stream's time, so it adds power, not seconds
        return sustained_scale(chip.power, min(1.0, chip.power.min_clock_hz / chip.clock_hz), [
            (c.fixed_s + max(c.mem_s, c.link_s), c.compute_s, c.compute_energy_j, c.memory_energy_j)
            if op.stream == "compute" else (0.0, 0.0, c.compute_energy_j, c.memory_energy_j)
            for op, c in zip(self.workload.ops, self.costs, strict=True) if op.device == device])

    def run(self) -> Result:
        if any(op.attrs.get("host_sync") for op in self.workload.ops):
            for device in self.devices:
                self.env.process(self._host_with_syncs(device))
        else:  # the host never waits: issue times are a running sum (one host thread per device)
            issue = dict.fromkeys(self.devices, 0.0)
            for op in self.workload.ops:
                if self.options.launch != "graph":
                    issue[op.device] += _dispatch_seconds(op, self.chip)
                self._launch(op, issue[op.device])
        self.env.run()
        records = [r for r in self.records if r is not None]
        if len(records) != len(self.workload.ops):  # pragma: no cover - a DAG always completes
            raise RuntimeError("simulation ended with ops not run")
        return Result.build(self.workload, self.chip, self.options, records, self.power_steps, self.network.name)

    def _host_with_syncs(self, device: int):  # type: ignore[no-untyped-def]
        """The device's host issues its ops in program order; an op marked `host_sync` (the host
        synchronized with the device before launching it) is issued only once every earlier op of
        the device has finished."""
        ops = [op for op in self.workload.ops if op.device == device]
        for index, op in enumerate(ops):
            if op.attrs.get("host_sync") and index:
                yield simpy.AllOf(self.env, [self.done[o.id] for o in ops[:index]])
            if self.options.launch != "graph":
                yield self.env.timeout(_dispatch_seconds(op, self.chip))
            self._launch(op, self.env.now)

    def _launch(self, op: Op, issue_s: float) -> None:
        key = (op.device, op.stream)
        waits = [self.done[d] for d in op.deps]
        if key in self._last_on_stream:
            waits.append(self._last_on_stream[key])
        self.env.process(self._execute(op, issue_s, waits))
        self._last_on_stream[key] = self.done[op.id]

    def _execute(self, op: Op, issue_s: float, waits: list[simpy.Event]):  # type: ignore[no-untyped-def]
        env = self.env
        if issue_s > env.now:
            yield env.timeout(issue_s - env.now)
        if waits:
            yield simpy.AllOf(env, waits)
        cost = self.costs[op.id]
        start = env.now
        fixed = cost.fixed_s + (self.chip.calibration.graph_launch_s * cost.kernels
                                if self.options.launch == "graph" else 0.0)
        # the clock the power controller holds now (1.0: boost)
        body_alone = max(cost.compute_s, cost.mem_s, cost.link_s)
        duration_alone = fixed + body_alone
        power = self.power[op.device]
        if self.options.power_capping:
            power.advance(start)
            scale = power.scale
        else:
            scale = 1.0
        compute_s = cost.compute_s / scale
        energy = cost.compute_energy_j * scale ** (self.chip.power.dvfs_exponent - 1) + cost.memory_energy_j
        body = max(compute_s, cost.mem_s, cost.link_s)
        watts = energy / (fixed + body) if fixed + body > 0 else 0.0
        power.add(start, watts)
        self.power_steps.append((start, watts))
        if fixed > 0:
            yield env.timeout(fixed)
        events: list[simpy.Event] = []
        if body > 0:
            # time not carried by a shared flow (compute, or a duration with no bytes behind it)
            events.append(env.timeout(max(compute_s, cost.mem_s if cost.mem_bytes <= 0 else 0.0,
                                          cost.link_s if cost.link_bytes <= 0 else 0.0)))
            if cost.mem_bytes > 0 and cost.mem_s > 0:
                events.append(self.hbm[op.device].transfer(cost.mem_bytes, cost.mem_bytes / body))
            if cost.link_bytes > 0 and cost.link_s > 0:
                events.append(self.link[op.device].transfer(cost.link_bytes, cost.link_bytes / body))
            yield simpy.AllOf(env, events)
        end = env.now
        power.remove(end, watts)
        self.power_steps.append((end, -watts))
        self.records[op.id] = OpRecord(
            id=op.id, name=op.name, kind=op.kind, dtype=op.dtype, stream=op.stream, device=op.device,
            issue_s=issue_s, start_s=start, end_s=end, flops=op.flops, bytes=op.bytes,
            energy_j=energy, clock_scale=scale,
            bound=cost.bound, level=cost.level, mode=cost.mode, alone_s=duration_alone, deps=op.deps,
        )
        self.done[op.id].succeed()


def simulate(workload: Workload, chip: Chip, options: SimOptions | None = None,
             network: Network | None = None) -> Result:
    """Replay `workload` on `chip`; same inputs give the same numbers, bit for bit. Collectives run
    on `network`: a system's `Fabric` (the chip is one representative rank of it: ranks are
    symmetric), or by default the chip's own link (`ChipLink`)."""
    log.debug("simulating %s (%d ops) on %s", workload.name, len(workload.ops), chip.name)
    return prepare(workload, chip, options, network).run()
