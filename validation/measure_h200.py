"""Measure more cases on H200s, in the schema of reference/h200/calibration.csv, to check chipsim on
shapes and GPU counts its calibration never saw.

    python3 validation/measure_h200.py --out validation/h200_holdout.csv      # on a 4x H200 machine

Methodology as in reference/README.md: times are medians over repeated measurements between CUDA
events; `eager` = back-to-back launches from Python (REPS calls between two events, divided by REPS);
`graph` = the same calls captured in a CUDA graph; memory-bound operands rotate over copies so the L2
is cold. Collectives: one process per GPU over NCCL (NVLink SHARP stays off, as the machine requires).
Model steps are Llama-style blocks (RMSNorm, fused QKV, causal SDPA, SwiGLU, no rotary embedding)
under bf16 autocast with fused AdamW, the structure of the reference model.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

COLUMNS = ["op", "variant", "dtype", "launch", "m", "n", "k", "batch", "heads", "kv_heads", "seq_q", "seq_kv",
           "head_dim", "causal", "pass", "bytes", "world", "layers", "d_model", "ffn", "measured_us", "p10_us",
           "p90_us", "flops", "bytes_moved", "tflops", "gbps", "sustained_power_w", "energy_j_per_step",
           "device", "stack", "note"]
STACK = f"torch {torch.__version__}"
REPS = 20
TRIALS = 15


def timed(fn, reps=REPS, trials=TRIALS, warmup=3):
    """Median, p10, p90 of the per-call time (us) of `reps` back-to-back calls between CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / reps)
    samples.sort()
    return statistics.median(samples), samples[len(samples) // 10], samples[-1 - len(samples) // 10]


def graphed(fn, reps=REPS):
    """The same calls captured in a CUDA graph; returns a callable that replays them once."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return graph.replay


def row(**kw):
    out = {c: "" for c in COLUMNS}
    out.update(device="H200", stack=STACK)
    out.update({k: v for k, v in kw.items() if v is not None})
    return out


def rotate(make, copies):
    items = [make() for _ in range(copies)]
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % copies
        return items[state["i"]]

    return nxt


# ---------------------------------------------------------------- single-GPU cases


def gemms(rows):
    shapes = [(3000, 5000, 1000), (777, 4096, 4096), (4096, 777, 4096), (1536, 1536, 12288), (8192, 1000, 8192),
              (100, 8192, 8192), (24576, 1024, 1024), (6144, 6144, 6144), (33, 14336, 4096), (4096, 14336, 4096),
              (16, 4096, 4096), (2, 8192, 8192)]
    for m, n, k in shapes:
        for dtype in ("bf16", "fp8_e4m3"):
            if dtype == "fp8_e4m3" and (m % 16 or n % 16 or k % 16):
                continue
            copies = max(2, int(3e8 // ((m * k + k * n) * 2)) + 1)
            if dtype == "bf16":
                nxt = rotate(lambda: (torch.randn(m, k, device="cuda", dtype=torch.bfloat16),
                                      torch.randn(k, n, device="cuda", dtype=torch.bfloat16)), min(copies, 8))

                def fn():
                    a, b = nxt()
                    return a @ b
            else:
                one = torch.ones((), device="cuda")
                nxt = rotate(lambda: (torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn),
                                      torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn).t()), min(copies, 8))

                def fn():
                    a, b = nxt()
                    return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
            flops = 2 * m * n * k
            for launch in ("eager", "graph"):
                med, p10, p90 = timed(fn if launch == "eager" else graphed(fn), reps=1 if launch == "graph" else REPS)
                if launch == "graph":
                    med, p10, p90 = med / REPS, p10 / REPS, p90 / REPS
                rows.append(row(op="gemm", variant="odd", dtype=dtype, launch=launch, m=m, n=n, k=k, measured_us=med,
                                p10_us=p10, p90_us=p90, flops=flops, tflops=flops / med / 1e6,
                                note="holdout; " + ("torch.matmul" if dtype == "bf16" else "torch._scaled_mm out bf16")))


def attentions(rows):
    cases = [  # batch, heads, kv_heads, seq_q, seq_kv, head_dim, causal
        (4, 32, 8, 4096, 4096, 128, True), (2, 64, 8, 8192, 8192, 128, True), (16, 16, 16, 1024, 1024, 64, True),
        (8, 32, 32, 2048, 2048, 64, False), (8, 32, 8, 1, 8192, 128, False), (32, 32, 8, 1, 4096, 128, False),
        (4, 16, 16, 1, 32768, 128, False),
    ]
    backends = {"flash": torch.nn.attention.SDPBackend.FLASH_ATTENTION,
                "cudnn": torch.nn.attention.SDPBackend.CUDNN_ATTENTION,
                "efficient": torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION}
    for b, h, kvh, sq, skv, hd, causal in cases:
        for name, backend in backends.items():
            for passes in ("fwd", "fwd_bwd"):
                if passes == "fwd_bwd" and sq == 1:
                    continue
                q = torch.randn(b, h, sq, hd, device="cuda", dtype=torch.bfloat16, requires_grad=passes == "fwd_bwd")
                k = torch.randn(b, kvh, skv, hd, device="cuda", dtype=torch.bfloat16, requires_grad=passes == "fwd_bwd")
                v = torch.randn(b, kvh, skv, hd, device="cuda", dtype=torch.bfloat16, requires_grad=passes == "fwd_bwd")
                gqa = kvh != h

                def fn():
                    with torch.nn.attention.sdpa_kernel(backend):
                        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal and sq > 1, enable_gqa=gqa)
                    if passes == "fwd_bwd":
                        o.backward(torch.ones_like(o))
                    return o

                try:
                    med, p10, p90 = timed(fn, reps=5, trials=9)
                except RuntimeError as exc:  # backend does not support the shape
                    print(f"skip attention {name} {b, h, kvh, sq, skv, hd}: {str(exc)[:80]}", flush=True)
                    continue
                rows.append(row(op="attention", variant=name, dtype="bf16", launch="eager", batch=b, heads=h,
                                kv_heads=kvh, seq_q=sq, seq_kv=skv, head_dim=hd, causal=int(causal), **{"pass": passes},
                                measured_us=med, p10_us=p10, p90_us=p90, note="holdout"))


def elementwise(rows):
    for m, n in ((2048, 8192), (8192, 11008)):
        numel = m * n
        copies = max(2, int(4e8 // (numel * 2)) + 1)
        ops = {
            "add": lambda x, y: x + y,
            "silu_mul": lambda x, y: F.silu(x) * y,
            "softmax": lambda x, y: torch.softmax(x, dim=-1),
            "rms_norm": lambda x, y: F.rms_norm(x, (n,)),
        }
        nxt = rotate(lambda: (torch.randn(m, n, device="cuda", dtype=torch.bfloat16),
                              torch.randn(m, n, device="cuda", dtype=torch.bfloat16)), min(copies, 8))
        for name, op in ops.items():
            def fn(op=op):
                x, y = nxt()
                return op(x, y)
            for launch in ("eager", "graph"):
                med, p10, p90 = timed(fn if launch == "eager" else graphed(fn), reps=1 if launch == "graph" else REPS)
                if launch == "graph":
                    med, p10, p90 = med / REPS, p10 / REPS, p90 / REPS
                rows.append(row(op="elementwise", variant=name, dtype="bf16", launch=launch, m=m, n=n,
                                measured_us=med, p10_us=p10, p90_us=p90, note="holdout; cold L2"))
    for size in (8 << 20, 512 << 20, 2 << 30):
        nxt = rotate(lambda: (torch.empty(size // 2, device="cuda", dtype=torch.bfloat16),
                              torch.empty(size // 2, device="cuda", dtype=torch.bfloat16)), 4 if size < (1 << 30) else 2)

        def fn():
            a, b = nxt()
            return b.copy_(a)
        for launch in ("eager", "graph"):
            med, p10, p90 = timed(fn if launch == "eager" else graphed(fn), reps=1 if launch == "graph" else REPS)
            if launch == "graph":
                med, p10, p90 = med / REPS, p10 / REPS, p90 / REPS
            rows.append(row(op="memory", variant="copy", dtype="bf16", launch=launch, bytes=size, measured_us=med,
                            p10_us=p10, p90_us=p90, bytes_moved=2 * size, gbps=2 * size / med / 1e3,
                            note="holdout; cold L2"))


# ---------------------------------------------------------------- model steps


class Block(nn.Module):
    def __init__(self, d, heads, kv_heads, ffn):
        super().__init__()
        self.h, self.kvh, self.hd = heads, kv_heads, d // heads
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv = nn.Linear(d, (heads + 2 * kv_heads) * self.hd, bias=False)
        self.out = nn.Linear(heads * self.hd, d, bias=False)
        self.gate_up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x, cache=None):
        b, s, _ = x.shape
        q, k, v = self.qkv(self.n1(x)).split([self.h * self.hd, self.kvh * self.hd, self.kvh * self.hd], dim=-1)
        q = q.view(b, s, self.h, self.hd).transpose(1, 2)
        k = k.view(b, s, self.kvh, self.hd).transpose(1, 2)
        v = v.view(b, s, self.kvh, self.hd).transpose(1, 2)
        if cache is not None:
            k, v = cache
        o = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None, enable_gqa=self.kvh != self.h)
        x = x + self.out(o.transpose(1, 2).reshape(b, s, -1))
        g, u = self.gate_up(self.n2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class Model(nn.Module):
    def __init__(self, layers, d, heads, kv_heads, ffn, vocab):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, kv_heads, ffn) for _ in range(layers))
        self.norm = nn.RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens, caches=None):
        x = self.emb(tokens)
        for i, blk in enumerate(self.blocks):
            x = blk(x, caches[i] if caches else None)
        return self.head(self.norm(x))


def energy_counter_j():
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3
    except Exception:  # noqa: BLE001 - power is optional
        return None


def train_steps(rows):
    cases = [("llama-1b-8layer", 8, 2048, 16, 16, 5632, 32000, 4, 2048),
             ("llama-gqa-600m", 12, 1536, 24, 8, 4096, 32000, 8, 1024)]
    for name, layers, d, h, kvh, ffn, vocab, batch, seq in cases:
        model = Model(layers, d, h, kvh, ffn, vocab).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        tokens = torch.randint(0, vocab, (batch, seq), device="cuda")

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(tokens)
            loss = F.cross_entropy(logits.float().view(-1, vocab), tokens.view(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        med, p10, p90 = timed(step, reps=1, trials=15, warmup=3)
        e0, t0, n = energy_counter_j(), time.perf_counter(), 0
        while time.perf_counter() - t0 < 4.0:
            step()
            n += 1
        torch.cuda.synchronize()
        e1, seconds = energy_counter_j(), time.perf_counter() - t0
        power = (e1 - e0) / seconds if e0 is not None and e1 is not None else None
        params = sum(p.numel() for p in model.parameters())
        rows.append(row(op="train_step", variant=name, dtype="bf16_autocast", launch="eager", batch=batch, heads=h,
                        kv_heads=kvh, seq_q=seq, head_dim=d // h, layers=layers, d_model=d, ffn=ffn,
                        measured_us=med, p10_us=p10, p90_us=p90, sustained_power_w=power,
                        energy_j_per_step=(e1 - e0) / n if power else None,
                        note=f"holdout; params={params} vocab={vocab} AdamW fused; sustained {n} steps: "
                             f"{seconds / n * 1e3:.1f} ms/step"))


def inference_steps(rows):
    cases = [("llama-3b-gqa-8layer", 8, 3072, 24, 8, 8192, 32000, [(1, 4096), (8, 4096), (32, 2048)])]
    for name, layers, d, h, kvh, ffn, vocab, shapes in cases:
        model = Model(layers, d, h, kvh, ffn, vocab).cuda().to(torch.bfloat16).eval()
        hd = d // h
        for batch, ctx in shapes:
            caches = [(torch.randn(batch, kvh, ctx, hd, device="cuda", dtype=torch.bfloat16),
                       torch.randn(batch, kvh, ctx, hd, device="cuda", dtype=torch.bfloat16)) for _ in range(layers)]
            tok = torch.randint(0, vocab, (batch, 1), device="cuda")

            @torch.no_grad()
            def decode():
                return model(tok, caches)
            for launch in ("eager", "graph"):
                med, p10, p90 = timed(decode if launch == "eager" else graphed(decode, reps=1), reps=1, trials=15)
                rows.append(row(op="decode_step", variant=name, dtype="bf16", launch=launch, batch=batch, heads=h,
                                kv_heads=kvh, seq_q=1, seq_kv=ctx, head_dim=hd, layers=layers, d_model=d, ffn=ffn,
                                measured_us=med, p10_us=p10, p90_us=p90, note=f"holdout; vocab={vocab}"))
        prompt = torch.randint(0, vocab, (2, 2048), device="cuda")

        @torch.no_grad()
        def prefill():
            return model(prompt)
        med, p10, p90 = timed(prefill, reps=1, trials=9)
        rows.append(row(op="prefill_step", variant=name, dtype="bf16", launch="eager", batch=2, heads=h, kv_heads=kvh,
                        seq_q=2048, seq_kv=2048, head_dim=hd, layers=layers, d_model=d, ffn=ffn, measured_us=med,
                        p10_us=p10, p90_us=p90, note=f"holdout; vocab={vocab}"))


# ---------------------------------------------------------------- collectives (one process per GPU)


def collective_worker(rank, world, path):
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(29500 + world)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    rows = []
    for size in (1 << 16, 1 << 20, 3 << 20, 1 << 22, 1 << 24, 48 << 20, 1 << 26, 1 << 28, 768 << 20, 1 << 30):
        for op in ("all_reduce", "all_gather", "reduce_scatter"):
            numel = size // 2
            x = torch.randn(numel, device="cuda", dtype=torch.bfloat16)
            if op == "all_reduce":
                def fn():
                    dist.all_reduce(x)
            elif op == "all_gather":
                out = torch.empty(numel * world, device="cuda", dtype=torch.bfloat16)

                def fn():
                    dist.all_gather_into_tensor(out, x)
            else:
                inp = torch.randn(numel, device="cuda", dtype=torch.bfloat16)
                out = torch.empty(numel // world, device="cuda", dtype=torch.bfloat16)

                def fn():
                    dist.reduce_scatter_tensor(out, inp)
            reps = 20 if size <= (1 << 26) else 5
            med, p10, p90 = timed(fn, reps=reps, trials=9)
            rows.append(row(op=op, variant="nccl", dtype="bf16", launch="eager", bytes=size, world=world,
                            measured_us=med, p10_us=p10, p90_us=p90, note="holdout; bytes=per-rank input"))
    for size in (1 << 20, 4 << 20, 1 << 24, 64 << 20, 1 << 28, 512 << 20):
        g = torch.randn(size // 4, device="cuda")

        def compressed():
            scale = g.abs().max() / 127
            q = torch.clamp(torch.round(g / scale), -127, 127).to(torch.int8)
            qs = [torch.empty_like(q) for _ in range(world)]
            ss = [torch.empty_like(scale) for _ in range(world)]
            dist.all_gather(qs, q)
            dist.all_gather(ss, scale)
            return (torch.stack(qs).float() * torch.stack(ss).view(-1, 1)).sum(0) / world

        def plain():
            dist.all_reduce(g)
        for variant, fn in (("int8_allgather_compressed", compressed), ("fp32_baseline", plain)):
            med, p10, p90 = timed(fn, reps=5, trials=9)
            rows.append(row(op="compressed_all_reduce", variant=variant, dtype="fp32", launch="eager", bytes=size,
                            world=world, measured_us=med, p10_us=p10, p90_us=p90,
                            note="holdout; per-tensor absmax int8 quantize + all_gather + dequantize-average"))
    if rank == 0:
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="validation/h200_holdout.csv")
    parser.add_argument("--parts", default="gemm,attention,elementwise,train,inference,collectives")
    args = parser.parse_args()
    parts = args.parts.split(",")
    rows = []
    t0 = time.time()
    for part, fn in (("gemm", gemms), ("attention", attentions), ("elementwise", elementwise),
                     ("train", train_steps), ("inference", inference_steps)):
        if part in parts:
            fn(rows)
            torch.cuda.empty_cache()
            print(f"{part}: {len(rows)} rows, {time.time() - t0:.0f} s", flush=True)
    if "collectives" in parts:
        import torch.multiprocessing as mp

        for world in sorted({2, torch.cuda.device_count()}):
            if world < 2:
                continue
            part_path = f"{args.out}.world{world}"
            mp.spawn(collective_worker, args=(world, part_path), nprocs=world, join=True)
            with open(part_path) as fh:
                rows.extend(csv.DictReader(fh))
            os.remove(part_path)
            print(f"collectives world={world}: {len(rows)} rows, {time.time() - t0:.0f} s", flush=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
