"""Measure tensor, pipeline and expert parallelism (and FSDP2) on two NVLink-connected GPUs, in the schema of
reference/h200/parallel_calibration.csv, each parallel row with its one-GPU counterpart measured in the same run.

    torchrun --nproc_per_node 2 validation/measure_parallel_2gpu.py --out validation/h200x2_parallel.csv   # 2x H200
    torchrun --nproc_per_node 2 validation/measure_parallel_2gpu.py --dry-run --out /tmp/h13/rows.csv     # CPU check

`--items comm,tp,moe,pp,fsdp` picks the parts (all by default). Issue 13.

Methodology as in validation/measure_h200.py and reference/README.md: one process per GPU over NCCL with
NVLink SHARP off (NCCL_NVLS_ENABLE=0, set here before init); times are microseconds between CUDA events,
median over repeated measurements with p10/p90. Before every measurement both ranks meet in a one-element
all-reduce, so both GPUs start together; a parallel row's sample is the slower rank's time of that trial.
Collectives: `reps` back-to-back calls between two events, divided by `reps`, bf16 buffers. Training steps:
one step between two events, 3 warm-up steps then 10 timed, bf16 autocast, fused AdamW; peak memory per GPU
is in `note`. One-GPU counterparts (tp=1, pp=1, ep=1, dp=1): both GPUs run their own full copy at the same
time (same clocks and power as the parallel runs, no idle peer); rank 0's times are the row, rank 1's median
is in `note`. `flops` counts the whole step over all ranks, with the reference rows' conventions: TP blocks
6*params*tokens + 6*layers*batch*seq^2*d_model (causal attention), pipeline and FSDP 6*params*tokens, MoE
6*(3*d_model*expert_ffn)*tokens*topk. Rows are written by rank 0 and flushed one by one; an item that fails
prints its traceback and the others still run (a failure on one rank only may leave the other waiting until
the NCCL timeout, `--timeout`, which ends the run; the rows written so far stay).

`--dry-run`: gloo on CPU, float32, tiny sizes, time.perf_counter instead of CUDA events, fewer repetitions;
the same code paths otherwise (device column `cpu_dry_run`).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import statistics
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

COLUMNS = ["op", "variant", "dtype", "launch", "m", "n", "k", "batch", "heads", "kv_heads", "seq_q", "seq_kv",
           "head_dim", "causal", "pass", "bytes", "world", "layers", "d_model", "ffn", "vocab", "tp", "pp", "ep", "dp",
           "micro_batches", "experts", "topk", "expert_ffn", "measured_us", "p10_us", "p90_us", "flops", "device",
           "stack", "note"]

LLAMA_1B3 = dict(name="llama-1.3b", layers=24, d=2048, heads=16, kv=16, ffn=5632, vocab=32000, seq=2048)
FULL = dict(
    comm_sizes=[1024 * 4**i for i in range(11)],  # 1 KiB .. 1 GiB per rank
    comm_reps=lambda size: 20 if size <= (16 << 20) else 5,
    comm_trials=9, comm_warmup=3, warmup=3, steps=10,
    # name, layers, d_model, heads, kv_heads, ffn
    tp_cases=[("llama-7b-4layer", 4, 4096, 32, 32, 11008), ("llama-70b-2layer", 2, 8192, 64, 8, 28672)],
    tp_seq=4096, tp_batch=1,
    pp_model=LLAMA_1B3, pp_micro_batches=(4, 8),
    moe=dict(name="mixtral-like-moe-1layer", d=4096, experts=8, topk=2, ffn=14336, seq=4096, batch=2),
    fsdp_model=LLAMA_1B3, fsdp_batch=1,
)
TINY = dict(name="tiny-llama", layers=4, d=64, heads=4, kv=4, ffn=128, vocab=256, seq=32)
DRY = dict(
    comm_sizes=[1024 * 4**i for i in range(4)],  # 1 KiB .. 64 KiB
    comm_reps=lambda size: 2, comm_trials=3, comm_warmup=1, warmup=1, steps=3,
    tp_cases=[("tiny-mha-2layer", 2, 64, 4, 4, 128), ("tiny-gqa-1layer", 1, 128, 8, 2, 256)],
    tp_seq=32, tp_batch=1,
    pp_model=TINY, pp_micro_batches=(2, 4),
    moe=dict(name="tiny-moe-1layer", d=64, experts=8, topk=2, ffn=96, seq=32, batch=2),
    fsdp_model=TINY, fsdp_batch=1,
)


class Ctx:
    """What every item needs: rank, device, dtypes, the control group and the row writer."""

    def __init__(self, args):
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.dry = args.dry_run
        self.cuda = not self.dry
        self.cfg = DRY if self.dry else FULL
        timeout = timedelta(seconds=args.timeout)
        if self.cuda:
            local = int(os.environ.get("LOCAL_RANK", self.rank))
            torch.cuda.set_device(local)
            self.dev = torch.device("cuda", local)
            dist.init_process_group("nccl", device_id=self.dev, timeout=timeout)
            name = torch.cuda.get_device_name(self.dev)
            self.device = "H200" if "H200" in name else "H100_SXM" if "H100" in name else name.replace(" ", "_")
            nccl = ".".join(str(v) for v in torch.cuda.nccl.version())
            self.stack = f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {nccl}"
        else:
            torch.set_num_threads(1)
            self.dev = torch.device("cpu")
            dist.init_process_group("gloo", timeout=timeout)
            self.device = "cpu_dry_run"
            self.stack = f"torch {torch.__version__}, gloo"
        # control messages (results, status) go over gloo so they never pair with a pending NCCL call
        self.ctrl = dist.new_group(backend="gloo", timeout=timeout)
        self.dtype = torch.bfloat16 if self.cuda else torch.float32  # buffers, dispatched tokens
        self.dtype_name = "bf16_autocast" if self.cuda else "fp32"
        self.comm_dtype_name = "bf16" if self.cuda else "fp32"
        self.backend = "nccl" if self.cuda else "gloo"
        self.flag = torch.zeros(1, device=self.dev)
        self.prefix = "DRY RUN (CPU, gloo, fp32, tiny sizes, perf_counter); " if self.dry else ""

    def autocast(self):
        return torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.cuda)

    def adamw(self, params):
        return torch.optim.AdamW(params, lr=1e-5, fused=True)

    def gather(self, obj):
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.ctrl)
        return out


class Writer:
    """Rank 0 appends rows to the CSV and flushes each one, so a timeout still leaves the rows measured so far."""

    def __init__(self, ctx, path):
        self.ctx, self.count, self.fh = ctx, 0, None
        if ctx.rank == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.fh = open(path, "w", newline="")  # noqa: SIM115 - kept open for the whole run
            self.writer = csv.DictWriter(self.fh, COLUMNS)
            self.writer.writeheader()
            self.fh.flush()

    def emit(self, **kw):
        out = {c: "" for c in COLUMNS}
        out.update(launch="eager", device=self.ctx.device, stack=self.ctx.stack)
        out.update({k: v for k, v in kw.items() if v is not None})
        out["note"] = self.ctx.prefix + out["note"]
        self.count += 1
        if self.fh is not None:
            self.writer.writerow(out)
            self.fh.flush()
            layout = " ".join(f"{c}={out[c]}" for c in ("tp", "pp", "ep", "dp", "micro_batches", "bytes") if out[c] != "")
            print(f"row {self.count}: {out['op']} {out['variant']} {layout}: {out['measured_us']:.1f} us "
                  f"(p10 {out['p10_us']:.1f}, p90 {out['p90_us']:.1f})", flush=True)

    def close(self):
        if self.fh is not None:
            self.fh.close()


# ---------------------------------------------------------------- timing


def mark(ctx):
    if ctx.cuda:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev
    return time.perf_counter()


def elapsed_us(ctx, start, end):
    if ctx.cuda:
        end.synchronize()
        return start.elapsed_time(end) * 1e3
    return (end - start) * 1e6


def stats(samples):
    s = sorted(samples)
    return statistics.median(s), s[len(s) // 10], s[-1 - len(s) // 10]


def timed(ctx, fn, reps, trials, warmup, combine="max"):
    """Per-call time (us) of `reps` back-to-back calls between events, `trials` times, after `warmup` calls.

    Each trial starts right after a one-element all-reduce, so both GPUs start together. combine="max": a
    trial's sample is the slower rank's (parallel runs); "rank0": rank 0's own samples (one-GPU copies).
    Returns median, p10, p90 and each rank's median."""
    for _ in range(warmup):
        fn()
    if ctx.cuda:
        torch.cuda.synchronize()
    mine = []
    for _ in range(trials):
        dist.all_reduce(ctx.flag)
        start = mark(ctx)
        for _ in range(reps):
            fn()
        mine.append(elapsed_us(ctx, start, mark(ctx)) / reps)
    everyone = ctx.gather(mine)
    samples = [max(t) for t in zip(*everyone, strict=True)] if combine == "max" else everyone[0]
    return (*stats(samples), [statistics.median(s) for s in everyone])


def time_steps(ctx, step, combine):
    return timed(ctx, step, reps=1, trials=ctx.cfg["steps"], warmup=ctx.cfg["warmup"], combine=combine)


def reset_memory(ctx):
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def memory_note(ctx):
    peak = torch.cuda.max_memory_allocated() / 2**30 if ctx.cuda else None
    peaks = ctx.gather(peak)
    if not ctx.cuda:
        return "peak memory n/a on CPU"
    return "peak memory allocated/GPU " + "/".join(f"{p:.1f}" for p in peaks) + " GiB (rank 0/1)"


def spread_note(per_rank, combine):
    ms = ", ".join(f"{m:.1f}" for m in per_rank)
    if combine == "max":
        return f"sample = slower rank per trial (rank medians {ms} us)"
    return f"one-GPU copy on each GPU at once, rank 0 timed (rank medians {ms} us)"


# ---------------------------------------------------------------- 1. all-to-all and point-to-point


def item_comm(ctx, w):
    cfg, peer = ctx.cfg, 1 - ctx.rank
    elt = torch.empty((), dtype=ctx.dtype).element_size()
    for size in cfg["comm_sizes"]:
        x = torch.randn(size // elt, device=ctx.dev, dtype=ctx.dtype)
        y = torch.empty_like(x)

        def a2a(x=x, y=y):
            dist.all_to_all_single(y, x)

        def oneway(x=x, y=y):
            if ctx.rank == 0:
                dist.send(x, 1)
            else:
                dist.recv(y, 0)

        def bidir(x=x, y=y):
            for req in dist.batch_isend_irecv([dist.P2POp(dist.isend, x, peer), dist.P2POp(dist.irecv, y, peer)]):
                req.wait()

        cases = [("all_to_all", ctx.backend, a2a, "all_to_all_single, equal splits (half of the buffer to each rank, "
                  "incl. itself)"),
                 ("p2p", "send_recv_oneway", oneway, "dist.send on rank 0, dist.recv on rank 1, one direction"),
                 ("p2p", "send_recv_bidir", bidir, "batch_isend_irecv: each rank sends its buffer to the other and "
                  "receives one at the same time")]
        for op, variant, fn, what in cases:
            reps = cfg["comm_reps"](size)
            med, p10, p90, per = timed(ctx, fn, reps, cfg["comm_trials"], cfg["comm_warmup"])
            w.emit(op=op, variant=variant, dtype=ctx.comm_dtype_name, bytes=size, world=ctx.world, measured_us=med,
                   p10_us=p10, p90_us=p90,
                   note=f"{what}; bytes=each rank's buffer; {reps} calls between events; {spread_note(per, 'max')}")
        del x, y


# ---------------------------------------------------------------- model pieces


class _CopyToTP(torch.autograd.Function):
    """Megatron's f: identity in forward, all-reduce of the input gradient in backward."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad


class _ReduceFromTP(torch.autograd.Function):
    """Megatron's g: all-reduce of the partial sums in forward, identity in backward."""

    @staticmethod
    def forward(ctx, x):
        x = x.contiguous()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


class Block(nn.Module):
    """Llama-style block (RMSNorm, fused QKV, causal SDPA, SwiGLU, no rotary), Megatron tensor parallel over
    `tp` ranks: QKV and gate/up column-parallel, out-proj and down row-parallel; tp=1 is the plain block."""

    def __init__(self, d, heads, kv_heads, ffn, tp=1):
        super().__init__()
        self.tp, self.hd = tp, d // heads
        self.h, self.kvh = heads // tp, kv_heads // tp
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv = nn.Linear(d, (self.h + 2 * self.kvh) * self.hd, bias=False)
        self.out = nn.Linear(self.h * self.hd, d, bias=False)
        self.gate_up = nn.Linear(d, 2 * (ffn // tp), bias=False)
        self.down = nn.Linear(ffn // tp, d, bias=False)

    def f(self, x):
        return _CopyToTP.apply(x) if self.tp > 1 else x

    def g(self, x):
        return _ReduceFromTP.apply(x) if self.tp > 1 else x

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(self.f(self.n1(x))).split([self.h * self.hd, self.kvh * self.hd, self.kvh * self.hd], -1)
        q = q.view(b, s, self.h, self.hd).transpose(1, 2)
        k = k.view(b, s, self.kvh, self.hd).transpose(1, 2)
        v = v.view(b, s, self.kvh, self.hd).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kvh != self.h)
        x = x + self.g(self.out(o.transpose(1, 2).reshape(b, s, -1)))
        gate, up = self.gate_up(self.f(self.n2(x))).chunk(2, dim=-1)
        return x + self.g(self.down(F.silu(gate) * up))


def block_params(d, heads, kv_heads, ffn):
    hd = d // heads
    return d * (heads + 2 * kv_heads) * hd + heads * hd * d + 3 * d * ffn + 2 * d


class Stage(nn.Module):
    """Layers [lo, hi) of a Llama-style model; the first stage has the embedding, the last the norm and head."""

    def __init__(self, m, lo, hi):
        super().__init__()
        self.emb = nn.Embedding(m["vocab"], m["d"]) if lo == 0 else None
        self.blocks = nn.ModuleList(Block(m["d"], m["heads"], m["kv"], m["ffn"]) for _ in range(lo, hi))
        last = hi == m["layers"]
        self.norm = nn.RMSNorm(m["d"]) if last else None
        self.head = nn.Linear(m["d"], m["vocab"], bias=False) if last else None

    def forward(self, x):
        if self.emb is not None:
            x = self.emb(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)) if self.head is not None else x


def lm_loss(logits, targets, scale=1.0):
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1)) * scale


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- 2. tensor parallel blocks


def item_tp(ctx, w):
    cfg = ctx.cfg
    seq, batch = cfg["tp_seq"], cfg["tp_batch"]
    for name, layers, d, heads, kv, ffn in cfg["tp_cases"]:
        for tp in (ctx.world, 1):
            reset_memory(ctx)
            torch.manual_seed(1000 + ctx.rank)  # each rank its own shard (or its own copy)
            with torch.device(ctx.dev):
                model = nn.Sequential(*(Block(d, heads, kv, ffn, tp) for _ in range(layers)))
            torch.manual_seed(7)  # the same replicated input on both ranks
            x = torch.randn(batch, seq, d, device=ctx.dev)
            gy = torch.randn_like(x)
            opt = ctx.adamw(model.parameters())
            params = layers * block_params(d, heads, kv, ffn)
            if tp == 1:
                assert n_params(model) == params

            def step(model=model, opt=opt, x=x, gy=gy):
                with ctx.autocast():
                    y = model(x)
                y.backward(gy)
                opt.step()
                opt.zero_grad(set_to_none=True)

            combine = "max" if tp > 1 else "rank0"
            med, p10, p90, per = time_steps(ctx, step, combine)
            mem = memory_note(ctx)
            ar_bytes = batch * seq * d * (2 if ctx.cuda else 4)
            flops = 6 * params * batch * seq + 6 * layers * batch * seq * seq * d
            w.emit(op="train_step", variant=f"tp_{name}", dtype=ctx.dtype_name, batch=batch, heads=heads, kv_heads=kv,
                   seq_q=seq, head_dim=d // heads, world=tp, layers=layers, d_model=d, ffn=ffn, tp=tp, pp=1, dp=1,
                   measured_us=med, p10_us=p10, p90_us=p90, flops=flops,
                   note=f"Megatron-style tensor parallel blocks only (no embedding/head), heads and FFN split over "
                        f"{tp} GPUs, " + (f"2 all-reduces fwd + 2 bwd per block ({ctx.comm_dtype_name}, {ar_bytes} B "
                                          f"each, hand-written f/g autograd functions), no sequence parallelism"
                                          if tp > 1 else "no communication") +
                        f"; input and output grad fp32 residual stream; AdamW fused; params (all ranks)={params}; "
                        f"{spread_note(per, combine)}; {mem}")
            del model, opt, x, gy, step


# ---------------------------------------------------------------- 3. two-stage 1F1B pipeline


def _exchange(send, recv, peer):
    for req in dist.batch_isend_irecv([dist.P2POp(dist.isend, send, peer), dist.P2POp(dist.irecv, recv, peer)]):
        req.wait()


def pipeline_step(ctx, stage, opt, tokens, targets, shape):
    """One 1F1B step over len(tokens) micro-batches on two stages (rank 0: first half, rank 1: second half).

    Stage 0: warm-up forward of micro-batch 0; steady state: forward i+1, send its activation and receive the
    gradient of i in one batch_isend_irecv, backward i; cool-down: receive the last gradient, backward.
    Stage 1: receive, forward+loss, backward, send the input gradient while receiving the next activation."""
    micro = len(tokens)
    if ctx.rank == 0:
        pending = []

        def forward(i):
            with ctx.autocast():
                out = stage(tokens[i])
            pending.append(out)
            return out.detach()

        dist.send(forward(0), 1)
        for i in range(micro - 1):
            act = forward(i + 1)
            grad = torch.empty(shape, device=ctx.dev)
            _exchange(act, grad, 1)
            pending.pop(0).backward(grad)
        grad = torch.empty(shape, device=ctx.dev)
        dist.recv(grad, 1)
        pending.pop(0).backward(grad)
    else:
        act = torch.empty(shape, device=ctx.dev)
        dist.recv(act, 0)
        for i in range(micro):
            act.requires_grad_(True)
            with ctx.autocast():
                logits = stage(act)
            lm_loss(logits, targets[i], 1.0 / micro).backward()
            if i < micro - 1:
                nxt = torch.empty(shape, device=ctx.dev)
                _exchange(act.grad, nxt, 0)
                act = nxt
            else:
                dist.send(act.grad, 0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def item_pp(ctx, w):
    m = ctx.cfg["pp_model"]
    seq, half = m["seq"], m["layers"] // 2
    shape = (1, seq, m["d"])  # micro-batch 1; the autocast residual stream is fp32
    total = m["layers"] * block_params(m["d"], m["heads"], m["kv"], m["ffn"]) + 2 * m["vocab"] * m["d"] + m["d"]
    for micro in ctx.cfg["pp_micro_batches"]:
        for pp in (2, 1):
            reset_memory(ctx)
            torch.manual_seed(2000 + ctx.rank)
            lo, hi = ((0, half) if ctx.rank == 0 else (half, m["layers"])) if pp == 2 else (0, m["layers"])
            with torch.device(ctx.dev):
                stage = Stage(m, lo, hi)
            opt = ctx.adamw(stage.parameters())
            torch.manual_seed(8)  # the same data on both ranks
            tokens = torch.randint(0, m["vocab"], (micro, 1, seq), device=ctx.dev)
            targets = torch.randint(0, m["vocab"], (micro, 1, seq), device=ctx.dev)
            if pp == 2:
                def step(stage=stage, opt=opt, tokens=tokens, targets=targets):
                    pipeline_step(ctx, stage, opt, tokens, targets, shape)
                what = (f"two-stage 1F1B pipeline, stage 0 (rank 0) = embedding + layers 0-{half - 1}, stage 1 "
                        f"(rank 1) = layers {half}-{m['layers'] - 1} + norm + head + loss; {micro} micro-batches of "
                        f"1x{seq}; activations and their grads sent fp32 (the autocast residual stream), "
                        f"{seq * m['d'] * 4} B per micro-batch each way: blocking send/recv at warm-up/cool-down, "
                        f"batch_isend_irecv (send act + recv grad) in steady state; AdamW fused per stage after the "
                        f"last micro-batch")
            else:
                assert n_params(stage) == total

                def step(stage=stage, opt=opt, tokens=tokens, targets=targets):
                    for i in range(len(tokens)):
                        with ctx.autocast():
                            logits = stage(tokens[i])
                        lm_loss(logits, targets[i], 1.0 / len(tokens)).backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                what = (f"one GPU, gradient accumulation over {micro} micro-batches of 1x{seq} (the pp=1 baseline "
                        f"of the pipeline rows); AdamW fused")
            combine = "max" if pp > 1 else "rank0"
            med, p10, p90, per = time_steps(ctx, step, combine)
            mem = memory_note(ctx)
            w.emit(op="train_step", variant=f"pp_{m['name']}", dtype=ctx.dtype_name, batch=micro, heads=m["heads"],
                   kv_heads=m["kv"], seq_q=seq, head_dim=m["d"] // m["heads"], world=pp, layers=m["layers"],
                   d_model=m["d"], ffn=m["ffn"], vocab=m["vocab"], tp=1, pp=pp, dp=1, micro_batches=micro,
                   measured_us=med, p10_us=p10, p90_us=p90, flops=6 * total * micro * seq,
                   note=f"{what}; params={total}; {spread_note(per, combine)}; {mem}")
            del stage, opt, tokens, targets, step


# ---------------------------------------------------------------- 4. expert parallel MoE block


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with variable splits; backward sends the gradients back with the splits swapped."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits):
        ctx.splits = (out_splits, in_splits)
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits)
        return out

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits)
        return back, None, None


class Expert(nn.Module):
    def __init__(self, d, ffn):
        super().__init__()
        self.gate_up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class MoE(nn.Module):
    """RMSNorm, softmax top-k router (weights renormalised over the chosen k), routed SwiGLU experts, residual.
    With ep>1 this rank holds experts [rank*E/ep, (rank+1)*E/ep); token counts are exchanged first with an
    all_to_all_single, then the tokens (dispatch) and the expert outputs (combine) with variable splits."""

    def __init__(self, d, experts, topk, ffn, ep, rank, dispatch_dtype):
        super().__init__()
        self.e, self.topk, self.ep, self.local = experts, topk, ep, experts // ep
        self.dispatch_dtype = dispatch_dtype
        self.norm = nn.RMSNorm(d)
        self.router = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(Expert(d, ffn) for _ in range(self.local))
        self.counts = None

    def forward(self, x):
        b, s, d = x.shape
        h = self.norm(x).reshape(b * s, d)
        weights, idx = torch.softmax(self.router(h).float(), dim=-1).topk(self.topk, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        order = idx.reshape(-1).argsort(stable=True)  # assignments sorted by (global) expert
        token = order // self.topk
        counts = torch.bincount(idx.reshape(-1), minlength=self.e)
        xs = h[token].to(self.dispatch_dtype)
        if self.ep > 1:
            got = torch.empty_like(counts)
            dist.all_to_all_single(got, counts)  # got[src*local + e]: tokens src sends to my expert e
            got_l, sent_l = got.tolist(), counts.tolist()
            send = [sum(sent_l[r * self.local:(r + 1) * self.local]) for r in range(self.ep)]
            recv = [sum(got_l[r * self.local:(r + 1) * self.local]) for r in range(self.ep)]
            chunks = _AllToAll.apply(xs, recv, send).split(got_l)  # ordered (src, expert)
            xe = torch.cat([chunks[r * self.local + e] for e in range(self.local) for r in range(self.ep)])
            per_expert = [sum(got_l[r * self.local + e] for r in range(self.ep)) for e in range(self.local)]
        else:
            sent_l = counts.tolist()
            xe, per_expert = xs, sent_l
        ye = torch.cat([exp(part) for exp, part in zip(self.experts, xe.split(per_expert), strict=True)])
        ye = ye.to(self.dispatch_dtype)
        if self.ep > 1:
            pieces = ye.split([got_l[r * self.local + e] for e in range(self.local) for r in range(self.ep)])
            ys = torch.cat([pieces[e * self.ep + r] for r in range(self.ep) for e in range(self.local)])
            ye = _AllToAll.apply(ys, send, recv)  # back to this rank's assignments, sorted by expert
        self.counts = counts.detach()
        gate = weights.reshape(-1)[order].unsqueeze(1)
        y = torch.zeros(b * s, d, device=x.device, dtype=x.dtype).index_add(0, token, ye.to(x.dtype) * gate.to(x.dtype))
        return x + y.view(b, s, d)


def item_moe(ctx, w):
    c = ctx.cfg["moe"]
    d, experts, topk, ffn, seq, batch = c["d"], c["experts"], c["topk"], c["ffn"], c["seq"], c["batch"]
    for ep in (ctx.world, 1):
        reset_memory(ctx)
        torch.manual_seed(3000 + ctx.rank)  # own experts, own tokens (batch is per GPU)
        with torch.device(ctx.dev):
            moe = MoE(d, experts, topk, ffn, ep, ctx.rank, ctx.dtype)
        if ep > 1:  # the router and norm are replicated: same initial values on both ranks
            torch.manual_seed(9)
            with torch.no_grad(), torch.device(ctx.dev):
                moe.router.weight.copy_(nn.Linear(d, experts, bias=False).weight)
        opt = ctx.adamw(moe.parameters())
        torch.manual_seed(3100 + ctx.rank)
        x = torch.randn(batch, seq, d, device=ctx.dev)
        gy = torch.randn_like(x)

        def step(moe=moe, opt=opt, x=x, gy=gy, ep=ep):
            with ctx.autocast():
                y = moe(x)
            y.backward(gy)
            if ep > 1:  # norm and router are replicated (data parallel): average their grads in one all-reduce
                grads = [moe.norm.weight.grad, moe.router.weight.grad]
                flat = torch.cat([g.reshape(-1) for g in grads])
                dist.all_reduce(flat)
                flat /= ep
                for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                    g.copy_(part.view_as(g))
            opt.step()
            opt.zero_grad(set_to_none=True)

        combine = "max" if ep > 1 else "rank0"
        med, p10, p90, per = time_steps(ctx, step, combine)
        mem = memory_note(ctx)
        loads = ctx.gather(moe.counts.tolist())
        load = [sum(col) for col in zip(*loads, strict=True)] if ep > 1 else loads[0]
        imbalance = max(load) / (sum(load) / len(load))
        tokens_all = batch * seq * ep
        comm = (f"all_to_all_single of the {experts} token counts first, then dispatch and combine with variable "
                f"splits ({ctx.comm_dtype_name} tokens, ~{batch * seq * topk * d * (2 if ctx.cuda else 4) // ep} B "
                f"to the other rank each way at an even load, hand-written autograd function); norm and router "
                f"grads averaged over the ranks in one fp32 all-reduce" if ep > 1 else "no communication")
        w.emit(op="moe_train_step", variant=c["name"], dtype=ctx.dtype_name, batch=batch, seq_q=seq, world=ep,
               layers=1, d_model=d, tp=1, pp=1, ep=ep, dp=1, experts=experts, topk=topk, expert_ffn=ffn,
               measured_us=med, p10_us=p10, p90_us=p90, flops=6 * 3 * d * ffn * tokens_all * topk,
               note=f"MoE block only (RMSNorm, softmax top-{topk} router renormalised, {experts} routed SwiGLU "
                    f"experts of ffn {ffn}, 0 shared); experts computed one GEMM pair each (a loop, no grouped "
                    f"GEMM); expert parallel over {ep} GPU(s), {experts // ep} experts each; {comm}; batch is per "
                    f"GPU; random router, max expert load {imbalance:.2f}x mean; AdamW fused; flops over all ranks; "
                    f"{spread_note(per, combine)}; {mem}")
        del moe, opt, x, gy, step


# ---------------------------------------------------------------- 5. FSDP2


def item_fsdp(ctx, w):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    m, batch = ctx.cfg["fsdp_model"], ctx.cfg["fsdp_batch"]
    seq = m["seq"]
    total = m["layers"] * block_params(m["d"], m["heads"], m["kv"], m["ffn"]) + 2 * m["vocab"] * m["d"] + m["d"]
    for dp in (ctx.world, 1):
        reset_memory(ctx)
        torch.manual_seed(4000 if dp > 1 else 4000 + ctx.rank)  # FSDP shards one model: same init everywhere
        with torch.device(ctx.dev):
            model = Stage(m, 0, m["layers"])
        assert n_params(model) == total
        if dp > 1:
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            for blk in model.blocks:
                fully_shard(blk, mp_policy=policy)
            fully_shard(model, mp_policy=policy)
        opt = ctx.adamw(model.parameters())
        torch.manual_seed(4100 + ctx.rank)  # each rank its own data
        tokens = torch.randint(0, m["vocab"], (batch, seq), device=ctx.dev)
        targets = torch.randint(0, m["vocab"], (batch, seq), device=ctx.dev)

        def step(model=model, opt=opt, tokens=tokens, targets=targets):
            with ctx.autocast():
                logits = model(tokens)
            lm_loss(logits, targets).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        combine = "max" if dp > 1 else "rank0"
        med, p10, p90, per = time_steps(ctx, step, combine)
        mem = memory_note(ctx)
        what = ("FSDP2 fully_shard per block then root (reshard_after_forward default: True), "
                "MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32): params all-gathered in bf16, grads "
                "reduce-scattered in fp32; fp32 sharded master params, forward also under bf16 autocast; AdamW "
                "fused on the shards" if dp > 1 else
                "one GPU, plain model (no FSDP), fp32 params, bf16 autocast, AdamW fused (the dp=1 counterpart of "
                "the FSDP rows)")
        w.emit(op="train_step", variant=f"fsdp_{m['name']}", dtype=ctx.dtype_name, batch=batch, heads=m["heads"],
               kv_heads=m["kv"], seq_q=seq, head_dim=m["d"] // m["heads"], world=dp, layers=m["layers"],
               d_model=m["d"], ffn=m["ffn"], vocab=m["vocab"], tp=1, pp=1, dp=dp, measured_us=med, p10_us=p10,
               p90_us=p90, flops=6 * total * batch * seq * dp,
               note=f"{what}; batch is per GPU ({batch}x{seq}); params={total}; flops over all ranks "
                    f"(6 x params x tokens); {spread_note(per, combine)}; {mem}")
        del model, opt, tokens, targets, step


# ---------------------------------------------------------------- driver

ITEMS = {"comm": item_comm, "tp": item_tp, "moe": item_moe, "pp": item_pp, "fsdp": item_fsdp}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="validation/h200x2_parallel.csv")
    parser.add_argument("--dry-run", action="store_true", help="gloo on CPU, tiny sizes, perf_counter timing")
    parser.add_argument("--items", default=",".join(ITEMS), help="comma-separated subset of " + ",".join(ITEMS))
    parser.add_argument("--timeout", type=int, default=180, help="seconds a rank waits for its peer in one call")
    args = parser.parse_args()
    os.environ["NCCL_NVLS_ENABLE"] = "0"  # NVLink SHARP off, before the process group exists
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if int(os.environ.get("WORLD_SIZE", "0")) != 2:
        raise SystemExit("run under torchrun --nproc_per_node 2 (exactly two ranks)")
    ctx = Ctx(args)
    writer = Writer(ctx, args.out)
    t_start = time.time()
    for name in args.items.split(","):
        t0, ok = time.time(), True
        try:
            ITEMS[name](ctx, writer)
        except Exception:
            ok = False
            print(f"[rank {ctx.rank}] item {name} failed:\n{traceback.format_exc()}", flush=True)
        reset_memory(ctx)
        status = ctx.gather(ok)
        if ctx.rank == 0:
            state = "ok" if all(status) else f"FAILED on rank(s) {[r for r, s in enumerate(status) if not s]}"
            print(f"item {name}: {state}, {time.time() - t0:.1f} s; {writer.count} rows so far", flush=True)
    writer.close()
    if ctx.rank == 0:
        print(f"wrote {writer.count} rows to {args.out} in {time.time() - t_start:.0f} s", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
