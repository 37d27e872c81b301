"""How long to wait between attempts when a camera or the broker is away."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: the first retry after ``min_s``, doubling each failure up to ``max_s``."""

    min_s: float = 0.5
    max_s: float = 10.0

    def next(self, current: float) -> float:
        return min(current * 2, self.max_s)
