"""Training at scale: the model zoo, Megatron-style parallel layouts and per-GPU memory."""

from chipsim.models.layout import Layout, resolve_layout
from chipsim.models.memory import MemoryBreakdown, check_fits, memory_per_gpu, memory_per_stage
from chipsim.models.zoo import MLAConfig, ModelConfig, custom_model, known_models, load_model

__all__ = [
    "Layout",
    "MLAConfig",
    "MemoryBreakdown",
    "ModelConfig",
    "check_fits",
    "custom_model",
    "known_models",
    "load_model",
    "memory_per_gpu",
    "memory_per_stage",
    "resolve_layout",
]
