"""Gao et al. (2022)'s functional form of reward model over-optimisation under RL, fitted per run.

With d = sqrt(KL(pi || pi_init)), the gold score of an RL policy, measured from where it started, follows

    R(d) = d * (alpha - beta * log d)

(their eq. 2, "RL"). It rises, peaks where dR/dd = alpha - beta * (log d + 1) = 0, i.e. at
d* = exp(alpha / beta - 1), and falls after: past d*, optimising the proxy harder costs gold. The same form
fitted to the proxy (the reward model's own score) usually has a much smaller beta: the proxy keeps rising.

The fit is linear least squares in (alpha, beta) on the features (d, -d log d), with no intercept (R(0) = 0).
It reads the PPO gold monitor's points: evaluation only, never fed back into training or selection.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

MIN_POINTS = 3
REACH = 2.0  # a peak is reported only up to this multiple of the largest sqrt(KL) observed: further is extrapolation


@dataclass(frozen=True)
class RLCurve:
    alpha: float
    beta: float
    points: int
    r2: float  # share of the points' variance (around 0, as R(0) = 0) the curve explains
    d_max: float  # the largest sqrt(KL) among the points

    def __call__(self, d: float) -> float:
        return d * (self.alpha - self.beta * math.log(d)) if d > 0 else 0.0

    @property
    def peak_d(self) -> float | None:
        """sqrt(KL) where the curve peaks; None when it never turns down (beta <= 0) or only beyond REACH times
        the data's largest sqrt(KL) (the points cannot tell where, if anywhere, gold turns down)."""
        if self.beta <= 0:
            return None
        exponent = self.alpha / self.beta - 1
        return math.exp(exponent) if exponent < math.log(REACH * self.d_max) else None

    @property
    def peak_kl(self) -> float | None:
        d = self.peak_d
        return d * d if d is not None else None

    @property
    def peak_value(self) -> float | None:
        d = self.peak_d
        return self(d) if d is not None else None

    def as_dict(self) -> dict:
        return {**asdict(self), "peak_kl": self.peak_kl, "peak_value": self.peak_value}


def fit_rl_curve(kl: list[float], score: list[float]) -> RLCurve | None:
    """Fit R(d) = d (alpha - beta log d) to (KL, score change) points; None with too few points or no spread.

    ``score`` is measured from the start (score - score at KL 0). Points with KL <= 0 carry no information
    about alpha and beta (both features are 0 there) and are skipped.
    """
    rows = [
        (math.sqrt(k), s) for k, s in zip(kl, score, strict=True) if k > 0 and math.isfinite(k) and math.isfinite(s)
    ]
    if len(rows) < MIN_POINTS:
        return None
    # normal equations of y = alpha * x1 + beta * x2 with x1 = d, x2 = -d log d
    s11 = s12 = s22 = s1y = s2y = syy = 0.0
    for d, y in rows:
        x1, x2 = d, -d * math.log(d)
        s11, s12, s22 = s11 + x1 * x1, s12 + x1 * x2, s22 + x2 * x2
        s1y, s2y, syy = s1y + x1 * y, s2y + x2 * y, syy + y * y
    determinant = s11 * s22 - s12 * s12
    if abs(determinant) < 1e-12 * max(1.0, s11 * s22):
        return None
    alpha = (s1y * s22 - s2y * s12) / determinant
    beta = (s2y * s11 - s1y * s12) / determinant
    d_max = max(d for d, _ in rows)
    curve = RLCurve(alpha, beta, len(rows), 0.0, d_max)
    residual = sum((y - curve(d)) ** 2 for d, y in rows)
    return RLCurve(alpha, beta, len(rows), 1 - residual / syy if syy > 0 else 0.0, d_max)


def overoptimisation_fit(history: list[dict], gold_key: str = "gold", proxy_key: str = "rm_score") -> dict:
    """Both curves of a PPO run from its history (each iteration's mean KL, gold and RM score of the rollouts).

    Returns {gold: RLCurve | None, proxy: RLCurve | None, start: {gold, proxy}}; scores are fitted as changes
    from the first iteration's (KL 0: the policy is still the reference).
    """
    points = [h for h in history if gold_key in h and proxy_key in h and "kl" in h]
    if not points:
        return {"gold": None, "proxy": None, "start": None}
    start = {"gold": points[0][gold_key], "proxy": points[0][proxy_key]}
    kl = [h["kl"] for h in points]
    return {
        "gold": fit_rl_curve(kl, [h[gold_key] - start["gold"] for h in points]),
        "proxy": fit_rl_curve(kl, [h[proxy_key] - start["proxy"] for h in points]),
        "start": start,
    }


def shipped_iteration(history: list[dict], chosen_snapshot: int) -> int | None:
    """The iteration whose rollouts the shipped policy sampled: the snapshot taken after iteration i's update samples
    iteration i + 1 (the last iteration when there is none after it, or when nothing was selected: -1)."""
    if not history:
        return None
    last = history[-1]["iteration"]
    return last if chosen_snapshot < 0 else min(chosen_snapshot + 1, last)
