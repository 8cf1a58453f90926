"""Pure cost functions: (op, chip) -> OpCost. One registered function per op kind."""

from chipsim.cost.model import OpCost, cost_of, register_cost

__all__ = ["OpCost", "cost_of", "register_cost"]
