"""The `Chip` dataclass and its parts. Every number is SI: seconds, bytes, bytes/s, FLOP/s, W, J."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chipsim.config.reader import Section
from chipsim.errors import InputError
from chipsim.vocab import (
    ATTENTION_BACKENDS,
    COLLECTIVE_KINDS,
    DTYPES,
    HOST_CLASSES,
    INT4_MODES,
    KERNEL_CLASSES,
)

# the vocabularies live in chipsim.vocab; these names stay importable from here
__all__ = ["ATTENTION_BACKENDS", "DTYPES", "INT4_MODES", "Calibration", "Chip", "GemmMenu", "Link", "MemoryLevel",
           "PowerModel", "build_chip"]


@dataclass(frozen=True)
class MemoryLevel:
    name: str
    capacity_bytes: float
    bandwidth_bytes_per_s: float
    latency_s: float
    energy_j_per_byte: float
    area_fraction: float = 0.0  # share of the die's transistors (only set for design additions)


@dataclass(frozen=True)
class Link:
    """The chip's own scale-up link (NVLink, Infinity Fabric): per-direction bandwidth per chip."""

    name: str
    bandwidth_bytes_per_s: float
    latency_s: float
    energy_j_per_byte: float
    ports: int


@dataclass(frozen=True)
class PowerModel:
    limit_w: float
    idle_w: float
    energy_j_per_flop: dict[str, float]
    dvfs_exponent: float  # dynamic power ~ clock**exponent (f * V^2 with V ~ f gives 3)
    min_clock_hz: float
    window_s: float  # time constant of the power controller's running average


GEMV_MAX = 8  # rows (or columns) up to which a library runs a matrix-vector kernel, by default


@dataclass(frozen=True)
class GemmMenu:
    """The CTA tile shapes and largest split-k a GEMM library offers for one dtype, the rows (or columns)
    up to which it streams the weights with a skinny matrix-vector kernel instead of tiles, and the
    fraction of a streaming copy's bandwidth that kernel reaches."""

    tiles: tuple[tuple[int, int], ...]
    max_split_k: int
    gemv_max: int = GEMV_MAX
    stream_efficiency: float = 1.0


@dataclass(frozen=True)
class Calibration:
    """Efficiencies and fixed costs of the chip family and its software stack (see validation/)."""

    gemm_efficiency: dict[str, float]
    gemm_menus: dict[str, GemmMenu]  # dtype (or 'default') -> the kernel library's tile shapes
    int4_weight_only_efficiency: float
    gemm_unaligned_efficiency: float  # multiplier when a leading dimension is not 16-byte aligned
    memory_efficiency: float
    kernel_bw_efficiency: dict[str, float]
    attention_fwd_efficiency: dict[str, float]
    attention_bwd_efficiency: dict[str, float]
    attention_decode_efficiency: dict[str, float]
    attention_decode_block_s: dict[str, float]
    attention_split_kv: dict[str, bool]
    attention_setup_keys: dict[str, float]
    attention_fp32_efficiency: float  # fp32 attention (SIMT FMA pipes), of the fp32 peak
    attention_decode_fixed_s: dict[str, float]  # per backend: a decode call's own fixed cost (paging, split-KV combine)
    kernel_latency_s: float
    graph_launch_s: float
    host_dispatch_s: dict[str, float]
    collective_latency_s: float
    collective_efficiency: dict[str, float]  # per collective kind: achieved fraction of link bandwidth
    # NCCL/RCCL protocols: the low-latency one (LL128) moves data at this fraction of the bulk
    # protocol's (Simple's) bandwidth, and Simple pays `collective_step_latency_s` per sequential step
    collective_low_latency_bandwidth: float
    collective_step_latency_s: float
    source: str = ""
    # FP8 GEMMs with rowwise scales (fp32 per row of A, per column of B): the kernel's efficiency as a
    # fraction of the tensorwise fp8 one, and its tile menu (None: the fp8 menu)
    gemm_rowwise_efficiency: float = 1.0
    gemm_rowwise_menu: GemmMenu | None = None
    gemm_rowwise_setup_k: float = 0.0  # per-tile prologue/epilogue, in k steps (scale loads not pipelined)


@dataclass(frozen=True)
class Chip:
    name: str
    description: str
    vendor: str
    family: str
    compute_units: int
    clock_hz: float
    peak_flops_per_s: dict[str, float]
    int4_mode: str
    hbm: MemoryLevel
    onchip: tuple[MemoryLevel, ...]
    weight_buffer: MemoryLevel | None
    host_memory: MemoryLevel | None
    link: Link
    power: PowerModel
    calibration: Calibration
    transistors: float
    die_area_mm2: float
    source_file: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def peak(self, dtype: str) -> float:
        """Dense peak rate for a dtype; raises InputError if the chip cannot run it."""
        rate = self.peak_flops_per_s.get(dtype)
        if rate is None or rate <= 0:
            raise InputError(
                f"chip '{self.name}' has no {dtype} rate; it runs: "
                f"{', '.join(sorted(d for d, r in self.peak_flops_per_s.items() if r > 0))}",
                key="dtype",
            )
        return rate

    def memory_levels(self) -> tuple[MemoryLevel, ...]:
        levels = [self.hbm, *self.onchip]
        if self.weight_buffer is not None:
            levels.append(self.weight_buffer)
        if self.host_memory is not None:
            levels.append(self.host_memory)
        return tuple(levels)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec, SI units, for `chipsim chips show`."""
        from dataclasses import asdict

        data = asdict(self)
        data.pop("extras", None)
        return data


# ---------------------------------------------------------------- building from YAML


def _memory_level(sec: Section, name: str, *, with_area: bool = False) -> MemoryLevel:
    level = MemoryLevel(
        name=name,
        capacity_bytes=sec.quantity("capacity", "bytes"),
        bandwidth_bytes_per_s=sec.quantity("bandwidth", "bandwidth", positive=True),
        latency_s=sec.quantity("latency", "time", 0.0),
        energy_j_per_byte=sec.quantity("energy", "energy_per_byte", 0.0),
        area_fraction=sec.number("area_fraction", 0.0, maximum=1.0) if with_area else 0.0,
    )
    sec.done()
    return level


def _gemm_menu(menu: Section) -> GemmMenu:
    """A kernel library's tile menu: `tiles` ([rows, cols] CTA tiles), `max_split_k`, `gemv_max` and
    `stream_efficiency`."""
    tiles_raw = menu.raw("tiles")
    if not (isinstance(tiles_raw, list) and tiles_raw and all(
            isinstance(t, list) and len(t) == 2 and all(isinstance(x, int) and x > 0 for x in t)
            for t in tiles_raw)):
        raise menu.error("tiles", "expected a list of [rows, cols] CTA tile shapes, e.g. [[128, 256]]")
    return GemmMenu(tuple((int(a), int(b)) for a, b in tiles_raw), menu.integer("max_split_k", 1, minimum=1),
                    menu.integer("gemv_max", GEMV_MAX, minimum=1),
                    menu.number("stream_efficiency", 1.0, positive=True, maximum=1.0))


def _calibration(sec: Section) -> Calibration:
    gemm = sec.section("gemm")
    menus_sec = gemm.section("kernels")
    menus: dict[str, GemmMenu] = {}
    for dtype in menus_sec.data:
        if dtype != "default" and dtype not in DTYPES:
            raise menus_sec.error(str(dtype), f"expected 'default' or a dtype ({', '.join(DTYPES)})")
        menu = menus_sec.section(dtype)
        menus[str(dtype)] = _gemm_menu(menu)
        menu.done()
    menus_sec.done()
    if "default" not in menus:
        raise menus_sec.error("default", "expected a 'default' kernel menu")
    # efficiencies are fractions of a peak in (0, 1]: zero would divide by zero, above 1 beats the peak
    gemm_efficiency = gemm.mapping("efficiency", "number", keys=DTYPES, what="dtype", positive=True, maximum=1.0)
    int4_efficiency = gemm.number("int4_weight_only_efficiency", 0.5, positive=True, maximum=1.0)
    unaligned = gemm.number("unaligned_efficiency", 1.0, positive=True, maximum=1.0)
    # rowwise-scaled FP8 GEMMs: by default as fast as tensorwise ones, on the same tiles
    rowwise = gemm.section("rowwise", {})
    rowwise_efficiency = rowwise.number("efficiency", 1.0, positive=True, maximum=1.0)
    rowwise_menu = _gemm_menu(rowwise) if rowwise.has("tiles") else None
    rowwise_setup_k = rowwise.number("setup_k", 0.0)
    rowwise.done()
    gemm.done()
    mem = sec.section("memory")
    memory_efficiency = mem.number("efficiency", positive=True, maximum=1.0)
    # a kernel class's bandwidth relative to the streaming copy: may exceed 1 (e.g. a read-mostly kernel)
    kernel_bw = mem.mapping("kernels", "number", {}, keys=KERNEL_CLASSES, what="kernel class", positive=True)
    mem.done()
    att = sec.section("attention")
    split = att.section("split_kv", {})
    split_kv = {}
    for backend in split.data:
        if backend not in ATTENTION_BACKENDS:
            raise split.error(str(backend),
                              f"unknown attention backend; expected one of {', '.join(ATTENTION_BACKENDS)}")
        split_kv[str(backend)] = split.boolean(backend)
    split.done()
    tables = {part: att.mapping(part, "time", keys=ATTENTION_BACKENDS, what="attention backend")
              if part == "decode_block" else
              att.mapping(part, "number", keys=ATTENTION_BACKENDS, what="attention backend", positive=True,
                          maximum=1.0)
              for part in ("fwd", "bwd", "decode", "decode_block")}
    for part, table in tables.items():
        missing = [b for b in ATTENTION_BACKENDS if b not in table]
        if missing:
            raise att.error(part, f"missing backends {missing}; expected all of {list(ATTENTION_BACKENDS)}")
    setup_keys = att.mapping("setup_keys", "number", {}, keys=("fwd", "bwd"), what="attention pass")
    fp32_attention = att.number("fp32", 0.5, positive=True, maximum=1.0)
    decode_fixed = att.mapping("decode_fixed", "time", {}, keys=ATTENTION_BACKENDS, what="attention backend")
    att.done()
    lat = sec.section("latency")
    kernel_latency, graph_launch = lat.quantity("kernel", "time"), lat.quantity("graph_launch", "time")
    lat.done()
    host = sec.section("host")
    dispatch = host.mapping("dispatch", "time", keys=HOST_CLASSES, what="host dispatch class")
    host.done()
    coll = sec.section("collective")
    coll_latency = coll.quantity("latency", "time")
    coll_efficiency = coll.mapping("efficiency", "number", keys=COLLECTIVE_KINDS, what="collective kind",
                                   positive=True, maximum=1.0)
    # the library's protocol parameters, the same for every chip unless its file says otherwise: fitted
    # with validation/fit_protocols.py on the collective rows of published/calibration.csv (A100, H100,
    # H200, B200, MI300X; 2 to 32 GPUs) and the 2-GPU rows of h200/calibration.csv
    low_latency_bandwidth = coll.number("low_latency_bandwidth", 0.6, positive=True, maximum=1.0)
    step_latency = coll.quantity("step_latency", "time", "2.5 us")
    coll.done()
    source = sec.string("source", "")
    sec.done()
    return Calibration(
        gemm_efficiency=gemm_efficiency, gemm_menus=menus, int4_weight_only_efficiency=int4_efficiency,
        gemm_unaligned_efficiency=unaligned, memory_efficiency=memory_efficiency, kernel_bw_efficiency=kernel_bw,
        attention_fwd_efficiency=tables["fwd"], attention_bwd_efficiency=tables["bwd"],
        attention_decode_efficiency=tables["decode"], attention_decode_block_s=tables["decode_block"],
        attention_split_kv=split_kv, attention_setup_keys=setup_keys, attention_fp32_efficiency=fp32_attention,
        attention_decode_fixed_s=decode_fixed, kernel_latency_s=kernel_latency,
        graph_launch_s=graph_launch, host_dispatch_s=dispatch, collective_latency_s=coll_latency,
        collective_efficiency=coll_efficiency, collective_low_latency_bandwidth=low_latency_bandwidth,
        collective_step_latency_s=step_latency, source=source,
        gemm_rowwise_efficiency=rowwise_efficiency, gemm_rowwise_menu=rowwise_menu,
        gemm_rowwise_setup_k=rowwise_setup_k,
    )


def build_chip(data: dict[str, Any], file: str | None = None) -> Chip:
    """Validate a merged chip mapping (after `extends:`) and build the frozen Chip."""
    top = Section(data, file)
    top.schema_version(1, "chip")
    name = top.string("name")
    compute = top.section("compute")
    peak_sec = compute.section("peak")
    peak = {}
    for dtype in peak_sec.data:
        if dtype not in DTYPES:
            raise peak_sec.error(str(dtype), f"unknown dtype; expected one of {', '.join(DTYPES)}")
        # 0 marks a dtype the chip does not run (e.g. a child chip dropping its parent's tf32)
        peak[dtype] = peak_sec.quantity(dtype, "flops", positive=dtype == "bf16")
    peak_sec.done()
    if "bf16" not in peak:
        raise compute.error("peak", "expected at least a bf16 rate")
    units = compute.integer("units", minimum=1)
    clock = compute.quantity("clock", "frequency", positive=True)
    int4_mode = compute.string("int4", "weight_only", choices=INT4_MODES)
    if int4_mode == "native" and "int4" not in peak:
        raise compute.error("int4", "native int4 needs a peak.int4 rate")
    compute.done()

    mem = top.section("memory")
    hbm = _memory_level(mem.section("hbm"), "hbm")
    onchip_sec = mem.section("onchip", {})
    onchip = tuple(_memory_level(onchip_sec.section(level), str(level)) for level in onchip_sec.data)
    onchip_sec.done()
    wb = _memory_level(mem.section("weight_buffer"), "weight_buffer", with_area=True) if mem.has("weight_buffer") else None
    host_mem = _memory_level(mem.section("host"), "host") if mem.has("host") else None
    mem.raw("weight_buffer", None)
    mem.raw("host", None)
    mem.done()

    ln = top.section("link")
    link = Link(
        name=ln.string("name"),
        bandwidth_bytes_per_s=ln.quantity("bandwidth", "bandwidth", positive=True),
        latency_s=ln.quantity("latency", "time", 0.0),
        energy_j_per_byte=ln.quantity("energy", "energy_per_byte", 0.0),
        ports=ln.integer("ports", 1, minimum=1),
    )
    ln.done()

    pw = top.section("power")
    e_flop = pw.mapping("energy_per_flop", "energy_per_flop")
    for dtype in e_flop:
        if dtype not in DTYPES:
            raise pw.error(f"energy_per_flop.{dtype}", f"unknown dtype; expected one of {', '.join(DTYPES)}")
    missing = [d for d in peak if d not in e_flop]
    if missing:
        raise pw.error("energy_per_flop", f"missing an energy for dtypes the chip runs: {', '.join(missing)}")
    power = PowerModel(
        limit_w=pw.quantity("limit", "power"),
        idle_w=pw.quantity("idle", "power"),
        energy_j_per_flop=e_flop,
        dvfs_exponent=pw.number("dvfs_exponent", 3.0, minimum=1.0),
        min_clock_hz=pw.quantity("min_clock", "frequency", positive=True),
        window_s=pw.quantity("window", "time", positive=True),
    )
    pw.done()
    if power.min_clock_hz > clock:
        raise top.error("power.min_clock", f"the lowest clock {power.min_clock_hz / 1e9:.4g} GHz is above the "
                        f"chip's clock {clock / 1e9:.4g} GHz (compute.clock)")
    if power.idle_w >= power.limit_w:
        raise top.error("power.idle", f"idle power {power.idle_w} W must be below the limit {power.limit_w} W")

    area = top.section("area", {})
    transistors = area.number("transistors", 0.0)
    die = area.number("die_mm2", 0.0)
    area.done()

    cal = _calibration(top.section("calibration"))
    chip = Chip(
        name=name,
        description=top.string("description", ""),
        vendor=top.string("vendor", ""),
        family=top.string("family", ""),
        compute_units=int(units),
        clock_hz=clock,
        peak_flops_per_s=peak,
        int4_mode=int4_mode,
        hbm=hbm,
        onchip=onchip,
        weight_buffer=wb,
        host_memory=host_mem,
        link=link,
        power=power,
        calibration=cal,
        transistors=transistors,
        die_area_mm2=die,
        source_file=file or "",
    )
    top.done()
    missing_eff = [d for d in peak if d not in cal.gemm_efficiency]
    if missing_eff:
        raise top.error("calibration.gemm.efficiency", f"missing efficiency for dtypes: {', '.join(missing_eff)}")
    return chip
