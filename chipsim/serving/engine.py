"""An iteration-level LLM serving engine: requests arrive, a scheduler builds each iteration's batch
(continuous batching, chunked prefill, a paged KV cache with admission and preemption), and each
iteration's time and energy come from `IterationModel`.

The scheduler, each iteration (as vLLM's and TensorRT-LLM's do):
1. Running requests in arrival order: a decoding one schedules one token; one whose prompt is only
   partly prefilled schedules its next chunk. Each takes one token of the iteration's budget
   (`max_tokens`) per token and a sequence slot (`max_batch`).
2. Waiting requests, first come first served, while budget, slots and KV blocks last: their first
   prompt chunk (the whole prompt without chunked prefill; a prompt longer than the budget waits
   for an empty batch).
KV blocks (`block_size` tokens) are taken as a sequence grows. Admission (`EngineProfile.admission`):
`reserve` admits a request only when its whole sequence (prompt + output) fits in the free blocks, so
nothing is ever evicted (TensorRT-LLM's GUARANTEED_NO_EVICT); `greedy` admits while its prompt fits
and, when a running sequence cannot grow, preempts the latest-arrived running one: its blocks are
freed and it is recomputed later from its prompt and the tokens it had produced (vLLM's recompute);
`ratio` (SGLang's) admits while the free blocks hold its prompt, its whole output and a share
(`new_token_ratio`) of each running request's output still to come, outputs counted up to 4,096
tokens, the share falling from 0.7 to 0.098 over 600 decode steps and back to 0.7 when a sequence is
preempted or the engine idles; sequences grow and are preempted as under `greedy`.
Without `EngineProfile.mixed_batches` (SGLang), a step runs prompts alone whenever one can be
admitted or is partly prefilled, and the decoding sequences wait for a step without prompts.
A prompt's last chunk emits the first token at the iteration's end; each decode step emits one, or
with speculative decoding (`IterationModel.speculation`) verifies the sequence's drafted tokens (each
takes a token of the budget and a KV slot) and emits the ones accepted in a row plus one. A profile
with a front end (`EngineProfile.frontend_token_s`) streams the emitted tokens to the clients one after
another, first come first served: the clients' times (first token, inter-token gaps, finish, and a
closed loop's next request) are when the front end has sent them.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from chipsim.errors import InputError
from chipsim.serving.iteration import IterationModel
from chipsim.serving.speculative import accepted


@dataclass(slots=True)
class Request:
    id: int
    arrival_s: float
    input_len: int
    output_len: int
    cached: int = 0  # tokens whose KV is in the cache (prompt, then generated)
    generated: int = 0
    blocks: int = 0
    first_token_s: float = math.nan
    last_token_s: float = math.nan
    finish_s: float = math.nan
    preemptions: int = 0
    shared: int = 0  # prompt tokens served from the prefix cache: their KV blocks are the prefix's, not its own

    @property
    def prompt(self) -> int:
        """Tokens to prefill: the prompt, plus what it had generated when it was preempted."""
        return self.input_len + (self.generated if self.preemptions else 0)



def cycled(inputs: np.ndarray, outputs: np.ndarray) -> Callable[[int], tuple[int, int]]:
    """Request i's (input, output) lengths: row i of the equally long arrays, cycled."""

    def of(index: int) -> tuple[int, int]:
        row = index % len(inputs)
        return int(inputs[row]), int(outputs[row])

    return of


@dataclass
class Arrivals:
    """Where requests come from: an open stream (`times`, the arrival of each request) or a closed
    loop of `concurrency` clients that each send the next request when their last one finishes."""

    lengths: Callable[[int], tuple[int, int]]  # request index -> (input, output) tokens
    count: int
    times: list[float] | None = None
    concurrency: int = 0
    think_s: float = 0.0  # closed loop: mean time from a finish to the client's next request (exponential)
    warmup: int = 0  # requests (the first ones sent) left out of the metrics: the start-up transient
    seed: int = 0  # of the think times
    shared_prefix: int = 0  # prompt tokens every request shares (a system prompt): cached once, with prefix caching
    prefilled: bool = False  # requests arrive with their prompt's KV cache and first token (a decode instance)


@dataclass
class IterationLog:
    """Each iteration the engine ran, in order, as flat arrays (`simulate_serving(..., log=True)`):
    millions of rows cost a few dozen bytes each, and `arrays()` views them as numpy arrays without a
    copy. `kv_utilization` is the share of KV blocks in use as the engine accounts it (its time-weighted
    mean is `ServingTrace.kv_utilization`); a decode-only stretch the engine steps at once records
    each of its steps at the blocks held when it began."""

    start_s: array = field(default_factory=lambda: array("d"))
    end_s: array = field(default_factory=lambda: array("d"))
    prefill_tokens: array = field(default_factory=lambda: array("i"))  # prompt tokens of the prefill chunks
    prefill_sequences: array = field(default_factory=lambda: array("i"))  # sequences prefilling a chunk
    decode_sequences: array = field(default_factory=lambda: array("i"))  # sequences decoding one token
    kv_utilization: array = field(default_factory=lambda: array("d"))

    COLUMNS = ("start_s", "end_s", "prefill_tokens", "prefill_sequences", "decode_sequences", "kv_utilization")

    def __len__(self) -> int:
        return len(self.start_s)

    def append(self, start: float, end: float, prefill_tokens: int, prefill_sequences: int, decode_sequences: int,
               kv: float) -> None:
        self.start_s.append(start)
        self.end_s.append(end)
        self.prefill_tokens.append(prefill_tokens)
        self.prefill_sequences.append(prefill_sequences)
        self.decode_sequences.append(decode_sequences)
        self.kv_utilization.append(kv)

    def extend_decode(self, start: float, ends: np.ndarray, sequences: int, kv: float) -> None:
        """Decode-only iterations of `sequences` each, back to back from `start`, ending at `ends`."""
        n = len(ends)
        self.start_s.append(start)
        self.start_s.frombytes(ends[:-1].tobytes())
        self.end_s.frombytes(ends.tobytes())
        zeros = np.zeros(n, np.intc).tobytes()
        self.prefill_tokens.frombytes(zeros)
        self.prefill_sequences.frombytes(zeros)
        self.decode_sequences.frombytes(np.full(n, sequences, np.intc).tobytes())
        self.kv_utilization.frombytes(np.full(n, kv).tobytes())

    def arrays(self) -> dict[str, np.ndarray]:
        """The columns as numpy arrays (views of the log's buffers: copy before the log grows)."""
        return {name: np.frombuffer(getattr(self, name), dtype=float if name in ("start_s", "end_s", "kv_utilization")
                                    else np.intc) for name in self.COLUMNS}


@dataclass
class ServingTrace:
    requests: list[Request]
    iterations: int
    makespan_s: float
    energy_j: float
    gpu_busy_s: float
    itl_s: array = field(default_factory=lambda: array("d"))
    kv_utilization: float = 0.0  # mean over iterations (time-weighted) of the KV blocks in use
    kv_peak: float = 0.0
    preemptions: int = 0
    batch_mean: float = 0.0  # sequences per iteration, time-weighted
    kv_capacity_tokens: int = 0
    warmup: int = 0  # the first requests (by id) that the metrics leave out
    steps: IterationLog | None = None  # every iteration, when simulated with log=True
    prefix_hit_tokens: int = 0  # prompt tokens admitted with their KV from the prefix cache
    tokens_per_decode_step: float = 1.0  # tokens a decoding sequence emits per step (> 1 speculating)


MAX_ITERATIONS = 20_000_000
# SGLang's admission (`ratio`): the share of the running requests' outputs still to come that the free
# KV cache must hold besides a new request's prompt and output, 0.7 falling to 0.7 x 0.14 over 600
# decode steps, each output counted up to 4,096 tokens (scheduler's PrefillAdder)
# (sglang/srt/environ.py: SGLANG_INIT_NEW_TOKEN_RATIO, SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR,
# SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS, SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION)
RATIO_INIT, RATIO_MIN, RATIO_DECAY_STEPS, RATIO_CLIP = 0.7, 0.7 * 0.14, 600, 4096
# requests per client of a benchmark's closed loop (its length): genai-perf's request count in
# AIConfigurator's harness, 10 x the concurrency (eval/benchmarks/genai_perf_runner.py); with its
# engine settings (chipsim.study.serving_validate.harness_settings) the H200 rows' median TTFT APE is
# 18% counting every round (46% with the engine's defaults)
BENCHMARK_ROUNDS = 10


def simulate_serving(model: IterationModel, arrivals: Arrivals,
                     progress: Callable[[int, int], None] | None = None, log: bool = False) -> ServingTrace:
    """Serve `arrivals` on one engine instance (see the module notes). With `log`, the trace's `steps`
    records every iteration (`IterationLog`); the simulation itself is the same."""
    prof = model.profile
    block = prof.block_size
    capacity_tokens = model.kv_capacity_tokens()
    total_blocks = capacity_tokens // block
    if total_blocks < 1:
        raise InputError(f"the KV cache holds {capacity_tokens} tokens: not one block of {block}", key="block_size")

    def blocks_for(tokens: int) -> int:
        return -(-tokens // block)

    # every request must fit alone, or nothing could ever serve it
    def check(r: Request) -> Request:
        need = blocks_for(r.input_len + r.output_len)
        if need > total_blocks:
            raise InputError(f"request {r.id}: {r.input_len} + {r.output_len} tokens need {need * block:,} tokens of KV "
                             f"cache; this engine holds {total_blocks * block:,}", key="lengths")
        return r

    pending: list[tuple[float, int]] = []  # (arrival time, index) of requests not yet arrived
    made = 0
    front = prof.frontend_token_s
    front_free = 0.0  # when the front end has sent every token handed to it so far

    def deliver(end: float, tokens: int) -> float:
        """When the client has the `tokens` an iteration ending at `end` emitted: the front end streams
        them after those it holds (first come, first served)."""
        nonlocal front_free
        if not front:
            return end
        front_free = max(front_free, end) + front * tokens
        return front_free

    def make(index: int, at: float) -> Request:
        inp, out = arrivals.lengths(index)
        if arrivals.prefilled:  # its prompt's KV cache and first token came from a prefill instance
            return check(Request(index, at, inp, out, cached=inp, generated=1, first_token_s=at, last_token_s=at))
        return check(Request(index, at, inp, out))

    # the prefix cache: whole blocks of the shared prefix (a request still computes its last prompt token),
    # held once from when the first request to compute them has done so
    prefix_blocks = arrivals.shared_prefix // block if prof.prefix_caching else 0
    prefix_ready = False
    hits = 0

    def share(r: Request) -> int:
        """The prompt tokens `r` would take from the prefix cache if admitted now."""
        if not prefix_ready or r.cached:
            return 0
        return min(prefix_blocks, (r.input_len - 1) // block) * block

    requests: list[Request] = []
    waiting: deque[Request] = deque()
    if arrivals.concurrency:
        clients = min(arrivals.concurrency, arrivals.count)
        pending = [(0.0, i) for i in range(clients)]  # every client's first request at once
        made = clients
    else:
        assert arrivals.times is not None
        pending = [(t, i) for i, t in enumerate(arrivals.times)]
        heapq.heapify(pending)

    running: list[Request] = []
    free = total_blocks
    now = 0.0
    energy = busy = kv_area = batch_area = 0.0
    kv_peak = 0.0
    iterations = preemptions = finished = 0
    itl = array("d")
    steps = IterationLog() if log else None
    reserve = prof.admission == "reserve"
    by_ratio = prof.admission == "ratio"
    ratio = RATIO_INIT
    ratio_step = (RATIO_INIT - RATIO_MIN) / RATIO_DECAY_STEPS

    def headroom() -> float:
        """The KV tokens `ratio` admission may still promise: the free ones less the running sequences'
        share of their outputs to come (unbounded for the other admissions)."""
        if not by_ratio:
            return math.inf
        return free * block - ratio * sum(min(r.output_len - r.generated, RATIO_CLIP) for r in running)

    def promise(r: Request, left: int) -> int:
        """What admitting `r` takes of `headroom`: its prompt still to compute and its whole output."""
        return left + min(r.output_len - r.generated, RATIO_CLIP)
    chunked = prof.chunked_prefill
    mixed = prof.mixed_batches  # False: a step of prompts runs alone, ahead of the decoding sequences
    max_tokens, max_batch = prof.max_tokens, prof.max_batch - prof.reserved_slots
    if max_batch < 1:
        raise InputError(f"max_batch {prof.max_batch}: this engine release holds {prof.reserved_slots} of its sequence "
                         f"slots; expected more than {prof.reserved_slots}", key="max_batch")
    fast_batch = min(max_batch, max_tokens)  # a batch of decode steps that always fits one iteration
    warm = min(arrivals.warmup, max(0, arrivals.count - 1))
    think = np.random.default_rng(arrivals.seed) if arrivals.think_s > 0 else None
    spec = model.speculation  # each decoding sequence verifies spec.tokens drafted tokens and the next one
    verify = model.decode_tokens  # tokens of the budget (and KV slots) a decoding sequence takes
    drafts = np.random.default_rng([arrivals.seed, 7])  # the drafted tokens accepted, sequence by step
    decode_steps = decode_emitted = 0

    def admissible(r: Request, batch: int) -> bool:
        """Whether the scheduler could admit `r` beside `batch` decoding sequences now."""
        budget = max_tokens - (batch if mixed else 0)
        if batch >= max_batch or budget <= 0:
            return False
        shared = share(r)
        left = max(1, r.prompt - r.cached - shared)  # a prefilled request schedules its next token
        need = min(left, budget) if chunked else left
        if need > budget:
            return False
        own = blocks_for((r.input_len + r.output_len if reserve else r.cached + shared + need) - shared)
        return own <= free and promise(r, left) <= headroom()

    def admit_arrivals(until: float) -> None:
        nonlocal made
        while pending and pending[0][0] <= until:
            t, i = heapq.heappop(pending)
            r = make(i, t)
            made += 0 if arrivals.concurrency else 1  # a closed loop's first requests are counted up front
            requests.append(r)
            waiting.append(r)

    while finished < arrivals.count:
        admit_arrivals(now)
        if not running and not waiting:  # idle until the next arrival
            ratio = RATIO_INIT
            if not pending:
                break
            now = max(now, pending[0][0])
            continue
        # (no sequence still prefilling, cached < prompt, spelled out: this runs every iteration over the batch)
        if spec is None and running and len(running) <= fast_batch and \
                not (waiting and admissible(waiting[0], len(running))) and \
                not any(r.cached < (r.input_len + r.generated if r.preemptions else r.input_len) for r in running):
            # only decode steps until the next finish or arrival: the same batch, its contexts one token
            # longer each step; step them without touching each request
            steps_left = min(r.output_len - r.generated for r in running) - 1  # the finishing step runs below
            n = len(running)
            if reserve:  # the whole sequences' blocks are held: nothing grows
                ctx = sum(r.cached for r in running)
            else:
                cached = np.fromiter((r.cached for r in running), float, n)
                own = cached - np.fromiter((r.shared for r in running), float, n)  # tokens in its own blocks
                held = sum(r.blocks for r in running)
                ctx = int(cached.sum())
            ends: list[float] = []
            t = now
            used = (total_blocks - free) / total_blocks
            while len(ends) < steps_left and not (pending and pending[0][0] <= t):
                j = len(ends) + 1
                if not reserve and int(np.ceil((own + j) / block).sum()) - held > free:
                    break
                cost = model.step([], n, ctx + (j - 1) * n, n)
                t += cost.seconds
                energy += cost.joules
                busy += cost.gpu_seconds
                kv_area += used * cost.seconds
                batch_area += n * cost.seconds
                ends.append(t)
            if ends:
                j = len(ends)
                iterations += j
                ratio = max(RATIO_MIN, ratio - j * ratio_step)
                times = np.asarray([deliver(e, n) for e in ends] if front else ends)  # as the clients see them
                gaps = np.diff(times) if j > 1 else np.empty(0)
                if steps is not None:
                    steps.extend_decode(now, np.asarray(ends), n, used)
                for r in running:
                    if r.id >= warm:
                        itl.append(times[0] - r.last_token_s)
                        itl.frombytes(gaps.tobytes())
                    r.cached += j
                    r.generated += j
                    r.last_token_s = float(times[-1])
                    if not reserve:
                        grown = blocks_for(r.cached - r.shared)
                        free -= grown - r.blocks
                        r.blocks = grown
                kv_peak = max(kv_peak, (total_blocks - free) / total_blocks)
                now = ends[-1]
                continue
        iterations += 1
        if iterations > MAX_ITERATIONS:  # pragma: no cover - a safety net
            raise InputError(f"more than {MAX_ITERATIONS:,} iterations: the load never drains", key="requests")
        # not mixed: while a prompt can run, the step is prompts only and the decoding sequences wait (unless
        # no prompt fits after all: then they decode)
        first = not mixed and (any(r.cached < (r.input_len + r.generated if r.preemptions else r.input_len)
                                   for r in running) or bool(waiting and admissible(waiting[0], len(running))))
        for prompts_only in ((True, False) if first else (False,)):
            budget, slots = max_tokens, max_batch
            prefill: list[tuple[int, int]] = []
            prefill_reqs: list[tuple[Request, int]] = []
            decoding: list[Request] = []
            decode_ctx = 0
            # 1. running sequences, oldest first
            i = 0
            while i < len(running):
                r = running[i]
                if slots == 0 or budget == 0:
                    break
                c = r.cached
                prompt = r.input_len + r.generated if r.preemptions else r.input_len  # r.prompt
                prefilling = c < prompt
                if prefilling:
                    chunk = prompt - c
                    if chunked and chunk > budget:
                        chunk = budget
                    elif chunk > budget:
                        i += 1
                        continue
                elif prompts_only:  # it decodes in a later step, holding its slot
                    slots -= 1
                    i += 1
                    continue
                elif verify > budget:
                    i += 1
                    continue
                else:
                    chunk = verify
                # reserve: the whole sequence's blocks are held from admission on, so nothing ever grows
                grow = 0 if reserve else -(-(c + chunk - r.shared) // block) - r.blocks
                if grow > 0:
                    while grow > free:  # preempt the latest arrival (never the one growing)
                        victim = running[-1]
                        if victim is r:
                            break
                        running.pop()
                        free += victim.blocks
                        victim.blocks = victim.cached = victim.shared = 0
                        victim.preemptions += 1
                        preemptions += 1
                        ratio = RATIO_INIT
                        waiting.appendleft(victim)
                    if grow > free:
                        i += 1
                        continue
                    free -= grow
                    r.blocks += grow
                slots -= 1
                budget -= chunk
                if prefilling:
                    prefill.append((chunk, c + chunk))
                    prefill_reqs.append((r, chunk))
                else:
                    decoding.append(r)
                    decode_ctx += c
                i += 1
            # 2. waiting requests, first come first served
            room = headroom()
            while waiting and slots > 0 and budget > 0:
                r = waiting[0]
                shared = share(r)
                left = r.prompt - r.cached - shared
                if left <= 0:  # arrived prefilled: it joins the decoding sequences
                    whole = blocks_for(r.input_len + r.output_len if reserve else r.cached + 1)
                    if whole > free:
                        break
                    waiting.popleft()
                    free -= whole
                    r.blocks = whole
                    slots -= 1
                    budget -= min(verify, budget)
                    running.append(r)
                    decoding.append(r)
                    decode_ctx += r.cached
                    continue
                need = left if not chunked else min(left, budget)
                if need > budget and (running or prefill_reqs or decoding):
                    break
                own = blocks_for(r.input_len + r.output_len - shared) if reserve else blocks_for(r.cached + need)
                if own > free or promise(r, left) > room:
                    break
                room -= promise(r, left)
                waiting.popleft()
                free -= own
                r.blocks = own
                r.shared = shared
                r.cached += shared
                hits += shared
                slots -= 1
                budget -= min(need, budget)
                running.append(r)
                prefill.append((need, r.cached + need))
                prefill_reqs.append((r, need))
            if prefill or decoding:
                break
        if not prefill and not decoding:
            if not running and waiting:
                raise InputError(f"request {waiting[0].id} cannot be scheduled: its prompt of {waiting[0].prompt} "
                                 f"tokens exceeds max_tokens ({max_tokens})", key="max_tokens")
            # nothing fits now: wait for an arrival (cannot happen while sequences run)
            if pending:
                now = max(now, pending[0][0])
                continue
            raise InputError("the scheduler is stuck: no sequence can be scheduled", key="max_batch")
        logits = len(decoding) + sum(1 for r, c in prefill_reqs if r.cached + c >= r.prompt)
        cost = model.step(prefill, len(decoding), decode_ctx, logits)
        if decoding:
            ratio = max(RATIO_MIN, ratio - ratio_step)
        end = now + cost.seconds
        energy += cost.joules
        busy += cost.gpu_seconds
        used = (total_blocks - free) / total_blocks
        kv_area += used * cost.seconds
        kv_peak = max(kv_peak, used)
        batch_area += (len(prefill) + len(decoding)) * cost.seconds
        if steps is not None:
            steps.append(now, end, sum(c for _, c in prefill_reqs), len(prefill), len(decoding), used)
        done: list[Request] = []
        emitted = accepted(drafts, len(decoding), spec) if spec is not None else None
        counts = [1] * len(decoding) if emitted is None else \
            [min(int(emitted[j]), r.output_len - r.generated) for j, r in enumerate(decoding)]
        seen = deliver(end, sum(counts) + sum(1 for r, c in prefill_reqs if r.cached + c >= r.prompt))
        for r, n in zip(decoding, counts, strict=True):
            r.cached += n
            r.generated += n
            if r.id >= warm:  # n tokens at once: n gaps of a 1/n share each, the rate the client sees
                itl.extend([(seen - r.last_token_s) / n] * n)
            decode_emitted += n
            r.last_token_s = seen
            if r.generated >= r.output_len:
                done.append(r)
        decode_steps += len(decoding)
        for r, c in prefill_reqs:
            r.cached += c
            if prefix_blocks and not prefix_ready and r.cached >= prefix_blocks * block:
                # the first prefix computed: its blocks stay in the cache, the request's no longer
                prefix_ready = True
                r.shared = prefix_blocks * block
                r.blocks -= prefix_blocks
            if r.cached >= r.prompt:  # the prompt's last chunk: its (next) token comes out now
                if math.isnan(r.first_token_s):
                    r.first_token_s = seen
                elif r.id >= warm:
                    itl.append(seen - r.last_token_s)
                r.last_token_s = seen
                r.generated += 1
                if r.generated >= r.output_len:
                    done.append(r)
        now = end
        if done:
            gone = {id(r) for r in done}
            running = [r for r in running if id(r) not in gone]
            for r in done:
                free += r.blocks
                r.blocks = 0
                r.finish_s = seen
                finished += 1
                if arrivals.concurrency and made < arrivals.count:  # the client sends its next request
                    gap = float(think.exponential(arrivals.think_s)) if think is not None else 0.0
                    heapq.heappush(pending, (seen + gap, made))
                    made += 1
            if progress:
                progress(finished, arrivals.count)
    now = max(now, front_free)
    return ServingTrace(requests, iterations, now, energy, busy, itl,
                        kv_utilization=kv_area / now if now else 0.0, kv_peak=kv_peak, preemptions=preemptions,
                        batch_mean=batch_area / now if now else 0.0, kv_capacity_tokens=total_blocks * block,
                        warmup=warm, steps=steps, prefix_hit_tokens=hits,
                        tokens_per_decode_step=decode_emitted / decode_steps if decode_steps else 1.0)


def poisson_times(rate: float, count: int, seed: int, cv: float = 1.0) -> list[float]:
    """Arrival times of `count` requests at `rate` per second: Poisson (cv = 1), or gamma
    inter-arrival times with coefficient of variation `cv` (burstier above 1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if cv == 1.0:
        gaps = rng.exponential(1.0 / rate, count)
    else:
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), count)
    return list(np.cumsum(gaps) - gaps[0])
