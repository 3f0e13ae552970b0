"""Confidence intervals for means and win rates, with the prompt as the unit.

Several samples of one prompt are not independent (a prompt that is easy for one policy is easy for all of its
samples), so wherever a prompt contributes more than one observation, each prompt's observations are first reduced
to one number (its mean, or its share of comparisons won) and the interval is a Student-t interval over prompts: the
cluster-robust interval with prompts as clusters. One observation per prompt gives Wilson's interval for a share.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t

Z95 = 1.959963984540054
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    n: int  # the units the interval is over: prompts where samples are grouped by prompt

    def as_dict(self) -> dict:
        return {"value": self.value, "ci": [self.lo, self.hi], "n": self.n}


@dataclass(frozen=True)
class WinEstimate(Estimate):
    """PPO's win rate (ties half) over ``n`` prompts, and how much of it was decided: ``ties``, the share of tied
    comparisons; ``wins`` and ``losses``, the comparisons won and lost outright (one per prompt under greedy decoding:
    the counts a test on the untied prompts reads)."""

    ties: float = 0.0
    wins: int = 0
    losses: int = 0
    comparisons: int = 0

    def as_dict(self) -> dict:
        return super().as_dict() | {
            "ties": self.ties,
            "wins": self.wins,
            "losses": self.losses,
            "comparisons": self.comparisons,
        }


def t_quantile(level: float, df: int) -> float:
    return float(student_t.ppf(0.5 + level / 2, df))


def mean_ci(values: list[float], level: float = LEVEL) -> Estimate:
    """Mean of independent values with a Student-t interval."""
    n = len(values)
    mean = statistics.fmean(values)
    half = t_quantile(level, n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else float("inf")
    return Estimate(mean, mean - half, mean + half, n)


def by_prompt(values: list[float], per_prompt: int) -> list[list[float]]:
    """Values laid out prompt by prompt (prompt i's ``per_prompt`` samples at i*per_prompt ...), grouped."""
    if per_prompt < 1 or len(values) % per_prompt:
        raise ValueError(f"{len(values)} values are not whole groups of {per_prompt} samples per prompt")
    return [values[i : i + per_prompt] for i in range(0, len(values), per_prompt)]


def clustered_mean_ci(values: list[float], per_prompt: int, level: float = LEVEL) -> Estimate:
    """The mean over prompts of each prompt's mean, with a t-interval over prompts (``n``: the prompts)."""
    return mean_ci([statistics.fmean(group) for group in by_prompt(values, per_prompt)], level)


def wilson(successes: float, n: int, z: float = Z95) -> Estimate:
    """Wilson score interval for a proportion of n independent trials; ``successes`` may be fractional (ties half)."""
    if n == 0:
        return Estimate(float("nan"), 0.0, 1.0, 0)
    p = successes / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return Estimate(p, centre - half, centre + half, n)


def _outcome(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def win_rate(
    scores: list[float], opponent_scores: list[float], per_prompt: int = 1, opponent_per_prompt: int | None = None
) -> WinEstimate:
    """PPO's win rate against an opponent on the same prompts, ties half: with ``per_prompt`` samples of each prompt
    (the opponent's ``opponent_per_prompt``, the same by default), every sample of PPO against every sample of the
    opponent on the same prompt."""
    theirs_per_prompt = opponent_per_prompt or per_prompt
    if len(scores) // per_prompt != len(opponent_scores) // theirs_per_prompt:
        raise ValueError(f"unpaired scores: {len(scores)} vs {len(opponent_scores)}")
    ours, theirs = by_prompt(scores, per_prompt), by_prompt(opponent_scores, theirs_per_prompt)
    return win_estimate([[_outcome(a, b) for a in mine for b in other] for mine, other in zip(ours, theirs)])


def win_estimate(outcomes: list[list[float]]) -> WinEstimate:
    """The win rate from each prompt's outcomes (1 won, 0.5 tied, 0 lost). One outcome per prompt: Wilson's interval
    over prompts. More: each prompt's share won, and the t-interval of their mean over prompts."""
    flat = [o for prompt in outcomes for o in prompt]
    counts = {"wins": flat.count(1.0), "losses": flat.count(0.0), "comparisons": len(flat)}
    ties = flat.count(0.5) / len(flat) if flat else 0.0
    if all(len(prompt) == 1 for prompt in outcomes):
        estimate = wilson(sum(flat), len(flat))
    else:
        shares = mean_ci([statistics.fmean(prompt) for prompt in outcomes])
        estimate = Estimate(shares.value, max(0.0, shares.lo), min(1.0, shares.hi), shares.n)
    return WinEstimate(estimate.value, estimate.lo, estimate.hi, estimate.n, ties, **counts)


def on_judge_decided(
    judge: list[float],
    judge_opponent: list[float],
    proxy: list[float],
    proxy_opponent: list[float],
    per_prompt: int = 1,
) -> dict:
    """PPO's win share by the judge and by the proxy (the reward model) over the same comparisons: those the judge
    does not tie (every sample against every sample of the same prompt). A judge at its ceiling ties most greedy
    answers, which pulls its ties-half win rate to 0.5 while the proxy's continuous scores never tie: compared there,
    the two rates differ by the ties alone."""
    judged = zip(by_prompt(judge, per_prompt), by_prompt(judge_opponent, per_prompt))
    proxied = zip(by_prompt(proxy, per_prompt), by_prompt(proxy_opponent, per_prompt))
    judge_wins, proxy_wins = [], []
    for (mine, other), (proxy_mine, proxy_other) in zip(judged, proxied):
        for i, a in enumerate(mine):
            for j, b in enumerate(other):
                if a != b:
                    judge_wins.append(_outcome(a, b))
                    proxy_wins.append(_outcome(proxy_mine[i], proxy_other[j]))
    if not judge_wins:
        return {"judge": None, "proxy": None, "comparisons": 0}
    return {
        "judge": statistics.fmean(judge_wins),
        "proxy": statistics.fmean(proxy_wins),
        "comparisons": len(judge_wins),
    }
