"""A claim about a method, with the seed as the unit: each seed's run gives one number (PPO's win rate against a
baseline, a gold difference), and the interval is a Student-t interval over seeds. Responses of different seeds are
never pooled into one binomial: the runs differ by far more than one run's sampling noise (issue 35 measured
Cochran's Q of about 53 on 2 degrees of freedom for three seeds), and only the spread between seeds says how far
another seed's run could land."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from components.evaluation.intervals import LEVEL, t_quantile

POWER = 0.8


@dataclass(frozen=True)
class SeedEstimate:
    mean: float
    ci: tuple[float, float]  # Student-t over seeds; infinite with one seed
    sd: float  # between seeds; nan with one seed
    seeds: int
    values: tuple[float, ...]

    def as_dict(self) -> dict:
        return asdict(self) | {"ci": list(self.ci), "values": list(self.values)}


def across_seeds(values: list[float], level: float = LEVEL) -> SeedEstimate:
    """The mean of one number per seed, with a t-interval on len(values) - 1 degrees of freedom."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return SeedEstimate(mean, (-math.inf, math.inf), math.nan, n, tuple(values))
    sd = statistics.stdev(values)
    half = t_quantile(level, n - 1) * sd / math.sqrt(n)
    return SeedEstimate(mean, (mean - half, mean + half), sd, n, tuple(values))


def seeds_needed(sd: float, difference: float, power: float = POWER, level: float = LEVEL) -> int | None:
    """The fewest seeds whose t-interval excludes 0 with probability ``power`` when the true mean is ``difference``
    and seeds spread by ``sd``: the smallest n with n >= ((t_{level, n-1} + t_{power, n-1}) sd / difference)^2 (the
    usual t approximation of a one-sample t test's power); None when not computable (no spread measured, or no
    difference)."""
    if not math.isfinite(sd) or difference == 0:
        return None
    if sd == 0:
        return 2
    for n in range(2, 100_000):
        z = t_quantile(level, n - 1) + t_quantile(2 * power - 1, n - 1)  # two-sided level; one-sided power quantile
        if n >= (z * sd / difference) ** 2:
            return n
    return None
