"""YAML loading, `extends:` inheritance, unit strings and schema checks (the input boundary)."""

from chipsim.config.loader import deep_merge, load_yaml, load_yaml_with_extends
from chipsim.config.units import parse_quantity

__all__ = ["deep_merge", "load_yaml", "load_yaml_with_extends", "parse_quantity"]
