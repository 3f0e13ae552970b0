"""The simulated labeller: the embedded task's stand-in for people ranking responses.

It ranks K responses by gold score under Bradley-Terry noise: sorting by ``gold / temperature + Gumbel noise``
(Plackett-Luce) makes every pair's marginal exactly ``P(a > b) = sigmoid((gold_a - gold_b) / temperature)``.
It reads the hidden gold judge only to order responses; no score leaves it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from components.task.gold_judge import gold_score


class SimulatedLabeler:
    def __init__(self, temperature: float, rng: random.Random):
        self.temperature = temperature
        self.rng = rng

    def rank(self, prompt: str, responses: list[str], ended: list[bool]) -> list[int]:
        """Indices of ``responses``, best first; a response that never ended is judged as such."""
        utilities = [
            gold_score(prompt, response, done) / self.temperature + _gumbel(self.rng)
            for response, done in zip(responses, ended, strict=True)
        ]
        return sorted(range(len(responses)), key=lambda i: -utilities[i])


def _gumbel(rng: random.Random) -> float:
    return -math.log(-math.log(rng.random() or 1e-300))


@dataclass(frozen=True)
class LabelAgreement:
    accuracy: float  # share of non-tied pairs where the label agrees with the gold judge
    expected_accuracy: float  # what Bradley-Terry at this temperature predicts for these pairs
    ties: int
    pairs: int


def label_agreement(pairs: Sequence[dict], temperature: float) -> LabelAgreement:
    agree, expected, ties = 0, 0.0, 0
    for pair in pairs:
        margin = gold_score(pair["prompt"], pair["chosen"]) - gold_score(pair["prompt"], pair["rejected"])
        if margin == 0:
            ties += 1
            continue
        agree += margin > 0
        expected += 1 / (1 + math.exp(-abs(margin) / temperature))
    decided = len(pairs) - ties
    return LabelAgreement(
        agree / decided if decided else float("nan"), expected / decided if decided else float("nan"), ties, len(pairs)
    )
