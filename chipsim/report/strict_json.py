"""Strict JSON out: what `--json` prints must parse with any JSON parser (no NaN or Infinity tokens)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (NaN, inf) replaced by None and numpy scalars made plain,
    so that json.dumps(..., allow_nan=False) writes strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return None


def dumps(value: Any, **kw: Any) -> str:
    """json.dumps of `json_safe(value)`, refusing NaN and infinity."""
    return json.dumps(json_safe(value), allow_nan=False, **kw)
