"""How an inference engine runs a quantized model: the GEMMs' format, the weights' format and
kernel, and the KV cache's format. The weights' bytes set the memory left for the KV cache, so a
format changes the batch an engine can hold as well as its kernels' time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chipsim.errors import InputError


@dataclass(frozen=True)
class Quantization:
    name: str
    gemm_dtype: str  # the format the block linears' GEMMs compute in
    weight_dtype: str | None  # weight-only formats (int4, int8): dequantized inside the GEMM
    kernel: str  # weight-only kernel class: marlin or tinygemm ("" when not weight-only)
    weight_bytes: float  # bytes per parameter of the block linears (with group scales)
    description: str

    @property
    def weight_only(self) -> bool:
        return self.weight_dtype is not None

    @property
    def gemm_attrs(self) -> dict[str, Any]:
        """What a block linear's GEMM op carries of the format: a weight-only one's narrow weights, their
        group scales and its kernel class (nothing for the others)."""
        return {"weight_dtype": self.weight_dtype, "group_size": GROUP, "kernel": self.kernel} if self.weight_only else {}


GROUP = 128  # weight-only group size along k: one fp16 scale (+ zero) per 128 weights
QUANTIZATIONS: dict[str, Quantization] = {q.name: q for q in (
    Quantization("none", "bf16", None, "", 2.0, "16-bit weights and activations (bf16 / fp16)"),
    Quantization("fp8", "fp8", None, "", 1.0, "FP8 weights and activations (per-tensor scales), FP8 tensor cores"),
    Quantization("fp8_weight", "bf16", "fp8", "marlin", 1.0,
                 "FP8 weights, 16-bit activations (vLLM's FP8 Marlin kernels, on GPUs without FP8 tensor cores)"),
    Quantization("int8_weight", "bf16", "int8", "marlin", 1.0 + 4 / GROUP,
                 "int8 weights, 16-bit activations (Marlin-class kernels)"),
    Quantization("int4_awq", "bf16", "int4", "marlin", 0.5 + 4 / GROUP,
                 "int4 weights in groups of 128, 16-bit activations (AWQ/GPTQ on Marlin-class kernels)"),
    Quantization("int4_tinygemm", "bf16", "int4", "tinygemm", 0.5 + 4 / GROUP,
                 "int4 weights on torchao's tinygemm kernels (as measured on the H200)"),
    Quantization("nvfp4", "fp4", None, "", 0.5 + 1 / 16,
                 "NVFP4 weights and activations (16-value blocks, fp8 scales): Blackwell's FP4 tensor cores"),
    Quantization("mxfp4", "fp4", None, "", 0.5 + 1 / 32,
                 "MXFP4 weights and activations (32-value blocks, e8m0 scales)"),
    Quantization("mxfp4_weight", "bf16", "fp4", "marlin", 0.5 + 1 / 32,
                 "MXFP4 weights, 16-bit activations (gpt-oss on GPUs without FP4 tensor cores: vLLM's and SGLang's "
                 "MXFP4 Marlin / Triton MoE kernels, TensorRT-LLM's W4A16 MXFP4 on Hopper)"),
)}
# aliases an engine's or a table's quantization names use
ALIASES = {"bf16": "none", "fp16": "none", "16-bit": "none", "w8a8_fp8": "fp8", "fp8_e4m3": "fp8",
           "int4": "int4_awq", "awq": "int4_awq", "gptq": "int4_awq", "int4_gptq": "int4_awq", "w4a16": "int4_awq",
           "int8": "int8_weight", "w8a16": "int8_weight", "fp4": "nvfp4"}
KV_DTYPES = ("bf16", "fp8")


def quantization(name: str, key: str = "quantization") -> Quantization:
    found = QUANTIZATIONS.get(ALIASES.get(name.lower(), name.lower()))
    if found is None:
        raise InputError(f"unknown quantization {name!r}; expected one of {', '.join(QUANTIZATIONS)}", key=key)
    return found


def check_kv_dtype(name: str, key: str = "kv_cache_dtype") -> str:
    if name not in KV_DTYPES:
        raise InputError(f"unknown KV-cache dtype {name!r}; expected one of {', '.join(KV_DTYPES)}", key=key)
    return name
