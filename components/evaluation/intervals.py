"""Confidence intervals for means and win rates."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    n: int

    def as_dict(self) -> dict:
        return {"value": self.value, "ci": [self.lo, self.hi], "n": self.n}


def mean_ci(values: list[float], z: float = Z95) -> Estimate:
    """Mean with a normal-approximation 95% interval (n is in the hundreds here)."""
    n = len(values)
    mean = statistics.fmean(values)
    half = z * statistics.stdev(values) / math.sqrt(n) if n > 1 else float("inf")
    return Estimate(mean, mean - half, mean + half, n)


def wilson(successes: float, n: int, z: float = Z95) -> Estimate:
    """Wilson score interval for a proportion; ``successes`` may be fractional (ties count half)."""
    if n == 0:
        return Estimate(float("nan"), 0.0, 1.0, 0)
    p = successes / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return Estimate(p, centre - half, centre + half, n)


def win_rate(scores: list[float], opponent_scores: list[float]) -> Estimate:
    """Share of paired comparisons won (ties count half), with a Wilson interval."""
    if len(scores) != len(opponent_scores):
        raise ValueError(f"unpaired scores: {len(scores)} vs {len(opponent_scores)}")
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, opponent_scores))
    return wilson(wins, len(scores))
