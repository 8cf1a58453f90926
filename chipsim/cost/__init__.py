"""Pure cost functions: (op, chip) -> OpCost, one registered function per op kind, by family
(gemm, attention, streaming, measured); collectives are costed by the network (`base.Network`)."""

from chipsim.cost import attention, gemm, measured, streaming  # noqa: F401  (importing registers them)
from chipsim.cost.base import COST_MODELS, Network, OpCost, cost_of, register_cost
from chipsim.cost.collective import ChipLink

__all__ = ["COST_MODELS", "ChipLink", "Network", "OpCost", "cost_of", "register_cost"]
