"""Closed vocabularies: every name a chip file, a workload or a run config may use from a fixed set.

One place for each list, so that the YAML/JSON readers, the cost model and the docs agree: a name
that is not here is a typo, and input that uses it is refused (it is never silently ignored).
This module imports nothing from chipsim.
"""

from __future__ import annotations

from typing import Literal, get_args

# Numeric formats a chip can run (keys of compute.peak, power.energy_per_flop, gemm.efficiency).
DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "fp6", "fp4")

# How a chip runs int4 GEMMs: dequantize int4 weights to bf16, or native int4 MACs.
INT4_MODES = ("weight_only", "native")

# Fused attention kernels (calibration.attention tables, attention op attrs.backend, generators).
AttentionBackend = Literal["flash", "cudnn", "efficient"]
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackend)

# Training precisions (the block linears' GEMM format; chipsim.training): bf16; fp8 with per-tensor
# scales (Transformer Engine's delayed or current scaling; Blackwell's MXFP8 at the same rate);
# fp8_block, DeepSeek-V3's fine-grained scales (1x128 activations, 128x128 weights); fp4 (NVFP4).
TRAINING_PRECISIONS = ("bf16", "fp8", "fp8_block", "fp4")

# How the host issues kernels: one Python call per op, or a CUDA-graph replay.
LAUNCH_MODES = ("eager", "graph")

# Pointwise ops of the `elementwise` op kind (attrs.op); chipsim.workload.kinds.ELEMENTWISE_OPS
# gives each its reads, writes and FLOPs per element.
ELEMENTWISE_OP_NAMES = (
    "copy", "read", "write", "add", "mul", "cast", "gelu", "silu", "silu_mul", "rope", "reduce", "embedding",
    "dropout", "scale", "transpose", "abs", "clamp", "round", "silu_mul_bwd", "gelu_bwd", "silu_bwd", "mul_bwd",
    "fused", "cast_transpose",
)

# Normalizations of the `norm` op kind (attrs.type).
NORM_TYPES = ("rms_norm", "layer_norm")

# Kernel classes whose achieved share of streaming bandwidth a chip may calibrate
# (calibration.memory.kernels): every class the cost model looks up.
KERNEL_CLASSES = (
    *ELEMENTWISE_OP_NAMES,
    *NORM_TYPES, *(f"{norm}_bwd" for norm in NORM_TYPES),
    "softmax", "quantize", "dequantize", "optimizer", "gemm", "marlin", "int4_gemv", "attention", "roofline",
)

# Host dispatch classes (calibration.host.dispatch): the class of each op kind, plus `call`, the cost
# of a framework call that launches no kernel.
HOST_CLASSES = ("gemm", "elementwise", "reduction", "attention", "collective", "other", "call")

# Collective op kinds (the op kinds the network costs; calibration.collective.efficiency keys).
CollectiveKind = Literal["all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all", "send_recv"]
COLLECTIVE_KINDS: tuple[str, ...] = get_args(CollectiveKind)

# Collective algorithms; `auto` lets the network choose (op attrs.algorithm, generators).
Algorithm = Literal["auto", "ring", "direct", "tree", "hierarchical", "in_switch"]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
