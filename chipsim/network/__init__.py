"""Systems of chips: node fabrics, scale-out fat trees, routing, and flow-level collectives."""

from chipsim.network.collectives import CollectiveReport, collective
from chipsim.network.fabric import Fabric
from chipsim.network.system import System, builtin_system_names, load_system

__all__ = ["CollectiveReport", "Fabric", "System", "builtin_system_names", "collective", "load_system"]
