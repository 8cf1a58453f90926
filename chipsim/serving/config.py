"""The `serving:` section of a run config: a model served by an inference engine on a chip (or a
tensor-parallel group of a system's node), under a stream of requests.

Everything is resolved and checked before any simulation: the model, chip, system, engine and its
settings, quantization, KV-cache format, the arrival process, the request lengths (sampled here, so
that they can be checked against the model's context and the KV cache), and every file named. An
error names the config file and `serving.<key>`. The same config gives the same requests, number for
number: arrival times and sampled lengths come from numpy Generators seeded by `seed`.

```yaml
serving:
  model: llama3-8b            # a zoo id, or {layers, d_model, heads, kv_heads, ffn, vocab, max_seq, ...}
  chip: h100_sxm              # or system: NAME (tp > 1 defaults to the chip's node)
  tp: 1
  engine: trtllm              # trtllm, vllm, sglang, lmdeploy, eager
  engine_settings: {max_batch: 256}
  quantization: none          # none, fp8, int8_weight, int4_awq, int4_tinygemm, nvfp4, mxfp4
  kv_cache_dtype: bf16        # bf16 or fp8
  requests: 1000
  seed: 0
  arrival: {process: poisson, rate: 10}
  lengths: {input: {dist: normal, mean: 1024, std: 128}, output: 128}
  speculative: {method: eagle, tokens: 3, acceptance: 0.7}   # optional: mtp, eagle, or draft with a model
```
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from chipsim.config.loader import brief
from chipsim.config.reader import Section
from chipsim.config.runconfig import RunConfig, load_run_config
from chipsim.errors import InputError
from chipsim.hardware.chip import Chip
from chipsim.models.zoo import ModelConfig
from chipsim.network.system import System
from chipsim.serving.disagg import Disaggregation, KVLink
from chipsim.serving.engine import Arrivals, cycled, poisson_times
from chipsim.serving.iteration import IterationModel
from chipsim.serving.profiles import OVERRIDABLE, PROFILES, EngineProfile, base_profile, for_chip
from chipsim.serving.quant import KV_DTYPES, Quantization
from chipsim.serving.speculative import Speculation
from chipsim.training.run import model_from_section

PROCESSES = ("poisson", "gamma", "closed", "burst", "trace")
DISTRIBUTIONS = {"uniform": ("low", "high"), "normal": ("mean", "std"), "lognormal": ("mean", "sigma")}
MAX_REQUESTS = 1_000_000
MAX_TOKENS = 1 << 24  # a length or an engine setting beyond this is a typo, not a request
MAX_EXPERT_PARALLEL = 1024  # GPUs of one data-parallel-attention, expert-parallel engine (DeepSeek decodes on 144)
ADMISSIONS = ("reserve", "greedy", "ratio")
KEYS = ("model", "chip", "system", "tp", "engine", "engine_settings", "quantization", "kv_cache_dtype", "requests",
        "seed", "arrival", "lengths", "shared_prefix", "disaggregation", "dp_attention", "speculative")
ARRIVAL_KEYS = {"poisson": ("rate",), "gamma": ("rate", "cv"), "closed": ("concurrency", "think"), "burst": (),
                "trace": ("file",)}


def _only(sec: Section, allowed: tuple[str, ...]) -> None:
    """A key not in `allowed` is an error now, before a missing key it may be a typo of."""
    for k in sec.data:
        if k not in allowed:
            raise sec.error(str(k), f"unknown key; expected one of: {', '.join(allowed)}")


@dataclass(frozen=True)
class ArrivalSpec:
    """How requests arrive: `poisson` / `gamma` at `rate` per second (gamma: inter-arrival times with
    coefficient of variation `cv`), a `closed` loop of `concurrency` clients, a `burst` (every
    request at t = 0: the engine's maximum load), or a `trace`'s arrival times."""

    process: str
    rate: float = math.nan
    cv: float = 1.0
    concurrency: int = 0
    think_s: float = 0.0  # closed loop: mean time from a response to the client's next request
    times: tuple[float, ...] | None = None

    def label(self) -> str:
        if self.process == "poisson":
            return f"Poisson {self.rate:.4g} req/s"
        if self.process == "gamma":
            return f"gamma {self.rate:.4g} req/s (cv {self.cv:g})"
        if self.process == "closed":
            think = f", think time {self.think_s * 1e3:.4g} ms" if self.think_s else ""
            return f"closed loop, {self.concurrency} clients{think}"
        if self.process == "burst":
            return "burst (every request at t = 0)"
        return "trace"


@dataclass(frozen=True, eq=False)
class ServingSetup:
    """A resolved, checked `serving:` section: what `run_serving` needs."""

    name: str
    file: Path | None
    model: ModelConfig
    chip: Chip
    system: System | None
    tp: int
    profile: EngineProfile
    quant: Quantization
    kv_dtype: str
    requests: int
    seed: int
    arrival: ArrivalSpec
    input_lens: np.ndarray = field(repr=False)  # request i takes row i % len
    output_lens: np.ndarray = field(repr=False)
    lengths_label: str
    iteration: IterationModel = field(repr=False, compare=False)  # a disaggregated run's: the decode instances'
    shared_prefix: int = 0  # prompt tokens every request shares
    disagg: Disaggregation | None = field(default=None, repr=False, compare=False)

    @property
    def dp_attention(self) -> bool:
        """Each of the tp GPUs attends for its own requests, the experts split over them."""
        return self.iteration.dp_attention

    @property
    def gpus(self) -> int:
        return self.disagg.gpus if self.disagg is not None else self.tp

    def lengths(self) -> Callable[[int], tuple[int, int]]:
        return cycled(self.input_lens, self.output_lens)

    def arrivals(self) -> Arrivals:
        a = self.arrival
        if a.process == "closed":
            return Arrivals(self.lengths(), self.requests, concurrency=a.concurrency, think_s=a.think_s,
                            seed=self.seed, shared_prefix=self.shared_prefix)
        if a.process == "burst":
            times = [0.0] * self.requests
        elif a.process == "trace":
            assert a.times is not None
            times = list(a.times)
        else:
            times = [float(t) for t in poisson_times(a.rate, self.requests, self.seed,
                                                     a.cv if a.process == "gamma" else 1.0)]
        return Arrivals(self.lengths(), self.requests, times=times, shared_prefix=self.shared_prefix)

    def at_rate(self, rate: float) -> ServingSetup:
        """The same requests arriving as an open stream at `rate` per second: Poisson, or gamma with the
        config's `cv` when its process is gamma (a trace keeps its lengths, not its times)."""
        cv = self.arrival.cv if self.arrival.process == "gamma" else 1.0
        return replace(self, arrival=ArrivalSpec("gamma" if cv != 1.0 else "poisson", rate=rate, cv=cv))

    def describe(self) -> dict[str, Any]:
        """The run's inputs, for the summary table, summary.csv and --json."""
        a = self.arrival
        return {
            "name": self.name, "model": self.model.model_id, "chip": self.chip.name,
            "system": self.system.name if self.system is not None else None, "tp": self.tp, "gpus": self.gpus,
            "engine": self.profile.name, "quantization": self.quant.name, "kv_cache_dtype": self.kv_dtype,
            "arrival": a.process, "rate_per_s": a.rate if a.process in ("poisson", "gamma") else None,
            "cv": a.cv if a.process == "gamma" else None,
            "concurrency": a.concurrency if a.process == "closed" else None,
            "think_s": a.think_s if a.process == "closed" else None,
            "requested": self.requests, "seed": self.seed, "arrival_label": a.label(),
            "lengths_label": self.lengths_label,
            "input_len_mean": float(self.input_lens.mean()), "output_len_mean": float(self.output_lens.mean()),
            "shared_prefix": self.shared_prefix, "dp_attention": self.dp_attention,
            "disaggregation": self.disagg.label() if self.disagg is not None else None,
            "speculative": spec.label() if (spec := self.iteration.speculation) is not None else None,
        }


# ---------------------------------------------------------------- pieces


def _engine(sec: Section, chip: Chip, tp: int) -> EngineProfile:
    name = sec.string("engine")
    base = base_profile(name)
    if base is None:
        raise sec.error("engine", f"unknown engine profile {brief(name)}; expected one of {', '.join(PROFILES)}")
    base = for_chip(base, chip, tp)
    settings = sec.section("engine_settings", {})
    profile = replace(base, **engine_overrides(settings))
    if profile.max_batch <= profile.reserved_slots:
        raise settings.error("max_batch", f"{brief(name)} holds {profile.reserved_slots} of its sequence slots; "
                                          f"expected more than {profile.reserved_slots}")
    return profile


def engine_overrides(settings: Section) -> dict[str, Any]:
    """An `engine_settings` mapping's overrides of a profile (`OVERRIDABLE`), each checked for its type
    and range; an unknown key is an error."""
    for k in settings.data:
        if k not in OVERRIDABLE:
            raise settings.error(str(k), f"unknown engine setting; expected one of {', '.join(OVERRIDABLE)}")
    over: dict[str, Any] = {}
    for k in ("iteration_s", "per_sequence_s", "frontend_token_s", "eager_layer_s"):
        if settings.has(k):
            over[k] = settings.quantity(k, "time")
    for k in ("max_batch", "max_tokens", "block_size"):
        if settings.has(k):
            over[k] = int(settings.number(k, minimum=1, maximum=MAX_TOKENS, integer=True))
    if settings.has("graph_max_batch"):  # 0: every decode step has a CUDA graph
        over["graph_max_batch"] = int(settings.number("graph_max_batch", minimum=0, maximum=MAX_TOKENS, integer=True))
    for k in ("chunked_prefill", "prefix_caching", "mixed_batches"):
        if settings.has(k):
            over[k] = settings.boolean(k)
    for k in ("memory_fraction", "moe_efficiency", "moe_compute_efficiency"):
        if settings.has(k):
            over[k] = settings.number(k, positive=True, maximum=1.0)
    if settings.has("admission"):
        over["admission"] = settings.string("admission", choices=ADMISSIONS)
    settings.done()
    return over


def _hardware(sec: Section, tp: int, across_nodes: bool = False) -> tuple[Chip, System | None]:
    """The chip, and the system its `tp` GPUs run in: a node, or with data-parallel attention
    (`across_nodes`) as many of a cluster's nodes as the expert-parallel group needs."""
    from chipsim.hardware.registry import load_chip
    from chipsim.network.system import load_system, system_for

    relative = Path(sec.file) if sec.file else None
    chip: Chip | None = None
    system: System | None = None
    if not sec.has("chip") and not sec.has("system"):
        raise sec.error("chip", "required key is missing: give `chip` (chipsim chips) or `system` (chipsim systems)")
    if sec.has("chip"):
        name = sec.string("chip")
        try:
            chip = load_chip(name, relative)
        except InputError as exc:
            raise (exc if exc.file else sec.error("chip", exc.message)) from None
    if sec.has("system"):
        name = sec.string("system")
        try:
            system = load_system(name, relative)
        except InputError as exc:
            raise (exc if exc.file else sec.error("system", exc.message)) from None
        if chip is not None and system.chip.name != chip.name:
            raise sec.error("system", f"system '{system.name}' is built of {system.chip.name}, not {chip.name}")
        chip = system.chip
    assert chip is not None
    if tp > 1 and system is None:
        try:
            system = system_for(chip.name, tp)
        except InputError as exc:
            raise sec.error("system", f"tp {tp} needs a node for its all-reduces: {exc.message}; give `system`") \
                from None
    if system is not None and tp > system.gpus_per_node and not across_nodes:
        raise sec.error("tp", f"tensor parallelism runs inside one node; system '{system.name}' has "
                              f"{system.gpus_per_node} GPUs per node, got tp {tp} (an MoE model's experts spread "
                              f"over nodes with dp_attention: true)")
    if system is not None and tp > system.world:
        raise sec.error("tp", f"system '{system.name}' has {system.world} GPUs, got tp {tp}")
    return chip, system


def _rate(sec: Section) -> float:
    return sec.number("rate", positive=True, maximum=1e9)


def _arrival(sec: Section) -> tuple[ArrivalSpec, np.ndarray | None, np.ndarray | None]:
    """The arrival spec, and a trace's (input, output) lengths."""
    process = sec.string("process", choices=PROCESSES)
    _only(sec, ("process", *ARRIVAL_KEYS[process]))
    if process == "poisson":
        spec = ArrivalSpec(process, rate=_rate(sec))
    elif process == "gamma":
        spec = ArrivalSpec(process, rate=_rate(sec), cv=sec.number("cv", positive=True, maximum=100.0))
    elif process == "closed":
        spec = ArrivalSpec(process, concurrency=int(sec.number("concurrency", minimum=1, maximum=MAX_REQUESTS,
                                                               integer=True)),
                           think_s=sec.quantity("think", "time", 0.0))
    elif process == "burst":
        spec = ArrivalSpec(process)
    else:
        table = _csv(sec, "file", ("arrival_s", "input_len", "output_len"))
        order = np.argsort(table["arrival_s"], kind="stable")
        times = table["arrival_s"][order]
        sec.done()
        return (ArrivalSpec(process, times=tuple(float(t) for t in times)), table["input_len"][order],
                table["output_len"][order])
    sec.done()
    return spec, None, None


def _csv(sec: Section, key: str, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A CSV file named at `key` (relative to the config file): the columns, checked (times finite and
    >= 0, lengths integers >= 1). Any problem is an error at `key`."""
    import pandas as pd

    from chipsim.study.validate import read_table

    raw = sec.string(key)
    path = Path(raw)
    if not path.is_absolute() and sec.file:
        path = Path(sec.file).parent / path
    try:
        frame = read_table(path, "CSV", "file not found")
    except InputError as exc:
        where = f" (column {exc.key})" if exc.key else ""
        raise sec.error(key, f"{path}: {exc.message}{where}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise sec.error(key, f"{path}: missing column {missing[0]!r}; expected columns {', '.join(columns)}")
    if not len(frame):
        raise sec.error(key, f"{path}: no rows")
    if len(frame) > MAX_REQUESTS:
        raise sec.error(key, f"{path}: {len(frame):,} rows; at most {MAX_REQUESTS:,}")
    out: dict[str, np.ndarray] = {}
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(values)
        if column.endswith("_len"):
            bad |= (values < 1) | (values != np.round(values)) | (values > MAX_TOKENS)
        else:
            bad |= values < 0
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            what = f"an integer from 1 to {MAX_TOKENS:,}" if column.endswith("_len") else "a finite time >= 0 (s)"
            raise sec.error(key, f"{path}: row {row}, column {column}: expected {what}, got "
                                 f"{brief(frame[column].iloc[row])}")
        out[column] = values.astype(np.int64) if column.endswith("_len") else values
    return out


def _sample(spec: Any, sec: Section, name: str, rng: np.random.Generator, count: int) -> tuple[np.ndarray, str]:
    """`count` lengths from `spec`: an integer, or {dist, ...}; integers, clipped to [1, max]."""
    if isinstance(spec, bool) or not isinstance(spec, (int, float, dict)):
        raise sec.error(name, f"expected a length in tokens or a distribution ({{dist: uniform|normal|lognormal, "
                              f"...}}), got {brief(spec)}")
    if not isinstance(spec, dict):
        n = int(sec.number(name, minimum=1, maximum=MAX_TOKENS, integer=True))
        return np.full(count, n, dtype=np.int64), str(n)
    d = sec.section(name)
    dist = d.string("dist", choices=tuple(DISTRIBUTIONS))
    a_key, b_key = DISTRIBUTIONS[dist]
    _only(d, ("dist", a_key, b_key) if dist == "uniform" else ("dist", a_key, b_key, "max"))
    if dist == "uniform":
        low = int(d.number("low", minimum=1, maximum=MAX_TOKENS, integer=True))
        high = int(d.number("high", minimum=1, maximum=MAX_TOKENS, integer=True))
        if high < low:
            raise d.error("high", f"expected high >= low ({low}), got {high}")
        d.done()
        return rng.integers(low, high, endpoint=True, size=count).astype(np.int64), f"uniform({low}-{high})"
    mean = d.number(a_key, positive=True, maximum=MAX_TOKENS)
    spread = d.number(b_key, minimum=0.0, maximum=MAX_TOKENS if dist == "normal" else 10.0)
    top = int(d.number("max", minimum=1, maximum=MAX_TOKENS, integer=True)) if d.has("max") else MAX_TOKENS
    d.done()
    if dist == "normal":
        values = rng.normal(mean, spread, count)
        label = f"normal(mean {mean:g}, std {spread:g})"
    else:  # `mean` is the lengths' mean (not the log's): mu = ln(mean) - sigma^2 / 2
        values = rng.lognormal(math.log(mean) - spread * spread / 2, spread, count)
        label = f"lognormal(mean {mean:g}, sigma {spread:g})"
    return np.clip(np.rint(values), 1, top).astype(np.int64), label


def _lengths(sec: Section, requests: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    _only(sec, ("input", "output", "file"))
    if sec.has("file"):
        for other in ("input", "output"):
            if sec.has(other):
                raise sec.error(other, "give either `file` or `input` and `output`")
        table = _csv(sec, "file", ("input_len", "output_len"))
        sec.done()
        return table["input_len"], table["output_len"], f"from {Path(str(sec.data['file'])).name}"
    inputs, in_label = _sample(sec.raw("input"), sec, "input", np.random.default_rng([seed, 1]), requests)
    outputs, out_label = _sample(sec.raw("output"), sec, "output", np.random.default_rng([seed, 2]), requests)
    sec.done()
    return inputs, outputs, f"input {in_label}; output {out_label}"


# ---------------------------------------------------------------- the section


def resolve_serving(config: RunConfig) -> ServingSetup:
    """The config's `serving:` section, resolved and checked (see the module notes)."""
    from chipsim.serving.quant import check_kv_dtype, quantization

    assert config.serving is not None
    file = str(config.file) if config.file else None
    sec = Section(config.serving, file, "serving")
    _only(sec, KEYS)
    model = model_from_section(sec)
    dp_attention = sec.boolean("dp_attention", False)
    limit = MAX_EXPERT_PARALLEL if dp_attention else 64
    split = _disaggregation(sec, limit)
    tp = max(split[0][0], split[1][0]) if split else sec.integer("tp", 1, minimum=1)
    if tp > limit:
        raise sec.error("tp", f"expected a tensor-parallel size up to 64 (with dp_attention, an expert-parallel "
                              f"group up to {MAX_EXPERT_PARALLEL}), got {tp}")
    chip, system = _hardware(sec, tp, dp_attention)
    profile = _engine(sec, chip, tp)
    try:
        quant = quantization(sec.string("quantization", "none"))
    except InputError as exc:
        raise sec.error("quantization", exc.message) from None
    try:
        kv_dtype = check_kv_dtype(sec.string("kv_cache_dtype", "bf16"))
    except InputError as exc:
        raise sec.error("kv_cache_dtype", exc.message) from None
    seed = sec.integer("seed", 0, minimum=0)
    arrival, trace_in, trace_out = _arrival(sec.section("arrival"))
    if split and arrival.process == "closed":
        raise sec.error("arrival.process", "a disaggregated deployment is simulated as two passes (prefill, then "
                                           "decode) and needs open arrivals: poisson, gamma, burst or trace")
    if trace_in is not None and trace_out is not None:
        if sec.has("lengths"):
            raise sec.error("lengths", "a trace gives each request's lengths: leave `lengths` out")
        rows = len(trace_in)
        requests = sec.integer("requests", rows, minimum=1)
        if requests > rows:
            raise sec.error("requests", f"the trace has {rows:,} requests; got {requests:,}")
        inputs, outputs = trace_in[:requests], trace_out[:requests]
        arrival = replace(arrival, times=arrival.times[:requests] if arrival.times else None)
        label, where = "from the trace", "arrival.file"
    else:
        requests = int(sec.number("requests", 1000, minimum=1, maximum=MAX_REQUESTS, integer=True))
        inputs, outputs, label = _lengths(sec.section("lengths"), requests, seed)
        where = "lengths"
    speculation = _speculation(sec, model) if sec.has("speculative") else None
    shared_prefix = sec.integer("shared_prefix", 0, minimum=0)
    if shared_prefix and shared_prefix >= int(inputs.min()):
        raise sec.error("shared_prefix", f"expected fewer tokens than the shortest prompt ({int(inputs.min()):,}), "
                                         f"got {shared_prefix:,}")
    sec.done()
    _check_lengths(sec, where, model, inputs, outputs)

    def engine(tp: int, key: str, outputs: np.ndarray, decodes: bool = True) -> IterationModel:
        try:
            return checked_iteration(model, chip, system, tp, quant, kv_dtype, profile, inputs, outputs, dp_attention,
                                     speculation if decodes else None)
        except InputError as exc:
            at = {"tp": key, "lengths": where, "chip": None}.get(exc.key or "", exc.key)
            if at == "engine_settings.max_tokens" and not sec.has("engine_settings"):
                at = where
            raise sec.error(at, exc.message) from None

    disagg = None
    if split:
        (p_tp, p_count), (d_tp, d_count), link = split
        decode = engine(d_tp, "disaggregation.decode.tp", outputs)
        prefill = engine(p_tp, "disaggregation.prefill.tp", np.ones_like(outputs), decodes=False)
        disagg = Disaggregation(prefill, decode, p_count, d_count,
                                _kv_link(sec, link, system, chip, p_tp * p_count + d_tp * d_count))
        iteration, tp = decode, d_tp
    else:
        iteration = engine(tp, "tp", outputs)
    return ServingSetup(config.name, config.file, model, chip, system, tp, profile, quant, kv_dtype, requests, seed,
                        arrival, inputs, outputs, label, iteration, shared_prefix, disagg)


def _speculation(sec: Section, model: ModelConfig) -> Speculation:
    """`speculative: {method, tokens, acceptance[, model]}`: the drafter, its tokens per step and their
    acceptance rate (MTP's defaults to DeepSeek-V3's reported 0.85; EAGLE's and a draft model's depend on
    the drafter and the data, so they are given)."""
    from chipsim.serving.speculative import MAX_TOKENS, METHODS, MTP_ACCEPTANCE

    spec = sec.section("speculative")
    _only(spec, ("method", "tokens", "acceptance", "model"))
    method = spec.string("method", choices=METHODS)  # mtp on a model without MTP modules: IterationModel says so
    tokens = spec.integer("tokens", max(1, model.mtp_depth), minimum=1) if method == "mtp" else \
        spec.integer("tokens", minimum=1)
    if tokens > MAX_TOKENS:
        raise spec.error("tokens", f"expected at most {MAX_TOKENS} drafted tokens per step, got {tokens}")
    if method != "mtp" and not spec.has("acceptance"):
        raise spec.error("acceptance", f"expected the {method} drafter's per-token acceptance rate on your data "
                                       f"(between 0 and 1, e.g. 0.7)")
    acceptance = spec.number("acceptance", MTP_ACCEPTANCE, positive=True)
    if acceptance >= 1:
        raise spec.error("acceptance", f"expected a probability below 1, got {acceptance:g}")
    draft = None
    if method == "draft":
        if not spec.has("model"):
            raise spec.error("model", "expected the draft model: a zoo id or a mapping of dimensions")
        draft = model_from_section(spec)
        if draft.vocab != model.vocab:
            raise spec.error("model", f"a draft model proposes tokens of the target's vocabulary: {draft.model_id} has "
                                      f"{draft.vocab:,}, {model.model_id} {model.vocab:,}")
    elif spec.has("model"):
        raise spec.error("model", f"only method draft takes a model; {method} drafts with the target's own layers")
    spec.done()
    return Speculation(method, tokens, acceptance, draft)


def _disaggregation(sec: Section, limit: int) -> tuple[tuple[int, int], tuple[int, int], str] | None:
    """(tp, instances) of the prefill and of the decode instances and the KV link's name, or None (one
    aggregated instance)."""
    if not sec.has("disaggregation"):
        return None
    if sec.has("tp"):
        raise sec.error("tp", "a disaggregated deployment gives tp per kind: disaggregation.prefill.tp and "
                              "disaggregation.decode.tp")
    d = sec.section("disaggregation")
    _only(d, ("prefill", "decode", "link"))
    out = []
    for kind in ("prefill", "decode"):
        k = d.section(kind, {})
        _only(k, ("tp", "instances"))
        tp = k.integer("tp", 1, minimum=1)
        if tp > limit:
            raise k.error("tp", f"expected a tensor-parallel size up to {limit}, got {tp}")
        out.append((tp, int(k.number("instances", 1, minimum=1, maximum=1024, integer=True))))
        k.done()
    link = d.string("link", "auto", choices=("auto", "nvlink", "network"))
    d.done()
    return out[0], out[1], link


# a KV cache sent across nodes: one 400 Gb/s NIC per GPU (ConnectX-7, as DGX H100/H200 and HGX B200
# nodes have) and its one-way latency with a switch hop, when the system states no scale-out network
DEFAULT_NIC_BYTES_PER_S = 50e9
DEFAULT_NIC_LATENCY_S = 5e-6


def _kv_link(sec: Section, name: str, system: System | None, chip: Chip, gpus: int) -> KVLink:
    """The link `name` (auto: NVLink when the instances share a node, else the system's network)."""
    per_node = system.gpus_per_node if system is not None else 8
    if name == "auto":
        name = "nvlink" if gpus <= per_node else "network"
    if name == "nvlink":
        if gpus > per_node:
            raise sec.error("disaggregation.link", f"{gpus} GPUs of prefill and decode instances do not fit one "
                                                   f"node of {per_node}")
        if system is not None:
            return KVLink("nvlink", system.fabric.bandwidth_bytes_per_s, system.fabric.latency_s)
        return KVLink("nvlink", chip.link.bandwidth_bytes_per_s, chip.link.latency_s)
    out = system.scale_out if system is not None else None
    if system is not None and out is not None:
        return KVLink("network", out.nic_bandwidth_bytes_per_s * out.nics_per_node / system.gpus_per_node,
                      out.nic_latency_s + out.switch_latency_s)
    return KVLink("network", DEFAULT_NIC_BYTES_PER_S, DEFAULT_NIC_LATENCY_S)


def _check_lengths(sec: Section, where: str, model: ModelConfig, inputs: np.ndarray, outputs: np.ndarray) -> None:
    total = inputs + outputs
    worst = int(np.argmax(total))
    if total[worst] <= model.max_seq:
        return
    key = where
    if where == "lengths":
        key = "lengths.input" if inputs.max() > model.max_seq else "lengths.output"
    over = int((total > model.max_seq).sum())
    raise sec.error(key, f"{over:,} requests exceed {model.model_id}'s context of {model.max_seq:,} tokens "
                         f"(max_seq), e.g. {int(inputs[worst]):,} + {int(outputs[worst]):,} tokens"
                         + ("; bound the distribution with `max`" if where == "lengths" and over < len(total) else ""))


def checked_iteration(model: ModelConfig, chip: Chip, system: System | None, tp: int, quant: Quantization,
                      kv_dtype: str, profile: EngineProfile, inputs: np.ndarray, outputs: np.ndarray,
                      dp_attention: bool = False, speculation: Speculation | None = None) -> IterationModel:
    """The iteration model of one engine instance, checked as a config is: the engine runs on the chip,
    which has the KV cache's format; `tp` runs inside a node (`system`'s when it holds tp GPUs, else
    the chip's node), the weights fit, the KV cache holds the longest request, a prompt fits an
    iteration without chunked prefill, the chip runs every kernel. An InputError's key is the serving
    key at fault: engine, kv_cache_dtype, tp, lengths, engine_settings(.max_tokens), chip."""
    from chipsim.network.system import system_for

    if profile.name in ("trtllm", "lmdeploy") and chip.vendor.strip().upper() == "AMD":
        engine = "TensorRT-LLM" if profile.name == "trtllm" else "LMDeploy's TurboMind"
        raise InputError(f"{engine} runs on NVIDIA GPUs only; {chip.name} is an AMD chip: use vllm or sglang "
                         f"(their ROCm builds)", key="engine")
    if kv_dtype != "bf16" and chip.peak_flops_per_s.get(kv_dtype, 0.0) <= 0:
        raise InputError(f"chip '{chip.name}' has no {kv_dtype} attention kernels; expected "
                         f"{' or '.join(d for d in KV_DTYPES if chip.peak_flops_per_s.get(d, 0) > 0)}",
                         key="kv_cache_dtype")

    node = system if system is not None and (tp <= system.gpus_per_node or dp_attention) else None
    if tp > 1 and node is None:
        try:
            node = system_for(chip.name, tp)
        except InputError as exc:
            raise InputError(f"tp {tp} needs a node of {chip.name} for its all-reduces: {exc.message}",
                             key="tp") from None
    if node is not None and tp > (node.world if dp_attention else node.gpus_per_node):
        raise InputError(f"tensor parallelism runs inside one node: {node.gpus_per_node} {chip.name} GPUs "
                         f"({node.name}), got tp {tp}" if not dp_attention else
                         f"{node.name} has {node.world} GPUs, got an expert-parallel group of {tp}", key="tp")
    try:
        iteration = IterationModel(model, chip, quant, profile, tp=tp, kv_dtype=kv_dtype, system=node,
                                   dp_attention=dp_attention, speculation=speculation)
        capacity = iteration.kv_capacity_tokens()
    except InputError as exc:
        raise InputError(exc.message, key=exc.key or "tp") from None
    block = profile.block_size
    held = capacity // block * block
    total = inputs + outputs
    worst = int(np.argmax(total))
    need = -(-int(total[worst]) // block) * block
    if held < block:
        raise InputError(f"the KV cache holds {capacity:,} tokens: not one block of {block}", key="engine_settings")
    if need > held:
        raise InputError(f"the KV cache holds {held:,} tokens per GPU after {iteration.weight_bytes / 1e9:.1f} GB of "
                         f"weights ({quant.name}, tp {tp} on {chip.name}); the longest request needs {need:,} "
                         f"({int(inputs[worst]):,} + {int(outputs[worst]):,}): raise tp, use an fp8 KV cache or a "
                         f"quantization, or shorten the requests", key="lengths")
    if not profile.chunked_prefill and int(inputs.max()) > profile.max_tokens:
        raise InputError(f"without chunked prefill a prompt of {int(inputs.max()):,} tokens never fits an iteration "
                         f"of max_tokens {profile.max_tokens:,}", key="engine_settings.max_tokens")
    try:  # a chip that cannot run one of the iteration's kernels says so now, not half-way
        iteration.step([(16, 16)], 1, 16, 2)
    except InputError as exc:
        raise InputError(f"{chip.name} cannot run this engine's iteration: {exc.message}", key="chip") from None
    return iteration


def load_serving(path: str | Path) -> ServingSetup:
    """A run config with a `serving:` section, resolved (errors name the file and `serving.<key>`)."""
    config = load_run_config(path)
    if config.serving is None:
        raise InputError("this run config has no `serving:` section", file=str(path), key="serving")
    return resolve_serving(config)
