"""The `parallelism:` section of a run config: a training step of a model under a layout, on each of
the config's systems. Everything is resolved and checked (model, layout, memory per GPU) before any
simulation, and errors name the config file and `parallelism.<key>`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chipsim.config.reader import Section
from chipsim.config.runconfig import RunConfig
from chipsim.errors import InputError
from chipsim.models.layout import Layout
from chipsim.models.memory import memory_per_gpu
from chipsim.models.zoo import ModelConfig
from chipsim.network.system import System, load_system
from chipsim.training.step import PRECISIONS, TrainingResult, simulate_training

LAYOUT_KEYS = ("tp", "pp", "cp", "dp", "ep", "etp", "vp", "micro_batch", "zero", "first_stage_layers",
               "last_stage_layers")
MODEL_DIMS = ("layers", "d_model", "heads", "kv_heads", "head_dim", "ffn", "vocab", "max_seq", "experts", "topk",
              "expert_ffn", "shared_experts")


@dataclass(frozen=True)
class TrainingCase:
    model: ModelConfig
    layout: Layout
    system: System
    precision: str


def model_from_section(sec: Section) -> ModelConfig:
    """A config section's `model`: a zoo id, or a mapping of dimensions (MODEL_DIMS) for gpt-custom."""
    from chipsim.models import custom_model, load_model

    raw = sec.raw("model")
    if isinstance(raw, str):
        try:
            return load_model(raw)
        except InputError as exc:
            raise sec.error("model", exc.message) from None
    if not isinstance(raw, dict):
        raise sec.error("model", "expected a model id of the zoo or a mapping of dimensions (layers, d_model, ...)")
    dims = Section(raw, sec.file, sec.key("model"))
    values = {k: int(dims.number(k, integer=True, minimum=1)) for k in MODEL_DIMS if dims.has(k)}
    dims.done()
    try:
        return custom_model(**values)
    except InputError as exc:
        raise dims.error(exc.key, exc.message) from None


def resolve_cases(config: RunConfig) -> list[TrainingCase]:
    """One case per system of the config, all checked before any simulation."""
    from chipsim.models import resolve_layout

    assert config.parallelism is not None
    file = str(config.file) if config.file else None
    sec = Section(config.parallelism, file, "parallelism")
    model = model_from_section(sec)
    gpus = int(sec.number("gpus", integer=True, minimum=1)) if sec.has("gpus") else None
    sizes: dict[str, Any] = {k: int(sec.number(k, integer=True, minimum=0 if k == "zero" else 1))
                             for k in LAYOUT_KEYS if sec.has(k)}
    global_batch = int(sec.number("global_batch", integer=True, minimum=1))
    seq = int(sec.number("seq", integer=True, minimum=1))
    precision = sec.string("precision", "bf16", choices=PRECISIONS)
    recompute = sec.string("recompute", "none", choices=("none", "selective", "full"))
    sequence_parallel = sec.boolean("sequence_parallel", True)
    if sec.has("moe_imbalance"):
        sizes["moe_imbalance"] = float(sec.number("moe_imbalance", minimum=1, maximum=64))
    sec.done()
    cases = []
    for index, ref in enumerate(config.systems):
        try:
            system = load_system(ref.system, config.file, ref.overrides, ref.name)
        except InputError as exc:
            raise (exc.within(file=file, key_prefix=f"systems[{index}]") if exc.file is None else exc) from None
        n = gpus if gpus is not None else system.world
        if n > system.world:
            raise InputError(f"{n:,} GPUs do not fit system '{system.name}' ({system.world:,} GPUs)", file=file,
                             key="parallelism.gpus")
        try:
            layout = resolve_layout(model, n, global_batch=global_batch, seq=seq, recompute=recompute,
                                    sequence_parallel=sequence_parallel, **sizes)
            memory_per_gpu(model, layout, precision, system.chip.hbm.capacity_bytes, flash_attention=True)
        except InputError as exc:
            key = exc.key if exc.key and exc.key.startswith("parallelism") else f"parallelism.{exc.key or 'model'}"
            raise InputError(f"{exc.message} (on {system.name})", file=file, key=key) from None
        cases.append(TrainingCase(model, layout, system, precision))
    return cases


def run_training(config: RunConfig, progress: Callable[[int, int, str], None] | None = None) -> list[TrainingResult]:
    cases = resolve_cases(config)
    results = []
    for index, case in enumerate(cases):
        if progress:
            progress(index, len(cases), f"{case.model.model_id} on {case.system.name}")
        results.append(simulate_training(case.model, case.layout, case.system, case.precision))
    return results
