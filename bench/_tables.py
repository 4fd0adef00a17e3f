"""What every bench table prints: a mean with its 95 % t-interval over seeds, one format for all."""
from __future__ import annotations

import math

from raal.metrics import mean_ci


def ci(values, scale: float = 100.0, signed: bool = True, digits: int = 1) -> str:
    """`mean [lo, hi]` of `values` (one per seed) times `scale`; one value says so instead of an interval."""
    m, lo, hi = mean_ci(values)
    if not math.isfinite(m):
        return "n/a"
    fmt = f"+.{digits}f" if signed else f".{digits}f"
    if not math.isfinite(lo):
        return f"{scale * m:{fmt}} (1 seed)"
    return f"{scale * m:{fmt}} [{scale * lo:{fmt}}, {scale * hi:{fmt}}]"
