"""`all_reduce`: a ring all-reduce over N chips of one kind joined by their own link, plain or the
article's int8-compressed scheme (per-tensor absmax quantize, all-gather, dequantize and average)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from chipsim.config.units import parse_quantity
from chipsim.errors import InputError
from chipsim.vocab import Algorithm, CollectiveKind
from chipsim.workload.generators.registry import param, register_generator
from chipsim.workload.graph import Workload, WorkloadBuilder
from chipsim.workload.kinds import DTYPE_BYTES


@dataclass(frozen=True)
class AllReduceParams:
    chips: int = param(8, "chips in the ring (one representative rank is simulated: ranks are symmetric)")
    size: str | int = param("1 GiB", "bytes per rank, e.g. '256 MiB' or 268435456")
    dtype: Literal["fp32", "bf16", "fp16"] = param("fp32", "element type of the reduced tensor")
    scheme: Literal["plain", "int8_compressed", "int8_rs_ag"] = param(
        "plain", "plain all-reduce; int8_compressed: quantize + all-gather + dequantize-average (the article's); "
        "int8_rs_ag: quantize, reduce-scatter in int8 (dequantize-add-requantize each step), all-gather, dequantize")
    algorithm: Algorithm = param(
        "auto", "collective algorithm when run on a system (on a lone chip: a ring over its own link)")

    def __post_init__(self) -> None:
        if self.chips < 1:
            raise InputError("expected at least 1 chip", key="chips")

    @property
    def nbytes(self) -> float:
        return parse_quantity(self.size, "bytes", key="size")


@register_generator("all_reduce", AllReduceParams, "ring all-reduce over N chips, plain or int8-compressed")
def all_reduce(p: AllReduceParams) -> Workload:
    size = p.nbytes
    numel = int(size / DTYPE_BYTES[p.dtype])
    if numel < 1:
        raise InputError(f"size {p.size!r} holds no {p.dtype} element", key="size")
    b = WorkloadBuilder(f"all_reduce_{p.scheme}_{p.chips}x_{int(size)}B", "all_reduce", vars(p))
    if p.scheme == "plain":
        b.add("all_reduce", "all_reduce", p.dtype, [], stream="comm", bytes=size, group=p.chips,
              attrs={"algorithm": p.algorithm})
    else:
        # as PyTorch runs it, op by op: per-tensor absmax scale, quantize, all-gather the int8 payload
        # and the scales, stack, dequantize, average
        dt, n = p.dtype, p.chips
        absv = b.add("elementwise", "quant.abs", dt, [], numel=numel, attrs={"op": "abs"})
        amax = b.add("elementwise", "quant.amax", dt, [absv], numel=numel, attrs={"op": "reduce"})
        scale = b.add("elementwise", "quant.scale", dt, [amax], numel=1, attrs={"op": "scale"})
        div = b.add("elementwise", "quant.div", dt, [scale], numel=numel, attrs={"op": "scale"})
        rnd = b.add("elementwise", "quant.round", dt, [div], numel=numel, attrs={"op": "round"})
        clp = b.add("elementwise", "quant.clamp", dt, [rnd], numel=numel, attrs={"op": "clamp"})
        q = b.add("elementwise", "quant.to_int8", dt, [clp], numel=numel, attrs={"op": "cast", "out_dtype": "int8"})
        if p.scheme == "int8_rs_ag":
            # reduce-scatter the int8 payload; each of the N-1 steps dequantizes, adds and requantizes
            # a chunk, then the reduced int8 chunks are all-gathered and dequantized once
            rs = b.add("reduce_scatter", "reduce_scatter.int8", "int8", [q], stream="comm", bytes=float(numel),
                       group=n, attrs={"algorithm": p.algorithm})
            req = b.add("elementwise", "reduce.dequant_add_requant", "int8", [rs],
                        numel=max(1, numel * (n - 1) // n), attrs={"op": "add"})
            ag = b.add("all_gather", "all_gather.int8", "int8", [req], stream="comm", bytes=float(numel // n or 1),
                       group=n, attrs={"algorithm": p.algorithm})
            b.add("elementwise", "dequant.to_float", "int8", [ag], numel=numel, attrs={"op": "cast", "out_dtype": dt})
            b.memory.update({"buffers": size * 2.5})
            b.meta.update(link_bytes_per_rank_plain=2 * (n - 1) / n * size, link_bytes_per_rank_compressed=2 * (n - 1) / n * numel)
            return b.build()
        g = b.add("all_gather", "all_gather.int8", "int8", [q], stream="comm", bytes=float(numel), group=n,
                  attrs={"algorithm": p.algorithm})
        gs = b.add("all_gather", "all_gather.scales", "fp32", [scale], stream="comm", bytes=4.0, group=n,
                   attrs={"algorithm": p.algorithm})
        st = b.add("elementwise", "dequant.stack", "int8", [g], numel=numel * n, attrs={"op": "copy"})
        f = b.add("elementwise", "dequant.to_float", "int8", [st], numel=numel * n,
                  attrs={"op": "cast", "out_dtype": dt})
        m = b.add("elementwise", "dequant.scale", dt, [f, gs], numel=numel * n, attrs={"op": "scale"})
        total = b.add("elementwise", "dequant.sum", dt, [m], numel=numel * n, attrs={"op": "reduce"})
        b.add("elementwise", "dequant.mean", dt, [total], numel=numel, attrs={"op": "scale"})
    b.memory.update({"buffers": size * (1 if p.scheme == "plain" else 2 + p.chips * 1.25)})
    b.meta.update(link_bytes_per_rank_plain=2 * (p.chips - 1) / p.chips * size,
                  link_bytes_per_rank_compressed=(p.chips - 1) * numel)
    return b.build()


@dataclass(frozen=True)
class CollectiveParams:
    kind: CollectiveKind = param(
        "all_reduce", "the collective")
    ranks: int = param(8, "participating GPUs")
    size: str | int = param("1 GiB", "bytes per rank (all_gather: each rank's contribution)")
    dtype: Literal["fp32", "bf16", "fp16", "int8"] = param("bf16", "element type")
    algorithm: Algorithm = param(
        "auto", "algorithm on a system")

    def __post_init__(self) -> None:
        if self.ranks < 1:
            raise InputError("expected at least 1 rank", key="ranks")


@register_generator("collective", CollectiveParams, "one collective over N GPUs of a system")
def collective(p: CollectiveParams) -> Workload:
    size = parse_quantity(p.size, "bytes", key="size")
    b = WorkloadBuilder(f"{p.kind}_{p.algorithm}_{p.ranks}x_{int(size)}B", "collective", vars(p))
    b.add(p.kind, p.kind, p.dtype, [], stream="comm", bytes=size, group=p.ranks, attrs={"algorithm": p.algorithm})
    b.memory.update({"buffers": size * (p.ranks if p.kind == "all_gather" else 2)})
    return b.build()
