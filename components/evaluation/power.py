"""How much a head-to-head rule can see: the power of "the Wilson interval's lower bound exceeds a threshold" on n
independent decisive comparisons (ties left out), each won with probability ``win_rate``."""

from __future__ import annotations

import math

from components.evaluation.intervals import Z95, wilson


def fewest_wins_to_decide(n: int, threshold: float, z: float = Z95) -> int | None:
    """The fewest wins of ``n`` whose Wilson lower bound exceeds ``threshold``; None when even n wins do not."""
    return next((wins for wins in range(n + 1) if wilson(wins, n, z).lo > threshold), None)


def detection_power(n: int, win_rate: float, threshold: float, z: float = Z95) -> float:
    """P(the rule decides "beaten") when each of ``n`` decisive comparisons is won with probability ``win_rate``:
    the binomial tail from ``fewest_wins_to_decide``."""
    needed = fewest_wins_to_decide(n, threshold, z)
    if needed is None:
        return 0.0
    return sum(math.comb(n, k) * win_rate**k * (1 - win_rate) ** (n - k) for k in range(needed, n + 1))


def detectable_win_rate(n: int, power: float, threshold: float, z: float = Z95) -> float | None:
    """The smallest true win rate the rule detects with at least ``power`` (bisection; power rises with the win
    rate); None when even a win rate of 1 is not detected that often."""
    if detection_power(n, 1.0, threshold, z) < power:
        return None
    lo, hi = threshold, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if detection_power(n, mid, threshold, z) >= power else (mid, hi)
    return hi
